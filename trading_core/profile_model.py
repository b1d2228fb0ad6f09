"""The Market Profile of one session as data: the raw per-period state both paths accumulate,
the finished :class:`AuctionProfile` a strategy reads, and :func:`build_profile` between them.

Units: prices in rupees (float, rounded to the tick size), internal prices in integer ticks,
timestamps epoch ms UTC (shown in IST). Arrays are numpy int64, index 0 = the lowest row.

A row is the half-open price band ``[row_price, row_price + row_size)``; a row is reported by its
lower bound ("row price"), so ``poc``, ``vah`` and ``val`` are row prices and ``VAL <= POC <= VAH``.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, NamedTuple

import numpy as np

from trading_core import messages as m
from trading_core import profile_rules as rules
from trading_core.profile_config import ProfileConfig
from trading_core.sessions import INFERRED, SessionSpec, day_to_date, fmt_ist, period_letter

# Volume source bits, see SessionState.volume_kinds.
VOL_LTQ, VOL_CUM, VOL_BAR = 1, 2, 4
_VOL_NAMES = ((VOL_LTQ, "ltq"), (VOL_CUM, "cum_volume"), (VOL_BAR, "bar"))
_EMPTY = np.zeros(0, dtype=np.int64)
_EMPTY.setflags(write=False)


def _empty() -> np.ndarray:
    return _EMPTY


@dataclasses.dataclass(slots=True)
class SessionState:
    """What is accumulated about one session; enough to build its profile.

    Period arrays (int64, one entry per period that has prints, sorted by ``p_idx``):
    ``p_idx`` period number (0 = A), ``p_hi``/``p_lo`` high and low in ticks, ``p_hik``/``p_lok``
    order keys of the print that first reached the high/low (smaller = earlier), ``p_last`` the
    last price in ticks. ``vol_rows``/``vol_qty``: volume per row (rows with volume only, sorted).
    ``clock_ms``: latest time seen for the day, any print (a bar counts to its end);
    ``last_ts``: latest in-session print time. ``closed``: a later session has begun.
    """

    spec: SessionSpec
    clock_ms: int | None = None
    closed: bool = False
    p_idx: np.ndarray = dataclasses.field(default_factory=_empty)
    p_hi: np.ndarray = dataclasses.field(default_factory=_empty)
    p_lo: np.ndarray = dataclasses.field(default_factory=_empty)
    p_hik: np.ndarray = dataclasses.field(default_factory=_empty)
    p_lok: np.ndarray = dataclasses.field(default_factory=_empty)
    p_last: np.ndarray = dataclasses.field(default_factory=_empty)
    vol_rows: np.ndarray = dataclasses.field(default_factory=_empty)
    vol_qty: np.ndarray = dataclasses.field(default_factory=_empty)
    open_t: int | None = None
    last_t: int | None = None
    last_ts: int | None = None
    prints: int = 0
    preopen_t: int | None = None
    pre_prints: int = 0
    outside_prints: int = 0
    reference_prints: int = 0
    gaps: tuple[tuple[int, int], ...] = ()
    volume_kinds: int = 0


class TPOPeriod(NamedTuple):
    """One TPO period that traded: ``letter``, ``index`` (0 = A), IST-aligned ``start_ms``, and
    the ``low``/``high`` it printed (rupees)."""

    letter: str
    index: int
    start_ms: int
    low: float
    high: float


@dataclasses.dataclass(frozen=True, slots=True)
class PriorSession:
    """Reference levels of the previous trading day (rupees): range, close, POC and value area
    (row prices, rows of ``row_size``). ``typical_range``: median high-low range of the recent
    trading days up to this one (at most ``history_sessions``, at least 3; the Non-trend test's
    yardstick), ``None`` while fewer are known."""

    date: str
    high: float
    low: float
    close: float
    poc: float
    vah: float
    val: float
    row_size: float
    typical_range: float | None = None


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class AuctionProfile:
    """The Market Profile of one instrument's session at one moment (see ``engine.profile``).

    Identity and clock: ``session`` (IST date ISO), ``session_kind`` (``regular``, ``extended``,
    ``muhurat``, ``inferred``, ``holiday``), ``trading_day`` (False = not a regular session),
    ``open_ms``/``close_ms`` session bounds, ``ts`` latest in-session print, ``closed`` (the
    session is over), ``period_index``/``period`` the current TPO period by the clock.

    Rows: ``row_low`` price of row 0, ``tpo`` TPOs per row, ``volume`` volume per row (int64,
    same length; zeros when there is no volume), ``periods`` the traded periods' ranges.

    Levels (rupees; ``None`` before the first print): ``open``, ``high``, ``low``, ``last``,
    ``preopen`` (last pre-open price); ``poc``/``vah``/``val`` of the TPO profile,
    ``volume_poc``/``volume_vah``/``volume_val`` of the volume profile (the TPO ones when
    ``volume_source == "tpo"``: no traded volume, e.g. an index).

    Initial balance: ``ib_high``/``ib_low``/``ib_range`` (periods A+B), ``ib_complete``;
    ``ext_up``/``ext_down`` range extension beyond it in points, ``ext_up_ib``/``ext_down_ib`` in
    IB multiples (``None`` if the IB range is zero).

    Structure: ``single_prints`` (row-price pairs ``(low, high)`` of each run), ``selling_tail``
    / ``buying_tail`` (row-price pairs, ``None`` if none), ``poor_high``/``poor_low``,
    ``excess_high``/``excess_low``.

    Classification: ``open_type`` (+ ``open_type_final`` once period A is over), ``day_type``
    (+ ``day_type_final`` once the session closed; provisional before).

    Prior-day context: ``prior``; ``open_vs_prior_value`` / ``open_vs_prior_range``
    (``above``/``inside``/``below``), ``value_relation`` (Dalton's value-area relationship),
    ``balance`` (``balance``/``imbalance up``/``imbalance down``); empty strings without a prior.

    Data quality: ``prints`` (in-session prints profiled), ``outside_prints`` (pre-open, post-close,
    halts), ``reference_prints`` (skipped opening reference prices), ``gaps`` (IST-free epoch-ms
    pairs of pauses longer than the configured gap), ``notes`` (human-readable remarks).
    """

    instrument_key: str
    session: str
    session_kind: str
    trading_day: bool
    open_ms: int
    close_ms: int
    ts: int | None
    clock_ms: int | None
    closed: bool
    period_index: int
    period: str
    row_size: float
    tick_size: float
    row_low: float | None
    tpo: np.ndarray
    volume: np.ndarray
    periods: tuple[TPOPeriod, ...]
    open: float | None
    high: float | None
    low: float | None
    last: float | None
    preopen: float | None
    poc: float | None
    vah: float | None
    val: float | None
    tpo_total: int
    va_tpo: int
    volume_poc: float | None
    volume_vah: float | None
    volume_val: float | None
    volume_total: int
    volume_source: str
    ib_high: float | None
    ib_low: float | None
    ib_range: float | None
    ib_complete: bool
    ext_up: float
    ext_down: float
    ext_up_ib: float | None
    ext_down_ib: float | None
    single_prints: tuple[tuple[float, float], ...]
    selling_tail: tuple[float, float] | None
    buying_tail: tuple[float, float] | None
    poor_high: bool
    poor_low: bool
    excess_high: bool
    excess_low: bool
    open_type: str
    open_type_final: bool
    day_type: str
    day_type_final: bool
    prior: PriorSession | None
    open_vs_prior_value: str
    open_vs_prior_range: str
    value_relation: str
    balance: str
    prints: int
    outside_prints: int
    reference_prints: int
    gaps: tuple[tuple[int, int], ...]
    notes: tuple[str, ...]

    @property
    def empty(self) -> bool:
        """True while the session has no profiled print."""
        return self.prints == 0

    def row_prices(self) -> np.ndarray:
        """Row prices (rupees, float64), aligned with ``tpo`` and ``volume``."""
        if self.row_low is None:
            return np.zeros(0)
        return np.round(self.row_low + self.row_size * np.arange(len(self.tpo)), 8)

    def tpo_letters(self) -> list[str]:
        """The TPO letters printed on each row (index 0 = lowest row), e.g. ``"ABD"``: each
        period's letter on every row from its low to its high (CBOT)."""
        if self.row_low is None:
            return []
        out = [""] * len(self.tpo)
        for p in self.periods:
            for i in range(_row_index(p.low, self), _row_index(p.high, self) + 1):
                out[i] += p.letter
        return out

    def as_dict(self) -> dict[str, Any]:
        """Plain-Python copy (lists instead of arrays), for comparisons, JSON and tables."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray):
                v = v.tolist()
            elif f.name == "periods":
                v = [tuple(p) for p in v]
            elif f.name == "prior" and v is not None:
                v = dataclasses.asdict(v)
            out[f.name] = v
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AuctionProfile):
            return NotImplemented
        return self.as_dict() == other.as_dict()

    def to_message(self) -> m.Profile:
        """The compact bus message :class:`trading_core.messages.Profile` of this profile."""
        prior = self.prior
        return m.Profile(
            instrument_key=self.instrument_key, ts=self.ts or 0, session=self.session,
            session_kind=self.session_kind, closed=self.closed, period=self.period,
            row_size=self.row_size, open=self.open, high=self.high, low=self.low, last=self.last,
            poc=self.poc, vah=self.vah, val=self.val, vpoc=self.volume_poc, vvah=self.volume_vah,
            vval=self.volume_val, volume_source=self.volume_source, ib_high=self.ib_high,
            ib_low=self.ib_low, ib_complete=self.ib_complete, ext_up=self.ext_up_ib,
            ext_down=self.ext_down_ib, open_type=self.open_type,
            open_type_final=self.open_type_final, day_type=self.day_type,
            day_type_final=self.day_type_final, poor_high=self.poor_high, poor_low=self.poor_low,
            excess_high=self.excess_high, excess_low=self.excess_low,
            single_prints=[list(s) for s in self.single_prints],
            prior_high=prior.high if prior else None, prior_low=prior.low if prior else None,
            prior_close=prior.close if prior else None, prior_poc=prior.poc if prior else None,
            prior_vah=prior.vah if prior else None, prior_val=prior.val if prior else None,
            open_vs_value=self.open_vs_prior_value, open_vs_range=self.open_vs_prior_range,
            balance=self.balance, row_low=self.row_low, tpo=self.tpo.tolist(),
            volume=self.volume.tolist() if self.volume_source != "tpo" else [],
            periods=[[p.letter, p.low, p.high] for p in self.periods])


def _row_index(price: float, profile: AuctionProfile) -> int:
    ticks = int(round(price / profile.tick_size))
    tpr = int(round(profile.row_size / profile.tick_size))
    row0 = int(round(profile.row_low / profile.tick_size)) // tpr
    return ticks // tpr - row0


class PriorTracker:
    """Carries the prior trading day's references from session to session (shared by the
    engine and the batch path so that both chain days identically). Non-trading-day sessions
    (Muhurat, inferred, holiday) and empty sessions are skipped."""

    __slots__ = ("prior", "_ranges")

    def __init__(self, history_sessions: int, prior: PriorSession | None = None) -> None:
        self.prior = prior
        self._ranges: collections.deque[float] = collections.deque(maxlen=max(1, history_sessions))
        if prior is not None:
            self._ranges.append(prior.high - prior.low)

    def push(self, profile: AuctionProfile) -> None:
        """Record a finished session."""
        if not profile.trading_day or profile.poc is None:
            return
        self._ranges.append(profile.high - profile.low)
        self.prior = PriorSession(
            date=profile.session, high=profile.high, low=profile.low, close=profile.last,
            poc=profile.poc, vah=profile.vah, val=profile.val, row_size=profile.row_size,
            typical_range=float(np.median(self._ranges)) if len(self._ranges) >= 3 else None)


def _volume_source(kinds: int, total: int) -> str:
    if total <= 0:
        return "tpo"
    return "+".join(name for bit, name in _VOL_NAMES if kinds & bit)


def build_profile(state: SessionState, cfg: ProfileConfig, instrument_key: str = "",
                  prior: PriorSession | None = None) -> AuctionProfile:
    """Apply every rule of :mod:`trading_core.profile_rules` to an accumulated session state.

    Pure and deterministic: equal states give equal profiles. ``prior``: the previous trading
    day's references (``None`` if unknown).
    """
    spec = state.spec
    tick, tpr, pms = cfg.tick_size, cfg.ticks_per_row, cfg.period_ms
    nd = cfg.decimals

    def px(t: int) -> float:
        return round(t * tick, nd)

    clock = state.clock_ms
    closed = bool(state.closed or (clock is not None and clock >= spec.close_ms))
    n_periods = spec.n_periods(pms)
    if clock is None or clock < spec.open_ms or n_periods == 0:
        period_index = -1
    else:
        period_index = min((clock - spec.open_ms) // pms, n_periods - 1)
    a_over = closed or (clock is not None and clock >= spec.open_ms + pms)
    ib_complete = closed or (clock is not None and clock >= spec.open_ms + cfg.ib_periods * pms)

    notes: list[str] = []
    if spec.note:
        notes.append(spec.note)
    if not spec.trading_day and spec.kind != INFERRED:
        notes.append("not a regular session")
    if state.pre_prints:
        notes.append(f"{state.pre_prints} pre-open print(s) not profiled")
    if state.outside_prints:
        notes.append(f"{state.outside_prints} post-close or halt print(s) not profiled")
    if state.reference_prints:
        notes.append(f"{state.reference_prints} opening reference print(s) of qty "
                     f"{cfg.reference_print_qty} skipped")
    for start, end in state.gaps:
        notes.append(f"no prints from {fmt_ist(start)[11:16]} to {fmt_ist(end)[11:16]} IST")

    common = dict(
        instrument_key=instrument_key, session=day_to_date(spec.day).isoformat(),
        session_kind=spec.kind, trading_day=spec.trading_day, open_ms=spec.open_ms,
        close_ms=spec.close_ms, ts=state.last_ts, clock_ms=clock, closed=closed,
        period_index=int(period_index), period=period_letter(int(period_index)) if period_index >= 0 else "",
        row_size=cfg.row_size, tick_size=cfg.tick_size,
        preopen=px(state.preopen_t) if state.preopen_t is not None else None, prior=prior,
        prints=state.prints, outside_prints=state.outside_prints + state.pre_prints,
        reference_prints=state.reference_prints, gaps=state.gaps)

    if state.prints == 0 or len(state.p_idx) == 0:
        day_type = rules.NOT_REGULAR if not spec.trading_day else rules.UNDETERMINED
        if closed and state.outside_prints:
            day_type = rules.NOT_REGULAR
            notes.append("not a regular session: every print fell outside the configured hours")
        else:
            notes.append("no prints in the session yet" if not closed else "no prints in the session")
        return AuctionProfile(
            **common, row_low=None, tpo=_EMPTY, volume=_EMPTY, periods=(), open=None, high=None,
            low=None, last=None, poc=None, vah=None, val=None, tpo_total=0, va_tpo=0,
            volume_poc=None, volume_vah=None, volume_val=None, volume_total=0, volume_source="tpo",
            ib_high=None, ib_low=None, ib_range=None, ib_complete=ib_complete, ext_up=0.0,
            ext_down=0.0, ext_up_ib=None, ext_down_ib=None, single_prints=(), selling_tail=None,
            buying_tail=None, poor_high=False, poor_low=False, excess_high=False, excess_low=False,
            open_type=rules.UNDETERMINED, open_type_final=a_over, day_type=day_type,
            day_type_final=closed, open_vs_prior_value="", open_vs_prior_range="",
            value_relation="", balance="", notes=tuple(notes))

    # --- rows -----------------------------------------------------------------------------------
    lo_rows = state.p_lo // tpr
    hi_rows = state.p_hi // tpr
    row0, tpo = rules.tpo_histogram(lo_rows, hi_rows)
    n = len(tpo)
    volume = np.zeros(n, dtype=np.int64)
    if len(state.vol_rows):
        volume[state.vol_rows - row0] = state.vol_qty
    vol_total = int(volume.sum())

    def row_px(i: int) -> float:
        return px((row0 + i) * tpr)

    poc_i = rules.select_poc(tpo)
    va_lo, va_hi, va_tpo = rules.value_area(tpo, poc_i, cfg.value_area_percent)
    tpo_total = int(tpo.sum())
    source = _volume_source(state.volume_kinds, vol_total)
    if vol_total > 0:
        vpoc_i = rules.select_poc(volume)
        vva_lo, vva_hi, _ = rules.value_area(volume, vpoc_i, cfg.value_area_percent)
    else:
        vpoc_i, vva_lo, vva_hi = poc_i, va_lo, va_hi
        notes.append("no traded volume (e.g. an index): the volume profile falls back to TPO counts")

    p_idx, p_hi, p_lo = state.p_idx.tolist(), state.p_hi.tolist(), state.p_lo.tolist()
    high_t, low_t = max(p_hi), min(p_lo)
    open_t, last_t = int(state.open_t), int(state.last_t)

    # --- initial balance and range extension ----------------------------------------------------
    ib = [k for k, i in enumerate(p_idx) if i < cfg.ib_periods]
    ib_high_t = ib_low_t = None
    ext_up_t = ext_down_t = 0
    ext_up_ib = ext_down_ib = None
    if ib:
        ib_high_t, ib_low_t = max(p_hi[k] for k in ib), min(p_lo[k] for k in ib)
        if ib_complete:
            ext_up_t, ext_down_t = high_t - ib_high_t, ib_low_t - low_t
            ib_r = ib_high_t - ib_low_t
            if ib_r > 0:
                ext_up_ib, ext_down_ib = ext_up_t / ib_r, ext_down_t / ib_r

    # --- tails, poor extremes, single prints ----------------------------------------------------
    ex = rules.extremes(tpo)
    singles = tuple((row_px(a), row_px(b)) for a, b in ex.singles)
    selling_tail = (row_px(n - ex.top_run), row_px(n - 1)) if ex.excess_high else None
    buying_tail = (row_px(0), row_px(ex.bottom_run - 1)) if ex.excess_low else None

    # --- prior-day references ---------------------------------------------------------------------
    inv = cfg.inv_tick
    prior_hi_t = prior_lo_t = None
    open_vs_value = open_vs_range = relation = balance = ""
    if prior is not None:
        prior_hi_t, prior_lo_t = round(prior.high * inv), round(prior.low * inv)
        p_val_t = round(prior.val * inv)
        p_vah_t = round(prior.vah * inv)
        p_tpr = int(round(prior.row_size * inv))
        open_vs_value = rules.position(open_t, p_val_t, p_vah_t + p_tpr - 1)
        open_vs_range = rules.position(open_t, prior_lo_t, prior_hi_t)
        val_t, vah_t = (row0 + va_lo) * tpr, (row0 + va_hi) * tpr
        relation = rules.value_relation(val_t, vah_t, p_val_t, p_vah_t)
        if relation == "higher" or (open_vs_range == "above" and low_t > prior_hi_t):
            balance = "imbalance up"
        elif relation == "lower" or (open_vs_range == "below" and high_t < prior_lo_t):
            balance = "imbalance down"
        else:
            balance = "balance"

    # --- open type ------------------------------------------------------------------------------
    if p_idx[0] == 0:
        k = 0
        open_type = rules.classify_open(open_t, int(state.p_hi[k]), int(state.p_lo[k]),
                                        int(state.p_last[k]), int(state.p_hik[k]),
                                        int(state.p_lok[k]), prior_hi_t, prior_lo_t, cfg)
    else:
        open_type = rules.UNDETERMINED
        notes.append("no prints in the opening period: open type undetermined")

    # --- day type -------------------------------------------------------------------------------
    if not spec.trading_day:
        day_type = rules.NOT_REGULAR
    elif ib_high_t is None or not ib_complete:
        day_type = rules.UNDETERMINED
    else:
        if prior is not None and prior.typical_range:
            typical = prior.typical_range * inv
        else:
            typical = cfg.typical_range_pct / 100.0 * open_t
        day_type = rules.classify_day(high_t, low_t, last_t, ib_high_t, ib_low_t, tpo, row0, tpr,
                                      ex.singles, typical, cfg)

    periods = tuple([TPOPeriod(period_letter(i), i, spec.open_ms + i * pms, round(lo * tick, nd),
                               round(hi * tick, nd)) for i, lo, hi in zip(p_idx, p_lo, p_hi)])
    tpo.setflags(write=False)
    volume.setflags(write=False)
    return AuctionProfile(
        **common, row_low=row_px(0), tpo=tpo, volume=volume, periods=periods, open=px(open_t),
        high=px(high_t), low=px(low_t), last=px(last_t), poc=row_px(poc_i), vah=row_px(va_hi),
        val=row_px(va_lo), tpo_total=tpo_total, va_tpo=int(va_tpo), volume_poc=row_px(vpoc_i),
        volume_vah=row_px(vva_hi), volume_val=row_px(vva_lo), volume_total=vol_total,
        volume_source=source,
        ib_high=px(ib_high_t) if ib_high_t is not None else None,
        ib_low=px(ib_low_t) if ib_low_t is not None else None,
        ib_range=px(ib_high_t - ib_low_t) if ib_high_t is not None else None,
        ib_complete=ib_complete, ext_up=px(ext_up_t), ext_down=px(ext_down_t),
        ext_up_ib=ext_up_ib, ext_down_ib=ext_down_ib, single_prints=singles,
        selling_tail=selling_tail, buying_tail=buying_tail, poor_high=ex.poor_high,
        poor_low=ex.poor_low, excess_high=ex.excess_high, excess_low=ex.excess_low,
        open_type=open_type, open_type_final=a_over, day_type=day_type, day_type_final=closed,
        open_vs_prior_value=open_vs_value, open_vs_prior_range=open_vs_range,
        value_relation=relation, balance=balance, notes=tuple(notes))
