"""Batch Market Profile: the same profiles as :class:`trading_core.profile.LiveAuctionEngine`,
computed from a whole polars DataFrame (or a DuckDB query) at once with numpy.

Input frames (one instrument; rows in feed order; several sessions allowed):

- ticks: ``ts`` (int epoch ms UTC, or a polars Datetime), ``price`` (or ``ltp``), optionally
  ``qty`` (or ``ltq``; units) or ``cum_volume`` (the day's cumulative volume);
- bars: ``ts`` (bar *open* time), ``open``, ``high``, ``low``, ``close``, optionally ``volume``.

An ``instrument_key`` column, if present, must hold one value. Extra columns are ignored.

Exactness: the frame is reduced, session by session, to the same
:class:`trading_core.profile_model.SessionState` the engine accumulates, following the engine's
rules to the letter (stale rows of an earlier date dropped, pre-open/post-close/halt rows counted
not profiled, leading reference prints skipped, first-reach order of each period's high and low),
and :func:`trading_core.profile_model.build_profile` does the rest. So
``compute_profiles(df)[-1] == engine.profile`` after feeding the same rows one by one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

import numpy as np
import polars as pl

from trading_core import profile_rules as rules
from trading_core.profile_config import ProfileConfig, config_for, price_decimals
from trading_core.profile_model import (VOL_BAR, VOL_CUM, VOL_LTQ, AuctionProfile, PriorSession,
                                        PriorTracker, SessionState, build_profile)
from trading_core.sessions import DAY_MS, IST_OFFSET_MS, SessionCalendar, infer_sessions

_BIG = np.int64(1) << np.int64(62)


@dataclasses.dataclass(slots=True)
class _Input:
    ts: np.ndarray
    ts_end: np.ndarray
    o: np.ndarray
    h: np.ndarray
    lo: np.ndarray
    c: np.ndarray
    q: np.ndarray
    kind: int
    is_bar: bool


def _column(df: pl.DataFrame, *names: str) -> str | None:
    for name in names:
        if name in df.columns:
            return name
    return None


def _numeric(df: pl.DataFrame, name: str, dtype) -> np.ndarray:
    s = df.get_column(name)
    if s.null_count():
        raise ValueError(f"column {name!r} has {s.null_count()} null value(s)")
    return s.to_numpy().astype(dtype, copy=False)


def _read(df: pl.DataFrame, cfg: ProfileConfig, bar_interval_ms: int) -> _Input:
    if "ts" not in df.columns:
        raise ValueError(f"frame needs a 'ts' column (epoch ms UTC), has {df.columns}")
    ts_s = df.get_column("ts")
    if isinstance(ts_s.dtype, pl.Datetime):
        ts_s = ts_s.dt.epoch("ms")
    if ts_s.null_count():
        raise ValueError("column 'ts' has null values")
    ts = ts_s.to_numpy().astype(np.int64, copy=False)
    inv = cfg.inv_tick
    if all(c in df.columns for c in ("open", "high", "low", "close")):
        px = [_numeric(df, c, np.float64) for c in ("open", "high", "low", "close")]
        for arr in px:
            if not np.isfinite(arr).all():
                raise ValueError("non-finite bar price")
        o, h, lo, c = (np.rint(a * inv).astype(np.int64) for a in px)
        vcol = _column(df, "volume")
        q = _numeric(df, vcol, np.int64) if vcol else np.zeros(len(ts), dtype=np.int64)
        return _Input(ts, ts + bar_interval_ms, o, np.maximum(np.maximum(h, o), c),
                      np.minimum(np.minimum(lo, o), c), c, q, VOL_BAR, True)
    pcol = _column(df, "price", "ltp")
    if pcol is None:
        raise ValueError(f"frame needs 'price'/'ltp' (ticks) or open/high/low/close (bars), has {df.columns}")
    price = _numeric(df, pcol, np.float64)
    if not np.isfinite(price).all():
        raise ValueError("non-finite tick price")
    t = np.rint(price * inv).astype(np.int64)
    qcol = _column(df, "qty", "ltq")
    if qcol is not None:
        q, kind = _numeric(df, qcol, np.int64), VOL_LTQ
    elif "cum_volume" in df.columns:
        q, kind = _numeric(df, "cum_volume", np.int64), VOL_CUM
    else:
        q, kind = np.zeros(len(ts), dtype=np.int64), VOL_LTQ
    return _Input(ts, ts, t, t, t, t, q, kind, False)


def _session_state(x: _Input, a: int, b: int, spec, cfg: ProfileConfig) -> SessionState:
    """Reduce rows ``a:b`` (one IST date, feed order) to the engine's session state."""
    ts = x.ts[a:b]
    q = x.q[a:b]
    if x.kind == VOL_CUM:
        prev = np.empty_like(q)
        prev[1:] = q[:-1]
        ok = np.zeros(len(q), dtype=bool)
        ok[1:] = q[1:] >= q[:-1]
        q = np.where(ok, q - prev, 0)
    pre = ts < spec.open_ms
    out = ~pre & (ts >= spec.close_ms)
    for start, end in spec.breaks:
        out |= ~pre & (ts >= start) & (ts < end)
    ins = ~(pre | out)
    refs = 0
    if x.kind == VOL_LTQ and cfg.reference_print_qty is not None:
        real = ins & (q != cfg.reference_print_qty)
        first_real = int(real.argmax()) if real.any() else len(ts)
        ref = ins & (q == cfg.reference_print_qty)
        ref[first_real:] = False
        refs = int(ref.sum())
        ins &= ~ref
    pre_idx = np.flatnonzero(pre)
    state = SessionState(
        spec=spec, clock_ms=int(x.ts_end[a:b].max()), pre_prints=len(pre_idx),
        outside_prints=int(out.sum()), reference_prints=refs,
        preopen_t=int(x.c[a + pre_idx[-1]]) if len(pre_idx) else None)
    sel = np.flatnonzero(ins)
    n = len(sel)
    if n == 0:
        return state
    g = sel + a
    hi, lo, o, c = x.h[g], x.lo[g], x.o[g], x.c[g]
    q = q[sel]
    k2 = 2 * np.arange(n, dtype=np.int64)
    if x.is_bar:
        up = (c >= o).astype(np.int64)
        hik, lok = k2 + up, k2 + (1 - up)
    else:
        hik = lok = k2
    tsel = ts[sel]
    p = (tsel - spec.open_ms) // cfg.period_ms
    order = np.argsort(p, kind="stable")
    ps = p[order]
    first = np.empty(n, dtype=bool)
    first[0] = True
    first[1:] = ps[1:] != ps[:-1]
    starts = np.flatnonzero(first)
    ends = np.append(starts[1:], n) - 1
    gid = np.cumsum(first) - 1
    h_o, l_o = hi[order], lo[order]
    p_hi = np.maximum.reduceat(h_o, starts)
    p_lo = np.minimum.reduceat(l_o, starts)
    p_hik = np.minimum.reduceat(np.where(h_o == p_hi[gid], hik[order], _BIG), starts)
    p_lok = np.minimum.reduceat(np.where(l_o == p_lo[gid], lok[order], _BIG), starts)
    state.p_idx, state.p_hi, state.p_lo = ps[starts], p_hi, p_lo
    state.p_hik, state.p_lok, state.p_last = p_hik, p_lok, c[order][ends]
    state.open_t, state.last_t, state.prints = int(o[0]), int(c[-1]), n
    running = np.maximum.accumulate(tsel)
    state.last_ts = int(running[-1])
    gap = tsel[1:] - running[:-1] > cfg.gap_minutes * 60_000
    if gap.any():
        state.gaps = tuple(zip(running[:-1][gap].tolist(), tsel[1:][gap].tolist()))
    pos = q > 0
    if pos.any():
        tpr = cfg.ticks_per_row
        if x.is_bar:
            r_lo, r_hi, qq = lo[pos] // tpr, hi[pos] // tpr, q[pos]
            base, rem = np.divmod(qq, r_hi - r_lo + 1)
            r0 = int(r_lo.min())
            diff = np.zeros(int(r_hi.max()) - r0 + 2, dtype=np.int64)
            np.add.at(diff, r_lo - r0, base)
            np.add.at(diff, r_hi - r0 + 1, -base)
            has = rem > 0
            np.add.at(diff, r_lo[has] - r0, 1)
            np.add.at(diff, r_lo[has] - r0 + rem[has], -1)
            vol = np.cumsum(diff[:-1])
            nz = np.flatnonzero(vol)
            state.vol_rows, state.vol_qty = nz + r0, vol[nz]
        else:
            rows, inverse = np.unique(c[pos] // tpr, return_inverse=True)
            sums = np.zeros(len(rows), dtype=np.int64)
            np.add.at(sums, inverse, q[pos])
            state.vol_rows, state.vol_qty = rows, sums
        state.volume_kinds = x.kind
    return state


def compute_profiles(df: pl.DataFrame, instrument_key: str = "", config: ProfileConfig | None = None,
                     calendar: SessionCalendar | None = None, prior: PriorSession | None = None,
                     infer: bool = False, bar_interval_ms: int = 60_000) -> list[AuctionProfile]:
    """Profiles of every session in ``df`` (see the module doc for the columns), oldest first.

    Every session but the last is closed (a later one began), exactly as in the engine; the last
    is closed when the data reaches its close. Each day's prior references come from the previous
    trading day in the frame (the first from ``prior``). ``infer=True`` adds sessions the data
    shows outside the calendar's hours (:func:`trading_core.sessions.infer_sessions`); feed the
    engine the same calendar to compare. Raises ``ValueError`` on missing/null columns, non-finite
    prices or several instruments in one frame.
    """
    if "instrument_key" in df.columns:
        keys = df.get_column("instrument_key").unique().to_list()
        if len(keys) > 1:
            raise ValueError(f"frame holds several instruments {keys[:5]}; filter it first")
        if keys and not instrument_key:
            instrument_key = keys[0]
    cfg = config if config is not None else config_for(instrument_key)
    cal = calendar if calendar is not None else SessionCalendar()
    if df.height == 0:
        return []
    x = _read(df, cfg, bar_interval_ms)
    day = (x.ts + IST_OFFSET_MS) // DAY_MS
    keep = day >= np.maximum.accumulate(day)
    if not keep.all():
        x = _Input(x.ts[keep], x.ts_end[keep], x.o[keep], x.h[keep], x.lo[keep], x.c[keep],
                   x.q[keep], x.kind, x.is_bar)
        day = day[keep]
    if infer:
        cal = cal.with_special(infer_sessions(x.ts, cal))
    bounds = np.flatnonzero(np.diff(day)) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [len(day)]))
    tracker = PriorTracker(cfg.history_sessions, prior)
    out: list[AuctionProfile] = []
    for i, (a, b) in enumerate(zip(starts.tolist(), ends.tolist())):
        state = _session_state(x, a, b, cal.spec(int(day[a])), cfg)
        state.closed = i < len(starts) - 1
        profile = build_profile(state, cfg, instrument_key, tracker.prior)
        out.append(profile)
        if state.closed:
            tracker.push(profile)
    return out


def compute_profile(df: pl.DataFrame, **kwargs) -> AuctionProfile | None:
    """The profile of the last session in ``df`` (``None`` for an empty frame); the earlier
    sessions only provide the prior-day references. Arguments as :func:`compute_profiles`."""
    profiles = compute_profiles(df, **kwargs)
    return profiles[-1] if profiles else None


def profile_from_duckdb(con, sql: str, params: Sequence[Any] | None = None, **kwargs) -> list[AuctionProfile]:
    """Run ``sql`` on a DuckDB connection (rows of one instrument, columns as
    :func:`compute_profiles` expects, ordered as fed, e.g. ``ORDER BY ts``), fetch it as polars
    and compute its profiles. The only function here that touches a database."""
    rel = con.sql(sql, params=params) if params is not None else con.sql(sql)
    return compute_profiles(rel.pl(), **kwargs)


def profiles_table(profiles: Iterable[AuctionProfile]) -> pl.DataFrame:
    """One row per session: date, kind, open type, day type, IB, POC/VAH/VAL, range, close."""
    rows = [dict(date=p.session, kind=p.session_kind, open_type=p.open_type, day_type=p.day_type,
                 ib_high=p.ib_high, ib_low=p.ib_low, poc=p.poc, vah=p.vah, val=p.val,
                 vpoc=p.volume_poc, high=p.high, low=p.low, close=p.last, prints=p.prints)
            for p in profiles]
    return pl.DataFrame(rows)


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class CompositeProfile:
    """Profile of several sessions together (Dalton: composite value). ``sessions``: their
    dates; rows of ``row_size`` from ``row_low``; ``tpo``/``volume`` summed per row (int64);
    POC / value area by the same rules as a day (ties to the composite's middle)."""

    sessions: tuple[str, ...]
    row_size: float
    row_low: float
    tpo: np.ndarray
    volume: np.ndarray
    high: float
    low: float
    poc: float
    vah: float
    val: float
    volume_poc: float
    volume_vah: float
    volume_val: float
    volume_source: str


def composite_profile(profiles: Sequence[AuctionProfile], n_sessions: int | None = 5,
                      trading_days_only: bool = True, value_area_percent: int = 70) -> CompositeProfile:
    """Composite of the last ``n_sessions`` non-empty profiles (all if ``None``), by default
    trading days only (no Muhurat). Raises ``ValueError`` when none qualify or row sizes differ."""
    chosen = [p for p in profiles if not p.empty and (p.trading_day or not trading_days_only)]
    if n_sessions is not None:
        chosen = chosen[-n_sessions:] if n_sessions > 0 else []
    if not chosen:
        raise ValueError("no session to build a composite from")
    rs, tick = chosen[0].row_size, chosen[0].tick_size
    if any(p.row_size != rs or p.tick_size != tick for p in chosen):
        raise ValueError("composite needs one row size and tick size")
    tpr = int(round(rs / tick))
    firsts = [int(round(p.row_low / tick)) // tpr for p in chosen]
    r0 = min(firsts)
    n = max(f + len(p.tpo) for f, p in zip(firsts, chosen)) - r0
    tpo = np.zeros(n, dtype=np.int64)
    vol = np.zeros(n, dtype=np.int64)
    for f, p in zip(firsts, chosen):
        tpo[f - r0:f - r0 + len(p.tpo)] += p.tpo
        if p.volume_source != "tpo":
            vol[f - r0:f - r0 + len(p.volume)] += p.volume
    nd = price_decimals(tick)

    def row_px(i: int) -> float:
        return round((r0 + i) * tpr * tick, nd)

    poc = rules.select_poc(tpo)
    lo, hi, _ = rules.value_area(tpo, poc, value_area_percent)
    if vol.sum() > 0:
        vpoc = rules.select_poc(vol)
        vlo, vhi, _ = rules.value_area(vol, vpoc, value_area_percent)
        source = "volume"
    else:
        vpoc, vlo, vhi, source = poc, lo, hi, "tpo"
    tpo.setflags(write=False)
    vol.setflags(write=False)
    return CompositeProfile(
        sessions=tuple(p.session for p in chosen), row_size=rs, row_low=row_px(0), tpo=tpo,
        volume=vol, high=max(p.high for p in chosen), low=min(p.low for p in chosen),
        poc=row_px(poc), vah=row_px(hi), val=row_px(lo), volume_poc=row_px(vpoc),
        volume_vah=row_px(vhi), volume_val=row_px(vlo), volume_source=source)
