"""The ZeroMQ message bus: an XSUB/XPUB proxy and the client every service uses.

Publishers connect a PUB socket to the proxy's XSUB endpoint (``BUS_PUB``);
subscribers connect a SUB socket to its XPUB endpoint (``BUS_SUB``) and filter
by topic prefix. Frames are single-part, see :mod:`trading_core.messages`.

A PUB socket silently drops messages until the subscriptions of downstream
subscribers have reached it ("slow joiner"). :meth:`BusClient.wait_ready`
closes that window by sending a probe through the proxy until it comes back.
"""

from __future__ import annotations

import collections
import os
import threading
import time
import uuid
import weakref
from typing import Iterable

import msgspec
import zmq

from trading_core import messages as m

msgspec_json_encode = msgspec.json.Encoder().encode

# High-water marks, in messages. Large so that a full-speed replay of a busy
# day (millions of ticks) queues instead of dropping at a momentarily slow reader.
HWM = 2_000_000
PROBE_PREFIX = "health.__probe__."


def _tune(sock: zmq.Socket) -> None:
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.setsockopt(zmq.LINGER, 2000)


def run_proxy(pub_endpoint: str, sub_endpoint: str, context: zmq.Context | None = None) -> None:
    """Bind XSUB on ``pub_endpoint`` and XPUB on ``sub_endpoint`` and forward until the context ends.

    Raises ``zmq.ZMQError`` (``EADDRINUSE``) when an endpoint is taken.
    """
    ctx = context or zmq.Context.instance()
    xsub = ctx.socket(zmq.XSUB)
    xpub = ctx.socket(zmq.XPUB)
    for sock in (xsub, xpub):
        _tune(sock)
    xsub.bind(pub_endpoint)
    xpub.bind(sub_endpoint)
    try:
        zmq.proxy(xsub, xpub)
    except zmq.ContextTerminated:
        pass
    finally:
        xsub.close(0)
        xpub.close(0)


# Every open BusClient of this process, and the frames counted by the ones already closed, so
# :func:`process_totals` can sum the traffic of a process whose threads each own a client (the
# ingestor: feed, health, signal and audit recorders). Guarded by _registry_lock; never touched
# on the publish/receive path.
_registry: "weakref.WeakSet[BusClient]" = weakref.WeakSet()
_registry_lock = threading.Lock()
_closed_totals = [0, 0]          # [published, received] of closed clients


def process_totals() -> tuple[int, int]:
    """Frames ``(published, received)`` by every :class:`BusClient` of this process since it
    started, closed clients included. Cumulative counts (monotonic, unless a client is garbage
    collected without :meth:`BusClient.close`, whose frames are then no longer counted).
    Safe to call from any thread; each client's counters are plain ints read without locking."""
    with _registry_lock:
        published, received = _closed_totals
        for client in list(_registry):
            published += client.published
            received += client.received
    return published, received


class BusClient:
    """One service's connection to the bus: a PUB and (if ``subscriptions``) a SUB socket.

    ``subscriptions``: topic prefixes (str) or exact-topic bytes from
    :func:`trading_core.messages.exact`. Not thread-safe: use from one thread.

    Counters (ints, cumulative, readable from any thread): ``published``, frames sent by
    :meth:`publish` / :meth:`publish_raw`; ``received``, frames returned by :meth:`recv_raw` /
    :meth:`recv`. The probes of :meth:`wait_ready` are not counted. :func:`process_totals`
    sums them over the process.
    """

    def __init__(self, pub_endpoint: str, sub_endpoint: str,
                 subscriptions: Iterable[str | bytes] = (), context: zmq.Context | None = None):
        self.ctx = context or zmq.Context.instance()
        self.sub_endpoint = sub_endpoint
        self.pub = self.ctx.socket(zmq.PUB)
        _tune(self.pub)
        self.pub.connect(pub_endpoint)
        self.sub = self.ctx.socket(zmq.SUB)
        _tune(self.sub)
        self.sub.connect(sub_endpoint)
        for prefix in subscriptions:
            self.subscribe(prefix)
        self._poller = zmq.Poller()
        self._poller.register(self.sub, zmq.POLLIN)
        self.published = 0
        self.received = 0
        self._closed = False
        self._pending: collections.deque[bytes] = collections.deque()
        with _registry_lock:
            _registry.add(self)

    def subscribe(self, prefix: str | bytes) -> None:
        """Receive every topic starting with ``prefix``."""
        self.sub.setsockopt(zmq.SUBSCRIBE, prefix.encode() if isinstance(prefix, str) else prefix)

    def publish(self, topic: str, message: m.Message) -> None:
        """Send ``message`` on ``topic`` (never blocks; see :data:`HWM`). Frames are copied into
        ZeroMQ: for frames this small that is faster than zero-copy (``benchmarks/bench_bus.py``)."""
        self.pub.send(m.encode(topic, message))
        self.published += 1

    def publish_raw(self, frame: bytes) -> None:
        """Send an already encoded frame (copied, as :meth:`publish`)."""
        self.pub.send(frame)
        self.published += 1

    def publish_frames(self, frames: Iterable[bytes]) -> None:
        """Send already encoded frames in order (one call for a replay's run of ticks; small
        frames are copied into ZeroMQ, which costs less than tracking them zero-copy)."""
        send = self.pub.send
        n = 0
        for frame in frames:
            send(frame)
            n += 1
        self.published += n

    def recv_raw(self, timeout_ms: int | None = None) -> bytes | None:
        """Next frame, or ``None`` after ``timeout_ms`` (``None`` waits forever)."""
        if self._pending:
            frame = self._pending.popleft()
        elif timeout_ms is not None and not self._poller.poll(timeout_ms):
            return None
        else:
            frame = self.sub.recv(copy=True)
        self.received += 1
        return frame

    def recv_batch(self, timeout_ms: int, max_frames: int = 1024) -> list[bytes]:
        """Every frame already waiting, up to ``max_frames``, waiting up to ``timeout_ms`` for
        the first one: ``[]`` on timeout. One poll for a burst instead of one per frame, the
        receive loop of a service that takes every tick (strategies, execution)."""
        if self._pending:
            frames = [self._pending.popleft() for _ in range(min(max_frames, len(self._pending)))]
        elif not self._poller.poll(timeout_ms):
            return []
        else:
            frames = []
        recv = self.sub.recv
        try:
            while len(frames) < max_frames:
                frames.append(recv(zmq.NOBLOCK))
        except zmq.Again:
            pass
        self.received += len(frames)
        return frames

    def recv(self, timeout_ms: int | None = None) -> tuple[str, m.AnyMessage] | None:
        """Next decoded ``(topic, message)``, or ``None`` on timeout.

        Raises ``ValueError`` on a frame that does not decode.
        """
        frame = self.recv_raw(timeout_ms)
        if frame is None:
            return None
        return m.decode(frame)

    def wait_ready(self, timeout_s: float = 10.0) -> bool:
        """Block until a probe published here comes back through the proxy to our SUB socket.

        Afterwards our subscriptions are active at the proxy (they travel the
        same pipe as the probe's, ahead of it) and the proxy has passed every
        current subscriber's interest to our PUB socket, so nothing we publish
        is dropped for lack of a subscription. Data frames that arrive while
        waiting are kept for :meth:`recv`. Returns False on timeout.
        """
        topic = f"{PROBE_PREFIX}{os.getpid()}.{uuid.uuid4().hex[:8]}".encode()
        self.sub.setsockopt(zmq.SUBSCRIBE, topic)
        probe = m.Health(service="probe", pid=os.getpid(), status="probe", ts=0)
        frame = topic + m.SEPARATOR + msgspec_json_encode(probe)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                self.pub.send(frame)
                end = time.monotonic() + 0.05
                while (left := end - time.monotonic()) > 0:
                    if not self._poller.poll(max(1, int(left * 1000))):
                        break
                    got = self.sub.recv()
                    if got.startswith(topic):
                        return True
                    if not got.startswith(PROBE_PREFIX.encode()):
                        self._pending.append(got)
            return False
        finally:
            self.sub.setsockopt(zmq.UNSUBSCRIBE, topic)

    def close(self) -> None:
        """Close both sockets, waiting up to 2 s for queued messages to leave. Its counters stay
        in :func:`process_totals`."""
        with _registry_lock:
            if not self._closed:
                self._closed = True
                _registry.discard(self)
                _closed_totals[0] += self.published
                _closed_totals[1] += self.received
        self.pub.close()
        self.sub.close(0)


def now_ms() -> int:
    """Wall-clock time, epoch ms UTC."""
    return time.time_ns() // 1_000_000
