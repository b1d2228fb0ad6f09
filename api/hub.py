"""The API's in-memory view of the bus: the day's snapshot, 100 ms batches, per-client queues.

Everything here runs on the API's event loop thread; nothing blocks and nothing awaits,
so a snapshot taken between two statements is consistent with the batches that follow it.

Data flow::

    bus frame --ingest()--> current Batch --flush() every 100 ms--> Store (snapshot)
                                                              \\--> each Client.pending

Ticks come from the ingestor's conflated ``last_ticks`` frames (the last tick of each
instrument about every 100 ms), not from every print; single ``tick.*`` frames are taken too.

Payloads are kept as the raw JSON bytes that came off the bus and are spliced into
outgoing frames with ``msgspec.Raw``: a tick is never decoded and re-encoded on its way
to the browser. Only small headers are decoded where the hub needs a field (a candle's
``ts``/``final``, a health report's ``service``/``status``), and the coalesced survivors
of a batch (one tick per instrument) are validated before they are sent, so one
malformed publisher cannot break a browser's ``JSON.parse`` of a whole frame.

Outgoing JSON text frames (prices rupees, ``ts`` epoch ms UTC):

``{"type":"snapshot","server_ts":ms,"instruments":[key...],"filter":null|[key...],
"candles":{key:[Candle...]},"ticks":{key:Tick},"profiles":{key:profile},
"signals":[Signal...],"health":{service:Health},"health_age_ms":{service:ms}}``
    First frame on every connection, again after a ``subscribe`` and after the client
    fell so far behind that its pending batches were dropped. ``candles`` are the
    last :data:`MAX_CANDLES` closed 1-minute candles per instrument, oldest first; without
    a filter, option contracts' candles are left out (subscribe to the options shown).

``{"type":"batch","ticks":{key:Tick},"candles":[Candle...],"signals":[Signal...],
"health":{service:Health},"profiles":{key:profile}}``
    Everything received in one 100 ms window after the snapshot: ticks and profiles
    coalesced to the last per instrument, health to the last per service, candles
    (any interval, ``final`` true or false) and signals all kept, in arrival order.
"""

from __future__ import annotations

import bisect
import collections
import logging
import time
from typing import Any, Iterable

import msgspec

from data_handling.instruments import is_option
from trading_core import messages as m

log = logging.getLogger("api")

MAX_CANDLES = 1500          # closed 1-minute candles kept per instrument (4 sessions of 375)
MAX_SIGNALS = 500           # most recent signals kept
MAX_PENDING = 50            # batches (5 s) a client may fall behind before they are dropped
STALE_MS = 5000             # a service whose last health report is older is "stale"
PROBE_PREFIX = b"health.__probe__."

Raw = msgspec.Raw
_encode = msgspec.json.Encoder().encode


class _LastTicksHead(msgspec.Struct):
    ticks: dict[str, msgspec.Raw]


_LAST_TICKS = m.LAST_TICKS.encode()
_last_ticks_head = msgspec.json.Decoder(_LastTicksHead)


class _CandleHead(msgspec.Struct):
    instrument_key: str
    interval: str
    ts: int
    final: bool = True


class _HealthHead(msgspec.Struct):
    service: str
    status: str = ""
    ts: int = 0
    pid: int = 0


_candle_head = msgspec.json.Decoder(_CandleHead)
_health_head = msgspec.json.Decoder(_HealthHead)
_tick_check = msgspec.json.Decoder(m.Tick)
_any_check = msgspec.json.Decoder()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _valid(decoder: msgspec.json.Decoder, payload: bytes) -> bool:
    try:
        decoder.decode(payload)
        return True
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False


class Batch:
    """Messages of one 100 ms window (or several merged), as raw payload bytes."""

    __slots__ = ("ticks", "candles", "signals", "health", "profiles", "_frames")

    def __init__(self) -> None:
        self.ticks: dict[str, bytes] = {}
        self.candles: list[tuple[str, bytes, _CandleHead]] = []     # (instrument_key, payload, head)
        self.signals: list[bytes] = []
        self.health: dict[str, bytes] = {}
        self.profiles: dict[str, bytes] = {}
        self._frames: dict[frozenset[str] | None, bytes | None] = {}

    def __bool__(self) -> bool:
        return bool(self.ticks or self.candles or self.signals or self.health or self.profiles)

    def merge(self, later: "Batch") -> None:
        """Fold a later batch into this one (later ticks/profiles/health win)."""
        self.ticks.update(later.ticks)
        self.candles.extend(later.candles)
        self.signals.extend(later.signals)
        self.health.update(later.health)
        self.profiles.update(later.profiles)
        self._frames.clear()

    def frame(self, only: frozenset[str] | None) -> bytes | None:
        """The JSON text of this batch for a client filtered to ``only`` (None: all), or
        None when nothing in it concerns that client. Cached per filter."""
        if only in self._frames:
            return self._frames[only]
        if only is None:
            ticks, profiles, candles = self.ticks, self.profiles, self.candles
        else:
            ticks = {k: v for k, v in self.ticks.items() if k in only}
            profiles = {k: v for k, v in self.profiles.items() if k in only}
            candles = [c for c in self.candles if c[0] in only]
        if not (ticks or profiles or candles or self.signals or self.health):
            out = None
        else:
            out = _encode({
                "type": "batch",
                "ticks": {k: Raw(v) for k, v in ticks.items()},
                "candles": [Raw(c[1]) for c in candles],
                "signals": [Raw(v) for v in self.signals],
                "health": {k: Raw(v) for k, v in self.health.items()},
                "profiles": {k: Raw(v) for k, v in profiles.items()},
            })
        self._frames[only] = out
        return out


class Client:
    """One WebSocket connection's subscription and bounded outbound queue."""

    __slots__ = ("id", "only", "pending", "need_snapshot", "wake", "sent", "merged",
                 "dropped", "resyncs", "bad_messages", "peer")

    def __init__(self, cid: int, peer: str, wake) -> None:
        self.id = cid
        self.peer = peer
        self.only: frozenset[str] | None = None
        self.pending: collections.deque[Batch] = collections.deque()
        self.need_snapshot = True
        self.wake = wake                  # asyncio.Event set when there is something to send
        self.sent = 0                     # frames sent
        self.merged = 0                   # batches folded into a later frame (client was slow)
        self.dropped = 0                  # batches discarded, replaced by a fresh snapshot
        self.resyncs = 0                  # snapshots sent because batches were dropped
        self.bad_messages = 0

    def next_frame(self, hub: "Hub") -> bytes | None:
        """Take what is queued and return one frame to send (None: nothing for this client)."""
        if self.need_snapshot:
            self.need_snapshot = False
            self.pending.clear()
            return hub.snapshot_frame(self.only)
        if not self.pending:
            return None
        if len(self.pending) == 1:
            batch = self.pending.popleft()
        else:
            batch = Batch()
            self.merged += len(self.pending) - 1
            while self.pending:
                batch.merge(self.pending.popleft())
        return batch.frame(self.only)


class Store:
    """The snapshot: last candles, tick, profile per instrument; last signals; last health."""

    def __init__(self, watchlist: Iterable[str] = ()) -> None:
        self.instruments: dict[str, None] = dict.fromkeys(watchlist)   # ordered set
        self.candles: dict[str, list[tuple[int, bytes]]] = {}          # key -> [(ts, payload)] by ts
        self.ticks: dict[str, bytes] = {}
        self.profiles: dict[str, bytes] = {}
        self.signals: collections.deque[bytes] = collections.deque(maxlen=MAX_SIGNALS)
        self.health: dict[str, tuple[bytes, int]] = {}                 # service -> (payload, received ms)

    def add_candle(self, key: str, ts: int, payload: bytes) -> None:
        bars = self.candles.setdefault(key, [])
        if not bars or ts > bars[-1][0]:
            bars.append((ts, payload))
        else:                                   # a re-sent or late bar: replace or insert in order
            i = bisect.bisect_left(bars, ts, key=lambda b: b[0])
            if i < len(bars) and bars[i][0] == ts:
                bars[i] = (ts, payload)
            else:
                bars.insert(i, (ts, payload))
        if len(bars) > MAX_CANDLES:
            del bars[: len(bars) - MAX_CANDLES]


class Hub:
    """Ingests bus frames, flushes them every 100 ms to the store and to every client."""

    def __init__(self, watchlist: Iterable[str] = (), secret: str = "",
                 probe_topic: bytes = b"") -> None:
        self.store = Store(watchlist)
        self.cur = Batch()
        self.clients: dict[int, Client] = {}
        self._next_id = 1
        self._secret = secret.encode() if secret and len(secret) >= 4 else b""
        self.probe_topic = probe_topic
        self.probe_seen = False
        self.own_health_rx_ms = 0          # when our own health.api last came back via the bus
        self.own_service = "api"
        # counters
        self.msgs_in = 0
        self.bad_frames = 0
        self.frames_sent = 0
        self.batches_merged = 0
        self.batches_dropped = 0
        self.resyncs = 0
        self.bad_client_messages = 0
        self.flushes = 0
        self._snap_cache: dict[frozenset[str] | None, tuple[bytes, float]] = {}
        self._last_bad_log = 0.0

    # --- input -------------------------------------------------------------------------
    def ingest(self, frame: bytes) -> None:
        """Take one bus frame ``topic\\x00json``; never raises."""
        self.msgs_in += 1
        i = frame.find(b"\x00")
        if i <= 0:
            return self._bad(frame, "no topic separator")
        payload = frame[i + 1:]
        if self._secret and self._secret in payload:   # belt and braces: never forward the token
            payload = payload.replace(self._secret, b"***")
        c = frame[0]
        if c == 116 and frame.startswith(b"tick."):                     # 't'
            self.cur.ticks[frame[5:i].decode("utf-8", "replace")] = payload
        elif c == 99 and frame.startswith(b"candle."):                  # 'c'
            try:
                head = _candle_head.decode(payload)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                return self._bad(frame, f"candle: {exc}")
            self.cur.candles.append((head.instrument_key, payload, head))
        elif c == 115 and frame.startswith(b"signal."):                 # 's'
            if not _valid(_any_check, payload):
                return self._bad(frame, "signal is not JSON")
            self.cur.signals.append(payload)
        elif c == 104 and frame.startswith(b"health."):                 # 'h'
            if frame.startswith(PROBE_PREFIX):
                if self.probe_topic and frame[:i] == self.probe_topic:
                    self.probe_seen = True
                return None
            try:
                head = _health_head.decode(payload)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                return self._bad(frame, f"health: {exc}")
            if head.service == self.own_service:
                self.own_health_rx_ms = now_ms()
            self.cur.health[head.service] = payload
        elif c == 112 and frame.startswith(b"profile."):                # 'p'
            self.cur.profiles[frame[8:i].decode("utf-8", "replace")] = payload
        elif c == 108 and frame[:i] == _LAST_TICKS:                     # 'l'
            try:
                last = _last_ticks_head.decode(payload)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                return self._bad(frame, f"last_ticks: {exc}")
            ticks = self.cur.ticks
            for key, tick in last.ticks.items():
                ticks[key] = bytes(tick)
        # other topics (control.*) are not subscribed; ignore silently

    def _bad(self, frame: bytes, why: str) -> None:
        self.bad_frames += 1
        t = time.monotonic()
        if t - self._last_bad_log > 5:        # at most one line per 5 s for a noisy publisher
            self._last_bad_log = t
            log.warning("dropped malformed bus frame (%s): %r (%d so far)", why, frame[:80], self.bad_frames)

    # --- 100 ms flush ------------------------------------------------------------------
    def flush(self) -> Batch | None:
        """Close the current window: validate survivors, update the store, queue for clients."""
        batch, self.cur = self.cur, Batch()
        if not batch:
            return None
        for key, payload in list(batch.ticks.items()):
            if not _valid(_tick_check, payload):
                del batch.ticks[key]
                self._bad(b"tick." + key.encode() + b"\x00" + payload, "tick does not match Tick")
        for key, payload in list(batch.profiles.items()):
            if not _valid(_any_check, payload):
                del batch.profiles[key]
                self._bad(b"profile." + key.encode() + b"\x00" + payload, "profile is not JSON")
        st = self.store
        received = now_ms()
        for key, payload in batch.ticks.items():
            st.ticks[key] = payload
            st.instruments.setdefault(key)
        for key, payload in batch.profiles.items():
            st.profiles[key] = payload
            st.instruments.setdefault(key)
        for key, payload, head in batch.candles:
            st.instruments.setdefault(key)
            if head.final and head.interval == "1m":
                st.add_candle(key, head.ts, payload)
        st.signals.extend(batch.signals)
        for svc, payload in batch.health.items():
            st.health[svc] = (payload, received)
        self._snap_cache.clear()
        self.flushes += 1
        if not batch:
            return None
        for client in self.clients.values():
            if client.need_snapshot:
                continue                      # the snapshot it is waiting for includes this batch
            if len(client.pending) >= MAX_PENDING:
                # Too far behind: stop queueing, send a fresh snapshot when it can take one.
                client.dropped += len(client.pending) + 1
                self.batches_dropped += len(client.pending) + 1
                client.resyncs += 1
                self.resyncs += 1
                client.pending.clear()
                client.need_snapshot = True
            else:
                client.pending.append(batch)
            client.wake.set()
        return batch

    # --- output ------------------------------------------------------------------------
    def add_client(self, peer: str, wake) -> Client:
        client = Client(self._next_id, peer, wake)
        self._next_id += 1
        self.clients[client.id] = client
        wake.set()                      # first frame: the snapshot
        return client

    def remove_client(self, client: Client) -> None:
        self.clients.pop(client.id, None)
        self.batches_merged += client.merged

    def snapshot(self, only: frozenset[str] | None = None) -> dict[str, Any]:
        st = self.store
        now = now_ms()

        def want(k: str) -> bool:
            return only is None or k in only

        def want_candles(k: str) -> bool:
            # A whole option chain's day of candles (1,381 contracts on 2022-11-18: ~30 MB) is
            # not sent to a page that did not name them; it subscribes to the options it shows.
            return k in only if only is not None else not is_option(k)

        return {
            "type": "snapshot",
            "server_ts": now,
            "instruments": list(st.instruments),
            "filter": None if only is None else sorted(only),
            "candles": {k: [Raw(p) for _, p in bars] for k, bars in st.candles.items() if want_candles(k)},
            "ticks": {k: Raw(p) for k, p in st.ticks.items() if want(k)},
            "profiles": {k: Raw(p) for k, p in st.profiles.items() if want(k)},
            "signals": [Raw(p) for p in st.signals],
            "health": {k: Raw(p) for k, (p, _) in st.health.items()},
            "health_age_ms": {k: now - rx for k, (_, rx) in st.health.items()},
        }

    def snapshot_frame(self, only: frozenset[str] | None = None) -> bytes:
        """The snapshot as JSON bytes; cached until the next flush or for 1 s at most."""
        hit = self._snap_cache.get(only)
        t = time.monotonic()
        if hit is not None and t - hit[1] < 1.0:
            return hit[0]
        frame = _encode(self.snapshot(only))
        self._snap_cache[only] = (frame, t)
        return frame

    def candles(self, key: str) -> list[Raw] | None:
        bars = self.store.candles.get(key)
        if bars is None:
            return [] if key in self.store.instruments else None
        return [Raw(p) for _, p in bars]

    def health(self, own: dict[str, Any]) -> dict[str, Any]:
        """Every service's latest health report with ``age_ms`` and ``stale``; ``own`` is the API's."""
        now = now_ms()
        services: dict[str, Any] = {}
        for svc, (payload, rx) in sorted(self.store.health.items()):
            h = msgspec.json.decode(payload)
            if not isinstance(h, dict):
                continue
            h["age_ms"] = now - rx
            h["stale"] = h["age_ms"] > STALE_MS
            services[svc] = h
        own = dict(own, age_ms=0, stale=False)
        services[own.get("service", "api")] = own
        return {"ts": now, "services": services}

    def stats(self) -> dict[str, int]:
        merged = self.batches_merged + sum(c.merged for c in self.clients.values())
        return {
            "ws_clients": len(self.clients),
            "msgs_in": self.msgs_in,
            "bad_frames": self.bad_frames,
            "frames_sent": self.frames_sent,
            "frames_dropped": merged + self.batches_dropped,
            "batches_merged": merged,
            "batches_dropped": self.batches_dropped,
            "resyncs": self.resyncs,
            "max_backlog": max((len(c.pending) for c in self.clients.values()), default=0),
            "bad_client_messages": self.bad_client_messages,
            "instruments": len(self.store.instruments),
        }
