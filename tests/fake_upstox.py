"""A local stand-in for Upstox, faithful where the desk's Upstox code depends on it.

On 127.0.0.1 it serves, like Upstox:

* ``GET /v3/feed/market-data-feed/authorize`` (Bearer token checked; Upstox's 401 error body for a
  bad token) -> ``{"status":"success","data":{"authorizedRedirectUri":"ws://.../?code=..."}}``,
  a **single-use** URL (a reused code is refused at the WebSocket handshake with 403);
* that WebSocket: binary JSON requests (``{"guid","method":"sub"|"unsub"|"change_mode",
  "data":{"mode","instrumentKeys"}}``) in, binary frames **encoded with the SDK's own protobuf
  classes** (``upstox_client.feeder.proto.MarketDataFeedV3_pb2.FeedResponse``) out: a
  ``market_info`` frame on connect, an ``initial_feed`` snapshot for each subscription, then a
  ``live_feed`` frame per trade print in the subscribed mode of each instrument (``ltpc``;
  ``full`` -> ``indexFF`` for an index, ``marketFF`` with 5 depth levels otherwise; ``full_d30``
  with 30 levels; ``option_greeks`` -> ``firstLevelWithGreeks``);
* ``GET /market-quote/instruments/exchange/NSE.json.gz``: a gzipped instruments master in Upstox's
  JSON format (indices, an equity, and every future and option contract of the recorded F&O day);
* ``GET /v3/historical-candle/intraday/{key}/minutes/1``: the day's closed 1-minute candles,
  newest first, ``[ISO time +05:30, open, high, low, close, volume, oi]``.

The market is real recorded data played on a clock (``speed`` market seconds per second from
``start`` IST on ``day``): NIFTY 50 and NIFTY BANK from ``nse-index-1min`` (each 1-minute bar as
the replay's 4 prints), and from ``nse-fo-ticks/2022-11-18``: the NIFTY near-month future
(``NIFTY-I``), the ``NIFTY22112418400CE`` option and, as the one equity (``NSE_EQ|RELIANCE``),
the prints of ``NIFTY-II`` (the recorded data has no equity; only the feed path is exercised).
What a print does not carry is derived from it deterministically: depth levels around the price,
greeks and IV from the price, ``cp`` = the previous session's close for indices and the day's
first print for the rest, ``vtt``/``atp``/OHLC accumulated from the prints.

Controls for tests: :meth:`FakeUpstox.drop` (cut every connection without a close frame, with an
optional outage during which authorize answers 503), :meth:`pause`/:meth:`resume` (silence on an
open socket), :meth:`inject` (send given raw frames, e.g. garbage), ``accept_and_drop`` (accept a
WebSocket and cut it at once), :meth:`set_token`. Everything sent is recorded per connection
(:attr:`connections`) so tests can compare what the desk stored with what the feed said.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import http.server
import json
import logging
import re
import socket
import threading
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np
from upstox_client.feeder.proto import MarketDataFeedV3_pb2 as pb
from websockets.sync.server import serve

from data_handling.replay import bars_to_ticks, read_bars, read_ticks
from tests.conftest import FO_TICKS, INDEX_1MIN

IST = dt.timezone(dt.timedelta(hours=5, minutes=30))
_QUIET = logging.getLogger("fake_upstox.ws")
_QUIET.setLevel(logging.WARNING)
DAY = "2022-11-18"
FUT_KEY = "NSE_FO|35001"               # NIFTY Nov 2022 future
OPTION_KEY = "NSE_FO|NIFTY-OPT-KEY"    # replaced by the real token of NIFTY22112418400CE below
EQUITY_KEY = "NSE_EQ|INE002A01018"     # RELIANCE
NIFTY_KEY = "NSE_INDEX|Nifty 50"
BANK_KEY = "NSE_INDEX|Nifty Bank"
INVALID_TOKEN_BODY = {"status": "error", "errors": [{
    "errorCode": "UDAPI100050", "message": "Invalid token used to access API", "propertyPath": None,
    "invalidValue": None, "error_code": "UDAPI100050", "property_path": None, "invalid_value": None}]}
REQUEST_MODES = {"ltpc": pb.ltpc, "full": pb.full_d5, "option_greeks": pb.option_greeks,
                 "full_d30": pb.full_d30}
_OPTION_RE = re.compile(r"^(NIFTY|BANKNIFTY|FINNIFTY)(\d\d)(\d\d)(\d\d)(\d+)(CE|PE)$")
FUTURE_EXPIRIES = {"NIFTY": ["2022-11-24", "2022-12-29", "2023-01-25"],
                   "BANKNIFTY": ["2022-11-24", "2022-12-29", "2023-01-25"],
                   "FINNIFTY": ["2022-11-29", "2022-12-27"]}
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


def expiry_ms(day: dt.date) -> int:
    """Upstox's expiry field: 23:59:59 IST of the expiry day, epoch ms."""
    return int(dt.datetime(day.year, day.month, day.day, 23, 59, 59, tzinfo=IST).timestamp() * 1000)


def ist_ms(day: str, hhmm: str) -> int:
    d = dt.date.fromisoformat(day)
    h, mi = map(int, hhmm.split(":"))
    return int(dt.datetime(d.year, d.month, d.day, h, mi, tzinfo=IST).timestamp() * 1000)


def master_rows() -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The instruments master (Upstox JSON rows) and ``{recorded symbol: instrument key}``."""
    rows: list[dict[str, Any]] = [
        {"segment": "NSE_INDEX", "name": "Nifty 50", "exchange": "NSE", "instrument_type": "INDEX",
         "instrument_key": NIFTY_KEY, "exchange_token": "26000", "trading_symbol": "NIFTY"},
        {"segment": "NSE_INDEX", "name": "Nifty Bank", "exchange": "NSE", "instrument_type": "INDEX",
         "instrument_key": BANK_KEY, "exchange_token": "26009", "trading_symbol": "BANKNIFTY"},
        {"segment": "NSE_INDEX", "name": "Nifty Fin Service", "exchange": "NSE", "instrument_type": "INDEX",
         "instrument_key": "NSE_INDEX|Nifty Fin Service", "exchange_token": "26037",
         "trading_symbol": "FINNIFTY"},
        {"segment": "NSE_EQ", "name": "RELIANCE INDUSTRIES LTD", "exchange": "NSE", "isin": "INE002A01018",
         "instrument_type": "EQ", "instrument_key": EQUITY_KEY, "lot_size": 1, "freeze_quantity": 100000.0,
         "exchange_token": "2885", "tick_size": 5.0, "trading_symbol": "RELIANCE",
         "short_name": "Reliance Industries", "security_type": "NORMAL"},
    ]
    keys: dict[str, str] = {}
    underlying_key = {"NIFTY": NIFTY_KEY, "BANKNIFTY": BANK_KEY, "FINNIFTY": "NSE_INDEX|Nifty Fin Service"}
    token = 35001
    for under, expiries in FUTURE_EXPIRIES.items():
        for n, day in enumerate(expiries):
            d = dt.date.fromisoformat(day)
            rows.append({"weekly": False, "segment": "NSE_FO", "name": under, "exchange": "NSE",
                         "expiry": expiry_ms(d), "instrument_type": "FUT", "underlying_symbol": under,
                         "instrument_key": f"NSE_FO|{token}", "lot_size": 50, "freeze_quantity": 2800.0,
                         "exchange_token": str(token), "minimum_lot": 50, "underlying_key": underlying_key[under],
                         "tick_size": 5.0, "underlying_type": "INDEX",
                         "trading_symbol": f"{under} FUT {d:%d} {MONTHS[d.month - 1]} {d:%y}", "strike_price": 0.0})
            keys[f"{under}-{'I' * (n + 1)}"] = f"NSE_FO|{token}"
            token += 1
    contracts = []
    for path in sorted((FO_TICKS / "Options").glob("*.csv")):
        mt = _OPTION_RE.match(path.stem)
        if mt:
            contracts.append((path.stem, mt[1], dt.date(2000 + int(mt[2]), int(mt[3]), int(mt[4])),
                              int(mt[5]), mt[6]))
    last_of_month = {}
    for _, under, day, _, _ in contracts:
        k = (under, day.year, day.month)
        last_of_month[k] = max(last_of_month.get(k, day), day)
    token = 40000
    for symbol, under, day, strike, kind in contracts:
        rows.append({"weekly": day != last_of_month[(under, day.year, day.month)], "segment": "NSE_FO",
                     "name": under, "exchange": "NSE", "expiry": expiry_ms(day), "instrument_type": kind,
                     "underlying_symbol": under, "instrument_key": f"NSE_FO|{token}", "lot_size": 50,
                     "freeze_quantity": 2800.0, "exchange_token": str(token), "minimum_lot": 50,
                     "underlying_key": underlying_key[under], "tick_size": 5.0, "underlying_type": "INDEX",
                     "trading_symbol": f"{under} {strike} {kind} {day:%d} {MONTHS[day.month - 1]} {day:%y}",
                     "strike_price": float(strike)})
        keys[symbol] = f"NSE_FO|{token}"
        token += 1
    return rows, keys


@dataclasses.dataclass
class Prints:
    """One instrument's recorded prints of the day, with running aggregates for feed fields."""

    kind: str                    # index | future | option | equity
    ts: np.ndarray               # epoch ms, sorted
    price: np.ndarray
    qty: np.ndarray
    oi: np.ndarray
    cp: float

    def __post_init__(self) -> None:
        self.vtt = np.cumsum(self.qty)
        self.pv = np.cumsum(self.qty * self.price)
        self.high = np.maximum.accumulate(self.price)
        self.low = np.minimum.accumulate(self.price)

    def last_at(self, ts: int) -> int:
        """Index of the last print at or before ``ts`` (-1 if none)."""
        return int(np.searchsorted(self.ts, ts, side="right")) - 1

    def candles(self, before_ts: int) -> list[list[Any]]:
        """Closed 1-minute candles of bars opening before ``before_ts``'s minute, newest first."""
        out = []
        bars = self.ts // 60_000 * 60_000
        limit = before_ts // 60_000 * 60_000
        for bar in np.unique(bars[bars < limit]):
            sel = bars == bar
            p = self.price[sel]
            when = dt.datetime.fromtimestamp(int(bar) / 1000, IST).isoformat()
            out.append([when, float(p[0]), float(p.max()), float(p.min()), float(p[-1]),
                        int(self.qty[sel].sum()), float(self.oi[sel][-1])])
        return out[::-1]


def load_market(option_symbol: str = "NIFTY22112418400CE") -> tuple[list[dict], dict[str, Prints], str]:
    """Master rows, ``{instrument key: Prints}`` of the streamed instruments, the option's key."""
    rows, keys = master_rows()
    prints: dict[str, Prints] = {}
    for key, file in ((NIFTY_KEY, "2022_NOV_NIFTY.txt"), (BANK_KEY, "2022_NOV_BNF.txt")):
        bars = read_bars(INDEX_1MIN / file, dates=["2022-11-17", DAY])
        prev = bars.filter(bars["date"] == dt.date(2022, 11, 17))
        ticks = bars_to_ticks(bars.filter(bars["date"] == dt.date.fromisoformat(DAY)))
        prints[key] = Prints("index", ticks["ts"].to_numpy(), ticks["ltp"].to_numpy(),
                             np.zeros(len(ticks), dtype=np.int64), np.zeros(len(ticks)),
                             float(prev["close"][-1]))
    option_key = keys[option_symbol]
    for key, path, kind in ((keys["NIFTY-I"], FO_TICKS / "Futures" / "NIFTY-I.csv", "future"),
                            (option_key, FO_TICKS / "Options" / f"{option_symbol}.csv", "option"),
                            (EQUITY_KEY, FO_TICKS / "Futures" / "NIFTY-II.csv", "equity")):
        t = read_ticks(path, dates=[DAY])
        prints[key] = Prints(kind, t["ts"].to_numpy(), t["ltp"].to_numpy(), t["ltq"].to_numpy(),
                             t["oi"].to_numpy(), float(t["ltp"][0]))
    return rows, prints, option_key


# --- frames ----------------------------------------------------------------------------------------
def _depth(price: float, i: int, levels: int) -> list[pb.Quote]:
    return [pb.Quote(bidQ=50 * (k + 1) + 25 * (i % 7), bidP=round(price - 0.05 * (k + 1), 2),
                     askQ=75 * (k + 1) + 25 * (i % 5), askP=round(price + 0.05 * (k + 1), 2))
            for k in range(levels)]


def _greeks(price: float) -> pb.OptionGreeks:
    return pb.OptionGreeks(delta=round(0.5 + ((price % 10) - 5) / 100, 4), theta=-round(price / 100, 4),
                           gamma=0.0012, vega=round(price / 20, 4), rho=0.05)


def feed_of(p: Prints, i: int, mode: str) -> pb.Feed:
    """The feed of print ``i`` of ``p`` in subscription ``mode``."""
    price, ts = float(p.price[i]), int(p.ts[i])
    ltpc = pb.LTPC(ltp=price, ltt=ts, ltq=int(p.qty[i]), cp=p.cp)
    minute = ts // 60_000 * 60_000
    j = int(np.searchsorted(p.ts, minute, side="left"))
    window = p.price[j:i + 1]
    ohlc = [pb.OHLC(interval="1d", open=float(p.price[0]), high=float(p.high[i]), low=float(p.low[i]),
                    close=price, vol=int(p.vtt[i]), ts=int(p.ts[0]) // 86_400_000 * 86_400_000),
            pb.OHLC(interval="I1", open=float(window[0]), high=float(window.max()), low=float(window.min()),
                    close=price, vol=int(p.qty[j:i + 1].sum()), ts=minute)]
    feed = pb.Feed(requestMode=REQUEST_MODES[mode])
    if mode == "ltpc":
        feed.ltpc.CopyFrom(ltpc)
    elif mode in ("full", "full_d30") and p.kind == "index":
        feed.fullFeed.indexFF.CopyFrom(pb.IndexFullFeed(ltpc=ltpc, marketOHLC=pb.MarketOHLC(ohlc=ohlc)))
    elif mode in ("full", "full_d30"):
        depth = _depth(price, i, 30 if mode == "full_d30" else 5)
        vtt = int(p.vtt[i])
        mf = pb.MarketFullFeed(ltpc=ltpc, marketLevel=pb.MarketLevel(bidAskQuote=depth),
                               marketOHLC=pb.MarketOHLC(ohlc=ohlc), atp=round(float(p.pv[i]) / vtt, 2) if vtt else 0.0,
                               vtt=vtt, oi=float(p.oi[i]), tbq=float(sum(q.bidQ for q in depth) * 10),
                               tsq=float(sum(q.askQ for q in depth) * 10))
        if p.kind == "option":
            mf.optionGreeks.CopyFrom(_greeks(price))
            mf.iv = round(12 + price % 3, 4)
        feed.fullFeed.marketFF.CopyFrom(mf)
    else:  # option_greeks
        feed.firstLevelWithGreeks.CopyFrom(pb.FirstLevelWithGreeks(
            ltpc=ltpc, firstDepth=_depth(price, i, 1)[0], optionGreeks=_greeks(price), vtt=int(p.vtt[i]),
            oi=float(p.oi[i]), iv=round(12 + price % 3, 4)))
    return feed


def frame(kind: int, feeds: dict[str, pb.Feed], current_ts: int) -> bytes:
    """One ``FeedResponse`` (``pb.initial_feed`` / ``pb.live_feed``) as bytes."""
    r = pb.FeedResponse(type=kind, currentTs=current_ts)
    for key, f in feeds.items():
        r.feeds[key].CopyFrom(f)
    return r.SerializeToString()


def market_info_frame(current_ts: int, status: str = "NORMAL_OPEN") -> bytes:
    r = pb.FeedResponse(type=pb.market_info, currentTs=current_ts)
    for seg in ("NSE_EQ", "NSE_FO", "NSE_INDEX", "BSE_EQ", "BSE_FO", "MCX_FO"):
        r.marketInfo.segmentStatus[seg] = pb.MarketStatus.Value(status)
    return r.SerializeToString()


# --- the server --------------------------------------------------------------------------------------
@dataclasses.dataclass
class Connection:
    """What one WebSocket connection received and sent, in order. ``sent`` holds ``(kind, frame)``
    with kind ``market_info`` | ``initial`` | ``live`` | ``injected`` (frames as bytes)."""

    code: str
    authorization: str
    requests: list[dict] = dataclasses.field(default_factory=list)
    sent: list[tuple[str, bytes]] = dataclasses.field(default_factory=list)   # (kind, frame)
    modes: dict[str, str] = dataclasses.field(default_factory=dict)   # key -> subscribed mode
    cursor: dict[str, int] = dataclasses.field(default_factory=dict)  # key -> next print to send
    closed: bool = False
    ws: Any = None
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


class FakeUpstox:
    """The fake; use as a context manager or call :meth:`start` / :meth:`stop`."""

    def __init__(self, token: str = "fake-token-3f9a1c77e2b84d0e", start: str = "09:20",
                 speed: float = 60.0, day: str = DAY, tick_interval_s: float = 0.02,
                 market_status: str = "NORMAL_OPEN"):
        self.token = token
        self.speed = speed
        self.start_ts = ist_ms(day, start)
        self.tick_interval_s = tick_interval_s
        self.market_status = market_status
        self.rows, self.prints, self.option_key = load_market()
        self.master_gz = gzip.compress(json.dumps(self.rows).encode())
        self.connections: list[Connection] = []
        self.authorize_calls: list[str] = []      # Authorization headers seen
        self.candle_requests: list[str] = []
        self.instrument_downloads = 0
        self.rejected_handshakes = 0
        self.accept_and_drop = False
        self._codes: dict[str, bool] = {}         # code -> used
        self._paused = threading.Event()
        self._outage_until = 0.0
        self._inject: list[bytes | str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._t0 = 0.0

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "FakeUpstox":
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                fake._http(self)

        self._http_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http_server.daemon_threads = True
        self.http_port = self._http_server.server_address[1]
        self._ws_server = serve(self._ws_handler, "127.0.0.1", 0, process_request=self._ws_check,
                                compression=None, ping_interval=None, logger=_QUIET)
        self.ws_port = self._ws_server.socket.getsockname()[1]
        self._t0 = time.monotonic()
        for target in (self._http_server.serve_forever, self._ws_server.serve_forever):
            threading.Thread(target=target, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._http_server.shutdown()
        self._http_server.server_close()          # refuse connections from now on
        self._ws_server.shutdown()
        for c in list(self.connections):
            self._cut(c)

    def __enter__(self) -> "FakeUpstox":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def market_ms(self) -> int:
        """The market clock: epoch ms of the recorded day now."""
        return int(self.start_ts + (time.monotonic() - self._t0) * self.speed * 1000)

    # --- controls ----------------------------------------------------------------------------
    def set_token(self, token: str) -> None:
        self.token = token

    def pause(self) -> None:
        """Stop sending (the sockets stay open)."""
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

    def inject(self, frames: list[bytes | str]) -> None:
        """Send these raw frames (bytes: binary, str: text) next, on the open connection."""
        with self._lock:
            self._inject.extend(frames)

    def drop(self, outage_s: float = 0.0) -> None:
        """Cut every open connection without a close frame (after letting what was sent arrive);
        for ``outage_s`` seconds authorize answers 503."""
        self._outage_until = time.monotonic() + outage_s
        self._paused.set()
        time.sleep(0.3)
        for c in list(self.connections):
            self._cut(c)
        self._paused.clear()

    def _cut(self, c: Connection) -> None:
        c.closed = True
        sock = getattr(c.ws, "socket", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    # --- HTTP --------------------------------------------------------------------------------
    def _json(self, h, status: int, body: Any, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _http(self, h) -> None:
        url = urlparse(h.path)
        if url.path == "/v3/feed/market-data-feed/authorize":
            auth = h.headers.get("Authorization", "")
            self.authorize_calls.append(auth)
            if auth != f"Bearer {self.token}":
                return self._json(h, 401, INVALID_TOKEN_BODY)
            if time.monotonic() < self._outage_until:
                return self._json(h, 503, {"status": "error", "errors": [
                    {"errorCode": "UDAPI100500", "message": "Something went wrong"}]})
            code = uuid.uuid4().hex
            self._codes[code] = False
            uri = (f"ws://127.0.0.1:{self.ws_port}/market-data-feeder/v3/upstox-developer-api/feeds"
                   f"?requestId={uuid.uuid4()}&code={code}")
            return self._json(h, 200, {"status": "success",
                                       "data": {"authorizedRedirectUri": uri, "authorized_redirect_uri": uri}})
        if url.path == "/market-quote/instruments/exchange/NSE.json.gz":
            self.instrument_downloads += 1
            return self._json(h, 200, self.master_gz, "application/gzip")
        mt = re.match(r"^/v3/historical-candle/intraday/(.+)/(\w+)/(\d+)$", url.path)
        if mt:
            key = unquote(mt[1])
            self.candle_requests.append(key)
            if key not in self.prints or (mt[2], mt[3]) != ("minutes", "1"):
                return self._json(h, 400, {"status": "error", "errors": [
                    {"errorCode": "UDAPI1021", "message": "Instrument key is invalid"}]})
            candles = self.prints[key].candles(self.market_ms())
            return self._json(h, 200, {"status": "success", "data": {"candles": candles}})
        return self._json(h, 404, {"status": "error", "errors": [{"message": "not found"}]})

    # --- WebSocket -----------------------------------------------------------------------------
    def _ws_check(self, connection, request):
        code = parse_qs(urlparse(request.path).query).get("code", [""])[0]
        with self._lock:
            ok = code in self._codes and not self._codes[code]
            if ok:
                self._codes[code] = True
        if not ok:
            self.rejected_handshakes += 1
            return connection.respond(403, "authorization code invalid or already used\n")
        return None

    def _ws_handler(self, ws) -> None:
        code = parse_qs(urlparse(ws.request.path).query).get("code", [""])[0]
        c = Connection(code=code, authorization=ws.request.headers.get("Authorization", ""), ws=ws)
        self.connections.append(c)
        if self.accept_and_drop:
            self._cut(c)
            return
        reader = threading.Thread(target=self._ws_reader, args=(c,), daemon=True)
        self._send(c, market_info_frame(self.market_ms(), self.market_status), "market_info")
        reader.start()
        while not (c.closed or self._stop.is_set()):
            time.sleep(self.tick_interval_s)
            if self._paused.is_set():
                continue
            with self._lock:
                inject, self._inject = self._inject, []
            for raw in inject:
                self._send(c, raw, "injected")
            self._send_live(c)

    def _ws_reader(self, c: Connection) -> None:
        try:
            for message in c.ws:
                request = json.loads(message)
                c.requests.append(request)
                data = request.get("data", {})
                keys = [k for k in data.get("instrumentKeys", [])]
                method = request.get("method")
                if method in ("sub", "change_mode"):
                    snapshot = {}
                    now = self.market_ms()
                    with c.lock:
                        for k in keys:
                            c.modes[k] = data.get("mode", "ltpc")
                            p = self.prints.get(k)
                            if p is None:
                                continue
                            i = p.last_at(now)
                            c.cursor[k] = i + 1
                            if i >= 0:
                                snapshot[k] = feed_of(p, i, c.modes[k])
                    if snapshot:
                        self._send(c, frame(pb.initial_feed, snapshot, now), "initial")
                elif method == "unsub":
                    with c.lock:
                        for k in keys:
                            c.modes.pop(k, None)
        except Exception:               # noqa: BLE001 - the connection was cut
            pass
        finally:
            c.closed = True

    def _send_live(self, c: Connection) -> None:
        now = self.market_ms()
        due = []
        with c.lock:
            for key, mode in c.modes.items():
                p = self.prints.get(key)
                if p is None:
                    continue
                start = c.cursor.get(key, 0)
                end = p.last_at(now) + 1
                due += [(int(p.ts[i]), key, i, mode) for i in range(start, end)]
                c.cursor[key] = max(start, end)
        for ts, key, i, mode in sorted(due, key=lambda d: d[0]):
            if not self._send(c, frame(pb.live_feed, {key: feed_of(self.prints[key], i, mode)}, now), "live"):
                return

    def _send(self, c: Connection, raw: bytes | str, kind: str) -> bool:
        with c.lock:
            if c.closed:
                return False
            try:
                c.ws.send(raw)
            except Exception:          # noqa: BLE001 - cut meanwhile
                c.closed = True
                return False
            c.sent.append((kind, raw if isinstance(raw, bytes) else raw.encode()))
        return True


def decode(raw: bytes) -> pb.FeedResponse:
    """A recorded frame back as the SDK's protobuf message."""
    return pb.FeedResponse.FromString(raw)


def feed_fields(feed: pb.Feed) -> dict[str, Any]:
    """What the desk must store of one sent feed, read straight off the protobuf message (not
    through MessageToDict), for field-by-field comparisons: ts, ltp, oi, mode, cp, vtt, atp, iv,
    greeks, best bid/ask, depth levels, tbq/tsq."""
    which = feed.WhichOneof("FeedUnion")
    out: dict[str, Any] = {}
    if which == "ltpc":
        ltpc, mode = feed.ltpc, "ltpc"
    elif which == "fullFeed" and feed.fullFeed.WhichOneof("FullFeedUnion") == "indexFF":
        ix = feed.fullFeed.indexFF
        ltpc, mode = ix.ltpc, "full"
        out["ohlc"] = [(o.interval, o.open, o.high, o.low, o.close, o.vol, o.ts) for o in ix.marketOHLC.ohlc]
    elif which == "fullFeed":
        mf = feed.fullFeed.marketFF
        ltpc, mode = mf.ltpc, "full" if feed.requestMode == pb.full_d5 else "full_d30"
        depth = [(q.bidQ, q.bidP, q.askQ, q.askP) for q in mf.marketLevel.bidAskQuote]
        out.update(vtt=mf.vtt, atp=mf.atp, oi=mf.oi, iv=mf.iv, tbq=mf.tbq, tsq=mf.tsq, depth=depth,
                   bid=depth[0][1], bid_qty=depth[0][0], ask=depth[0][3], ask_qty=depth[0][2],
                   ohlc=[(o.interval, o.open, o.high, o.low, o.close, o.vol, o.ts) for o in mf.marketOHLC.ohlc])
        if mf.HasField("optionGreeks"):
            g = mf.optionGreeks
            out.update(delta=g.delta, theta=g.theta, gamma=g.gamma, vega=g.vega, rho=g.rho)
    else:
        fl = feed.firstLevelWithGreeks
        ltpc, mode = fl.ltpc, "option_greeks"
        g, q = fl.optionGreeks, fl.firstDepth
        out.update(vtt=fl.vtt, oi=fl.oi, iv=fl.iv, delta=g.delta, theta=g.theta, gamma=g.gamma, vega=g.vega,
                   rho=g.rho, depth=[(q.bidQ, q.bidP, q.askQ, q.askP)], bid=q.bidP, bid_qty=q.bidQ,
                   ask=q.askP, ask_qty=q.askQ)
    out.update(ts=ltpc.ltt, ltp=ltpc.ltp, cp=ltpc.cp, mode=mode, feed_ltq=ltpc.ltq)
    out.setdefault("oi", 0.0)
    return out


def sent_feeds(fake: "FakeUpstox", kinds: tuple[str, ...] = ("initial", "live")) -> dict[str, list[dict]]:
    """Every feed the fake sent, per instrument key, in order: :func:`feed_fields` plus ``conn``
    (connection index) and ``feed_ts`` (the frame's currentTs)."""
    out: dict[str, list[dict]] = {}
    for n, c in enumerate(list(fake.connections)):
        for kind, raw in list(c.sent):
            if kind not in kinds:
                continue
            r = decode(raw)
            for key, f in r.feeds.items():
                out.setdefault(key, []).append(dict(feed_fields(f), conn=n, feed_ts=r.currentTs))
    return out


def expected_ltq(feeds: list[dict]) -> list[int]:
    """The desk's volume rule (see data_handling/upstox_feed.py) applied to one instrument's
    feeds: the first feed of each connection is a baseline (0); then the rise of ``vtt`` over the
    highest seen, or without vtt the feed's own quantity when its trade time advanced."""
    out: list[int] = []
    best = last_ltt = conn = None
    for f in feeds:
        if f["conn"] != conn:
            conn, best, last_ltt = f["conn"], None, None
        vtt = f.get("vtt")
        if vtt is None:
            out.append(f["feed_ltq"] if last_ltt is not None and f["ts"] > last_ltt else 0)
        else:
            out.append(0 if best is None or vtt <= best else vtt - best)
            best = vtt if best is None else max(best, vtt)
        last_ltt = f["ts"]
    return out
