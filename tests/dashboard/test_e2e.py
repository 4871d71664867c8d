"""The dashboard in a real headless Chromium, against the live stack on real PostgreSQL and Redis.

Tests run in file order and share one stack; the last one stops the API. The django_db mark only makes pytest-django
create the test database: the data is written by the module's fixture and by the stack's own processes.
"""

from __future__ import annotations

import re
import signal
import time

import psutil
import pytest
from playwright.sync_api import expect

from tests.dashboard.conftest import ADMIN_PASSWORD, ADMIN_USERNAME, ARTIFACTS, COUNTRIES, INITIAL_STUDENTS

pytestmark = [pytest.mark.stack, pytest.mark.django_db]

# The promise: a response inserted into a source shows on the page within 3 s.
LIVE_UPDATE_SECONDS = 3
LIVE_UPDATE_MS = LIVE_UPDATE_SECONDS * 1000
UPDATE_GIVE_UP_MS = 15000
# Time for the first load and the first answers of the API (cold gunicorn, 4.8 MB of plotly.js).
FIRST_RENDER_MS = 20000
CHARTS = ("chart-submissions-time", "chart-learning-hours", "chart-escs-map", "chart-early-belonging", "chart-scores",
          "chart-gender-gap", "chart-below-level2", "chart-escs-gradient")
COUNTRY_NAMES = {"ALB": "Albania", "ARG": "Argentina", "FRA": "France"}


def open_dashboard(page, live_stack, query: str = ""):
    page.goto(f"{live_stack.url}/{query}")
    expect(page.locator("#submissions-count")).not_to_have_attribute("data-value", "", timeout=FIRST_RENDER_MS)


def plotted_countries(page, chart: str) -> list[str]:
    """Country codes drawn in a chart (every trace's customdata), from the chart's own plotly data."""
    return page.evaluate(
        """(id) => [...new Set((document.getElementById(id).data || [])
                    .flatMap((trace) => trace.customdata || []))].sort()""", chart)


def test_every_chart_renders_with_data(page, live_stack):
    open_dashboard(page, live_stack)
    expect(page.locator("#submissions-count")).to_have_attribute("data-value", str(INITIAL_STUDENTS * len(COUNTRIES)))
    for chart in CHARTS:
        expect(page.locator(f"#{chart} .main-svg").first).to_be_visible()
    for chart in CHARTS[1:]:
        page.wait_for_function("(id) => (document.getElementById(id).data || []).length > 0", arg=chart)
        assert plotted_countries(page, chart) == sorted(COUNTRIES), chart
    hourly = page.evaluate("document.getElementById('chart-submissions-time').data[0].y")
    assert sum(hourly) == INITIAL_STUDENTS * len(COUNTRIES)
    # The map draws country shapes from the installed package's geometry, not a CDN's.
    expect(page.locator("#chart-escs-map path.choroplethlocation").first).to_be_attached()
    expect(page.locator("#pipeline-table tbody tr")).to_have_count(len(COUNTRIES))
    for code in COUNTRIES:
        expect(page.locator(f"#pipeline-table tr[data-source={code}]")).to_contain_text(str(INITIAL_STUDENTS))
    expect(page.locator("#updated-ago")).to_contain_text("Updated")
    expect(page.locator("#banner")).to_be_hidden()


def test_the_mean_score_chart_marks_countries_significantly_above_or_below_the_average(page, live_stack):
    import json
    import urllib.request

    open_dashboard(page, live_stack)
    page.wait_for_function("() => (document.getElementById('chart-scores').data || []).length > 0")
    with urllib.request.urlopen(f"{live_stack.url}/api/v1/metrics/") as response:
        versus = json.load(response)["mean_score_versus_average"]["READ"]
    drawn = page.evaluate("""() => { const trace = document.getElementById('chart-scores').data[0];
        return Object.fromEntries(trace.customdata.map((code, i) => [code, trace.marker.symbol[i]])); }""")
    assert set(drawn) == set(versus)
    for code, symbol in drawn.items():
        expected = "circle"
        if versus[code]["significant"]:
            expected = "triangle-up" if versus[code]["value"] > 0 else "triangle-down"
        assert symbol.removesuffix("-open") == expected, (code, versus[code])


def test_without_the_stream_the_page_polls_every_second_and_revalidates_with_etags(page, live_stack):
    """A proxy that will not pass the stream, or a browser that cannot open it: the page polls, as it always could."""
    page.route("**/api/v1/stream/**", lambda route: route.abort())
    statuses: list[int] = []
    page.on("response", lambda response: "/api/v1/metrics/" in response.url and statuses.append(response.status))
    open_dashboard(page, live_stack)
    expect(page.locator("#updated-ago")).to_contain_text("s ago")  # polling; "changes are pushed" with a stream
    for _ in range(20):  # a few polls of the page (one a second); nothing changes meanwhile
        if statuses.count(304) >= 3:
            break
        page.wait_for_timeout(500)
    assert statuses[0] == 200 and statuses.count(304) >= 3, statuses


def test_an_overloaded_server_s_503_is_waited_out_as_its_retry_after_says(page, live_stack):
    """The web tier sheds load with 503 + Retry-After (pisa_site/shedding.py): the page says so and stays quiet."""
    page.route("**/api/v1/stream/**", lambda route: route.abort())  # polling: every request would be a poll
    open_dashboard(page, live_stack)
    asked: list[float] = []
    busy = {"on": True}

    def overloaded(route):
        asked.append(time.monotonic())
        if busy["on"]:
            route.fulfill(status=503, headers={"Retry-After": "3", "Content-Type": "application/json"},
                          body='{"error": "the server is too busy to answer now"}')
        else:
            route.continue_()

    page.route("**/api/v1/metrics/**", overloaded)
    expect(page.locator("#banner")).to_contain_text("very busy", timeout=5000)
    page.wait_for_timeout(2500)
    assert len(asked) == 1, asked  # one 503, then silence: no poll a second meanwhile
    busy["on"] = False
    expect(page.locator("#banner")).to_be_hidden(timeout=8000)
    assert asked[1] - asked[0] >= 2.9  # asked again once Retry-After was over, and served
    page.unroute("**/api/v1/metrics/**")


def seconds_until_the_counter_shows(page, live_stack, code: str, n: int) -> float:
    """Insert n students in a source; the seconds until the page's counter shows them."""
    before = int(page.locator("#submissions-count").get_attribute("data-value"))
    inserted_at = time.monotonic()
    live_stack.sources[code].insert_students(n)
    # Checked on every animation frame, and waited for past the limit so that a failure says how long it took.
    page.wait_for_function("(n) => document.getElementById('submissions-count').dataset.value === n",
                           arg=str(before + n), polling="raf", timeout=UPDATE_GIVE_UP_MS)
    return time.monotonic() - inserted_at


def test_with_the_stream_a_new_row_is_pushed_drawn_without_a_request(page, live_stack):
    metrics_requests: list[float] = []
    page.on("request", lambda request: "/api/v1/metrics/" in request.url and metrics_requests.append(time.monotonic()))
    open_dashboard(page, live_stack)
    expect(page.locator("#updated-ago")).to_contain_text("changes are pushed")
    page.wait_for_timeout(1000)
    quiet_since = time.monotonic()
    page.wait_for_timeout(4000)
    # The poll is a safety net every 5 s while the stream is up: at most one in a quiet 4 s.
    assert len([t for t in metrics_requests if t >= quiet_since]) <= 1, metrics_requests
    # The metrics URL is now out of reach: what the page shows next came on the stream.
    page.route("**/api/v1/metrics/**", lambda route: route.abort())
    seconds = seconds_until_the_counter_shows(page, live_stack, "ARG", 3)
    assert seconds <= LIVE_UPDATE_SECONDS, f"the counter showed the new rows after {seconds:.2f} s"
    # The pipeline panel is pushed too: ARG's rows loaded, with the sources URL out of reach as well.
    page.route("**/api/v1/sources/**", lambda route: route.abort())
    live_stack.sources["ARG"].insert_students(2)
    loaded = f"{live_stack.sources['ARG'].count():,}"
    expect(page.locator("#pipeline-table tr[data-source=ARG] td").nth(2)).to_have_text(loaded,
                                                                                      timeout=UPDATE_GIVE_UP_MS)


def test_inserting_rows_raises_the_counter_within_3_seconds_keeping_zoom_and_charts(page, live_stack):
    open_dashboard(page, live_stack)
    page.wait_for_function("() => (document.getElementById('chart-scores').data || []).length > 0")
    # A user's zoom, and a mark on the chart's SVG that only survives if the chart is updated in place.
    page.evaluate("""() => {
        Plotly.relayout('chart-scores', {'xaxis.range': [300, 650]});
        document.querySelector('#chart-scores .main-svg').dataset.sameNode = 'yes';
    }""")
    seconds = seconds_until_the_counter_shows(page, live_stack, "ALB", 5)
    assert seconds <= LIVE_UPDATE_SECONDS, f"the counter showed the new rows after {seconds:.2f} s"
    assert page.evaluate("document.getElementById('chart-scores').layout.xaxis.range") == [300, 650]
    assert page.evaluate("document.querySelector('#chart-scores .main-svg').dataset.sameNode") == "yes"


def test_the_selector_filters_the_charts_and_the_url_by_keyboard(page, live_stack):
    open_dashboard(page, live_stack)
    search = page.locator("#country-search")
    search.click()
    search.type("argen")
    search.press("Enter")
    expect(page).to_have_url(re.compile(r"\?countries=ARG$"))
    page.wait_for_function("() => document.getElementById('chart-learning-hours').data[0].customdata.length === 1")
    assert plotted_countries(page, "chart-learning-hours") == ["ARG"]
    assert plotted_countries(page, "chart-scores") == ["ARG"]

    search.type("fr")
    search.press("ArrowDown")
    search.press("ArrowUp")
    search.press("Enter")
    expect(page).to_have_url(re.compile(r"\?countries=ARG,FRA$"))
    expect(page.locator("#country-chips")).to_contain_text("France")
    page.wait_for_function("() => document.getElementById('chart-scores').data[0].customdata.length === 2")
    assert plotted_countries(page, "chart-scores") == ["ARG", "FRA"]

    search.press("Backspace")  # on an empty search: removes the last country chosen
    expect(page).to_have_url(re.compile(r"\?countries=ARG$"))


def test_a_shared_link_opens_with_its_countries(page, live_stack):
    open_dashboard(page, live_stack, "?countries=ALB,FRA&domain=MATH")
    expect(page.locator("#country-chips li")).to_have_count(2)
    expect(page.locator("#country-chips")).to_contain_text("Albania")
    page.wait_for_function("() => document.getElementById('chart-scores').data[0].customdata.length === 2")
    assert plotted_countries(page, "chart-early-belonging") == ["ALB", "FRA"]
    expect(page.locator("#scores-title")).to_contain_text("Mathematics")
    expect(page.locator("input[name=domain][value=MATH]")).to_be_checked()


def test_a_label_edited_in_the_admin_shows_on_the_page(page, live_stack):
    page.goto(f"{live_stack.url}/admin/login/")
    page.fill("#id_username", ADMIN_USERNAME)
    page.fill("#id_password", ADMIN_PASSWORD)
    page.click("input[type=submit]")
    page.goto(f"{live_stack.url}/admin/codebook/variable/{live_stack.cnt_variable_id}/change/")
    albania = page.locator("tr", has=page.locator("td.field-value", has_text=re.compile(r"^\s*ALB\s*$")))
    albania.locator("td.field-label input").fill("Shqipëria")
    page.click("input[name=_save]")
    expect(page.locator(".messagelist")).to_contain_text("changed successfully")

    open_dashboard(page, live_stack)
    expect(page.locator("#chart-scores .ytick text", has_text="Shqipëria")).to_have_count(1, timeout=LIVE_UPDATE_MS)
    expect(page.locator("#chart-learning-hours .ytick text", has_text="Shqipëria")).to_have_count(1)


def test_the_variable_explorer_shows_a_decoded_weighted_distribution(page, live_stack):
    open_dashboard(page, live_stack, "?countries=ALB,ARG")
    page.fill("#variable-search", "gender")
    page.locator("#variable-results button[data-variable=ST004D01T]").click()
    expect(page).to_have_url(re.compile(r"variable=ST004D01T"))
    expect(page.locator("#variable-title")).to_contain_text("ST004D01T")
    page.wait_for_function("() => (document.getElementById('chart-variable').data || []).length === 2")
    categories = page.evaluate("document.getElementById('chart-variable').data.map((t) => t.x)")
    assert categories == [["Female", "Male"], ["Female", "Male"]]  # codes 1 and 2, decoded by the codebook
    percents = page.evaluate("document.getElementById('chart-variable').data.map((t) => t.y[0] + t.y[1])")
    assert percents == [pytest.approx(100), pytest.approx(100)]
    assert plotted_countries(page, "chart-variable") == ["ALB", "ARG"]

    page.fill("#variable-search", "ESCS")
    page.locator("#variable-results button[data-variable=ESCS]").click()
    page.wait_for_function("() => document.getElementById('chart-variable').data[0].type === 'scatter'")
    assert plotted_countries(page, "chart-variable") == ["ALB", "ARG"]


def test_the_page_fits_a_phone_screen(browser, live_stack):
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
    phone = context.new_page()
    open_dashboard(phone, live_stack)
    phone.wait_for_function("() => (document.getElementById('chart-scores').data || []).length > 0")
    assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    phone.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
    context.close()


def test_a_country_whose_refresh_fails_shows_its_last_figures_with_a_banner_until_healed(page, live_stack):
    import psycopg2
    from django.db import connection

    from ingestion.layout import ANALYSIS_COLUMNS
    from ingestion.models import Student, StudentChange

    open_dashboard(page, live_stack, "?countries=ALB,ARG")
    expect(page.locator("#banner")).to_be_hidden()
    # A damaged warehouse copy: the analysis columns say W_FSTUWT = -5 while the stored line is plausible, so the
    # refresh can neither fold it nor rebuild around it, and the recheck of the stored line finds nothing to move.
    columns = ", ".join(c for c in ANALYSIS_COLUMNS if c != "w_fstuwt")
    student, change = Student._meta.db_table, StudentChange._meta.db_table
    db = connection.settings_dict
    # Committed where the stack sees it (this test's own connection is inside a transaction that is rolled back).
    writer = psycopg2.connect(dbname=db["NAME"], host=db["HOST"], port=db["PORT"], user=db["USER"],
                              password=db["PASSWORD"] or None)
    writer.autocommit = True
    with writer.cursor() as cursor:
        cursor.execute(f"""
            INSERT INTO {student} (source_id, country, cntstuid, cntschid, source_row_id, source_created_at, raw,
                                   raw_md5, loaded_at, w_fstuwt, {columns})
            SELECT source_id, country, 999000001, cntschid, 999000001, source_created_at, raw, raw_md5, now(), -5,
                   {columns} FROM {student} WHERE country = 'ALB' LIMIT 1""")
        cursor.execute(f"""
            INSERT INTO {change} (sign, recorded_at, country, cntschid, source_created_at, w_fstuwt, {columns})
            SELECT 1, now() - interval '1 hour', country, cntschid, source_created_at, w_fstuwt, {columns}
            FROM {student} WHERE cntstuid = 999000001""")
    banner = page.locator("#banner")
    try:
        # The overdue sweep (every 5 s) finds the change waiting and refreshes ALB, which fails.
        expect(banner).to_contain_text("ALB shows its figures of", timeout=30000)
        expect(banner).to_contain_text("weights must be finite")
        expect(page.locator("#submissions-count")).not_to_have_attribute("data-value", "")
    finally:
        with writer.cursor() as cursor:
            cursor.execute(f"DELETE FROM {student} WHERE cntstuid = 999000001")
        writer.close()
    expect(banner).to_be_hidden(timeout=30000)  # the sweep retries; the refresh rebuilds ALB without the row


def downloaded(page, selector: str):
    """The CSV a click on `selector` downloads, read by pandas as an analyst would."""
    import io

    import pandas as pd

    with page.expect_download() as download:
        page.click(selector)
    return pd.read_csv(io.BytesIO(open(download.value.path(), "rb").read()), keep_default_na=False, na_values=[""])


def test_the_explore_panel_draws_an_analysis_live_from_its_shareable_url_with_a_csv(page, live_stack):
    import json
    import urllib.request

    open_dashboard(page, live_stack, "?countries=ALB,ARG&a_stat=mean&a_target=READ&a_by=ST004D01T")
    expect(page.locator("#explore-target")).to_have_value("READ")
    page.wait_for_function("() => (document.getElementById('chart-explore').data || []).length > 0")
    assert plotted_countries(page, "chart-explore") == ["ALB", "ARG"]
    with urllib.request.urlopen(f"{live_stack.url}/api/v1/analyses/?statistic=mean&target=READ&by=ST004D01T"
                                "&countries=ALB,ARG") as response:
        answer = json.load(response)
    drawn = page.evaluate("""() => document.getElementById('chart-explore').data.map(
        (trace) => ({name: trace.name, codes: trace.customdata, y: trace.y}))""")
    groups = answer["breakdown"][0]["groups"]
    assert [trace["name"] for trace in drawn] == [group["label"] for group in groups]  # one trace per gender
    for k, trace in enumerate(drawn):
        for code, value in zip(trace["codes"], trace["y"]):
            assert value == pytest.approx(answer["countries"][code]["cells"][k]["figures"]["mean"]["value"])

    # Live: new responses reach the panel's figures as they reach the other charts.
    note = page.locator("#explore-note")
    before = int(note.get_attribute("data-students"))
    live_stack.sources["ALB"].insert_students(7)
    expect(note).to_have_attribute("data-students", str(before + 7), timeout=UPDATE_GIVE_UP_MS)

    # Another question, asked in the form, goes into the URL (shareable) and is drawn.
    page.select_option("#explore-statistic", "percent")
    page.fill("#explore-target", "ST004D01T")
    page.fill("#explore-by", "")
    page.click("#explore-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"a_stat=percent&a_target=ST004D01T"))
    expect(page.locator("#explore-figure option")).to_have_count(len(groups))
    page.wait_for_function("() => document.getElementById('chart-explore').data.length === 1")

    # Its CSV downloads from the panel and reads as-is with pandas.
    table = downloaded(page, "#explore-csv")
    estimates = table[table["kind"] == "estimate"]
    assert set(estimates["country"]) == {"ALB", "ARG"}
    assert estimates.groupby("country")["estimate"].sum().round(6).tolist() == [100.0, 100.0]


# Chromium stops a tab's downloads after about ten quick ones (the 11th never starts), so each test clicks fewer.
def test_every_chart_downloads_its_own_data_as_a_csv_pandas_reads(page, live_stack):
    open_dashboard(page, live_stack, "?countries=ALB,ARG&domain=MATH")
    page.wait_for_function("() => (document.getElementById('chart-gender-gap').data || []).length > 0")
    links = page.locator("a.csv-link[data-figures]")
    expect(links).to_have_count(9)  # every chart of the metrics document, the counter included
    for k in range(links.count()):
        asked = links.nth(k).get_attribute("data-figures").replace("{domain}", "MATH").split(",")
        table = downloaded(page, f"a.csv-link[data-figures] >> nth={k}")
        assert set(table["country"]) <= {"ALB", "ARG", "AVERAGE"} and {"ALB", "ARG"} <= set(table["country"])
        assert all(any(name == f or name.startswith(f + ".") for f in asked) for name in table["figure"]), asked


def test_a_chart_csv_holds_what_it_draws_and_the_explorer_downloads_its_distribution(page, live_stack):
    open_dashboard(page, live_stack, "?countries=ALB,ARG&domain=MATH")
    page.wait_for_function("() => (document.getElementById('chart-gender-gap').data || []).length > 0")
    # The gender-gap chart's CSV holds exactly the figures it draws, for the domain shown.
    drawn = page.evaluate("""() => { const trace = document.getElementById('chart-gender-gap').data[0];
        return Object.fromEntries(trace.customdata.map((code, i) => [code, trace.x[i]])); }""")
    table = downloaded(page, "#gap-title + a.csv-link")
    gaps = table[table["kind"] == "estimate"].set_index("country")
    assert set(gaps["figure"]) == {"scores.MATH.gender_gap"}
    for code, value in drawn.items():
        assert gaps.loc[code, "estimate"] == pytest.approx(value, rel=1e-12)

    # The variable explorer's CSV: the distribution drawn, as the same table.
    page.fill("#variable-search", "ST004D01T")
    page.click("#variable-results button[data-variable=ST004D01T]")
    expect(page.locator("#variable-csv")).to_be_visible(timeout=UPDATE_GIVE_UP_MS)
    table = downloaded(page, "#variable-csv")
    shares = table[table["kind"] == "estimate"].groupby("country")["estimate"].sum()
    assert shares.round(6).to_dict() == {"ALB": 100.0, "ARG": 100.0}


def test_stopping_the_api_shows_the_banner(page, live_stack):
    open_dashboard(page, live_stack)
    expect(page.locator("#banner")).to_be_hidden()
    command_lines = {p: " ".join(p.cmdline()) for p in psutil.Process(live_stack.process.pid).children(recursive=True)}
    web = [p for p, line in command_lines.items() if "granian" in line or "gunicorn" in line]  # the API and its stream
    assert any("granian" in command_lines[p] for p in web), "no granian process in the stack"
    for process in web:
        process.send_signal(signal.SIGKILL)
    banner = page.locator("#banner")
    expect(banner).to_be_visible(timeout=10000)
    expect(banner).to_contain_text("cannot be reached")
    expect(page.locator("#submissions-count")).not_to_have_attribute("data-value", "")  # the last figures stay
