"""Base of the Auction Market Theory strategies: a Market Profile per instrument, built inside the
strategy from its 1-minute candles, and the bookkeeping of TPO periods.

Why the strategy builds its own profile: a :class:`trading_core.profile.LiveAuctionEngine` fed
from candles is pure (no I/O), so the same strategy runs live, in a replay and in a backtest, and
a warm start (:mod:`strategy.runner`) is a plain replay of the day's recorded candles that rebuilds
exactly the same profile, prior-day references included. Profile messages from the bus
(``on_profile``) are not needed.

Vocabulary (CBOT, *Market Profile Handbook*; J. F. Dalton, E. T. Jones, R. B. Dalton, *Mind Over
Markets*, 1990/2013; J. P. Steidlmayer): the regular session 09:15-15:30 IST is cut into 30-minute
TPO periods A, B, C... (the last, M, is 15:15-15:30); the initial balance (IB) is the range of A
and B; value is the prior day's value area (70 % of its TPOs around the POC); a row is the price
band ``[row_price, row_price + row_size)`` (5 points NIFTY, 10 BANKNIFTY), so the top *edge* of
value is ``VAH + row_size``.

What a subclass gets (all prices in rupees, timestamps epoch ms UTC):

- :meth:`AuctionStrategy.on_session_candle` for every candle of a regular session, with the
  instrument's :class:`Book` (today's :class:`Session`: open, high, low, closed periods...);
- :meth:`AuctionStrategy.on_period_close` once per TPO period, when its last minute has closed
  (or, if that minute is missing, when the first candle of a later period arrives); the period's
  OHLC comes from the candles, and ``book.profile`` is the engine's profile at that moment;
- ``book.prior``: the previous trading day's references (``None`` if the strategy has not seen
  that day, or if the last day it saw is more than ``MAX_PRIOR_GAP_DAYS`` calendar days back).

Only *regular* sessions are traded: Muhurat evenings and the extended outage day of 2021-02-24
(see :mod:`trading_core.sessions`) still feed the engine but call no hook. A session counts as
complete only if its first candle is the 09:15 one (``session.full``).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from typing import Any

from strategy.base import Strategy
from trading_core.messages import Candle
from trading_core.profile import LiveAuctionEngine
from trading_core.profile_model import AuctionProfile, PriorSession
from trading_core.sessions import DAY_MS, IST_OFFSET_MS, SessionSpec, period_letter

CANDLE_MS = 60_000
PERIOD_MS = 30 * 60_000
#: A prior session older than this (calendar days) is not "the prior day": the data has a hole.
#: The longest break between trading days in the 2021-2022 data is 5 days (2022-04-13 to 04-18,
#: two holidays before a weekend; 2021-11-03 to 11-08 around the Muhurat evening).
MAX_PRIOR_GAP_DAYS = 6


@dataclasses.dataclass
class Period:
    """One TPO period of the regular session as seen in its 1-minute candles.

    ``index`` 0 = A; ``start_ms``/``end_ms`` its bounds (the last period ends at the close);
    ``open``/``high``/``low``/``close`` rupees from the candles; ``candles`` how many it had.
    """

    index: int
    start_ms: int
    end_ms: int
    open: float
    high: float
    low: float
    close: float
    candles: int = 1

    @property
    def letter(self) -> str:
        """TPO letter: ``A`` for index 0."""
        return period_letter(self.index)


@dataclasses.dataclass
class Session:
    """Today's bookkeeping of one instrument (regular-session candles only).

    ``open``/``high``/``low``/``last`` rupees (``None`` before the first candle); ``first_ts`` the
    first candle's open time; ``periods`` the closed periods in order; ``current`` the forming one;
    ``fired`` what the strategy recorded (e.g. ``{"BUY"}``); ``state`` free for the strategy.
    """

    day: int
    spec: SessionSpec
    open: float | None = None
    high: float | None = None
    low: float | None = None
    last: float | None = None
    first_ts: int | None = None
    periods: list[Period] = dataclasses.field(default_factory=list)
    current: Period | None = None
    fired: set[str] = dataclasses.field(default_factory=set)
    state: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def regular(self) -> bool:
        """True on a regular trading day (standard hours)."""
        return self.spec.kind == "regular"

    @property
    def full(self) -> bool:
        """True when the session's first candle was the opening (09:15) one."""
        return self.first_ts == self.spec.open_ms


class Book:
    """One instrument's engine and session. ``profile`` (built lazily by the engine, cached until
    the next candle) and ``prior`` are read-only views."""

    __slots__ = ("instrument_key", "engine", "session", "last_ts")

    def __init__(self, instrument_key: str) -> None:
        self.instrument_key = instrument_key
        self.engine = LiveAuctionEngine(instrument_key)
        self.session: Session | None = None
        self.last_ts = -1

    @property
    def profile(self) -> AuctionProfile | None:
        """The engine's current :class:`AuctionProfile` (POC, value area, IB, open type...)."""
        return self.engine.profile

    @property
    def row_size(self) -> float:
        """Profile row height in rupees (5 NIFTY, 10 BANKNIFTY)."""
        return self.engine.config.row_size

    @property
    def prior(self) -> PriorSession | None:
        """The previous trading day's references, if that day was seen and is recent enough."""
        prior = self.engine.prior
        if prior is None or self.session is None:
            return None
        prior_day = _date_day(prior.date)
        if not 0 < self.session.day - prior_day <= MAX_PRIOR_GAP_DAYS:
            return None
        return prior


class AuctionStrategy(Strategy):
    """A :class:`Strategy` with a Market Profile per instrument; override the two hooks.

    Candles of other instruments, not final, not ``"1m"``, or not newer than the last one of
    their instrument are ignored (a replay overlapping the live stream does no harm).
    """

    #: The prior day's value area needs the prior day; ten days give the engine's typical range.
    warm_days = 10

    def __init__(self, name, instruments, params, emit) -> None:
        super().__init__(name, instruments, params, emit)
        self.books: dict[str, Book] = {k: Book(k) for k in self.instruments}

    # --- hooks for subclasses ---------------------------------------------------------------------
    def on_session_candle(self, book: Book, candle: Candle) -> None:
        """Every candle of a regular session, after the engine and ``book.session`` took it."""

    def on_period_close(self, book: Book, period: Period) -> None:
        """Once per closed TPO period; ``period`` is also ``book.session.periods[-1]``."""

    # --- plumbing ---------------------------------------------------------------------------------
    def on_candle(self, candle: Candle) -> None:
        book = self.books.get(candle.instrument_key)
        if book is None or candle.interval != "1m" or not candle.final or candle.ts <= book.last_ts:
            return
        book.last_ts = ts = candle.ts
        day = (ts + IST_OFFSET_MS) // DAY_MS
        s = book.session
        if s is None or s.day != day:
            if s is not None and s.current is not None:
                self._close_period(book)
            s = book.session = Session(day, book.engine.calendar.spec(day))
        in_session = s.regular and s.spec.open_ms <= ts < s.spec.close_ms
        index = (ts - s.spec.open_ms) // PERIOD_MS if in_session else -1
        if s.current is not None and index > s.current.index:
            self._close_period(book)          # its last minute was missing
        book.engine.on_bar(ts, candle.open, candle.high, candle.low, candle.close, candle.volume)
        if not in_session:
            return
        if s.first_ts is None:
            s.first_ts, s.open, s.high, s.low = ts, candle.open, candle.high, candle.low
        s.high, s.low, s.last = max(s.high, candle.high), min(s.low, candle.low), candle.close
        p = s.current
        if p is None:
            start = s.spec.open_ms + index * PERIOD_MS
            p = s.current = Period(index, start, min(start + PERIOD_MS, s.spec.close_ms),
                                   candle.open, candle.high, candle.low, candle.close)
        else:
            p.high, p.low, p.close = max(p.high, candle.high), min(p.low, candle.low), candle.close
            p.candles += 1
        self.on_session_candle(book, candle)
        if ts + CANDLE_MS >= p.end_ms:
            self._close_period(book)

    def _close_period(self, book: Book) -> None:
        s = book.session
        period, s.current = s.current, None
        s.periods.append(period)
        self.on_period_close(book, period)


def _date_day(iso: str) -> int:
    """IST day number of an ISO date ``YYYY-MM-DD`` (days since 1970-01-01)."""
    return (_dt.date.fromisoformat(iso) - _dt.date(1970, 1, 1)).days


def fmt(price: float | None) -> str:
    """``16702.5 -> "16702.5"`` (rupees, at most 2 decimals) for reason texts."""
    return "-" if price is None else repr(round(float(price), 2))


def hhmm_of(ts_ms: int) -> str:
    """IST ``HH:MM`` of an epoch-ms-UTC timestamp, for reason texts."""
    minutes = ((ts_ms + IST_OFFSET_MS) % DAY_MS) // 60_000
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


HHMM_PATTERN = "^([01][0-9]|2[0-3]):[0-5][0-9]$"


def hhmm_param(default: str, description: str) -> dict[str, Any]:
    """JSON-Schema of an IST ``"HH:MM"`` parameter."""
    return {"type": "string", "pattern": HHMM_PATTERN, "default": default, "description": description}


def session_minute_ms(session: Session, hhmm: str) -> int:
    """Epoch ms UTC of IST time ``hhmm`` on ``session``'s date."""
    h, m = hhmm.split(":")
    return session.day * DAY_MS - IST_OFFSET_MS + (int(h) * 60 + int(m)) * CANDLE_MS


def check_window(params: dict[str, Any], first: str | None, last: str) -> None:
    """Raise ``ValueError("params.<last>: ...")`` unless ``first < last`` within 09:15-15:30 IST."""
    lo, hi = 9 * 60 + 15, 15 * 60 + 30

    def minutes(hhmm: str) -> int:
        h, m = hhmm.split(":")
        return int(h) * 60 + int(m)

    end = minutes(params[last])
    start = minutes(params[first]) if first else lo
    if first and not lo <= start <= hi:
        raise ValueError(f"params.{first}: {params[first]!r} is outside the session 09:15-15:30")
    if not start < end <= hi:
        raise ValueError(f"params.{last}: {params[last]!r} must be after "
                         f"{params[first] if first else '09:15'} and not after 15:30")
