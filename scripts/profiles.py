"""Live Market Profiles inside the ingestor: one :class:`LiveAuctionEngine` per instrument, fed
every tick, published on ``profile.<instrument_key>`` at most once a second per instrument and
at every TPO period close (see :class:`trading_core.profile.PublishThrottle`).

Options are skipped (1,372 contracts on a busy F&O day; a profile per strike is noise and would
cost more than the feed itself); indices and futures get one.
"""

from __future__ import annotations

import re
import time
from typing import Callable

from trading_core import messages as m
from trading_core.profile import LiveAuctionEngine, PublishThrottle
from trading_core.profile_config import ProfileConfig, config_for

_OPTION = re.compile(r"\d+(CE|PE)$")


def wants_profile(instrument_key: str) -> bool:
    """True for indices and futures, False for option contracts (``...24000CE``/``PE``)."""
    return not _OPTION.search(instrument_key)


def config_for_live(instrument_key: str, first_price: float) -> ProfileConfig:
    """The instrument's configured rows (NIFTY 5, BANKNIFTY 10 ...); for any other instrument,
    rows derived from a typical 1 % daily range around its first price (about 40 rows a day),
    since a live feed cannot wait for a range to be known."""
    try:
        return config_for(instrument_key)
    except ValueError:
        return config_for(instrument_key, recent_range=max(abs(first_price), 1.0) * 0.01)


class ProfileFeed:
    """Engines for the instruments seen so far; :meth:`publish_due` sends what is due.

    ``publish``: called with ``(topic, message)``. :meth:`on_tick` costs about a microsecond;
    building a profile (about 0.3 ms) happens only in :meth:`publish_due`, at most once a second
    per instrument plus period closes.
    """

    def __init__(self, publish: Callable[[str, m.Message], None], min_interval_ms: int = 1000):
        self.publish = publish
        self.min_interval_ms = min_interval_ms
        self.engines: dict[str, LiveAuctionEngine] = {}
        self.throttles: dict[str, PublishThrottle] = {}
        self._skip: set[str] = set()
        self._dirty: set[str] = set()
        self.published = 0

    def on_tick(self, tick: m.Tick) -> None:
        """Feed one tick (LTQ as its volume) to its instrument's engine."""
        self.on_print(tick.instrument_key, tick.ts, tick.ltp, tick.ltq)

    def on_print(self, key: str, ts: int, ltp: float, ltq: int) -> None:
        """:meth:`on_tick` from a tick's fields (instrument_key, ts epoch ms UTC, LTP rupees,
        LTQ units), for feeds that carry ticks as columns."""
        engine = self.engines.get(key)
        if engine is None:
            if key in self._skip:
                return
            if not wants_profile(key):
                self._skip.add(key)
                return
            engine = self.engines[key] = LiveAuctionEngine(key, config_for_live(key, ltp))
            self.throttles[key] = PublishThrottle(self.min_interval_ms)
        engine.on_tick(ts, ltp, ltq)
        self._dirty.add(key)

    def on_table(self, ticks) -> None:
        """:meth:`on_print` for every row of a ``polars.DataFrame`` of ticks (``instrument_key,
        ts, ltp, ltq``), in row order, calling into Python only for the instruments that get a
        profile (an F&O day's option prints are skipped column-wise)."""
        import polars as pl
        keys = ticks.get_column("instrument_key").unique().to_list()
        wanted = [k for k in keys if k not in self._skip and (k in self.engines or wants_profile(k))]
        self._skip.update(k for k in keys if k not in self.engines and not wants_profile(k))
        if not wanted:
            return
        rows = ticks.filter(pl.col("instrument_key").is_in(wanted)).select("instrument_key", "ts", "ltp", "ltq")
        on_print = self.on_print
        for key, ts, ltp, ltq in rows.iter_rows():
            on_print(key, ts, ltp, ltq)

    def publish_due(self, now_ms: int | None = None, force: bool = False) -> int:
        """Publish each changed profile whose throttle allows it (all changed ones if ``force``).
        Returns how many were published."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        sent = 0
        for key in list(self._dirty):
            engine = self.engines[key]
            if force or self.throttles[key].should_publish(now_ms, engine.version, engine.period_key):
                message = engine.to_message()
                if message is not None:
                    self.publish(m.profile_topic(key), message)
                    sent += 1
                self._dirty.discard(key)
        self.published += sent
        return sent
