"""Live Market Profile (Auction Market Theory) of one instrument, updated on every tick.

    engine = LiveAuctionEngine("NSE_FO|NIFTY22NOVFUT")        # config from profile_config
    engine.on_tick(ts_ms, price, qty)                          # or on_bar(...), on_message(tick)
    p = engine.profile                                         # AuctionProfile: POC, VA, IB, ...
    if throttle.should_publish(wall_ms, engine.version, engine.period_key):
        bus.publish(messages.profile_topic(key), engine.to_message())

Design: a tick updates, in O(1), only the high/low/last of the current 30-minute TPO period, the
volume at its row, and a few counters (:meth:`LiveAuctionEngine.on_tick` has a fast path for the
common case "same period as the previous print"). Everything else (TPO histogram, POC, value area,
IB, tails, open and day type...) is computed lazily by
:func:`trading_core.profile_model.build_profile` when :attr:`LiveAuctionEngine.profile` is read,
and cached until the next change. The batch path (:mod:`trading_core.profile_batch`) builds the
very same per-period state from a DataFrame and calls the same function, so both agree exactly.

Modules: :mod:`~trading_core.sessions` (calendar, IST, TPO letters), :mod:`~trading_core.profile_config`
(row size and thresholds per instrument), :mod:`~trading_core.profile_rules` (the AMT rules and their
sources: CBOT *Market Profile Handbook*; Dalton, *Mind Over Markets*; Steidlmayer),
:mod:`~trading_core.profile_model` (state -> :class:`AuctionProfile`), this module (live engine,
publish throttle), :mod:`~trading_core.profile_batch` (DataFrame / DuckDB, composites).

The engine does no I/O. Timestamps are epoch ms UTC; sessions follow
:class:`trading_core.sessions.SessionCalendar` (IST). A print of a later IST date closes the
current session (it moves to :attr:`LiveAuctionEngine.history` and becomes the prior day of the
next one) and starts a new session.
"""

from __future__ import annotations

import collections
import math

import numpy as np

from trading_core import messages as m
from trading_core.profile_batch import CompositeProfile, composite_profile
from trading_core.profile_config import ProfileConfig, config_for
from trading_core.profile_model import (VOL_BAR, VOL_CUM, VOL_LTQ, AuctionProfile, PriorSession,
                                        PriorTracker, SessionState, build_profile)
from trading_core.sessions import DAY_MS, IST_OFFSET_MS, SessionCalendar, SessionSpec

_NEG = -(1 << 62)
_INTERVALS = {"s": 1_000, "m": 60_000, "h": 3_600_000}


def interval_ms(interval: str) -> int:
    """Milliseconds of a candle interval such as ``"1m"``, ``"30s"``, ``"1h"``. Raises ``ValueError``."""
    unit = _INTERVALS.get(interval[-1:])
    if unit is None or not interval[:-1].isdigit():
        raise ValueError(f"unknown candle interval {interval!r}")
    return int(interval[:-1]) * unit


class LiveAuctionEngine:
    """Incremental Market Profile of one instrument (all sessions it is fed, one at a time).

    ``config``: :class:`ProfileConfig` (default :func:`config_for` the key); ``calendar``:
    session hours (default NSE, with the known special sessions); ``prior``: the previous trading
    day's references when the engine starts mid-history (later days chain automatically);
    ``keep_sessions``: finished sessions kept in :attr:`history`.

    Feeding: :meth:`on_tick` (price, LTQ), :meth:`on_tick_cum` (price, cumulative day volume),
    :meth:`on_bar` (OHLCV bar, ``ts`` = bar open time), :meth:`on_ticks` (numpy chunk),
    :meth:`on_message` (bus ``Tick``/``Candle``), :meth:`on_time` (clock only, e.g. a timer, so
    periods and the session close even without prints). Prints of an earlier date than the
    current session are ignored (:attr:`stale_prints`).

    Reading: :attr:`profile` (:class:`AuctionProfile`, ``None`` before anything was fed),
    :meth:`to_message`, :attr:`version` (changes whenever the profile may have changed),
    :attr:`period_key` (changes when a TPO period or the session closes), :attr:`history`,
    :attr:`prior`, :meth:`composite`.
    """

    __slots__ = (
        "instrument_key", "config", "calendar", "_tpr", "_inv", "_pms", "_gap_ms", "_refq",
        "_tracker", "_history", "_seq", "_ev", "_stale", "_cache", "_cache_ver",
        "_spec", "_day", "_open_ms", "_close_ms", "_clock", "_lastp", "_w_lo", "_w_hi",
        "_p_idx", "_p_hi", "_p_lo", "_p_hik", "_p_lok", "_p_last", "_periods", "_vol",
        "_open_t", "_last_t", "_seq0", "_pre", "_out", "_refs", "_preopen", "_seen", "_gaps",
        "_vk", "_last_cum", "_closed")

    def __init__(self, instrument_key: str, config: ProfileConfig | None = None,
                 calendar: SessionCalendar | None = None, prior: PriorSession | None = None,
                 keep_sessions: int = 30) -> None:
        self.instrument_key = instrument_key
        self.config = cfg = config if config is not None else config_for(instrument_key)
        self.calendar = calendar if calendar is not None else SessionCalendar()
        self._tpr = cfg.ticks_per_row
        self._inv = cfg.inv_tick
        self._pms = cfg.period_ms
        self._gap_ms = cfg.gap_minutes * 60_000
        self._refq = cfg.reference_print_qty
        self._tracker = PriorTracker(cfg.history_sessions, prior)
        self._history: collections.deque[AuctionProfile] = collections.deque(maxlen=max(1, keep_sessions))
        self._seq = 0
        self._ev = 0
        self._stale = 0
        self._cache: AuctionProfile | None = None
        self._cache_ver = -1
        self._spec: SessionSpec | None = None
        self._day = _NEG
        self._open_ms = self._close_ms = 0
        self._clear_session()

    # --- session bookkeeping --------------------------------------------------------------------
    def _clear_session(self) -> None:
        self._clock = _NEG
        self._lastp = _NEG
        self._w_lo = self._w_hi = 0
        self._p_idx = -1
        self._p_hi = self._p_lo = self._p_hik = self._p_lok = self._p_last = 0
        self._periods: dict[int, list[int]] = {}
        self._vol: dict[int, int] = {}
        self._open_t = self._last_t = self._preopen = None
        self._seq0 = self._seq
        self._pre = self._out = self._refs = 0
        self._seen = False
        self._gaps: list[tuple[int, int]] = []
        self._vk = 0
        self._last_cum = None
        self._closed = False

    def _start(self, day: int) -> None:
        day = int(day)
        spec = self.calendar.spec(day)
        self._spec = spec
        self._day = day
        self._open_ms, self._close_ms = spec.open_ms, spec.close_ms
        self._clear_session()

    def _rollover(self, day: int) -> None:
        if self._spec is not None:
            self._closed = True
            final = self._build()
            self._history.append(final)
            self._tracker.push(final)
        self._start(day)

    # --- feeding --------------------------------------------------------------------------------
    def on_tick(self, ts: int, price: float, qty: int = 0) -> bool:
        """One trade print: ``ts`` epoch ms UTC, ``price`` rupees, ``qty`` traded quantity in
        units (LTQ; 0 when the instrument has no volume). O(1). Returns True when the print was
        profiled (False: outside the session hours, stale, or an opening reference print).
        Raises ``ValueError``/``OverflowError`` on a NaN/infinite price."""
        if self._w_lo <= ts < self._w_hi:            # fast path: same period as the last print
            t = round(price * self._inv)
            k = self._seq
            self._seq = k + 1
            if t > self._p_hi:
                self._p_hi = t
                self._p_hik = k + k
            elif t < self._p_lo:
                self._p_lo = t
                self._p_lok = k + k
            self._p_last = self._last_t = t
            if qty > 0:
                r = t // self._tpr
                vol = self._vol
                vol[r] = vol.get(r, 0) + qty
                self._vk |= VOL_LTQ
            if ts > self._lastp:                     # (the clock is max(_clock, _lastp))
                if ts - self._lastp > self._gap_ms:
                    self._gaps.append((self._lastp, ts))
                self._lastp = ts
            return True
        return self._ingest(ts, ts, price, price, price, price, qty, VOL_LTQ, False)

    def on_tick_cum(self, ts: int, price: float, cum_volume: int) -> bool:
        """A print whose feed gives the day's cumulative volume instead of LTQ (e.g. Upstox
        ``vtt``): the print's quantity is the increase since the previous print of the same
        day (0 for the day's first print or when the counter goes down)."""
        return self._ingest(ts, ts, price, price, price, price, cum_volume, VOL_CUM, False)

    def on_bar(self, ts: int, open: float, high: float, low: float, close: float,
               volume: int = 0, interval_ms: int = 60_000) -> bool:
        """One OHLCV bar; ``ts`` = the bar's *open* time (epoch ms UTC), which decides its
        session and TPO period. The bar prints a TPO on every row of its low-high range; its
        volume is spread evenly over those rows (integer units, the remainder one unit each on
        the lowest rows). Path inside the bar, for the open type: open, low, high, close when the
        bar closed at or above its open, else open, high, low, close. Returns True when
        profiled. Raises ``ValueError`` on a non-finite price."""
        if not (math.isfinite(open) and math.isfinite(high) and math.isfinite(low) and math.isfinite(close)):
            raise ValueError(f"non-finite bar prices at ts={ts}: {open}, {high}, {low}, {close}")
        return self._ingest(ts, ts + interval_ms, open, high, low, close, volume, VOL_BAR, True)

    def on_message(self, msg: m.Tick | m.Candle) -> bool:
        """Feed a bus message: a ``Tick`` (ltp, ltq) or a final ``Candle`` (non-final candles
        are ignored: the bar is still forming). Returns True when profiled."""
        if isinstance(msg, m.Tick):
            return self.on_tick(msg.ts, msg.ltp, msg.ltq)
        if isinstance(msg, m.Candle):
            if not msg.final:
                return False
            return self.on_bar(msg.ts, msg.open, msg.high, msg.low, msg.close, msg.volume,
                               interval_ms(msg.interval))
        raise TypeError(f"cannot profile a {type(msg).__name__}")

    def on_time(self, now_ms: int) -> None:
        """Advance the clock without a print (wall time, epoch ms UTC): closes TPO periods and,
        after the close or on a later date, the session. Never starts a new session."""
        day = (now_ms + IST_OFFSET_MS) // DAY_MS
        if self._spec is None:
            self._start(day)
        if day < self._day:
            return
        if day > self._day:
            now_ms = max(now_ms, self._close_ms)
        if now_ms > max(self._clock, self._lastp):
            self._clock = now_ms
            self._ev += 1

    def on_ticks(self, ts, price, qty=None) -> int:
        """Feed a chunk of ticks (array-likes of equal length: epoch ms, rupees, units); the
        same result as calling :meth:`on_tick` for each, in order, but runs of ticks inside the
        current period are applied with numpy. Returns the number of ticks profiled."""
        ts = np.ascontiguousarray(ts, dtype=np.int64)
        price = np.ascontiguousarray(price, dtype=np.float64)
        n = len(ts)
        qty = np.zeros(n, dtype=np.int64) if qty is None else np.ascontiguousarray(qty, dtype=np.int64)
        if len(price) != n or len(qty) != n:
            raise ValueError("ts, price and qty must have the same length")
        if n and not np.isfinite(price).all():
            raise ValueError("non-finite price in tick chunk")
        ticks = np.rint(price * self._inv).astype(np.int64)
        done = 0
        i = 0
        while i < n:
            lo, hi = self._w_lo, self._w_hi
            if lo < hi:
                j = _run_end(ts, i, lo, hi)
                if j > i:
                    self._apply_run(ts[i:j], ticks[i:j], qty[i:j])
                    done += j - i
                    i = j
                    continue
            done += self.on_tick(int(ts[i]), float(price[i]), int(qty[i]))
            i += 1
        return done

    def _apply_run(self, ts: np.ndarray, t: np.ndarray, q: np.ndarray) -> None:
        k0 = self._seq
        self._seq = k0 + len(t)
        i = int(t.argmax())
        if int(t[i]) > self._p_hi:
            self._p_hi = int(t[i])
            self._p_hik = 2 * (k0 + i)
        i = int(t.argmin())
        if int(t[i]) < self._p_lo:
            self._p_lo = int(t[i])
            self._p_lok = 2 * (k0 + i)
        self._p_last = self._last_t = int(t[-1])
        pos = q > 0
        if pos.any():
            rows, inverse = np.unique(t[pos] // self._tpr, return_inverse=True)
            sums = np.zeros(len(rows), dtype=np.int64)
            np.add.at(sums, inverse, q[pos])
            vol = self._vol
            for r, s in zip(rows.tolist(), sums.tolist()):
                vol[r] = vol.get(r, 0) + s
            self._vk |= VOL_LTQ
        running = np.maximum.accumulate(ts)
        before = np.empty_like(ts)
        before[0] = self._lastp
        before[1:] = np.maximum(running[:-1], self._lastp)
        gap = ts - before > self._gap_ms
        if gap.any():
            for a, b in zip(before[gap].tolist(), ts[gap].tolist()):
                self._gaps.append((a, b))
        self._lastp = max(self._lastp, int(running[-1]))

    def _ingest(self, ts: int, ts_end: int, o: float, h: float, lo: float, c: float, qty: int,
                kind: int, is_bar: bool) -> bool:
        day = (ts + IST_OFFSET_MS) // DAY_MS
        if day != self._day:
            if day < self._day:
                self._stale += 1
                return False
            self._rollover(day)
        self._ev += 1
        if ts_end > self._clock:
            self._clock = ts_end
        if kind == VOL_CUM:
            cum, last_cum = qty, self._last_cum
            qty = cum - last_cum if last_cum is not None and cum >= last_cum else 0
            self._last_cum = cum
        inv = self._inv
        if ts < self._open_ms:
            self._pre += 1
            self._preopen = round(c * inv)
            return False
        spec = self._spec
        if ts >= self._close_ms or (spec.breaks and spec.in_break(ts)):
            self._out += 1
            return False
        if not self._seen:
            if kind == VOL_LTQ and self._refq is not None and qty == self._refq:
                self._refs += 1
                return False
            self._seen = True
        k = self._seq
        self._seq = k + 1
        if is_bar:
            ot, ct = round(o * inv), round(c * inv)
            hi = max(round(h * inv), ot, ct)
            low = min(round(lo * inv), ot, ct)
            if ct >= ot:                     # open -> low -> high -> close
                lok, hik = 2 * k, 2 * k + 1
            else:                            # open -> high -> low -> close
                hik, lok = 2 * k, 2 * k + 1
        else:
            ot = ct = hi = low = round(c * inv)
            hik = lok = 2 * k
        p = (ts - self._open_ms) // self._pms
        if p == self._p_idx:
            if hi > self._p_hi:
                self._p_hi, self._p_hik = hi, hik
            if low < self._p_lo:
                self._p_lo, self._p_lok = low, lok
            self._p_last = ct
        elif p > self._p_idx:
            if self._p_idx >= 0:
                self._periods[self._p_idx] = [self._p_hi, self._p_lo, self._p_hik, self._p_lok, self._p_last]
            self._p_idx = p
            self._p_hi, self._p_lo, self._p_hik, self._p_lok, self._p_last = hi, low, hik, lok, ct
            start = self._open_ms + p * self._pms
            end = min(start + self._pms, self._close_ms)
            if any(a < end and b > start for a, b in spec.breaks):
                self._w_lo = self._w_hi = 0          # a halt inside: every print takes the slow path
            else:
                self._w_lo, self._w_hi = start, end
        else:
            rec = self._periods.get(p)
            if rec is None:
                self._periods[p] = [hi, low, hik, lok, ct]
            else:
                if hi > rec[0]:
                    rec[0], rec[2] = hi, hik
                if low < rec[1]:
                    rec[1], rec[3] = low, lok
                rec[4] = ct
        if self._open_t is None:
            self._open_t = ot
        self._last_t = ct
        if qty > 0:
            vol = self._vol
            tpr = self._tpr
            if is_bar:
                r_lo, r_hi = low // tpr, hi // tpr
                n_rows = r_hi - r_lo + 1
                base, rem = divmod(qty, n_rows)
                for r in range(r_lo, r_hi + 1):
                    add = base + (1 if r - r_lo < rem else 0)
                    if add:
                        vol[r] = vol.get(r, 0) + add
            else:
                r = ct // tpr
                vol[r] = vol.get(r, 0) + qty
            self._vk |= kind
        if ts > self._lastp:
            if self._lastp != _NEG and ts - self._lastp > self._gap_ms:
                self._gaps.append((self._lastp, ts))
            self._lastp = ts
        return True

    # --- reading --------------------------------------------------------------------------------
    def _state(self) -> SessionState:
        clock = max(self._clock, self._lastp)
        periods = dict(self._periods)
        if self._p_idx >= 0:
            periods[self._p_idx] = [self._p_hi, self._p_lo, self._p_hik, self._p_lok, self._p_last]
        idx = sorted(periods)
        arr = np.array([periods[i] for i in idx], dtype=np.int64).reshape(-1, 5)
        vrows = sorted(self._vol)
        return SessionState(
            spec=self._spec, clock_ms=None if clock == _NEG else int(clock),
            closed=self._closed, p_idx=np.array(idx, dtype=np.int64), p_hi=arr[:, 0].copy(),
            p_lo=arr[:, 1].copy(), p_hik=arr[:, 2].copy(), p_lok=arr[:, 3].copy(),
            p_last=arr[:, 4].copy(), vol_rows=np.array(vrows, dtype=np.int64),
            vol_qty=np.array([self._vol[r] for r in vrows], dtype=np.int64),
            open_t=self._open_t, last_t=self._last_t,
            last_ts=None if self._lastp == _NEG else int(self._lastp), prints=self._seq - self._seq0,
            preopen_t=self._preopen, pre_prints=self._pre, outside_prints=self._out,
            reference_prints=self._refs, gaps=tuple((int(a), int(b)) for a, b in self._gaps),
            volume_kinds=self._vk)

    def _build(self) -> AuctionProfile:
        return build_profile(self._state(), self.config, self.instrument_key, self._tracker.prior)

    @property
    def version(self) -> int:
        """A counter that changes whenever the profile may have changed (monotonic)."""
        return self._seq + self._ev

    @property
    def profile(self) -> AuctionProfile | None:
        """The current session's :class:`AuctionProfile` (built lazily, cached until the next
        change); ``None`` before the first print or :meth:`on_time`."""
        if self._spec is None:
            return None
        ver = self._seq + self._ev
        if self._cache_ver != ver:
            self._cache = self._build()
            self._cache_ver = ver
        return self._cache

    @property
    def period_key(self) -> tuple[int, int, bool]:
        """``(IST day, current period index by the clock, session closed)``: changes exactly when
        a TPO period closes or the session ends (for :class:`PublishThrottle`)."""
        clock = max(self._clock, self._lastp)
        if self._spec is None or clock == _NEG:
            return (self._day, -1, False)
        closed = self._closed or clock >= self._close_ms
        if clock < self._open_ms:
            return (self._day, -1, closed)
        n = max(1, self._spec.n_periods(self._pms))
        return (self._day, min((clock - self._open_ms) // self._pms, n - 1), closed)

    @property
    def history(self) -> list[AuctionProfile]:
        """Finished sessions, oldest first (at most ``keep_sessions``)."""
        return list(self._history)

    @property
    def prior(self) -> PriorSession | None:
        """The prior trading day's references used by the current session."""
        return self._tracker.prior

    @property
    def stale_prints(self) -> int:
        """Prints ignored because their date was before the current session's."""
        return self._stale

    def to_message(self) -> m.Profile | None:
        """The current profile as a bus message (``None`` before anything was fed)."""
        p = self.profile
        return None if p is None else p.to_message()

    def composite(self, n_sessions: int = 5, include_current: bool = True) -> CompositeProfile:
        """Composite profile of the last ``n_sessions`` trading days this engine saw (see
        :func:`trading_core.profile_batch.composite_profile`)."""
        profiles = self.history
        cur = self.profile
        if include_current and cur is not None:
            profiles.append(cur)
        return composite_profile(profiles, n_sessions)


def _run_end(ts: np.ndarray, i: int, lo: int, hi: int) -> int:
    """First index >= i whose ts lies outside [lo, hi) (len(ts) if none)."""
    n = len(ts)
    j, step = i, 64
    while j < n:
        block = ts[j:j + step]
        bad = (block < lo) | (block >= hi)
        if bad.any():
            return j + int(bad.argmax())
        j += len(block)
        step = min(step * 2, 1 << 16)
    return n


class PublishThrottle:
    """When to publish ``profile.<instrument_key>``: when the profile changed (``version``) and
    at least ``min_interval_ms`` of wall time passed since the last publication, or at once when
    a TPO period or the session closed (``period_key`` changed). Call
    :meth:`should_publish` after each update *and* from a timer, so a change held back by the
    rate limit still goes out within a second. Pure: no clock of its own."""

    __slots__ = ("min_interval_ms", "_last_ms", "_last_version", "_last_period")

    def __init__(self, min_interval_ms: int = 1000) -> None:
        self.min_interval_ms = min_interval_ms
        self._last_ms: int | None = None
        self._last_version: int | None = None
        self._last_period = None

    def should_publish(self, now_ms: int, version: int, period_key) -> bool:
        """True (and recorded as published) when the caller should publish now."""
        if version == self._last_version and period_key == self._last_period:
            return False
        if (period_key != self._last_period or self._last_ms is None
                or now_ms - self._last_ms >= self.min_interval_ms):
            self._last_ms = now_ms
            self._last_version = version
            self._last_period = period_key
            return True
        return False
