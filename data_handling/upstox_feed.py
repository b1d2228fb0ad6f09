"""Live market data from Upstox's Market Data Feed V3, through the official ``upstox-python-sdk``.

:class:`UpstoxSource` is the ingestor's feed source for ``--feed upstox``: it resolves the
WATCHLIST through the instruments master (``data_handling/upstox_instruments.py``), connects with
the SDK's V3 streamer, and :meth:`UpstoxSource.ticks` yields

* :class:`trading_core.messages.Tick` for every feed update (canonical instrument names, epoch
  ms UTC, rupees; depth, volume, OHLC and greeks in ``Tick.quote``),
* :class:`trading_core.messages.MarketStatus` for every market-info message,
* :class:`data_handling.upstox_backfill.Backfill` after a reconnect (a gap's candles and ticks,
  for DuckDB only), and
* ``None`` about every 0.5 s while nothing arrives, so the consumer can check for shutdown.

It raises :class:`~data_handling.upstox_instruments.UpstoxConfigError` when Upstox rejects the
access token: one line telling how to get a new one; the ingestor exits with code 2.

What the SDK (2.30) does and what this module changes
-----------------------------------------------------
Kept: the SDK's ``MarketDataStreamerV3`` — its protobuf decoding (``FeedResponse.FromString`` of
its own ``MarketDataFeedV3_pb2``), ``json_format.MessageToDict``, the subscription book-keeping per
mode and the re-subscription of every key and mode on each open — and the
``MarketDataFeederV3`` subscribe/unsubscribe/change-mode requests.

Changed (the SDK's "known traps"):

* The feeder hard-codes ``wss://api.upstox.com/v3/feed/market-data-feed`` and runs
  websocket-client with ``CERT_NONE`` in a non-daemon thread. :class:`VerifiedFeederV3` connects
  to the single-use URL the authorize endpoint (``UPSTOX_FEED_AUTHORIZE_URL``, through the SDK's
  REST client) returns for each connection, verifies TLS against certifi's CA bundle, sends
  WebSocket pings, and runs in a daemon thread.
* The SDK's auto-reconnect retries at once and loops without end against a server that accepts
  and drops. It is disabled; :class:`UpstoxSource` reconnects with exponential backoff, jitter
  and a cap (:class:`Backoff`), and only a connection that stayed up ``stable_s`` resets it.
* Upstox sends no application heartbeat. :class:`Watchdog` reconnects after ``silence_s`` without
  a frame, but only during market hours (Mon-Fri 09:15-15:30 IST, and not while the feed's own
  market status says the subscribed segments are closed): silence overnight is normal.
* Tokens expire daily (~03:30 IST): every connection attempt re-reads the token (``config.py`` is
  loaded again; the environment variable is fixed for the process's life), and asks for a new
  authorized URL.
* ``upstox_client.Configuration()`` returns a copy of the first instance ever made, so every
  attribute this module relies on (host, token, TLS) is set after construction.

MessageToDict, converted explicitly (:class:`FeedConverter`): names are camelCase; int64 fields
(``ltt``, ``ltq``, ``vtt``, ``ts``, ``currentTs``...) arrive as strings; a field at its protobuf
default is left out, so a missing number is 0 and a missing ``type`` means ``initial_feed`` (enum
value 0), a missing ``requestMode`` means ``ltpc``.

Volume: ``Tick.ltq`` is the quantity traded since the previous update of that instrument on the
same connection — the increase of ``vtt`` (volume traded today; an update whose ``vtt`` is not
above the highest seen that day counts 0, so nothing is counted twice) in the modes that carry it, else
the feed's ``ltq`` when ``ltt`` advanced (a new trade) and 0 when it did not (a quote update
repeats the last trade). The first update of an instrument on each connection (the snapshot,
``initial_feed``) is a baseline with ``ltq`` 0, so candle volumes never count a trade twice.

Bad input — a frame that does not decode, a message type the SDK does not know, an instrument
key not subscribed, a timestamp older than the instrument's last, a zero/negative/non-finite
price, no timestamp at all, a malformed feed — is dropped, counted per kind
(``health.ingestor`` details ``upstox.bad_input``) and logged once per kind with a sample. The
good updates of the same frame are kept.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import logging
import math
import queue
import random
import socket
import ssl
import threading
import time
from typing import Any, Callable, Iterator
from urllib.parse import urlparse

import certifi
import upstox_client
import websocket
from upstox_client.feeder.market_data_feeder_v3 import MarketDataFeederV3
from upstox_client.feeder.market_data_streamer_v3 import MarketDataStreamerV3
from upstox_client.rest import ApiException

from data_handling.upstox_backfill import Backfill, IntradayCandles, fill, gap_minutes
from data_handling.upstox_instruments import (IST, TOKEN_HELP, UpstoxConfigError, entry_modes,
                                              load_master)
from trading_core import messages as m

log = logging.getLogger("upstox")

AUTHORIZE_PATH = "/v3/feed/market-data-feed/authorize"
# The feed's RequestMode enum names -> the subscription mode names of the SDK and of config.py.
MODE_NAMES = {"ltpc": "ltpc", "full_d5": "full", "option_greeks": "option_greeks", "full_d30": "full_d30"}
OPEN_STATES = frozenset({"NORMAL_OPEN"})
IST_OFFSET_MS = 19_800_000
BAD_KINDS = ("undecodable", "unknown_type", "unknown_instrument", "out_of_order", "bad_price",
             "no_timestamp", "malformed", "internal")


def fmt_ist(ts_ms: int) -> str:
    """``HH:MM:SS`` in IST of an epoch-ms time (``-`` for 0)."""
    if not ts_ms:
        return "-"
    return dt.datetime.fromtimestamp(ts_ms / 1000, IST).strftime("%H:%M:%S")


# --- policy pieces -------------------------------------------------------------------------------
class Backoff:
    """Exponential backoff with jitter and a cap: the n-th delay (n from 0) is uniform in
    ``[c/2, c]`` with ``c = min(cap_s, base_s * 2**n)``, so even the first retry waits and a
    flapping server is never hammered. :meth:`reset` after a connection proved stable."""

    def __init__(self, base_s: float = 0.5, cap_s: float = 30.0, rng: random.Random | None = None):
        if base_s <= 0 or cap_s < base_s:
            raise ValueError(f"Backoff needs 0 < base_s <= cap_s, got {base_s}, {cap_s}")
        self.base_s = base_s
        self.cap_s = cap_s
        self.rng = rng or random.Random()
        self.attempt = 0

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt (and count the attempt)."""
        ceiling = min(self.cap_s, self.base_s * 2 ** min(self.attempt, 60))
        self.attempt += 1
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self.attempt = 0


class Watchdog:
    """Decides when a silent feed must be reconnected.

    ``clock``: epoch seconds (injectable for tests). Market hours: Monday-Friday,
    ``open_ist`` <= IST time < ``close_ist``, and — once the feed has sent a market status for any
    of ``segments`` — at least one of them ``NORMAL_OPEN`` (so an exchange holiday, which Upstox
    reports as closed, does not cause reconnects all day).
    """

    def __init__(self, silence_s: float = 20.0, clock: Callable[[], float] = time.time,
                 segments: tuple[str, ...] = (), open_ist: dt.time = dt.time(9, 15),
                 close_ist: dt.time = dt.time(15, 30)):
        self.silence_s = silence_s
        self.clock = clock
        self.segments = segments
        self.open_ist = open_ist
        self.close_ist = close_ist
        self.market: dict[str, str] = {}

    def market_hours(self, now: float | None = None) -> bool:
        """True while silence means a stalled feed rather than a closed market."""
        t = dt.datetime.fromtimestamp(self.clock() if now is None else now, IST)
        if t.weekday() >= 5 or not (self.open_ist <= t.time() < self.close_ist):
            return False
        known = [self.market[s] for s in self.segments if s in self.market]
        return not known or any(s in OPEN_STATES for s in known)

    def silent(self, last_frame: float, now: float | None = None) -> bool:
        """True when no frame arrived for ``silence_s`` (``last_frame``: ``clock()`` of the last
        frame or of the connection's open) during market hours."""
        now = self.clock() if now is None else now
        return now - last_frame >= self.silence_s and self.market_hours(now)


class BadInput:
    """Counts bad feed input per kind and logs the first of each kind with a sample.

    ``what``: how the log line starts (``bad feed input``); ``where``: the health field that
    keeps the counts.
    """

    def __init__(self, logger: logging.Logger = log, what: str = "bad feed input",
                 where: str = "upstox.bad_input"):
        self.counts: dict[str, int] = {}
        self._log = logger
        self._what = what
        self._where = where
        self._lock = threading.Lock()

    def report(self, kind: str, sample: Any, detail: str = "") -> None:
        with self._lock:
            n = self.counts[kind] = self.counts.get(kind, 0) + 1
        if n == 1:
            text = repr(sample)
            self._log.warning("%s (%s)%s; dropped, sample: %s%s — further ones are only counted "
                              "(health: %s)", self._what, kind, f": {detail}" if detail else "",
                              text[:300], " ..." if len(text) > 300 else "", self._where)


# --- MessageToDict -> messages ------------------------------------------------------------------
def _f(d: dict, name: str) -> float:
    return float(d.get(name, 0.0))


def _i(d: dict, name: str) -> int:
    return int(d.get(name, 0))          # int64 fields arrive as strings: int("123")


def _greeks(g: dict | None) -> dict[str, float | None]:
    if g is None:
        return {}
    return {k: _f(g, k) for k in ("delta", "theta", "gamma", "vega", "rho")}


def _depth(levels: list[dict]) -> list[m.DepthLevel]:
    return [m.DepthLevel(_i(q, "bidQ"), _f(q, "bidP"), _i(q, "askQ"), _f(q, "askP")) for q in levels]


def _ohlc(bars: list[dict]) -> list[m.OhlcBar]:
    return [m.OhlcBar(str(b.get("interval", "")), _f(b, "open"), _f(b, "high"), _f(b, "low"),
                      _f(b, "close"), _i(b, "vol"), _i(b, "ts")) for b in bars]


def _best(depth: list[m.DepthLevel]) -> dict[str, Any]:
    if not depth:
        return {}
    d = depth[0]
    return {"bid": d.bid, "bid_qty": d.bid_qty, "ask": d.ask, "ask_qty": d.ask_qty}


@dataclasses.dataclass(frozen=True, slots=True)
class Subscription:
    """One instrument on the feed: its Upstox key, the desk's canonical name, the feed mode."""

    upstox_key: str
    canonical: str
    mode: str


class FeedConverter:
    """Turns the SDK's ``MessageToDict`` output into :class:`~trading_core.messages.Tick` and
    :class:`~trading_core.messages.MarketStatus` (see the module doc for the rules).

    ``subscriptions``: Upstox key -> :class:`Subscription`. ``next_seq``: the run's sequence
    counter. Not thread-safe: call from the feed thread only (one connection at a time).
    """

    def __init__(self, subscriptions: dict[str, Subscription], bad: BadInput,
                 next_seq: Callable[[], int], source: str = "upstox"):
        self.subscriptions = subscriptions
        self.bad = bad
        self.next_seq = next_seq
        self.source = source
        self.last_ts: dict[str, int] = {}          # Upstox key -> last tick ts (kept across connections)
        self._vtt: dict[str, int] = {}             # per connection: last vtt
        self._ltt: dict[str, int] = {}             # per connection: last ltt
        self._day: dict[str, int] = {}             # per connection: IST day of the last vtt

    def new_connection(self) -> None:
        """Forget the per-connection volume baselines (the next update of each is a snapshot)."""
        self._vtt.clear()
        self._ltt.clear()
        self._day.clear()

    def convert(self, message: dict) -> list[m.Tick | m.MarketStatus]:
        """Messages from one decoded frame; bad parts are reported and skipped."""
        kind = message.get("type", "initial_feed")          # initial_feed is enum 0: left out
        try:
            feed_ts = _i(message, "currentTs")
        except (TypeError, ValueError):
            self.bad.report("malformed", message, "currentTs is not an integer")
            return []
        if kind == "market_info":
            segments = (message.get("marketInfo") or {}).get("segmentStatus") or {}
            return [m.MarketStatus(ts=feed_ts, segments={str(k): str(v) for k, v in segments.items()},
                                   source=self.source)]
        if kind not in ("initial_feed", "live_feed"):
            self.bad.report("unknown_type", message, f"message type {kind!r}")
            return []
        out: list[m.Tick | m.MarketStatus] = []
        for key, feed in (message.get("feeds") or {}).items():
            try:
                tick = self._tick(key, feed, feed_ts)
            except (TypeError, ValueError, AttributeError, KeyError) as exc:
                self.bad.report("malformed", {key: feed}, f"{type(exc).__name__}: {exc}")
                continue
            if tick is not None:
                out.append(tick)
        return out

    def _tick(self, key: str, feed: dict, feed_ts: int) -> m.Tick | None:
        sub = self.subscriptions.get(key)
        if sub is None:
            self.bad.report("unknown_instrument", {key: feed}, f"instrument key {key!r} is not subscribed")
            return None
        oi = 0.0
        if "ltpc" in feed:
            ltpc = feed["ltpc"]
            quote = dict(mode="ltpc", cp=_f(ltpc, "cp"))
        elif "fullFeed" in feed:
            full = feed["fullFeed"]
            if "marketFF" in full:
                mf = full["marketFF"]
                ltpc = mf.get("ltpc", {})
                depth = _depth((mf.get("marketLevel") or {}).get("bidAskQuote", []))
                oi = _f(mf, "oi")
                quote = dict(mode="full", cp=_f(ltpc, "cp"), vtt=_i(mf, "vtt"), atp=_f(mf, "atp"),
                             tbq=_f(mf, "tbq"), tsq=_f(mf, "tsq"), depth=depth, **_best(depth),
                             iv=_f(mf, "iv"), **_greeks(mf.get("optionGreeks")),
                             ohlc=_ohlc((mf.get("marketOHLC") or {}).get("ohlc", [])),
                             iep=float(ltpc["iep"]) if "iep" in ltpc else _f(mf, "iep"), ieq=_i(mf, "ieq"),
                             rp=_f(mf, "rp"), iiq_total=_i(mf, "iiqTotal"), iiq_m=_i(mf, "iiqM"),
                             cas_eligible=bool(mf.get("casEligible", False)))
            elif "indexFF" in full:
                ix = full["indexFF"]
                ltpc = ix.get("ltpc", {})
                quote = dict(mode="full", cp=_f(ltpc, "cp"),
                             ohlc=_ohlc((ix.get("marketOHLC") or {}).get("ohlc", [])))
            else:
                raise ValueError("fullFeed has neither marketFF nor indexFF")
        elif "firstLevelWithGreeks" in feed:
            fl = feed["firstLevelWithGreeks"]
            ltpc = fl.get("ltpc", {})
            depth = _depth([fl["firstDepth"]]) if "firstDepth" in fl else []
            oi = _f(fl, "oi")
            quote = dict(mode="option_greeks", cp=_f(ltpc, "cp"), vtt=_i(fl, "vtt"), iv=_f(fl, "iv"),
                         depth=depth, **_best(depth), **_greeks(fl.get("optionGreeks")))
        else:
            raise ValueError("feed has no ltpc, fullFeed or firstLevelWithGreeks")
        mode = MODE_NAMES.get(feed.get("requestMode", ""))
        if mode:                                    # the feed's own word wins (full vs full_d30)
            quote["mode"] = mode
        ltp = _f(ltpc, "ltp")
        ltt = _i(ltpc, "ltt")
        ts = ltt or feed_ts
        if not ts:
            self.bad.report("no_timestamp", {key: feed}, f"{sub.canonical}: neither ltt nor currentTs")
            return None
        if not (ltp > 0 and math.isfinite(ltp)):
            self.bad.report("bad_price", {key: feed}, f"{sub.canonical}: price {ltp!r}")
            return None
        last = self.last_ts.get(key)
        if last is not None and ts < last:
            self.bad.report("out_of_order", {key: feed},
                            f"{sub.canonical}: ts {ts} ({fmt_ist(ts)} IST) before the last {last} "
                            f"({fmt_ist(last)} IST)")
            return None
        vtt = quote.get("vtt")
        if vtt is not None:
            day = (ts + IST_OFFSET_MS) // 86_400_000
            prev = self._vtt.get(key) if self._day.get(key) == day else None   # vtt restarts daily
            ltq = 0 if prev is None or vtt <= prev else vtt - prev
            self._vtt[key] = vtt if prev is None else max(prev, vtt)   # a stale vtt never recounts
            self._day[key] = day
        else:
            prev_ltt = self._ltt.get(key)
            ltq = _i(ltpc, "ltq") if prev_ltt is not None and ltt > prev_ltt else 0
        self._ltt[key] = ltt
        self.last_ts[key] = ts
        return m.Tick(instrument_key=sub.canonical, ts=ts, ltp=ltp, ltq=ltq, oi=oi, seq=self.next_seq(),
                      source=self.source, quote=m.Quote(feed_ts=feed_ts, **quote))


# --- the SDK, adapted ----------------------------------------------------------------------------
def rest_client(host: str, token: str):
    """An SDK ``ApiClient`` for ``host`` (scheme://host[:port]) with ``token``, TLS verified
    against certifi. Attributes are set after ``Configuration()`` because the SDK's
    ``Configuration`` hands out copies of its first instance."""
    cfg = upstox_client.Configuration()
    cfg.host = host.rstrip("/")
    cfg.access_token = token
    cfg.verify_ssl = True
    cfg.ssl_ca_cert = certifi.where()
    cfg.assert_hostname = None
    cfg.proxy = None
    cfg.debug = False
    return upstox_client.ApiClient(cfg)


class VerifiedFeederV3(MarketDataFeederV3):
    """The SDK's V3 feeder connecting to ``url`` (the authorize endpoint's single-use URL) with TLS
    verified against certifi, WebSocket pings, in a daemon thread; ``ended`` is set when the
    connection is over (closed, dropped or failed to open). The SDK's subscribe, unsubscribe and
    change-mode requests are inherited unchanged."""

    def __init__(self, api_client, url: str, on_open, on_message, on_error, on_close,
                 ping_interval_s: float = 10.0, ping_timeout_s: float = 8.0):
        super().__init__(api_client=api_client, instrumentKeys=[], mode="full", on_open=on_open,
                         on_message=on_message, on_error=on_error, on_close=on_close)
        self.url = url
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self.ended = threading.Event()
        self.thread: threading.Thread | None = None

    @staticmethod
    def sslopt() -> dict[str, Any]:
        """websocket-client TLS options: verify the server against certifi's CA bundle."""
        return {"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": certifi.where(), "check_hostname": True}

    def connect(self) -> None:
        if self.ws and self.ws.sock:
            return
        headers = {"Authorization": self.api_client.configuration.auth_settings()["OAUTH2"]["value"]}
        self.ws = websocket.WebSocketApp(self.url, header=headers, on_open=self.on_open,
                                         on_message=self.on_message, on_error=self.on_error,
                                         on_close=self.on_close)
        self.thread = threading.Thread(target=self._run, name="upstox-feed", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.ws.run_forever(sslopt=self.sslopt(), ping_interval=self.ping_interval_s,
                                ping_timeout=self.ping_timeout_s, reconnect=0)
        except Exception as exc:            # run_forever catches nearly everything; belt and braces
            log.warning("feed thread ended: %s", type(exc).__name__)
        finally:
            self.ended.set()

    def abort(self) -> None:
        """Drop the connection now (no closing handshake to wait for)."""
        ws = self.ws
        if ws is None:
            return
        ws.keep_running = False
        sock = getattr(ws.sock, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class UpstoxStreamer(MarketDataStreamerV3):
    """The SDK's V3 streamer with a per-connection URL (:attr:`url`), :class:`VerifiedFeederV3`,
    no SDK auto-reconnect, and frames that do not decode reported through ``on_undecodable``
    instead of raised. Decoding (``decode_protobuf``/``MessageToDict``), subscriptions per mode and
    their restoration on every open are the SDK's own."""

    def __init__(self, api_client, subscriptions: dict[str, list[str]],
                 on_undecodable: Callable[[Any, str], None], **feeder_options):
        super().__init__(api_client, [], "ltpc")
        for mode, keys in subscriptions.items():
            self.subscriptions[mode].update(keys)
        self.enable_auto_reconnect = False
        self.url = ""
        self.on_undecodable = on_undecodable
        self.feeder_options = feeder_options

    def connect(self) -> None:
        self.feeder = VerifiedFeederV3(self.api_client, self.url, on_open=self._current(self.handle_open),
                                       on_message=self._current(self.handle_message),
                                       on_error=self._current(self.handle_error),
                                       on_close=self._current(self.handle_close), **self.feeder_options)
        self.feeder.connect()

    def _current(self, handler: Callable) -> Callable:
        """``handler`` for the current connection only: an attempt given up on (say, one still
        opening after the timeout) must not subscribe or deliver through the SDK's ``self.feeder``,
        which by then is the next connection; it is closed instead."""
        def call(ws, *args):
            feeder = self.feeder
            if feeder is not None and feeder.ws is ws:
                return handler(ws, *args)
            if handler == self.handle_open:
                ws.keep_running = False
                ws.close()
        return call

    def handle_message(self, ws, message) -> None:
        try:
            super().handle_message(ws, message)    # FromString + MessageToDict + emit("message")
        except Exception as exc:                   # listeners never raise (UpstoxSource._on_message)
            self.on_undecodable(message, f"{type(exc).__name__}: {exc}")


# --- the source ----------------------------------------------------------------------------------
def _error_text(exc: BaseException) -> str:
    """A short description of an error, without URLs (an authorized URL is a credential)."""
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason or ''}".strip()
    text = str(exc).split("\n")[0]
    return f"{type(exc).__name__}: {' '.join(w if '://' not in w else '<url>' for w in text.split())}"[:200]


def _upstox_message(exc: ApiException) -> str:
    """Upstox's own error message from an API error body (``{"errors":[{"message":...}]}``)."""
    import json
    try:
        body = json.loads(exc.body)
        return "; ".join(str(e.get("message") or e.get("errorCode")) for e in body.get("errors", [])) \
            or str(exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason or "")


def _protect(secret: str) -> None:
    """Mask ``secret`` in every log handler that masks the access token (a re-read token may be new)."""
    from trading_core.logs import RedactFilter
    for handler in logging.getLogger().handlers:
        for flt in handler.filters:
            if isinstance(flt, RedactFilter) and secret and len(secret) >= 4 and secret not in flt.secrets:
                flt.secrets.append(secret)


def token_from_settings(initial: str) -> Callable[[], str]:
    """A token provider that loads the settings again on each call (``config.py`` may have been
    edited with a fresh token), falling back to the last good token."""
    state = {"token": initial}

    def current() -> str:
        from trading_core import settings as settings_mod
        try:
            token = settings_mod.load().access_token.strip()
        except Exception:                          # noqa: BLE001 - a half-edited config.py: keep the old one
            token = ""
        if token:
            state["token"] = token
        return state["token"]
    return current


class UpstoxSource:
    """The Upstox V3 feed as a source of desk messages (see the module doc).

    ``subscriptions``: what to subscribe. ``token``: returns the current access token (called
    before every connection attempt). ``base_url``: REST host (intraday candles);
    ``authorize_url``: the feed authorize endpoint. ``backfill``: fill gaps from the intraday
    candle API. ``clock``: epoch seconds, for the watchdog. ``silence_s``: watchdog threshold;
    ``stable_s``: a connection up this long resets the backoff; ``open_timeout_s``: give up an
    attempt that has not opened by then. Call :meth:`ticks` once; :meth:`close` to stop.
    """

    def __init__(self, subscriptions: list[Subscription], token: Callable[[], str], *,
                 base_url: str, authorize_url: str, backfill: bool = True,
                 clock: Callable[[], float] = time.time, silence_s: float = 20.0,
                 backoff: Backoff | None = None, stable_s: float = 30.0, open_timeout_s: float = 20.0,
                 ping_interval_s: float = 10.0, ping_timeout_s: float = 8.0):
        if not subscriptions:
            raise UpstoxConfigError("WATCHLIST is empty: nothing to subscribe to on the Upstox feed")
        self.subscriptions = {s.upstox_key: s for s in subscriptions}
        self._upstox_of = {s.canonical: s.upstox_key for s in subscriptions}
        self._token = token
        self.clock = clock
        self.stable_s = stable_s
        self.open_timeout_s = open_timeout_s
        self.backoff = backoff or Backoff()
        self.bad = BadInput()
        self._seq = itertools.count()
        self.converter = FeedConverter(self.subscriptions, self.bad, self._seq.__next__)
        segments = tuple(sorted({s.upstox_key.split("|")[0] for s in subscriptions}))
        self.watchdog = Watchdog(silence_s, clock, segments)
        self._out: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._opened = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = False
        token_now = token()
        _protect(token_now)
        self._token_in_use = token_now
        self._rest = rest_client(base_url, token_now)
        auth = urlparse(authorize_url)
        self._auth_path = auth.path or AUTHORIZE_PATH
        auth_host = f"{auth.scheme}://{auth.netloc}"
        self._auth = self._rest if auth_host == base_url.rstrip("/") else rest_client(auth_host, token_now)
        self._auth_host = auth.netloc
        self._candles = IntradayCandles(self._rest) if backfill else None
        by_mode: dict[str, list[str]] = {}
        for s in subscriptions:
            by_mode.setdefault(s.mode, []).append(s.upstox_key)
        self._by_mode = {k: len(v) for k, v in by_mode.items()}
        self.streamer = UpstoxStreamer(self._auth, by_mode, self._on_undecodable,
                                       ping_interval_s=ping_interval_s, ping_timeout_s=ping_timeout_s)
        self.streamer.on("open", self._on_open)
        self.streamer.on("message", self._on_message)
        self.streamer.on("error", self._on_error)
        self.streamer.on("close", self._on_close)
        logging.getLogger("websocket").setLevel(logging.CRITICAL)   # we log every disconnect ourselves
        # state for health
        self.connected = False
        self.connections = 0
        self.reconnects = 0
        self.watchdog_reconnects = 0
        self.frames = 0
        self.ticks_out = 0
        self.gaps = 0
        self.last_gap: dict[str, Any] | None = None
        self.backfilled_ticks = 0
        self.backfill_errors = 0
        self.market_status: m.MarketStatus | None = None
        self._last_frame = clock()
        self._last_error = ""
        self._pending_gap: dict[str, int] = {}
        self._backfill_jobs: queue.Queue = queue.Queue()
        self._backfill_problems = BadInput(what="gap backfill failed", where="upstox.backfill_errors")

    @classmethod
    def from_settings(cls, settings, **options) -> "UpstoxSource":
        """Resolve ``settings.watchlist`` through the instruments master (downloaded once a day
        into ``settings.instruments_cache``) and build the source. Raises
        :class:`UpstoxConfigError` (one line) for a missing token, an unknown or ambiguous
        WATCHLIST entry, or no instruments master."""
        if not settings.access_token.strip():
            raise UpstoxConfigError("the Upstox feed needs an access token: set ACCESS_TOKEN in config.py "
                                    "or UPSTOX_ACCESS_TOKEN; " + TOKEN_HELP)
        master = load_master(settings.upstox_instruments_url, settings.instruments_cache)
        modes = entry_modes(settings)
        errors, subs, seen = [], [], set()
        for entry in settings.watchlist:
            try:
                inst = master.resolve(entry)
            except UpstoxConfigError as exc:
                errors.append(str(exc))
                continue
            if inst.instrument_key in seen:
                continue
            seen.add(inst.instrument_key)
            subs.append(Subscription(inst.instrument_key, inst.canonical, modes[entry]))
            log.info("watchlist %r -> %s (%s, %s mode)", entry, inst.canonical, inst.instrument_key,
                     modes[entry])
        if errors:
            raise UpstoxConfigError(" | ".join(errors))
        return cls(subs, token_from_settings(settings.access_token.strip()),
                   base_url=settings.upstox_base_url, authorize_url=settings.upstox_authorize_url,
                   **options)

    # --- consumer side ----------------------------------------------------------------------
    def ticks(self) -> Iterator[m.Tick | m.MarketStatus | Backfill | None]:
        """Messages as they arrive (see the module doc); ``None`` every 0.5 s of quiet.
        Raises :class:`UpstoxConfigError` when the token is rejected."""
        self.start()
        get = self._out.get
        while True:
            try:
                item = get(timeout=0.5)
            except queue.Empty:
                if self._stop.is_set():
                    return
                yield None
                continue
            if isinstance(item, BaseException):
                raise item
            yield item

    def start(self) -> None:
        """Start the connection and backfill threads (idempotent)."""
        if self._started:
            return
        self._started = True
        for target, name in ((self._run, "upstox-conn"), (self._backfill_loop, "upstox-backfill")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def close(self) -> None:
        """Stop reconnecting and drop the connection."""
        self._stop.set()
        feeder = self.streamer.feeder
        if feeder is not None:
            feeder.abort()
        for t in self._threads:
            t.join(timeout=2)
        for client in {id(self._rest): self._rest, id(self._auth): self._auth}.values():
            try:                     # the SDK's ApiClient owns a thread pool; close it while we can,
                client.pool.close()  # not in its __del__ at interpreter exit (which prints an error)
                client.pool.join()
            except Exception:        # noqa: BLE001
                pass

    def health(self) -> dict[str, Any]:
        """``{"upstox": counters, "market_status": {ts, segments} | None}`` for ``health.ingestor``."""
        ms = self.market_status
        return {
            "upstox": {
                "connected": self.connected, "connections": self.connections,
                "reconnects": self.reconnects, "watchdog_reconnects": self.watchdog_reconnects,
                "frames": self.frames, "ticks": self.ticks_out, "bad_input": dict(self.bad.counts),
                "gaps": self.gaps, "last_gap": self.last_gap, "backfilled_ticks": self.backfilled_ticks,
                "backfill_errors": self.backfill_errors, "subscribed": dict(self._by_mode),
                "last_frame_age_s": round(self.clock() - self._last_frame, 1),
                "last_error": self._last_error, "queue": self._out.qsize(),
            },
            "market_status": None if ms is None else {"ts": ms.ts, "segments": dict(ms.segments)},
        }

    # --- connection thread ------------------------------------------------------------------
    def _authorize(self) -> str:
        """A fresh single-use feed URL for the current token. Raises :class:`UpstoxConfigError`
        if the token is rejected, anything else on a transient failure."""
        token = self._token()
        if token != self._token_in_use:
            _protect(token)
            self._token_in_use = token
            log.info("using the access token read again from the configuration")
        for client in {id(self._rest): self._rest, id(self._auth): self._auth}.values():
            client.configuration.access_token = token
        try:
            if self._auth_path == AUTHORIZE_PATH:
                from upstox_client.api.websocket_api import WebsocketApi
                response = WebsocketApi(self._auth).get_market_data_feed_authorize_v3(_request_timeout=15)
            else:
                response = self._auth.call_api(
                    self._auth_path, "GET", {}, [], {"Accept": "application/json"}, body=None,
                    post_params=[], files={}, response_type="WebsocketAuthRedirectResponse",
                    auth_settings=["OAUTH2"], _return_http_data_only=True, _preload_content=True,
                    _request_timeout=15, collection_formats={})
        except ApiException as exc:
            if exc.status in (401, 403):
                raise UpstoxConfigError(f"Upstox rejected the access token (HTTP {exc.status}: "
                                        f"{_upstox_message(exc)}); {TOKEN_HELP}") from None
            raise
        url = getattr(getattr(response, "data", None), "authorized_redirect_uri", None)
        if not url or urlparse(url).scheme not in ("ws", "wss"):
            raise RuntimeError("the authorize endpoint answered without a ws:// or wss:// URL")
        return url

    def _retry(self, reason: str) -> None:
        delay = self.backoff.next_delay()
        self._last_error = reason
        log.warning("%s; reconnecting in %.1f s (attempt %d)", reason, delay, self.backoff.attempt)
        self._stop.wait(delay)

    def _run(self) -> None:
        first = True
        while not self._stop.is_set():
            self.converter.new_connection()
            try:
                url = self._authorize()
            except UpstoxConfigError as exc:     # the consumer reports it (one line) and stops
                self._out.put(exc)
                return
            except Exception as exc:           # noqa: BLE001 - network, 5xx, 429: try again later
                self._retry(f"feed authorize at {self._auth_host} failed ({_error_text(exc)})")
                continue
            self._opened.clear()
            self._last_error = ""
            self.streamer.url = url
            self.streamer.connect()
            feeder: VerifiedFeederV3 = self.streamer.feeder
            deadline = time.monotonic() + self.open_timeout_s
            while not (self._opened.is_set() or feeder.ended.is_set() or self._stop.is_set()
                       or time.monotonic() > deadline):
                self._opened.wait(0.05)
            if self._stop.is_set():
                feeder.abort()
                break
            if not self._opened.is_set():
                feeder.abort()
                feeder.ended.wait(5)
                self._retry(f"the feed WebSocket at {urlparse(url).netloc} did not open "
                            f"({self._last_error or 'timeout'})")
                continue
            opened_at = self.clock()
            self._last_frame = opened_at
            self.connected = True
            self.connections += 1
            subscribed = ", ".join(f"{n} {mode}" for mode, n in sorted(self._by_mode.items()))
            if first:
                log.info("feed connected to %s; subscribed %s", urlparse(url).netloc, subscribed)
            else:
                self.reconnects += 1
                log.info("feed reconnected (reconnect %d); subscribed again %s", self.reconnects, subscribed)
            first = False
            while not feeder.ended.wait(0.25):
                if self._stop.is_set():
                    feeder.abort()
                    break
                now = self.clock()
                if self.backoff.attempt and now - opened_at >= self.stable_s:
                    self.backoff.reset()
                if self.watchdog.silent(self._last_frame, now):
                    self.watchdog_reconnects += 1
                    self._last_error = f"no data for {now - self._last_frame:.0f} s during market hours"
                    log.warning("no feed data for %.0f s during market hours: dropping the connection",
                                now - self._last_frame)
                    feeder.abort()
                    feeder.ended.wait(5)
                    break
            self.connected = False
            if self._stop.is_set():
                break
            feeder.ended.wait(5)
            self._note_disconnect()
            self._retry(f"feed connection lost ({self._last_error or 'closed by the server'}); "
                        f"last tick {fmt_ist(max(self.converter.last_ts.values(), default=0))} IST")

    def _note_disconnect(self) -> None:
        """Remember each instrument's last tick, to measure and fill the gap on the next ticks."""
        self._pending_gap.update({k: v for k, v in self.converter.last_ts.items()
                                  if k not in self._pending_gap})

    # --- feed thread callbacks (must never raise) -------------------------------------------
    def _on_open(self, *args) -> None:
        self._opened.set()

    def _on_error(self, error, *args) -> None:
        self._last_error = _error_text(error) if isinstance(error, BaseException) else str(error)[:200]

    def _on_close(self, *args) -> None:
        pass

    def _on_undecodable(self, frame: Any, why: str) -> None:
        self.frames += 1
        self._last_frame = self.clock()
        self.bad.report("undecodable", frame, why)

    def _on_message(self, message: dict) -> None:
        try:
            self.frames += 1
            self._last_frame = self.clock()
            for item in self.converter.convert(message):
                if item.__class__ is m.Tick:
                    self.ticks_out += 1
                    if self._pending_gap:
                        self._gap_closed(item)
                else:
                    self.market_status = item
                    self.watchdog.market = dict(item.segments)
                self._out.put(item)
        except Exception as exc:               # noqa: BLE001 - a bug here must not stop the feed
            self.bad.report("internal", message, f"{type(exc).__name__}: {exc}")

    def _gap_closed(self, tick: m.Tick) -> None:
        key = self._upstox_of[tick.instrument_key]
        before = self._pending_gap.pop(key, None)
        if before is None:
            return
        self.gaps += 1
        span = gap_minutes(before, tick.ts)
        minutes = 0 if span is None else (span[1] - span[0]) // 60_000 + 1
        self.last_gap = {"instrument_key": tick.instrument_key, "from_ts": before, "to_ts": tick.ts,
                         "minutes": minutes, "backfilled_ticks": 0,
                         "status": "pending" if minutes and self._candles else "nothing to fill"}
        log.info("feed gap on %s: last tick %s IST, first after %s IST (%.0f s); %s",
                 tick.instrument_key, fmt_ist(before), fmt_ist(tick.ts), (tick.ts - before) / 1000,
                 f"backfilling {minutes} whole minute(s) from the intraday candle API"
                 if minutes and self._candles else "no whole minute to backfill")
        if minutes and self._candles:
            self._backfill_jobs.put((key, tick.instrument_key, before, tick.ts))

    # --- backfill thread --------------------------------------------------------------------
    def _backfill_loop(self) -> None:
        while not self._stop.is_set():
            try:
                key, canonical, before, after = self._backfill_jobs.get(timeout=0.5)
            except queue.Empty:
                continue
            for attempt in range(3):
                try:
                    candles = self._candles.fetch(key)
                    break
                except Exception as exc:       # noqa: BLE001 - HTTP error, network, bad answer
                    if attempt == 2 or self._stop.wait(1.0 * (attempt + 1)):
                        self.backfill_errors += 1
                        self._backfill_problems.report("backfill_failed", key, _error_text(exc))
                        candles = None
                        break
            if candles is None:
                continue
            result = fill(canonical, candles, before, after, self._seq.__next__)
            self.backfilled_ticks += len(result.ticks)
            if self.last_gap and self.last_gap.get("instrument_key") == canonical \
                    and self.last_gap.get("from_ts") == before:
                self.last_gap = dict(self.last_gap, backfilled_ticks=len(result.ticks),
                                     status=f"filled {len(result.candles)} of {self.last_gap['minutes']} minute(s)")
            log.info("backfilled %s: %d candle(s), %d tick(s) between %s and %s IST", canonical,
                     len(result.candles), len(result.ticks), fmt_ist(before), fmt_ist(after))
            if result.ticks:
                self._out.put(result)
