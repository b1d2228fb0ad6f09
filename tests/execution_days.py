"""Helpers of the risk / paper / execution tests: replay recorded NSE days through the pure code
exactly as the running system orders the events (the ingestor publishes a tick, then the
candles it closes; a strategy reacts to a candle with a signal; the execution service sees the
tick before the signal)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable

import polars as pl

from data_handling.candles import CandleBuilder
from data_handling.replay import bars_to_ticks, read_bars
from strategy.ib_breakout import IBBreakout
from tests.conftest import INDEX_1MIN
from trading_core import messages as m
from trading_core.execution_client import PaperExecutionClient
from trading_core.execution_engine import ExecutionEngine
from trading_core.paper import PaperConfig
from trading_core.risk import RiskBook, RiskConfig

NIFTY = "NSE_INDEX|Nifty 50"
BANK = "NSE_INDEX|Nifty Bank"
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_FILE_MONTH = {"JUN": ("JUN", "JUNE"), "JUL": ("JUL", "JULY")}


def month_files(year: int, month: str) -> list[Path]:
    """The NIFTY and BANKNIFTY bar files of one month (2021 spells June/July out in full)."""
    out = []
    for name in _FILE_MONTH.get(month, (month,)):
        for idx in ("NIFTY", "BNF"):
            p = INDEX_1MIN / f"{year}_{name}_{idx}.txt"
            if p.exists():
                out.append(p)
    assert len(out) == 2, f"bar files of {year} {month} not found in {INDEX_1MIN}"
    return out


def day_ticks(files: Iterable[Path], day: str) -> list[m.Tick]:
    """Every tick the replay publishes on IST date ``day`` from ``files``, merged in time order
    (ties keep file order) with a running ``seq``, as ``data_handling.replay`` makes them."""
    frames = [bars_to_ticks(read_bars(f, dates=[day])) for f in files]
    df = pl.concat(frames).with_row_index("order").sort(["ts", "order"])
    return [m.Tick(instrument_key=k, ts=int(ts), ltp=float(p), seq=i, source="replay")
            for i, (k, ts, p) in enumerate(zip(df["instrument_key"], df["ts"], df["ltp"]))]


def days_of(files: Iterable[Path]) -> list[str]:
    """IST dates (YYYY-MM-DD) present in bar files."""
    dates = set()
    for f in files:
        dates |= set(read_bars(f)["date"].cast(pl.Utf8).to_list())
    return sorted(dates)


@dataclasses.dataclass
class Run:
    """What one replayed day produced: the signals, every published (topic, message), the engine."""

    signals: list[m.Signal]
    published: list[tuple[str, m.Message]]
    engine: ExecutionEngine

    def of(self, cls) -> list:
        return [msg for _, msg in self.published if isinstance(msg, cls)]

    def decisions(self) -> dict[str, m.RiskDecision]:
        return {d.signal_id: d for d in self.of(m.RiskDecision)}

    def closed(self) -> dict[str, m.Position]:
        return {p.position_id: p for p in self.of(m.Position) if p.status == "closed"}


def strategies(last_entry: str = "14:30", **params) -> list[IBBreakout]:
    """The two configured IB-breakout strategies (configs/strategies.json), emitting into a list."""
    return [IBBreakout(name, [key], {"last_entry": last_entry, **params}, lambda s: None)
            for name, key in (("ib_breakout_nifty", NIFTY), ("ib_breakout_banknifty", BANK))]


class Replayer:
    """Drives candle building, the IB-breakout strategies and an execution engine tick by tick.

    Everything published, the strategies' signals included (as ``signal.<strategy>``), lands in
    ``published`` in bus order. :meth:`feed` with ``engine_up=False`` keeps the market and the
    strategies going while the execution service is down (its signals are still published)."""

    def __init__(self, engine: ExecutionEngine, strategy_params: dict | None = None):
        self.published: list[tuple[str, m.Message]] = []
        self.signals: list[m.Signal] = []
        self.engine = engine
        engine.publish = lambda t, msg: self.published.append((t, msg))
        self.strats = strategies(**(strategy_params or {}))
        self._new: list[m.Signal] = []
        for s in self.strats:
            s._emit = self._new.append
        self.builder = CandleBuilder("1m")

    def use(self, engine: ExecutionEngine) -> None:
        """Continue with another engine (a restarted execution service)."""
        self.engine = engine
        engine.publish = lambda t, msg: self.published.append((t, msg))

    def feed(self, ticks: Iterable[m.Tick], engine_up: bool = True) -> None:
        for tick in ticks:
            if engine_up:
                self.engine.on_tick(tick.instrument_key, tick.ts, tick.ltp, tick.seq, rx_ms=0)
            for candle in self.builder.update(tick):
                for s in self.strats:
                    s.on_candle(candle)
                for sig in self._new:
                    self.signals.append(sig)
                    self.published.append((m.signal_topic(sig.strategy), sig))
                    if engine_up:
                        self.engine.on_signal(sig)
                self._new.clear()

    def run(self) -> Run:
        return Run(self.signals, self.published, self.engine)


def paper_engine(risk: RiskConfig | None = None, paper: PaperConfig | None = None, **kw) -> ExecutionEngine:
    """An engine with the paper client whose wall clock stands still (no signal is ever stale)."""
    paper = paper or PaperConfig()
    return ExecutionEngine(RiskBook(risk or RiskConfig()), paper, PaperExecutionClient(paper),
                           lambda t, msg: None, clock=kw.pop("clock", lambda: 0), **kw)


def replay_day(ticks: list[m.Tick], risk: RiskConfig | None = None, paper: PaperConfig | None = None,
               strategy_params: dict | None = None, engine: ExecutionEngine | None = None) -> Run:
    """Feed ``ticks`` through candles, the IB-breakout strategies and an execution engine (the
    paper client unless ``engine`` is given), in the order the running system sees them."""
    replayer = Replayer(engine or paper_engine(risk, paper), strategy_params)
    replayer.feed(ticks)
    return replayer.run()


def month_signals(year: int, month: str, last_entry: str = "14:30") -> list[m.Signal]:
    """Every IB-breakout signal of both indices over a recorded month (cached per process)."""
    key = (year, month, last_entry)
    if key not in _SIGNALS:
        files = sorted(month_files(year, month))
        out: list[m.Signal] = []
        strats = strategies(last_entry=last_entry)
        for s in strats:
            s._emit = out.append
        for f in files:
            bars = read_bars(f)
            for row in bars.iter_rows(named=True):
                candle = m.Candle(instrument_key=row["instrument_key"], interval="1m", ts=row["ts"],
                                  open=row["open"], high=row["high"], low=row["low"], close=row["close"])
                for s in strats:
                    s.on_candle(candle)
        _SIGNALS[key] = sorted(out, key=lambda s: (s.ts, s.strategy))
    return _SIGNALS[key]


_SIGNALS: dict = {}
