"""The desk in a real browser: Playwright drives Debian's chromium against ``run.py`` replaying a
real NIFTY day. Screenshots of each state go to ``test-artifacts/`` (git-ignored).

History mode is tested here too, on the same running system (one ``run.py`` start for the
module), before the API is killed: the replayed day is picked in the History control and
replayed on the page; its candles must be the DuckDB ``candles_1m`` rows of that day (read
through ``POST /api/sql``), its POC line the engine's (the batch path on the vendor file's
ticks) and its signal marked; Back to live restores the live view."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from api.history import ist_day_bounds
from data_handling.replay import ReplaySource
from tests.system_harness import ROOT, System
from tests.test_system import DAY, DAY_FILE, source_bars
from trading_core.profile_batch import compute_profiles

CHROMIUM = os.environ.get("AMT_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
KEY = "NSE_INDEX|Nifty 50"

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"browser tests need Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    pytest.skip(f"no chromium at {CHROMIUM}: apt-get install chromium to run the browser tests",
                allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def replayed_day(tmp_path_factory):
    """``run.py`` replaying one real day at full speed, finished, still serving the page."""
    tmp = tmp_path_factory.mktemp("browser")
    system = System(tmp, "--replay", str(DAY_FILE), "--date", DAY, "--speed", "0")
    try:
        system.wait(lambda h: h.get("ingestor", {}).get("status") == "finished", 90, "the replay")
        system.wait(lambda h: h.get("strategy_manager", {}).get("status") == "ready", 30, "strategies")
        yield system
    finally:
        if system.proc.poll() is None:
            system.terminate()
        system.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def open_desk(browser, system):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
    page.goto(f"http://127.0.0.1:{system.port}/?instrument={KEY}")
    page.wait_for_function("() => window.amt && window.amt.state.connected", timeout=15_000)
    return page, errors


def test_the_desk_shows_the_day_as_the_engine_and_the_strategies_saw_it(replayed_day, browser):
    page, errors = open_desk(browser, replayed_day)
    bars = source_bars(DAY_FILE, DAY)
    page.wait_for_function(f"() => window.amt.series.data().length >= {len(bars)}", timeout=15_000)
    drawn = page.evaluate("() => window.amt.series.data().map(b => [b.time, b.open, b.high, b.low, b.close])")
    ist_offset_s = 19800  # the page shifts chart times so the axis reads IST
    assert {(t - ist_offset_s) * 1000: (o, h, l, c) for t, o, h, l, c in drawn} == bars

    # Profile levels on the page are the engine's, computed here by the batch path from the same ticks.
    ticks = ReplaySource(DAY_FILE, dates=[DAY]).frame()
    [expected] = compute_profiles(ticks.rename({"ltp": "price", "ltq": "qty"}).select("ts", "price", "qty"),
                                  instrument_key=KEY)
    page.wait_for_function(f"() => window.amt.state.profiles.get('{KEY}')", timeout=10_000)
    shown = page.evaluate(f"() => window.amt.state.profiles.get('{KEY}')")
    assert (shown["poc"], shown["vah"], shown["val"]) == (expected.poc, expected.vah, expected.val)
    lines = page.evaluate("() => window.amt.priceLines()")
    assert {"POC": expected.poc, "VAH": expected.vah, "VAL": expected.val}.items() <= lines.items()

    # The TPO panel: letters per row rebuilt from the periods reproduce the engine's TPO counts,
    # and the POC row is the engine's POC.
    page.wait_for_function("() => document.querySelectorAll('#tpo-body .tpo-row').length > 5", timeout=10_000)
    rows = page.evaluate("""() => Array.from(document.querySelectorAll('#tpo-body .tpo-row')).map(r => [
        Number(r.dataset.price), r.querySelector('.letters').textContent, r.classList.contains('poc')])""")
    counts = {round(price, 2): len(letters) for price, letters, _ in rows}
    row_low, size = shown["row_low"], shown["row_size"]
    assert counts == {round(row_low + i * size, 2): n for i, n in enumerate(shown["tpo"])}
    assert [price for price, _, poc in rows if poc] == [expected.poc]
    assert "A" in rows[-1][1] or "A" in "".join(letters for _, letters, _ in rows)

    # The strategy's signal is in the table and marked on the chart.
    page.wait_for_function("() => window.amt.markers.markers().length > 0", timeout=10_000)
    marker = page.evaluate("() => window.amt.markers.markers()[0]")
    assert marker["position"] in ("belowBar", "aboveBar")
    assert page.locator("#signals-body tr:not(.empty)").count() >= 1
    assert "ib_breakout_nifty" in page.locator("#signals-body").inner_text()
    page.wait_for_function("() => document.querySelector('#health-strip').textContent.includes('ticks/s')",
                           timeout=10_000)
    assert "DuckDB" in page.locator("#health-strip").inner_text()
    shot(page, "desk-replayed-day")

    # 5-minute candles aggregate the 1-minute ones in buckets aligned to the 09:15 IST open.
    page.click("#timeframes button[data-tf='5']")
    five = {}
    for open_ms, (o, h, l, c) in sorted(bars.items()):
        t = open_ms // 1000 + ist_offset_s
        minute = (t % 86400) // 60
        bucket = t - ((minute - 555) % 5) * 60
        if bucket in five:
            fo, fh, fl, _ = five[bucket]
            five[bucket] = (fo, max(fh, h), min(fl, l), c)
        else:
            five[bucket] = (o, h, l, c)
    drawn5 = page.evaluate("() => window.amt.series.data().map(b => [b.time, b.open, b.high, b.low, b.close])")
    assert {t: (o, h, l, c) for t, o, h, l, c in drawn5} == five
    assert any(((t % 86400) // 60) == 555 for t in five), "a bucket starts at 09:15 IST"
    shot(page, "desk-5-minute")
    page.click("#timeframes button[data-tf='1']")
    assert errors == []
    page.close()


IST_OFFSET_S = 19800      # the page shifts chart times so the axis reads IST


def test_a_recorded_day_replays_on_the_page_and_back_to_live_restores_the_live_view(replayed_day, browser):
    page, errors = open_desk(browser, replayed_day)
    page.wait_for_function("() => window.amt.series.data().length > 300", timeout=15_000)
    page.wait_for_function("() => window.amt.markers.markers().length > 0", timeout=10_000)
    live_bars = page.evaluate("() => window.amt.series.data().length")
    assert page.locator("#conn-text").inner_text() == "live"

    # The History control lists the replayed day and its instrument.
    page.click("#history-open")
    page.wait_for_function(f"() => Array.from(document.querySelectorAll('#history-date option')).some(o => o.value === '{DAY}')",
                           timeout=15_000)
    page.select_option("#history-date", DAY)
    option = page.evaluate(f"""() => Array.from(document.querySelectorAll('#history-instrument option'))
                                        .find(o => o.dataset.key === '{KEY}').value""")
    page.select_option("#history-instrument", option)

    # At 300x the day starts to play: the header says HISTORY, the live chart data is held back.
    page.select_option("#history-speed", "300")
    page.click("#history-play")
    page.wait_for_function("() => window.amt.state.history && window.amt.series.data().length >= 3", timeout=20_000)
    page.click("#history-pause")
    page.wait_for_function("() => window.amtHistory.state.status === 'paused'", timeout=10_000)
    assert page.locator("#conn-text").inner_text() == f"HISTORY {DAY} ×300"
    partial = page.evaluate("() => window.amt.series.data().length")
    assert 3 <= partial < live_bars

    # Flat out to the end of the day (speed changed while paused, then resumed).
    page.select_option("#history-speed", "0")
    page.click("#history-play")
    page.wait_for_function("() => window.amtHistory.state.status === 'finished'", timeout=30_000)
    assert page.locator("#conn-text").inner_text() == f"HISTORY {DAY} ×max"

    lo, hi = ist_day_bounds(DAY)
    rows = replayed_day.sql("SELECT ts, open, high, low, close FROM candles_1m WHERE instrument_key = ? "
                             "AND ts >= ? AND ts < ? ORDER BY ts", [KEY, lo, hi])
    drawn = page.evaluate("() => window.amt.series.data().map(b => [b.time, b.open, b.high, b.low, b.close])")
    assert len(drawn) == len(rows) > 370
    assert [[(t - IST_OFFSET_S) * 1000, o, h, low, c] for t, o, h, low, c in drawn] == rows

    ticks = ReplaySource(DAY_FILE, dates=[DAY]).frame()
    [expected] = compute_profiles(ticks.rename({"ltp": "price", "ltq": "qty"}).select("ts", "price", "qty"),
                                  instrument_key=KEY)
    lines = page.evaluate("() => window.amt.priceLines()")
    assert (lines["POC"], lines["VAH"], lines["VAL"]) == (expected.poc, expected.vah, expected.val)
    assert float(page.locator("#tpo-body .tpo-row.poc").get_attribute("data-price")) == expected.poc

    signals = replayed_day.sql("SELECT strategy, ts FROM signals WHERE instrument_key = ? AND ts >= ? AND ts < ? "
                                "ORDER BY ts", [KEY, lo, hi])
    assert signals, "the replayed day's ib_breakout signal is recorded"
    markers = page.evaluate("() => window.amt.markers.markers().map(m => m.time)")
    assert markers == [(ts // 60_000) * 60 + IST_OFFSET_S for _, ts in signals]
    assert page.locator("#signals-body tr:not(.empty)").count() == len(signals)
    shot(page, "desk-history")

    # Back to live: the live bars, header and instruments come back, and a fresh snapshot is asked for.
    assert page.locator("#instrument option").count() == 1          # the replayed instrument only
    page.evaluate("""() => { window.__sent = []; const send = WebSocket.prototype.send;
                             WebSocket.prototype.send = function (d) { window.__sent.push(String(d)); return send.call(this, d); }; }""")
    page.click("#history-live")
    page.wait_for_function("() => !window.amt.state.history", timeout=10_000)
    page.wait_for_function(f"() => window.amt.series.data().length === {live_bars}", timeout=15_000)
    assert page.locator("#conn-text").inner_text() == "live"
    assert page.evaluate("() => window.amtHistory.state.status") == "live"
    assert '{"snapshot":true}' in page.evaluate("() => window.__sent")
    assert page.locator("#instrument option").count() >= 2          # the live watchlist again
    assert errors == []
    page.close()


def test_the_restart_button_restarts_that_strategy_only(replayed_day, browser):
    page, errors = open_desk(browser, replayed_day)
    page.on("dialog", lambda dialog: dialog.accept())            # the button's confirm()
    before = replayed_day.health()["strategy_manager"]["details"]["strategies"]
    target = "ib_breakout_nifty"
    others = {name: s["pid"] for name, s in before.items() if name != target}
    row = page.locator(f"#strategies-body tr[data-strategy='{target}']")
    row.wait_for(timeout=10_000)
    assert row.locator("td").nth(3).inner_text() == str(before[target]["pid"])
    row.get_by_role("button", name="Restart").click()
    # The panel shows the new pid once the manager reports it; the others keep theirs.
    page.wait_for_function(f"""() => {{ const r = document.querySelector("#strategies-body tr[data-strategy='{target}']");
                                      return r && r.cells[3].textContent !== '{before[target]['pid']}'
                                             && r.cells[3].textContent !== '—' && r.cells[5].textContent === '1'; }}""",
                           timeout=30_000)
    after = replayed_day.health()["strategy_manager"]["details"]["strategies"]
    assert after[target]["pid"] != before[target]["pid"] and after[target]["restarts"] == 1
    assert int(row.locator("td").nth(3).inner_text()) == after[target]["pid"]
    assert {name: after[name]["pid"] for name in others} == others
    assert "restart ib_breakout_nifty" in page.locator("#strategies-note").inner_text()
    page.locator(".strategies-panel").screenshot(path=str(ARTIFACTS / "desk-strategy-restarted.png"))
    assert errors == []
    page.close()


FIREFOX = os.environ.get("AMT_FIREFOX", "/usr/bin/firefox-esr")
FIREFOX_DRIVER = ROOT / "tests" / "firefox"


def test_the_desk_in_firefox(replayed_day):
    """The same page in Debian's Firefox ESR (driven by puppeteer-core over WebDriver BiDi, since
    Playwright drives only its own patched Firefox build): the day's candles, the engine's levels,
    the TPO profile, a signal marker and the health strip, with no console errors."""
    if not Path(FIREFOX).exists() or not (FIREFOX_DRIVER / "node_modules" / "puppeteer-core").is_dir():
        if os.environ.get("CI"):
            raise RuntimeError(f"the Firefox test needs {FIREFOX} (apt-get install firefox-esr) and "
                               "npm ci --prefix tests/firefox")
        pytest.skip("apt-get install firefox-esr and npm ci --prefix tests/firefox to run the Firefox test")
    import json
    import subprocess
    bars = source_bars(DAY_FILE, DAY)
    ARTIFACTS.mkdir(exist_ok=True)
    proc = subprocess.run(["node", str(FIREFOX_DRIVER / "desk_check.mjs"),
                           f"http://127.0.0.1:{replayed_day.port}/?instrument={KEY}", str(len(bars)),
                           str(ARTIFACTS / "desk-firefox.png")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "AMT_FIREFOX": FIREFOX})
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "Firefox/" in seen["userAgent"]
    assert {(t - IST_OFFSET_S) * 1000: (o, h, l, c) for t, o, h, l, c in seen["bars"]} == bars
    ticks = ReplaySource(DAY_FILE, dates=[DAY]).frame()
    [expected] = compute_profiles(ticks.rename({"ltp": "price", "ltq": "qty"}).select("ts", "price", "qty"),
                                  instrument_key=KEY)
    assert (seen["lines"]["POC"], seen["lines"]["VAH"], seen["lines"]["VAL"]) == (expected.poc, expected.vah,
                                                                                  expected.val)
    assert seen["pocRow"] == expected.poc and seen["tpoRows"] > 5 and seen["markers"] >= 1
    assert "DuckDB" in seen["health"]
    assert seen["errors"] == []


def test_the_page_recovers_after_the_api_server_is_killed(replayed_day, browser):
    page, errors = open_desk(browser, replayed_day)
    page.wait_for_function("() => window.amt.series.data().length > 300", timeout=15_000)
    before = page.evaluate("() => window.amt.state.connectedAt")
    api_pid = replayed_day.health()["api"]["pid"]
    os.kill(api_pid, signal.SIGKILL)
    page.wait_for_function("() => !window.amt.state.connected", timeout=10_000)
    shot(page, "desk-connection-lost")
    page.wait_for_function(f"() => window.amt.state.connected && window.amt.state.connectedAt > {before}",
                           timeout=30_000)
    replayed_day.wait(lambda h: h.get("api", {}).get("pid") not in (None, api_pid), 30, "a new API server")
    # The restarted server starts empty; the page keeps the day it already had.
    assert page.evaluate("() => window.amt.series.data().length") > 300
    shot(page, "desk-reconnected")
    page_errors = [e for e in errors if "WebSocket" not in e and "ERR_CONNECTION_REFUSED" not in e]
    assert page_errors == []
    page.close()
