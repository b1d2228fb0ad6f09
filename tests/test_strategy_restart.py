"""Per-strategy restart with warm start, through the whole system (``run.py``) on a real day.

NIFTY 2022-11-09 is replayed at 1500x into a DuckDB file that already holds the ten recorded
days before it (as a running desk would), with four strategies in their own processes. When the
rule strategy has sent its first signal, ``python3 run.py restart ema_x`` restarts it. Then:

- every strategy's signal stream (the ``signals`` table the ingestor records from the bus) equals
  that of an uninterrupted run: the same classes fed the same recorded candles in-process;
- the restarted strategy sent signals both before and after the restart, none twice, and its
  warm start replayed the ten prior days plus the day so far (the prior day's value area is part
  of its buy rule);
- the other strategies' processes were never touched.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow as pa

from strategy import registry
from strategy.runner import StrategyRunner
from tests.conftest import INDEX_1MIN
from tests.system_harness import ROOT, System
from tests.test_strategies import parse_line
from trading_core import messages as m, persistence

IST = dt.timezone(dt.timedelta(hours=5, minutes=30))
DAY = "2022-11-09"
DAY_FILE = INDEX_1MIN / "2022_NOV_NIFTY.txt"
NIFTY = "NSE_INDEX|Nifty 50"
SEED_DAYS = 10

STRATEGIES = {"strategies": [
    {"name": "ib", "class": "ib_breakout", "instruments": [NIFTY]},
    {"name": "eighty", "class": "eighty_percent", "instruments": [NIFTY]},
    {"name": "od", "class": "open_drive", "instruments": [NIFTY]},
    {"name": "ema_x", "class": "rule", "instruments": [NIFTY], "params": {
        "buy": {"when": "crosses_above(ema(close, 5), ema(close, 13)) and close > profile.prior_val",
                "stop_loss": "close - 3 * atr(14)", "target": "close + 3 * atr(14)"},
        "sell": {"when": "crosses_below(ema(close, 5), ema(close, 13))",
                 "stop_loss": "close + 3 * atr(14)", "target": "close - 3 * atr(14)"},
        "max_signals_per_day": 50}},
]}


def ist_ms(day: str, hhmm: str) -> int:
    return int(dt.datetime.fromisoformat(f"{day}T{hhmm}").replace(tzinfo=IST).timestamp() * 1000)


def seed(db: Path) -> list[m.Candle]:
    """Write the 1-minute candles of the SEED_DAYS recorded dates before DAY into ``db`` (as the
    ingestor would have recorded them); return them."""
    bars = [parse_line(line) for f in (INDEX_1MIN / "2022_OCT_NIFTY.txt", DAY_FILE)
            for line in f.read_text().splitlines() if line.strip()]
    dates = sorted({b.date for b in bars if b.date < DAY.replace("-", "")})[-SEED_DAYS:]
    candles = sorted((b.candle() for b in bars if b.date in dates), key=lambda c: c.ts)
    table = pa.Table.from_pylist(
        [{"instrument_key": c.instrument_key, "ts": c.ts, "open": c.open, "high": c.high, "low": c.low,
          "close": c.close, "volume": 0, "oi": 0.0, "ticks": 4, "source": "replay"} for c in candles],
        schema=persistence.CANDLE_SCHEMA)
    con = persistence.connect(db)
    con.register("seed", table)
    con.execute("INSERT INTO candles_1m SELECT * FROM seed")
    con.close()
    return candles


def endpoint(system: System, option: str) -> str:
    args = list(system.proc.args)
    return args[args.index(option) + 1]


def strategies_of(health: dict) -> dict:
    return health.get("strategy_manager", {}).get("details", {}).get("strategies", {})


def test_restart_one_strategy_mid_replay_equals_uninterrupted_run(tmp_path):
    path = tmp_path / "strategies.json"
    path.write_text(json.dumps(STRATEGIES))
    seeded = seed(tmp_path / "market.duckdb")
    assert len({c.ts // 86_400_000 for c in seeded}) >= SEED_DAYS - 1
    system = System(tmp_path, "--replay", str(DAY_FILE), "--date", DAY, "--speed", "1500", strategies=path)
    try:
        def running(h):
            s = strategies_of(h)
            return len(s) == 4 and all(v["state"] in ("waiting", "warming", "running") for v in s.values()) and s
        first = system.wait(running, 60, "four strategies running")
        pids = {n: v["pid"] for n, v in first.items()}

        system.wait(lambda h: strategies_of(h).get("ema_x", {}).get("signals_total", 0) >= 1, 60,
                    "the rule strategy's first signal")
        restart_ms = int(time.time() * 1000)
        ctl = subprocess.run([sys.executable, str(ROOT / "run.py"), "restart", "ema_x",
                              "--bus-pub", endpoint(system, "--bus-pub"),
                              "--bus-sub", endpoint(system, "--bus-sub")],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert ctl.returncode == 0, ctl.stdout + ctl.stderr
        assert ctl.stdout.startswith(f"restarted ema_x (pid {pids['ema_x']} -> "), ctl.stdout

        end = ist_ms(DAY, "15:30")
        done = system.wait(lambda h: h.get("ingestor", {}).get("status") == "finished" and all(
            v.get("state") == "running" and v.get("market_ts", 0) >= end for v in strategies_of(h).values())
            and strategies_of(h), 90, "the replay to finish and every strategy to reach 15:30")
        time.sleep(1.5)                                   # the last signals reach the recorder
        assert system.terminate() < 5
    finally:
        system.close()

    # processes: only ema_x was restarted, once
    assert {n: v["pid"] for n, v in done.items() if n != "ema_x"} == {n: p for n, p in pids.items() if n != "ema_x"}
    assert done["ema_x"]["pid"] != pids["ema_x"] and done["ema_x"]["restarts"] == 1
    assert all(v["restarts"] == 0 for n, v in done.items() if n != "ema_x")
    warm = done["ema_x"]["warm"]
    assert warm["candles"] > SEED_DAYS * 300 and warm["fed"] == warm["candles"] and warm["complete"]

    con = duckdb.connect(str(system.db), read_only=True)
    rows = con.execute("SELECT strategy, instrument_key, side, ts, entry, stop_loss, target, reason, received_ms "
                       "FROM signals ORDER BY strategy, ts").fetchall()
    candles = [m.Candle(instrument_key=r[0], interval="1m", ts=r[1], open=r[2], high=r[3], low=r[4],
                        close=r[5], volume=r[6], oi=r[7], ticks=r[8])
               for r in con.execute("SELECT instrument_key, ts, open, high, low, close, volume, oi, ticks "
                                    "FROM candles_1m ORDER BY ts").fetchall()]
    con.close()
    day_candles = [c for c in candles if c.ts >= ist_ms(DAY, "00:00")]
    assert len(day_candles) >= 375

    # the uninterrupted run: the same classes, in-process, over the same recorded candles
    expected = {}
    for config in registry.parse_strategies(json.dumps(STRATEGIES)):
        out: list[m.Signal] = []
        runner = StrategyRunner(lambda emit, c=config: registry.build(c, emit), out.append)
        runner.start()
        for c in candles:
            runner.candle(c)
        expected[config.name] = [(s.instrument_key, s.side, s.ts, s.entry, s.stop_loss, s.target, s.reason)
                                 for s in out if s.ts >= ist_ms(DAY, "00:00")]
    got = {name: [tuple(r[1:8]) for r in rows if r[0] == name] for name in expected}
    assert got == expected
    assert all(got.values()), {n: len(v) for n, v in got.items()}   # every strategy traded that day
    ema = [r for r in rows if r[0] == "ema_x"]
    assert len({(r[2], r[3]) for r in ema}) == len(ema), "a signal was sent twice"
    before = [r for r in ema if r[8] < restart_ms]
    after = [r for r in ema if r[8] > restart_ms]
    assert len(before) >= 1 and len(after) >= 3, (len(before), len(after))
