"""The simulator's pace: the rate asked for, with bursts of 4-10x about once a minute unless told to be steady."""

from simulator.runner import BURST_MULTIPLIER, Pace

TICK_SECONDS = 0.5


def rows_fed(pace: Pace, *, rate: float, seconds: float) -> list[int]:
    ticks = int(seconds / TICK_SECONDS)
    return [pace.rows_due(rate=rate, elapsed=TICK_SECONDS, now=k * TICK_SECONDS) for k in range(ticks)]


def test_a_steady_pace_feeds_exactly_the_rate():
    fed = rows_fed(Pace(seed=8, bursts=False), rate=200, seconds=600)
    assert set(fed) == {100}  # 200 rows/s in ticks of 0.5 s, never a burst


def test_the_default_pace_bursts_now_and_then_and_otherwise_feeds_the_rate():
    fed = rows_fed(Pace(seed=8), rate=200, seconds=600)  # about ten bursts expected in ten minutes
    bursts = [rows for rows in fed if rows != 100]
    assert bursts, "no burst in ten minutes"
    assert all(100 * BURST_MULTIPLIER[0] - 1 <= rows <= 100 * BURST_MULTIPLIER[1] + 1 for rows in bursts)
    assert len(bursts) < len(fed) / 2
