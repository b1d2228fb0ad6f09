"""A seeded, repeatable random market: the feed used when there is no broker token.

Session clock: ticks are stamped in simulated exchange time, from 09:15 IST of the
start day to 15:30 IST (exclusive), then from 09:15 of the next weekday (Saturday and
Sunday are skipped; holidays are not modelled). Each tick advances the clock by
``tick_interval_ms`` and goes to the next instrument of the watchlist (round-robin).

Prices: per instrument, a log-price Ornstein-Uhlenbeck walk around a "value" anchor
(mean reversion builds balance areas), with occasional trending stretches (20-75
minutes, about 1.5 per day) during which the anchor itself migrates: so a day's Market
Profile shows balance, trend legs and new value, as real ones do. Daily volatility is
about 0.7% (NIFTY), 0.9% (BANKNIFTY), 1.5% (others); each session opens with a small gap.
Start levels: NIFTY ~24000, BANKNIFTY ~52000, anything else ~1000 (rupees), prices
rounded to the 0.05 tick size. ``NSE_INDEX|...`` instruments have ``ltq`` and ``oi`` 0
(an index does not trade); others get random lot-multiple quantities and a slowly
drifting open interest.

Everything random comes from one ``random.Random(seed)``: the same seed, watchlist,
start and interval give the same ticks, on every run and every call of ``ticks()``.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import re
import time
from typing import Callable, Iterable, Iterator

from trading_core.messages import Tick

IST_OFFSET_MS = (5 * 60 + 30) * 60_000
DAY_MS = 86_400_000
OPEN_MS = (9 * 60 + 15) * 60_000  # 09:15 IST, ms after IST midnight
CLOSE_MS = (15 * 60 + 30) * 60_000  # 15:30 IST
SESSION_MS = CLOSE_MS - OPEN_MS
TICK_SIZE = 0.05
_SLEEP_QUANTUM_S = 0.002

_OPTION_RE = re.compile(r"\d(CE|PE)$")


def _profile(key: str) -> tuple[float, float, int]:
    """(start price in rupees, daily volatility as a fraction, lot size in units) of a key."""
    name = key.split("|", 1)[-1].upper().replace(" ", "")
    if _OPTION_RE.search(name):
        return 1000.0, 0.015, 25
    if name in ("NIFTYBANK", "BANKNIFTY") or name.startswith("BANKNIFTY"):
        return 52000.0, 0.009, 15
    if name in ("NIFTY50", "NIFTY") or re.match(r"NIFTY(-|\d|FUT|_)", name):
        return 24000.0, 0.007, 25
    return 1000.0, 0.015, 25


def session_open_ms(day: dt.date) -> int:
    """Epoch ms UTC of 09:15 IST on ``day``."""
    return (day - dt.date(1970, 1, 1)).days * DAY_MS + OPEN_MS - IST_OFFSET_MS


def ist_date(ts_ms: int) -> dt.date:
    """IST calendar date of an epoch-ms UTC instant."""
    return dt.date(1970, 1, 1) + dt.timedelta(days=(ts_ms + IST_OFFSET_MS) // DAY_MS)


def next_weekday(day: dt.date) -> dt.date:
    """The first Monday-Friday date after ``day``."""
    day += dt.timedelta(days=1)
    while day.weekday() >= 5:
        day += dt.timedelta(days=1)
    return day


class _Walk:
    """Price state of one instrument (log price relative to its start level)."""

    __slots__ = ("p0", "sigma", "lot", "index", "x", "anchor", "drift", "trend_left", "oi")

    def __init__(self, key: str, rng: random.Random) -> None:
        p0, sigma, lot = _profile(key)
        self.p0 = p0 * math.exp(rng.gauss(0.0, 0.02))
        self.sigma = sigma
        self.lot = lot
        self.index = key.startswith("NSE_INDEX|")
        self.x = 0.0
        self.anchor = 0.0
        self.drift = 0.0  # log-price drift per ms while trending
        self.trend_left = 0  # ms of trend remaining
        self.oi = 0.0 if self.index else float(lot * rng.randint(20_000, 200_000))

    def new_session(self, rng: random.Random) -> None:
        self.x += rng.gauss(0.0, 0.3 * self.sigma)
        self.anchor = self.x
        self.trend_left = 0
        self.drift = 0.0

    def step(self, dt_ms: int, rng: random.Random) -> float:
        """Advance by ``dt_ms`` of session time; return the new price (rupees, on the tick grid)."""
        f = dt_ms / SESSION_MS  # fraction of a session
        if self.trend_left <= 0 and rng.random() < 1.5 * f:
            minutes = rng.uniform(20, 75)
            self.trend_left = int(minutes * 60_000)
            move = rng.choice((-1.0, 1.0)) * rng.uniform(0.5, 1.5) * self.sigma
            self.drift = move / self.trend_left
        trend = 0.0
        if self.trend_left > 0:
            trend = self.drift * min(dt_ms, self.trend_left)
            self.trend_left -= dt_ms
            self.anchor += trend
        kappa = 6.0  # mean reversion per session: value half-life ~ 0.12 day ~ 45 min
        self.x += kappa * (self.anchor - self.x) * f + trend + self.sigma * math.sqrt(f) * rng.gauss(0.0, 1.0)
        price = round(round(self.p0 * math.exp(self.x) / TICK_SIZE) * TICK_SIZE, 2)
        return max(price, TICK_SIZE)


class SimulatedSource:
    """Seeded random market producing :class:`~trading_core.messages.Tick` (``source="sim"``).

    ``watchlist``: instrument keys (at least one), ticked round-robin. ``seed``: random
    seed. ``speed``: 1.0 = real time (``tick_interval_ms`` of wall time per tick), X = X
    times faster, 0 = never sleep. ``start_ms``: epoch ms UTC of the first tick; None =
    09:15 IST of today's IST date (from ``clock()``). A ``start_ms`` before 09:15 IST
    moves to 09:15 that day, one at/after 15:30 IST to 09:15 of the next weekday; the
    start day itself is used even if it is a weekend (so a demo on a Sunday shows
    Sunday's date). ``tick_interval_ms``: simulated (and, at speed 1, wall) time between
    ticks. ``sleep``/``clock``: injectable ``time.sleep``/``time.time``.

    Raises ``ValueError`` for an empty watchlist, ``speed < 0``, or ``tick_interval_ms``
    outside ``1..SESSION_MS``.
    """

    def __init__(
        self,
        watchlist: Iterable[str],
        seed: int = 7,
        speed: float = 1.0,
        start_ms: int | None = None,
        tick_interval_ms: int = 250,
        sleep: Callable[[float], object] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.watchlist = list(watchlist)
        if not self.watchlist:
            raise ValueError("SimulatedSource: empty watchlist")
        if not (math.isfinite(speed) and speed >= 0):
            raise ValueError(f"SimulatedSource: speed must be a finite number >= 0, got {speed!r}")
        if not (1 <= int(tick_interval_ms) <= SESSION_MS):
            raise ValueError(f"SimulatedSource: tick_interval_ms must be in 1..{SESSION_MS}, got {tick_interval_ms!r}")
        self.seed = seed
        self.speed = float(speed)
        self.tick_interval_ms = int(tick_interval_ms)
        self._sleep = sleep
        if start_ms is None:
            start_ms = session_open_ms(ist_date(int(clock() * 1000)))
        self.start_ms = self._session_start(int(start_ms))

    @staticmethod
    def _session_start(ts: int) -> int:
        day = ist_date(ts)
        open_ms = session_open_ms(day)
        if ts < open_ms:
            return open_ms
        if ts >= open_ms + SESSION_MS:
            return session_open_ms(next_weekday(day))
        return ts

    def ticks(self) -> Iterator[Tick]:
        """Infinite stream of ticks, ``seq`` = 0, 1, 2, ...; each call starts afresh (same ticks).

        Timestamps increase by ``tick_interval_ms`` within a session (09:15 <= IST time <
        15:30) and jump to 09:15 of the next weekday at the close. Paces itself at
        ``tick_interval_ms / speed`` of wall time per tick (none when ``speed`` is 0).
        """
        rng = random.Random(self.seed)
        walks = [_Walk(k, rng) for k in self.watchlist]
        n = len(walks)
        step_ms = self.tick_interval_ms
        dt_ms = n * step_ms  # session time between two ticks of one instrument
        ts = self.start_ms
        day_close = session_open_ms(ist_date(ts)) + SESSION_MS
        for w in walks:
            w.new_session(rng)
        pause = step_ms / 1000.0 / self.speed if self.speed > 0 else 0.0
        sleep, clock = self._sleep, time.monotonic
        due = slept = 0.0
        t0 = clock()
        seq = 0
        while True:
            i = seq % n
            w = walks[i]
            price = w.step(dt_ms, rng)
            if w.index:
                ltq, oi = 0, 0.0
            else:
                ltq = w.lot * (1 + int(rng.expovariate(0.5)))
                if rng.random() < 0.3:
                    w.oi = max(0.0, w.oi + w.lot * rng.randint(-3, 3))
                oi = w.oi
            if pause and seq:
                due += pause
                ahead = due - max(clock() - t0, slept)
                if ahead > _SLEEP_QUANTUM_S:
                    sleep(ahead)
                    slept += ahead
            yield Tick(instrument_key=self.watchlist[i], ts=ts, ltp=price, ltq=ltq, oi=oi, seq=seq, source="sim")
            seq += 1
            ts += step_ms
            if ts >= day_close:
                day = next_weekday(ist_date(ts))
                ts = session_open_ms(day)
                day_close = ts + SESSION_MS
                for w2 in walks:
                    w2.new_session(rng)
