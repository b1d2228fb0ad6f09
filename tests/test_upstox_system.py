"""``python3 run.py`` on the fake Upstox (tests/fake_upstox.py) exactly as on Upstox: only the
token and ``UPSTOX_BASE_URL`` point it there. Ticks of every mode reach DuckDB field by field, a
dropped connection is re-established and re-subscribed, the gap is backfilled and flagged, the
market status reaches the browser, and the access token leaks nowhere; a rejected token stops
the desk with exit code 2 and one line."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import threading
import time
from pathlib import Path

import duckdb

from data_handling.upstox_backfill import gap_minutes
from data_handling.upstox_feed import fmt_ist
from tests.fake_upstox import (BANK_KEY, EQUITY_KEY, FUT_KEY, NIFTY_KEY, FakeUpstox, expected_ltq,
                               sent_feeds)
from tests.system_harness import System
from tests.test_system import collect_ws
from trading_core import messages as m
from trading_core.bus import BusClient

CONFIG = '''WATCHLIST = ["NSE_INDEX|Nifty 50", "Nifty Bank", "NIFTY22NOVFUT", "NIFTY22NOV18400CE", "RELIANCE"]
UPSTOX_MODE = "full"
UPSTOX_MODES = {"Nifty Bank": "ltpc", "NIFTY22NOV18400CE": "option_greeks", "RELIANCE": "full_d30"}
'''
COLUMNS = ("instrument_key, ts, ltp, ltq, oi, seq, source, backfilled, feed_ts, mode, cp, vtt, atp, tbq, tsq, "
           "bid, bid_qty, ask, ask_qty, iv, delta, theta, gamma, vega, rho, depth, ohlc")
CHROMIUM = Path("/usr/bin/chromium")
NULL_UNLESS_SENT = ("vtt", "atp", "tbq", "tsq", "bid", "bid_qty", "ask", "ask_qty", "iv", "delta", "theta",
                    "gamma", "vega", "rho")


def start(tmp_path: Path, fake: FakeUpstox, token: str) -> System:
    cfg = tmp_path / "config.py"
    cfg.write_text(CONFIG)
    return System(tmp_path, "--config", str(cfg),
                  env={"UPSTOX_ACCESS_TOKEN": token, "UPSTOX_BASE_URL": fake.base_url,
                       "UPSTOX_INSTRUMENTS_CACHE": str(tmp_path / "instruments")})


def listen(system: System, prefix: str, into: list, stop: threading.Event) -> None:
    """Collect the bus messages under ``prefix`` of a running system."""
    args = system.proc.args
    bus = BusClient(args[args.index("--bus-pub") + 1], args[args.index("--bus-sub") + 1], [prefix])
    try:
        while not stop.is_set():
            got = bus.recv(200)
            if got is not None:
                into.append(got)
    finally:
        bus.close()


def market_on_the_page(port: int, instrument: str) -> str:
    """The header's market status as Debian's chromium shows it (Playwright)."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/?instrument={instrument}")
            page.wait_for_function("() => !document.getElementById('market-row').hidden", timeout=20_000)
            return page.inner_text("#market-status")
        finally:
            browser.close()


def upstox(h: dict) -> dict:
    return h.get("ingestor", {}).get("details", {}).get("upstox", {})


def test_run_py_on_the_fake_live_feed(tmp_path):
    token = "upx-" + secrets.token_hex(24)
    with FakeUpstox(token=token) as fake:
        canon = {NIFTY_KEY: NIFTY_KEY, BANK_KEY: BANK_KEY, FUT_KEY: "NSE_FO|NIFTY22NOVFUT",
                 fake.option_key: "NSE_FO|NIFTY22112418400CE", EQUITY_KEY: "NSE_EQ|RELIANCE"}
        system = start(tmp_path, fake, token)
        received: list = []
        stop = threading.Event()
        try:
            system.wait(lambda h: h.get("api"), 60, "the API server")
            threading.Thread(target=collect_ws, args=(system.port, received, stop), daemon=True).start()
            on_bus: list = []
            threading.Thread(target=listen, args=(system, m.market_status_topic(), on_bus, stop), daemon=True).start()
            system.wait(lambda h: upstox(h).get("ticks", 0) > 150 and h["ingestor"]["details"].get("market_status"),
                        90, "live ticks and the market status")
            fake.drop(outage_s=2.0)                       # ~2-4 minutes of market time at 60x
            system.wait(lambda h: upstox(h).get("reconnects") == 1 and upstox(h).get("gaps") == 5
                        and upstox(h).get("backfilled_ticks", 0) > 0
                        and "pending" not in str(upstox(h).get("last_gap")), 60, "the reconnect and backfill")
            deadline = time.monotonic() + 30
            while not all(any(f["conn"] == 1 for f in feeds[4:]) for feeds in sent_feeds(fake).values()):
                assert time.monotonic() < deadline, "ticks did not resume for every instrument"
                time.sleep(0.2)
            fake.pause()
            time.sleep(0.5)
            sent = sent_feeds(fake)
            total = sum(len(v) for v in sent.values())
            system.wait(lambda h: upstox(h).get("ticks") == total
                        and h["ingestor"]["details"]["ticks_published"] == total
                        and h["ingestor"]["details"]["ticks_written"] == total + upstox(h)["backfilled_ticks"],
                        30, f"all {total} ticks to be written")
            health = system.health()
            if CHROMIUM.exists():
                shown = market_on_the_page(system.port, "NSE_FO|NIFTY22NOVFUT")
                status = health["ingestor"]["details"]["market_status"]
                assert shown == f"open (NSE_FO, {fmt_ist(status['ts'])} IST)", shown
            time.sleep(1.5)                                # let the WebSocket client get a health batch
            system.terminate(timeout=15)     # the 5 s budget is tests/test_system.py's business
            assert system.proc.returncode == 0, system.output()[-3000:]
        finally:
            stop.set()
            system.close()

        # --- DuckDB, field by field ---------------------------------------------------------------
        con = duckdb.connect(str(system.db), read_only=True)
        rows = [dict(zip([c.strip() for c in COLUMNS.split(",")], r))
                for r in con.execute(f"SELECT {COLUMNS} FROM ticks ORDER BY seq").fetchall()]
        assert {r["source"] for r in rows} == {"upstox"}
        for key, feeds in sent.items():
            live = [r for r in rows if r["instrument_key"] == canon[key] and not r["backfilled"]]
            assert len(live) == len(feeds), canon[key]
            for r, f, ltq in zip(live, feeds, expected_ltq(feeds)):
                assert (r["ts"], r["ltp"], r["oi"], r["ltq"], r["feed_ts"], r["mode"], r["cp"]) == (
                    f["ts"], f["ltp"], f["oi"], ltq, f["feed_ts"], f["mode"], f["cp"]), (canon[key], f)
                for name in NULL_UNLESS_SENT:
                    assert r[name] == f.get(name), (canon[key], name)
                assert r["depth"] == ([dict(bid_qty=a, bid=b, ask_qty=c, ask=d) for a, b, c, d in f["depth"]]
                                      if "depth" in f else None)
                assert r["ohlc"] == ([dict(zip(("interval", "open", "high", "low", "close", "volume", "ts"), o))
                                      for o in f["ohlc"]] if "ohlc" in f else None)

        # --- the reconnect re-subscribed every instrument in its mode ----------------------------
        assert len(fake.connections) == 2
        subs = [{(r["data"]["mode"], k) for r in c.requests for k in r["data"]["instrumentKeys"]}
                for c in fake.connections]
        assert subs[0] == subs[1] == {("full", NIFTY_KEY), ("ltpc", BANK_KEY), ("full", FUT_KEY),
                                      ("option_greeks", fake.option_key), ("full_d30", EQUITY_KEY)}

        # --- the gap: filled from the candle API, flagged, and only where the feed was silent ----
        for key, feeds in sent.items():
            before = max(f["ts"] for f in feeds if f["conn"] == 0)
            after = min(f["ts"] for f in feeds if f["conn"] == 1)
            first_bar, last_bar = gap_minutes(before, after)
            want = [c for c in fake.prints[key].candles(after)
                    if first_bar <= int(dt.datetime.fromisoformat(c[0]).timestamp() * 1000) <= last_bar][::-1]
            assert want, canon[key]
            got = con.execute("SELECT ts, open, high, low, close, volume, oi FROM candles_1m WHERE instrument_key = ? "
                              "AND ts BETWEEN ? AND ? ORDER BY ts", [canon[key], first_bar, last_bar]).fetchall()
            assert got == [(int(dt.datetime.fromisoformat(c[0]).timestamp() * 1000), *c[1:]) for c in want]
            filled = [r for r in rows if r["instrument_key"] == canon[key] and r["backfilled"]]
            assert len(filled) == 4 * len(want)
            assert all(first_bar <= r["ts"] < last_bar + 60_000 and r["feed_ts"] is None for r in filled)
            assert not [r for r in rows if r["instrument_key"] == canon[key] and not r["backfilled"]
                        and first_bar <= r["ts"] < last_bar + 60_000]
        con.close()

        # --- the browser: ticks under canonical names, and the market status ---------------------
        batches = [msg for msg in received if msg.get("type") in ("batch", "snapshot")]
        seen = {k for msg in batches for k in (msg.get("ticks") or {})}
        assert set(canon.values()) <= seen, seen
        statuses = [msg["health"]["ingestor"]["details"].get("market_status") for msg in batches
                    if "ingestor" in (msg.get("health") or {})]
        assert any(s and s["segments"]["NSE_FO"] == "NORMAL_OPEN" for s in statuses)

        # the feed's market-info message, on the bus (one per connection; the first may precede our
        # subscription, the one after the reconnect cannot)
        assert on_bus, "no market.status message on the bus"
        assert all(topic == "market.status" and isinstance(msg, m.MarketStatus)
                              and msg.segments["NSE_INDEX"] == "NORMAL_OPEN" for topic, msg in on_bus)

        # --- the token was used, and is nowhere it must not be ------------------------------------
        assert f"Bearer {token}" in fake.authorize_calls
        leaks = [str(p) for p in tmp_path.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
        assert not leaks, leaks
        assert token not in json.dumps(received) and token not in json.dumps(health)


def test_a_rejected_token_stops_the_desk_with_exit_2_and_one_line(tmp_path):
    token = "upx-" + secrets.token_hex(24)
    with FakeUpstox(token="the-valid-" + secrets.token_hex(8)) as fake:
        system = start(tmp_path, fake, token)
        try:
            code = system.proc.wait(90)
            out = system.output()
        finally:
            system.close()
    assert code == 2, out[-3000:]
    lines = [line for line in out.splitlines() if "rejected the access token" in line]
    assert len(lines) == 1 and "get a new one" in lines[0] and "UPSTOX_ACCESS_TOKEN" in lines[0], out[-3000:]
    assert "restarted ingestor" not in out and "configuration error" in out
    assert len(fake.authorize_calls) == 1
    assert not [str(p) for p in tmp_path.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
