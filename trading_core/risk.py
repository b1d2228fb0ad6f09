"""The risk guard: pure rules every signal passes before it may become an order, and the sizing.

No I/O: ``scripts/execution.py`` feeds it signals and the day's PnL and publishes its
:class:`Decision` as a :class:`trading_core.messages.RiskDecision`; tests and backtests call it
directly. Units: prices rupees, quantities units (not lots), ``ts`` epoch ms UTC; times of day
are IST (Asia/Kolkata, UTC+05:30, no DST).

Rules (``RULES``, checked in this order; the first that fails is the decision's ``rule``, and
``failed`` lists every one that fails):

``duplicate``        the same signal (strategy, instrument, side, ts) was decided before.
``kill_switch``      the kill switch is engaged: no new orders until it is released.
``trading_hours``    the signal's time is outside the session, ``session_open``-``session_close``
                     (09:15-15:30 IST).
``entry_cutoff``     at or after ``entry_cutoff`` (default 14:45 IST): too late to open a trade
                     that must be squared off at 15:15.
``reward_risk``      |target - entry| / |entry - stop| below ``min_reward_risk``.
``lot_size``         no lot size is known for the instrument (add its underlying to LOT_SIZES).
``risk_per_trade``   even one lot would risk more than ``risk_per_trade_pct`` % of ``capital``.
``daily_loss_limit`` today's PnL (realised + unrealised, rupees) is at or below
                     -``daily_loss_limit``.
``max_trades``       ``max_trades_per_day`` trades were already approved today.
``instrument_locked`` a trade on this instrument was already approved today (intraday lock: one
                     trade per instrument per IST day, whichever strategy asks).

Sizing (fixed-fractional, Van K. Tharp, *Trade Your Way to Financial Freedom*, ch. 14; the
usual "risk 1 % of capital per trade" position sizing): the budget is
``capital * risk_per_trade_pct / 100`` rupees; the position is the largest whole number of
lots whose loss at the stop stays within it: ``lots = floor(budget / (|entry - stop| *
lot_size))``; ``quantity = lots * lot_size`` units. Zero lots is the ``risk_per_trade``
rejection.

Lot sizes (``LotSizes``) come from config ``LOT_SIZES``: underlying -> lot (units), or a list of
``(first IST date, lot)`` pairs so a replay of an old day uses the lot of that day.
:data:`NSE_LOT_SIZES` is NSE's history for the index derivatives, from its circulars (the date
is, approximately, the first day the near-month contract traded with the new lot):

* NIFTY 75 (SEBI CIR/MRD/DP/14/2015, 2015); 50 from 2021-06-25 (NSE/FAOP/47854, 31 Mar 2021:
  July 2021 expiry onwards); 25 from 2024-04-26 (NSE circular of 2 Apr 2024); 75 from
  2024-11-20 (NSE circular of 18 Oct 2024, SEBI's Rs 15 lakh minimum contract value); 65 from
  2025-12-31 (NSE/FAOP/70616: January 2026 expiry onwards).
* BANKNIFTY 20 from 2018-10-26 (NSE, Oct 2018: 40 -> 20); 25 from 2020-07-24 (contracts
  expiring from 30 Jul 2020); 15 from 2023-06-30 (NSE circular of 31 Mar 2023: July 2023
  expiry onwards); 30 from 2024-11-20 (18 Oct 2024 circular); 35 from 2025-06-27 (NSE circular
  of 28 Mar 2025: July 2025 expiry onwards); 30 from 2025-12-31 (NSE/FAOP/70616).
* FINNIFTY 40 (NSE/FAOP/47854 kept it at 40); 25 from 2024-06-26 (2 Apr 2024 circular: July
  2024 expiry onwards); 65 from 2024-11-20; 60 from 2025-12-31 (NSE/FAOP/70616).
* MIDCPNIFTY 75 (from its launch, 24 Jan 2022); 50 from 2024-06-25 (2 Apr 2024 circular); 120
  from 2024-11-20; 140 from 2025-06-27; 120 from 2025-12-31 (NSE/FAOP/70616).

Check the current lot before trading live: NSE revises them twice a year.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as _dt
import hashlib
import math
import re
from typing import Any, Callable, Iterable, Mapping

from trading_core import messages as m

IST_OFFSET_MS = 19_800_000          # 5 h 30 min
DAY_MS = 86_400_000

RULES = ("duplicate", "kill_switch", "trading_hours", "entry_cutoff", "reward_risk", "lot_size",
         "risk_per_trade", "daily_loss_limit", "max_trades", "instrument_locked")

#: NSE lot sizes of the index derivatives: underlying -> ((first IST date, lot), ...). Sources in
#: the module docstring. ``date.min`` marks "since before any data here".
NSE_LOT_SIZES: dict[str, list[tuple[str, int]]] = {
    "NIFTY": [("2015-10-30", 75), ("2021-06-25", 50), ("2024-04-26", 25), ("2024-11-20", 75),
              ("2025-12-31", 65)],
    "BANKNIFTY": [("2018-10-26", 20), ("2020-07-24", 25), ("2023-06-30", 15), ("2024-11-20", 30),
                  ("2025-06-27", 35), ("2025-12-31", 30)],
    "FINNIFTY": [("2021-01-11", 40), ("2024-06-26", 25), ("2024-11-20", 65), ("2025-12-31", 60)],
    "MIDCPNIFTY": [("2022-01-24", 75), ("2024-06-25", 50), ("2024-11-20", 120), ("2025-06-27", 140),
                   ("2025-12-31", 120)],
}

#: Index instrument keys (Upstox ``NSE_INDEX|<name>``) -> the underlying symbol of their derivatives.
INDEX_UNDERLYINGS = {
    "NIFTY 50": "NIFTY", "NIFTY BANK": "BANKNIFTY", "NIFTY FIN SERVICE": "FINNIFTY",
    "NIFTY FINANCIAL SERVICES": "FINNIFTY", "NIFTY MID SELECT": "MIDCPNIFTY",
    "NIFTY MIDCAP SELECT": "MIDCPNIFTY", "NIFTY NEXT 50": "NIFTYNXT50",
}
_FO_SYMBOL = re.compile(r"^([A-Z&]+?)(?=\d|-|_|$)")


def ist_date(ts_ms: int) -> _dt.date:
    """IST calendar date of an epoch-ms-UTC timestamp."""
    return _dt.date(1970, 1, 1) + _dt.timedelta(days=(int(ts_ms) + IST_OFFSET_MS) // DAY_MS)


def ist_minute(ts_ms: int) -> float:
    """Minutes (with fraction) since IST midnight of an epoch-ms-UTC timestamp (09:15 -> 555.0)."""
    return ((int(ts_ms) + IST_OFFSET_MS) % DAY_MS) / 60_000


def hhmm(text: str, where: str) -> int:
    """``"14:45" -> 885`` (minutes since midnight). Raises ``ValueError`` naming ``where``."""
    mt = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)", str(text))
    if not mt:
        raise ValueError(f"{where}: {text!r} is not a time HH:MM (IST)")
    return int(mt[1]) * 60 + int(mt[2])


def fmt_minutes(minutes: float) -> str:
    """``885 -> "14:45"``."""
    whole = int(minutes)
    return f"{whole // 60:02d}:{whole % 60:02d}"


def signal_id(sig: m.Signal) -> str:
    """A signal's identity: 16 hex digits of SHA-1 over strategy, instrument, side and ts. The
    same signal sent again (a restarted strategy) gets the same id, so it is decided once."""
    text = f"{sig.strategy}|{sig.instrument_key}|{sig.side}|{int(sig.ts)}"
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def underlying_of(instrument_key: str) -> str | None:
    """The derivatives underlying an instrument trades as: ``NSE_INDEX|Nifty 50`` -> ``NIFTY``,
    ``NSE_FO|NIFTY-I`` / ``NSE_FO|NIFTY24DECFUT`` / ``NSE_FO|NIFTY22112418000CE`` -> ``NIFTY``,
    ``NSE_FO|BANKNIFTY_F1`` -> ``BANKNIFTY``. None when it cannot tell (an Upstox numeric key
    such as ``NSE_FO|43885``, an unknown index)."""
    segment, _, name = instrument_key.partition("|")
    if not name:
        return None
    if segment.endswith("_INDEX"):
        return INDEX_UNDERLYINGS.get(name.strip().upper())
    mt = _FO_SYMBOL.match(name.strip().upper())
    return mt[1] if mt else None


class LotSizes:
    """Lot sizes by underlying and IST date, from config ``LOT_SIZES`` (see :func:`parse_lot_sizes`).

    ``extra(instrument_key)``: an optional exact lookup tried first (e.g. the Upstox instruments
    master's ``lot_size`` of a live contract); returns a lot or None.
    """

    def __init__(self, table: Mapping[str, Any] | None = None,
                 extra: Callable[[str], int | None] | None = None):
        self.table = parse_lot_sizes(NSE_LOT_SIZES if table is None else table)
        self.extra = extra

    def lot_size(self, instrument_key: str, day: _dt.date) -> int | None:
        """Units per lot of ``instrument_key`` on IST date ``day``; None if unknown."""
        if self.extra is not None:
            lot = self.extra(instrument_key)
            if lot:
                return int(lot)
        under = underlying_of(instrument_key)
        history = self.table.get(under or "")
        if not history:
            return None
        starts = [d for d, _ in history]
        i = bisect.bisect_right(starts, day) - 1
        return history[max(i, 0)][1]


def parse_lot_sizes(value: Any, where: str = "LOT_SIZES") -> dict[str, tuple[tuple[_dt.date, int], ...]]:
    """Validate config ``LOT_SIZES``: ``{underlying: lot}`` or ``{underlying: [(YYYY-MM-DD, lot),
    ...]}`` (dates ascending; before the first date the first lot applies). Returns
    ``{UNDERLYING: ((date, lot), ...)}``. Raises ``ValueError`` naming the entry."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a dict {{underlying: lot or [(YYYY-MM-DD, lot), ...]}}")
    out: dict[str, tuple[tuple[_dt.date, int], ...]] = {}
    for under, spec in value.items():
        name = f"{where}[{under!r}]"
        if not isinstance(under, str) or not under.strip():
            raise ValueError(f"{where}: keys must be underlying symbols such as 'NIFTY'")
        pairs: list[tuple[_dt.date, int]] = []
        if isinstance(spec, bool):
            raise ValueError(f"{name}: a lot size must be a positive whole number, got {spec!r}")
        if isinstance(spec, int):
            pairs = [(_dt.date.min, spec)]
        elif isinstance(spec, (list, tuple)) and spec:
            for item in spec:
                if not (isinstance(item, (list, tuple)) and len(item) == 2):
                    raise ValueError(f"{name}: each entry must be (YYYY-MM-DD, lot), got {item!r}")
                try:
                    day = _dt.date.fromisoformat(str(item[0]))
                except ValueError:
                    raise ValueError(f"{name}: {item[0]!r} is not a date YYYY-MM-DD") from None
                pairs.append((day, item[1]))
        else:
            raise ValueError(f"{name}: must be a lot size or a list of (YYYY-MM-DD, lot), got {spec!r}")
        for day, lot in pairs:
            if isinstance(lot, bool) or not isinstance(lot, int) or lot <= 0:
                raise ValueError(f"{name}: a lot size must be a positive whole number, got {lot!r}")
        if any(b[0] <= a[0] for a, b in zip(pairs, pairs[1:])):
            raise ValueError(f"{name}: dates must be in ascending order")
        out[under.strip().upper()] = tuple(pairs)
    return out


@dataclasses.dataclass(frozen=True)
class RiskConfig:
    """Risk settings (config names in brackets). Money in rupees.

    ``capital`` [CAPITAL]; ``risk_per_trade_pct`` [RISK_PER_TRADE_PCT] percent of capital one
    trade may lose at its stop; ``min_reward_risk`` [MIN_REWARD_RISK]; ``daily_loss_limit``
    [DAILY_LOSS_LIMIT] rupees (positive); ``max_trades_per_day`` [MAX_TRADES_PER_DAY];
    ``session_open`` / ``session_close`` / ``entry_cutoff`` [ENTRY_CUTOFF] ``HH:MM`` IST;
    ``lot_sizes`` [LOT_SIZES]. :meth:`validate` raises ``ValueError`` naming the setting.
    """

    capital: float = 1_000_000.0
    risk_per_trade_pct: float = 1.0
    min_reward_risk: float = 1.5
    daily_loss_limit: float = 20_000.0
    max_trades_per_day: int = 4
    session_open: str = "09:15"
    session_close: str = "15:30"
    entry_cutoff: str = "14:45"
    lot_sizes: LotSizes = dataclasses.field(default_factory=LotSizes)

    def validate(self) -> "RiskConfig":
        """Return self, or raise ``ValueError("SETTING: why")`` on the first bad value."""
        def number(name: str, value: Any) -> float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name}: must be a number, got {value!r}")
            return float(value)

        if number("CAPITAL", self.capital) <= 0:
            raise ValueError(f"CAPITAL: must be positive rupees, got {self.capital!r}")
        if not 0 < number("RISK_PER_TRADE_PCT", self.risk_per_trade_pct) <= 100:
            raise ValueError(f"RISK_PER_TRADE_PCT: must be in (0, 100] percent, got {self.risk_per_trade_pct!r}")
        if number("MIN_REWARD_RISK", self.min_reward_risk) < 0:
            raise ValueError(f"MIN_REWARD_RISK: must be 0 or more, got {self.min_reward_risk!r}")
        if number("DAILY_LOSS_LIMIT", self.daily_loss_limit) <= 0:
            raise ValueError(f"DAILY_LOSS_LIMIT: must be positive rupees (a loss), got {self.daily_loss_limit!r}")
        if isinstance(self.max_trades_per_day, bool) or not isinstance(self.max_trades_per_day, int) \
                or self.max_trades_per_day < 1:
            raise ValueError(f"MAX_TRADES_PER_DAY: must be a whole number >= 1, got {self.max_trades_per_day!r}")
        opening = hhmm(self.session_open, "session open")
        closing = hhmm(self.session_close, "session close")
        cutoff = hhmm(self.entry_cutoff, "ENTRY_CUTOFF")
        if not opening < cutoff <= closing:
            raise ValueError(f"ENTRY_CUTOFF: {self.entry_cutoff!r} must be after {self.session_open} "
                             f"and not after {self.session_close} IST")
        return self

    @property
    def budget(self) -> float:
        """The most one trade may lose at its stop, rupees."""
        return self.capital * self.risk_per_trade_pct / 100.0


@dataclasses.dataclass
class Decision:
    """The outcome of :meth:`RiskBook.evaluate`; see :class:`trading_core.messages.RiskDecision`."""

    approved: bool
    rule: str
    reason: str
    failed: list[str]
    quantity: int = 0
    lots: int = 0
    lot_size: int = 0
    risk_per_unit: float = 0.0
    risk_amount: float = 0.0
    budget: float = 0.0
    reward_risk: float = 0.0

    def message(self, sig: m.Signal, decided_ms: int = 0) -> m.RiskDecision:
        """This decision as the bus message about ``sig``."""
        return m.RiskDecision(
            signal_id=signal_id(sig), strategy=sig.strategy, instrument_key=sig.instrument_key,
            side=sig.side, entry=sig.entry, stop_loss=sig.stop_loss, target=sig.target,
            signal_ts=sig.ts, approved=self.approved, reason=self.reason, rule=self.rule,
            failed=list(self.failed), quantity=self.quantity, lots=self.lots, lot_size=self.lot_size,
            risk_per_unit=round(self.risk_per_unit, 4), risk_amount=round(self.risk_amount, 2),
            budget=round(self.budget, 2), reward_risk=round(self.reward_risk, 4), ts=sig.ts,
            decided_ms=decided_ms)


def rejection(rule: str, reason: str) -> Decision:
    """A rejection decided outside the rules above (e.g. ``stale``: the execution service saw the
    signal too late to act on it)."""
    return Decision(False, rule, reason, [rule])


def _rupees(x: float) -> str:
    return f"\u20b9{x:,.0f}"


@dataclasses.dataclass
class _Day:
    trades: int = 0
    instruments: dict[str, str] = dataclasses.field(default_factory=dict)   # key -> signal_id


class RiskBook:
    """The rules of the module docstring plus the state they need: which signals were decided,
    and per IST day the trades approved and the instruments traded.

    Call :meth:`decide` once per signal (it evaluates and records); :meth:`evaluate` alone
    changes nothing. The day's PnL is an argument (the positions live elsewhere).
    """

    def __init__(self, config: RiskConfig):
        self.config = config.validate()
        self._open = hhmm(config.session_open, "session open")
        self._close = hhmm(config.session_close, "session close")
        self._cutoff = hhmm(config.entry_cutoff, "ENTRY_CUTOFF")
        self.seen: set[str] = set()
        self.days: dict[_dt.date, _Day] = {}

    def evaluate(self, sig: m.Signal, day_pnl: float = 0.0, kill_switch: bool = False) -> Decision:
        """Check ``sig`` against every rule; ``day_pnl``: today's realised + unrealised PnL (rupees)
        of all positions. Returns the :class:`Decision` (approved with sizing, or the first
        failing rule with a one-line reason); records nothing."""
        cfg = self.config
        failed: dict[str, str] = {}
        sid = signal_id(sig)
        day_key, minute = ist_date(sig.ts), ist_minute(sig.ts)
        day = self.days.get(day_key, _Day())
        at = fmt_minutes(minute)
        if sid in self.seen:
            failed["duplicate"] = f"duplicate: signal {sid} was already decided"
        if kill_switch:
            failed["kill_switch"] = "kill switch engaged: no new orders until it is released"
        if not self._open <= minute < self._close:
            failed["trading_hours"] = (f"outside trading hours: {at} IST is not within "
                                       f"{cfg.session_open}-{cfg.session_close}")
        elif minute >= self._cutoff:
            failed["entry_cutoff"] = f"after the entry cut-off: {at} IST is at or after {cfg.entry_cutoff}"
        risk_unit = abs(sig.entry - sig.stop_loss)
        reward = abs(sig.target - sig.entry)
        rr = reward / risk_unit if risk_unit > 0 else 0.0
        if risk_unit <= 0 or rr + 1e-9 < cfg.min_reward_risk:
            failed["reward_risk"] = (f"reward:risk {rr:.2f} below the minimum {cfg.min_reward_risk:g} "
                                     f"(reward {reward:.2f}, risk {risk_unit:.2f} per unit)")
        lot = cfg.lot_sizes.lot_size(sig.instrument_key, day_key)
        lots = 0
        budget = cfg.budget
        if not lot:
            failed["lot_size"] = (f"no lot size for {sig.instrument_key} (underlying "
                                  f"{underlying_of(sig.instrument_key) or 'unknown'}): add it to LOT_SIZES")
        elif risk_unit > 0:
            lots = int(math.floor(budget / (risk_unit * lot) + 1e-9))
            if lots < 1:
                failed["risk_per_trade"] = (
                    f"one lot risks {_rupees(risk_unit * lot)} ({risk_unit:.2f} x {lot}), above the "
                    f"{cfg.risk_per_trade_pct:g}% per-trade limit of {_rupees(budget)}")
        if day_pnl <= -cfg.daily_loss_limit:
            failed["daily_loss_limit"] = (f"daily loss limit reached: today's PnL {_rupees(day_pnl)} "
                                          f"<= -{_rupees(cfg.daily_loss_limit)}")
        if day.trades >= cfg.max_trades_per_day:
            failed["max_trades"] = f"max trades per day reached: {day.trades} of {cfg.max_trades_per_day}"
        if sig.instrument_key in day.instruments:
            failed["instrument_locked"] = (f"{sig.instrument_key} already traded today (signal "
                                           f"{day.instruments[sig.instrument_key]}): one trade per "
                                           f"instrument per day")
        rules = [r for r in RULES if r in failed]
        quantity = lots * (lot or 0)
        common = dict(failed=rules, quantity=quantity if not rules else 0, lots=lots if not rules else 0,
                      lot_size=lot or 0, risk_per_unit=risk_unit, budget=budget, reward_risk=rr,
                      risk_amount=quantity * risk_unit if not rules else 0.0)
        if rules:
            return Decision(False, rules[0], failed[rules[0]], **common)
        reason = (f"approved: {lots} lot{'s' if lots != 1 else ''} x {lot} = {quantity} units, "
                  f"risk {_rupees(quantity * risk_unit)} of {_rupees(budget)}, reward:risk {rr:.2f}")
        return Decision(True, "", reason, **common)

    def decide(self, sig: m.Signal, day_pnl: float = 0.0, kill_switch: bool = False) -> Decision:
        """:meth:`evaluate`, then record the signal as decided (and, if approved, the trade)."""
        decision = self.evaluate(sig, day_pnl, kill_switch)
        self.record(sig, decision.approved)
        return decision

    def record(self, sig: m.Signal, approved: bool) -> None:
        """Remember ``sig`` as decided; an approved one counts as today's trade on its instrument."""
        sid = signal_id(sig)
        self.seen.add(sid)
        if approved:
            self.restore_trade(ist_date(sig.ts), sig.instrument_key, sid)

    def restore_trade(self, day: _dt.date, instrument_key: str, sid: str) -> None:
        """Count one approved trade (from the audit trail after a restart)."""
        d = self.days.setdefault(day, _Day())
        d.trades += 1
        d.instruments.setdefault(instrument_key, sid)

    def trades_on(self, day: _dt.date) -> int:
        """Trades approved on IST date ``day``."""
        return self.days.get(day, _Day()).trades

    def restore(self, decisions: Iterable[m.RiskDecision]) -> None:
        """Rebuild the state from earlier decisions (the audit trail), e.g. after a restart."""
        for d in decisions:
            if d.signal_id in self.seen:
                continue
            self.seen.add(d.signal_id)
            if d.approved:
                self.restore_trade(ist_date(d.signal_ts), d.instrument_key, d.signal_id)
