"""Option premium charts and the per-service bus rates, on real contracts of 2022-11-18.

``run.py`` replays the NIFTY near-month future and three NIFTY weekly options near the money
(``--instrument``) at full speed; Playwright drives Debian's chromium (as ``tests/test_browser.py``)
at a laptop's 1366x768. The option panel must draw exactly the 1-minute candles DuckDB recorded
for each option (and the source ticks bucketed by minute), pick the at-the-money CE and PE by
default, ask the server for only the instruments it shows, and the health strip must show every
service's bus frames per second. Screenshot: ``test-artifacts/desk-options.png``.

Also, without a browser: :func:`data_handling.instruments.classify` on every contract of the day.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest

from data_handling.instruments import classify, tick_file_key
from data_handling.replay import ReplaySource
from tests.conftest import FO_TICKS
from tests.system_harness import ROOT, System

CHROMIUM = os.environ.get("AMT_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
FUTURE = "NSE_FO|NIFTY-I"
CE, PE, CE_UP = "NSE_FO|NIFTY22112418300CE", "NSE_FO|NIFTY22112418300PE", "NSE_FO|NIFTY22112418400CE"
OPTIONS = [CE, PE, CE_UP]
IST_OFFSET_S = 19800     # the page shifts chart times so the axis reads IST


# --- classification of the day's real contract names (no browser) ------------------------------

def test_every_contract_of_the_day_is_classified_from_its_name():
    files = sorted(FO_TICKS.rglob("*.csv"))
    assert len(files) == 1381
    kinds = {}
    for f in files:
        info = classify(tick_file_key(f))
        kinds[info.kind] = kinds.get(info.kind, 0) + 1
        if f.parent.name == "Options":
            # the name rebuilt from the parts is the file's: underlying, yymmdd, strike, side
            strike = f"{info.strike:g}" if not info.strike.is_integer() else str(int(info.strike))
            assert f.stem == f"{info.underlying}{info.expiry:%y%m%d}{strike}{info.right}", f
        else:
            assert info.kind == "future" and f.stem.startswith(info.underlying), f
    assert kinds == {"option": 1372, "future": 9}


@pytest.mark.parametrize("key, kind, under, expiry, strike, right", [
    ("NSE_FO|NIFTY22N2418000CE", "option", "NIFTY", "2022-11-24", 18000.0, "CE"),      # NSE weekly
    ("NSE_FO|NIFTY22NOV18000PE", "option", "NIFTY", None, 18000.0, "PE"),             # NSE monthly
    ("NSE_FO|NIFTY24122624000CE", "option", "NIFTY", "2024-12-26", 24000.0, "CE"),     # canonical
    ("NSE_FO|NIFTYNXT5024122624000CE", "option", "NIFTYNXT50", "2024-12-26", 24000.0, "CE"),
    ("NSE_FO|NIFTY24DECFUT", "future", "NIFTY", None, None, ""),
    ("NSE_FO|BANKNIFTY_F1", "future", "BANKNIFTY", None, None, ""),
    ("NSE_INDEX|Nifty Bank", "index", "BANKNIFTY", None, None, ""),
    ("NSE_EQ|RELIANCE", "equity", "", None, None, ""),
    ("NSE_FO|43885", "other", "", None, None, ""),                                   # needs the master
])
def test_classify_reads_each_naming_form(key, kind, under, expiry, strike, right):
    info = classify(key).as_json()
    assert (info["kind"], info["underlying"], info["expiry"], info["strike"], info["right"]) == \
        (kind, under, expiry, strike, right)


def test_classify_rejects_a_non_string():
    with pytest.raises(ValueError, match="instrument key must be a string"):
        classify(None)  # type: ignore[arg-type]


# --- the desk ------------------------------------------------------------------------------

def _browser_or_skip():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            raise RuntimeError(f"browser tests need Debian's chromium at {CHROMIUM} (apt-get install chromium)")
        pytest.skip(f"no chromium at {CHROMIUM}: apt-get install chromium to run the browser tests")
    return pytest.importorskip("playwright.sync_api")


def test_option_panel_draws_the_recorded_candles_and_the_strip_shows_bus_rates(tmp_path):
    sync_api = _browser_or_skip()
    args = ["--replay", str(FO_TICKS), "--speed", "0"]
    for key in [FUTURE, *OPTIONS]:
        args += ["--instrument", key]
    system = System(tmp_path, *args)
    try:
        system.wait(lambda h: h.get("ingestor", {}).get("status") == "finished", 120, "the replay")
        health = system.wait(lambda h: h if all("bus_out_per_s" in s.get("details", {}) for s in h.values())
                             and len(h) >= 6 else None, 30, "bus rates in every service's health")
        ing = health["ingestor"]["details"]
        # the ingestor's count is its feed client's (ticks, candles, profiles) plus its health reports
        assert ing["bus_out"] >= ing["ticks_published"] + ing["candles"] > 60_000
        assert ing["candles"] > 1000
        # The API takes every candle; its health report may predate the last of them (at --speed 0
        # the replay ends within a report interval), so wait for a report that counts them all.
        system.wait(lambda h: h.get("api", {}).get("details", {}).get("bus_in", 0) >= ing["candles"], 30,
                    f"the API's bus_in to reach the ingestor's {ing['candles']:,} candles")

        # DuckDB's 1-minute candles of each option, and the source ticks bucketed by minute
        recorded = {}
        for key in OPTIONS:
            rows = system.sql("SELECT ts, open, high, low, close FROM candles_1m "
                               "WHERE instrument_key = ? ORDER BY ts", [key])
            recorded[key] = {ts // 1000 + IST_OFFSET_S: (o, h, lo, c) for ts, o, h, lo, c in rows}
            ticks = ReplaySource(FO_TICKS, instruments=[key]).frame()
            minutes = ticks.select((pl.col("ts") // 60_000).n_unique()).item()
            assert len(recorded[key]) == minutes > 300, key

        frames_in: list[dict] = []
        frames_out: list[dict] = []
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page(viewport={"width": 1366, "height": 768})
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
                page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

                def on_ws(ws) -> None:
                    ws.on("framereceived", lambda payload: frames_in.append(json.loads(payload)))
                    ws.on("framesent", lambda payload: frames_out.append(json.loads(payload)))
                page.on("websocket", on_ws)
                page.goto(f"http://127.0.0.1:{system.port}/?instrument={FUTURE}")

                # By default: the CE and PE at the strike nearest the future's last price (18,345).
                page.wait_for_function("() => window.amt && window.amt.options && "
                                       "window.amt.options.shown.length === 2", timeout=20_000)
                assert page.evaluate("() => window.amt.options.shown") == [CE, PE]
                assert sorted(page.evaluate("() => window.amt.options.available")) == sorted(OPTIONS)

                # Pick the 18400 CE as well, from the panel's list.
                page.click("#options-pick summary")
                page.fill("#options-filter", "18400 CE")
                page.check(f"#options-checks input[value='{CE_UP}']")
                page.click("#options-pick summary")
                for key in OPTIONS:
                    page.wait_for_function(f"() => (window.amt.options.data('{key}') || []).length === "
                                           f"{len(recorded[key])}", timeout=20_000)
                    drawn = page.evaluate(f"() => window.amt.options.data('{key}')"
                                          ".map(b => [b.time, b.open, b.high, b.low, b.close])")
                    assert {t: (o, h, lo, c) for t, o, h, lo, c in drawn} == recorded[key], key
                    card = page.locator(f".opt-card[data-key='{key}']")
                    last_close = recorded[key][max(recorded[key])][3]
                    assert card.locator(".opt-ltp").inner_text() == f"{last_close:,.2f}"
                    assert card.locator(".opt-oi").inner_text().startswith("OI ")

                # The server sends this page only what it shows: the last subscribe names the chart's
                # instrument and the three options, and the snapshot answering it holds exactly those.
                wanted = sorted([FUTURE, *OPTIONS])
                assert page.evaluate("() => window.amt.subscribed") == wanted
                subscribes = [f["subscribe"] for f in frames_out if "subscribe" in f]
                assert subscribes and subscribes[-1] == wanted
                for _ in range(100):                     # the snapshot answering it (polled, 10 s at most)
                    snaps = [f for f in frames_in if f.get("type") == "snapshot" and f.get("filter") == wanted]
                    if snaps:
                        break
                    page.wait_for_timeout(100)
                assert snaps, "a snapshot filtered to the shown instruments"
                assert set(snaps[-1]["candles"]) == set(wanted)
                assert "NSE_INDEX|Nifty 50" in snaps[-1]["instruments"]     # the list still names them all

                # Every service's pill in the health strip shows its bus rates.
                services = set(system.health())
                page.wait_for_function(f"() => document.querySelectorAll('#health-strip .svc .bus').length "
                                       f">= {len(services)}", timeout=10_000)
                pills = page.evaluate("""() => Array.from(document.querySelectorAll('#health-strip .svc')).map(
                    el => [el.querySelector('.name').textContent, el.querySelector('.bus').textContent,
                           Number(el.querySelector('.bus').dataset.out), Number(el.querySelector('.bus').dataset.in)])""")
                assert {name for name, *_ in pills} >= services
                for name, text, out, inn in pills:
                    assert text.startswith("↑") and "↓" in text and out >= 0 and inn >= 0, name

                # Readable on a laptop: the panel sits inside the window beside a chart still wide enough.
                panel = page.locator("#options-panel").bounding_box()
                chart = page.locator("#chart").bounding_box()
                assert panel["x"] + panel["width"] <= 1366 and chart["width"] >= 600
                page.locator(".chart-panel").scroll_into_view_if_needed()
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "desk-options.png"))

                # Under the chart instead, with the toggle; the charts keep their bars.
                page.click("#options-toggle")
                page.wait_for_function("() => document.querySelector('.chart-row').classList.contains('opts-below')")
                below = page.locator("#options-panel").bounding_box()
                assert below["y"] >= page.locator("#chart").bounding_box()["y"] + 100
                assert page.evaluate(f"() => window.amt.options.data('{CE}').length") == len(recorded[CE])
                assert errors == []
            finally:
                browser.close()
        system.terminate(timeout=30)
    finally:
        system.close()
