"""History mode in a real browser (Playwright on Debian's chromium, as ``tests/test_browser.py``,
whose ``run.py`` fixture and helpers this reuses): the day the system replayed is picked in the
History control and replayed on the page; the chart's candles are the DuckDB ``candles_1m`` rows
of that day (read through ``POST /api/sql``), the POC line is the engine's (the batch path on the
vendor file's ticks), the recorded signal is marked; Back to live restores the live view.
Screenshot: ``test-artifacts/desk-history.png``."""

from __future__ import annotations

import httpx

from api.history import ist_day_bounds
from data_handling.replay import ReplaySource
from tests.test_browser import DAY, DAY_FILE, KEY, browser, open_desk, replayed_day, shot  # noqa: F401 (fixtures)
from trading_core.profile_batch import compute_profiles

IST_OFFSET_S = 19800      # the page shifts chart times so the axis reads IST


def sql(system, query: str, params: list) -> list[list]:
    r = httpx.post(f"http://127.0.0.1:{system.port}/api/sql", json={"sql": query, "params": params}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["rows"]


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
    rows = sql(replayed_day, "SELECT ts, open, high, low, close FROM candles_1m WHERE instrument_key = ? "
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

    signals = sql(replayed_day, "SELECT strategy, ts FROM signals WHERE instrument_key = ? AND ts >= ? AND ts < ? "
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
