"""The change stream's fan-out: how soon each of many open streams hears of a publish, and what they cost.

    .venv/bin/python -m bench.stream [--quick] [--viewers 2000] [--seconds 20] [--rate 5]

One stream server as the Procfile runs it (gunicorn pisa_site.asgi, asyncio worker, one process). Viewers are
asyncio clients in CLIENT_PROCESSES separate processes, each one connection reading events as EventSource does.
A publisher announces `--rate` changes a second (`pisa_site.stream.change_announce`, as the metrics publish does),
each with a country code of its own so that every event names the publish it comes from; a viewer's latency for
a publish is the time from just before the PUBLISH to its reading of the event (one clock: the same machine).

Two phases, same run: a baseline of BASELINE_VIEWERS viewers, then `--viewers`. Reported per phase: events heard
out of those expected, latency p50/p99/max, the stream process's CPU (share of one core) and memory, the clients'
CPU, and bytes per viewer per second (events and heartbeats as sent); then the loaded/baseline ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import time

import psutil

from bench.common import ROOT, bench_environment, percentile, report

VIEWERS, QUICK_VIEWERS, BASELINE_VIEWERS = 2000, 300, 10
SECONDS, QUICK_SECONDS, RATE = 20.0, 8.0, 5.0
CLIENT_PROCESSES = 2
CONNECT_SECONDS = 30.0
SETTLE_SECONDS = 1.0


async def _viewer(port: int, heard: dict, counters: dict, ready: list) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    writer.write(b"GET /api/v1/stream/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
    await writer.drain()
    status = await reader.readline()
    if b" 200 " not in status:
        counters["refused"] += 1
        writer.close()
        return
    ready.append(1)
    event = None
    try:
        while True:
            line = await reader.readline()
            if not line:
                counters["closed"] += 1
                return
            counters["bytes"] += len(line)
            if line.startswith(b"event: "):
                event = line[7:].strip()
            elif line.startswith(b"data: ") and event == b"metrics":
                received = time.time()
                for code in json.loads(line[6:])["countries"]:
                    heard.setdefault(code, []).append(received)
    finally:
        writer.close()


def _client_process(port: int, viewers: int, seconds: float, results) -> None:
    async def run():
        heard: dict[str, list[float]] = {}
        counters = {"bytes": 0, "refused": 0, "closed": 0}
        ready: list = []
        tasks = [asyncio.create_task(_viewer(port, heard, counters, ready)) for _ in range(viewers)]
        deadline = time.monotonic() + CONNECT_SECONDS
        while len(ready) + counters["refused"] < viewers and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        results.put(("ready", len(ready)))
        await asyncio.sleep(seconds)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        cpu = psutil.Process().cpu_times()
        results.put(("done", {"heard": heard, **counters, "cpu": cpu.user + cpu.system}))

    asyncio.run(run())


def _phase(port: int, server: psutil.Process, viewers: int, seconds: float, rate: float) -> dict:
    import redis
    from django.conf import settings

    from pisa_site import stream

    results = multiprocessing.Queue()
    share = [viewers // CLIENT_PROCESSES + (1 if k < viewers % CLIENT_PROCESSES else 0) for k in range(CLIENT_PROCESSES)]
    listen = seconds + SETTLE_SECONDS * 2
    clients = [multiprocessing.Process(target=_client_process, args=(port, n, listen, results)) for n in share if n]
    for client in clients:
        client.start()
    connected = sum(results.get(timeout=CONNECT_SECONDS + 10)[1] for _ in clients)
    publisher = redis.Redis.from_url(settings.REDIS_URL)
    server_cpu, server_started = server.cpu_times(), time.monotonic()
    time.sleep(SETTLE_SECONDS)
    published: dict[str, float] = {}
    k, started = 0, time.monotonic()
    while time.monotonic() - started < seconds:
        code = f"C{k:05d}"
        published[code] = time.time()
        stream.change_announce(topic=stream.METRICS, country=code, pipe=publisher)
        k += 1
        time.sleep(max(0.0, started + k / rate - time.monotonic()))
    outcomes = [results.get(timeout=listen + 30)[1] for _ in clients]
    cpu_after, elapsed = server.cpu_times(), time.monotonic() - server_started
    for client in clients:
        client.join(10)
    latencies = [received - published[code] for outcome in outcomes for code, times in outcome["heard"].items()
                 if code in published for received in times]
    expected = len(published) * connected
    return {
        "viewers": viewers, "connected": connected,
        "refused": sum(o["refused"] for o in outcomes), "closed_early": sum(o["closed"] for o in outcomes),
        "publishes": len(published), "events_heard": len(latencies), "events_expected": expected,
        "latency_ms_p50": round(percentile(latencies, 0.5) * 1000, 1) if latencies else None,
        "latency_ms_p99": round(percentile(latencies, 0.99) * 1000, 1) if latencies else None,
        "latency_ms_max": round(max(latencies) * 1000, 1) if latencies else None,
        "server_cpu_share_of_a_core": round((cpu_after.user + cpu_after.system - server_cpu.user - server_cpu.system)
                                            / elapsed, 3),
        "server_rss_mb": round(server.memory_info().rss / 2**20, 1),
        "clients_cpu_seconds": round(sum(o["cpu"] for o in outcomes), 2),
        "bytes_per_viewer_per_second": round(sum(o["bytes"] for o in outcomes) / max(connected, 1) / listen, 1),
    }


def _server(port: int, viewers: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "pisa_site.asgi", "--worker-class", "asgi", "--bind", f"127.0.0.1:{port}",
         "--workers", "1", "--worker-connections", str(viewers + 100), "--graceful-timeout", "1",
         "--log-level", "warning"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "STREAM_MAX_VIEWERS": str(viewers + 100)})


def _wait_answers(port: int) -> None:
    import urllib.request

    for _ in range(150):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health/", timeout=2)
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the stream server did not start")


def _worker_of(process: subprocess.Popen) -> psutil.Process:
    children = psutil.Process(process.pid).children()
    return children[0] if children else psutil.Process(process.pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--viewers", type=int)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--rate", type=float, default=RATE)
    args = parser.parse_args()
    viewers = args.viewers or (QUICK_VIEWERS if args.quick else VIEWERS)
    seconds = args.seconds or (QUICK_SECONDS if args.quick else SECONDS)
    with bench_environment():
        from pisa_site.embedded import free_port

        port = free_port()
        server = _server(port, viewers)
        try:
            _wait_answers(port)
            worker = _worker_of(server)
            print(f"baseline: {BASELINE_VIEWERS} viewers...", flush=True)
            baseline = _phase(port, worker, BASELINE_VIEWERS, seconds, args.rate)
            print(f"loaded: {viewers} viewers...", flush=True)
            loaded = _phase(port, worker, viewers, seconds, args.rate)
        finally:
            server.terminate()
            server.wait(20)

        def ratio(name):
            return round(loaded[name] / baseline[name], 2) if loaded[name] and baseline[name] else None

        report("stream", {
            "what": f"GET /api/v1/stream/ on one asyncio gunicorn process, {args.rate:g} publishes/s for {seconds:g} s, "
                    f"{CLIENT_PROCESSES} client processes",
            "baseline": baseline, "loaded": loaded,
            "ratio_latency_p50_loaded_over_baseline": ratio("latency_ms_p50"),
            "ratio_latency_p99_loaded_over_baseline": ratio("latency_ms_p99"),
        }, quick=args.quick)


if __name__ == "__main__":
    main()
