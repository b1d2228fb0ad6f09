"""The API process: the bus made visible to a browser. FastAPI + uvicorn on API_HOST:API_PORT.

Run by ``run.py``; alone with ``python3 api/server.py [--host H] [--port N] [--config FILE]``.

It subscribes to ``last_ticks`` (the conflated ticks), ``candle.``, ``signal.``, ``profile.`` and ``health.`` on the bus,
keeps the day's snapshot in memory (see :mod:`api.hub`), keeps the execution blotter from
``risk.``, ``order.``, ``fill.``, ``position.`` and ``event.`` (see :mod:`api.blotter`) and publishes its own
``health.api`` once a second. Status ``starting`` becomes ``ready`` only after a probe
published by this process has come back through the proxy to its SUB socket, so when the
supervisor sees ``ready`` every subscription of the API is live at the proxy and nothing the
feed publishes next is lost to the "slow joiner" window.

Endpoints (prices rupees, ``ts`` epoch ms UTC; the page displays IST):

``GET /``                           the desk page (``frontend/index.html``, ``app.js``, ``style.css``)
``GET /vendor/lightweight-charts.js`` the chart library from ``frontend/node_modules`` (404 if not installed)
``GET /health``                     ``{"ts":ms,"services":{name:{...Health..., "age_ms":ms, "stale":bool}}}``,
                                    the API's own entry computed locally
``GET /api/snapshot``               the snapshot frame described in :mod:`api.hub`
``GET /api/candles?instrument_key=K`` ``{"instrument_key":K,"interval":"1m","candles":[Candle...]}``
                                    (404 for an instrument never seen and not on the watchlist)
``GET /api/instruments``            ``{"instruments":[{instrument_key, kind, underlying, expiry,
                                    expiry_month, strike, right, label}...]}``: every instrument seen
                                    or watched, classified by name (``data_handling.instruments.classify``)
``GET /console``                    the research SQL console (``frontend/console.html``, ``console.js``)
``POST /api/sql``                   ``{"sql", "params"?, "timeout_s"?}`` (application/json) -> the first
                                    5,000 rows as ``{"columns", "rows", "row_count", "truncated", ...}``,
                                    or ``{"kind", "error"}`` (see ``scripts/research.py: api_sql``)
``GET /api/sql/examples``           the saved example queries
``GET /api/execution``              the blotter: signals, risk decisions, orders, fills, positions with
                                    live PnL and the kill switch (see :mod:`api.blotter`)
``POST /api/strategies/control``    ``{"command": "restart"|"enable"|"disable", "target": NAME}``
                                    (application/json) -> 202 ``{"sent": Control}``; the strategy
                                    manager carries it out and reports it in its health
                                    (``details.last_command``)
``POST /api/kill-switch``           ``{"resume": false}`` (application/json): engage (or with ``true``
                                    release) the execution service's kill switch -> ``{"sent": cmd}``
``WS  /ws``                         first a ``snapshot`` frame, then a ``batch`` frame at most every
                                    100 ms. Client -> server: ``{"subscribe":[key,...]}`` limits ticks,
                                    candles and profiles to those instruments (``null`` or ``"*"``:
                                    all) and is answered with a fresh, filtered snapshot;
                                    ``{"snapshot":true}`` asks for a fresh snapshot. Anything else
                                    is logged and ignored; the connection stays open.
``GET /api/history/days``           the recorded IST trading days, their instruments and tick counts
``WS  /ws/history``                 replay one recorded day of one instrument to this client at 1, 10,
                                    60, 300x or flat out (see :mod:`api.history`; read through the
                                    ingestor's query service, never the DuckDB file)

Each WebSocket client has its own sender task and bounded queue (:data:`api.hub.MAX_PENDING`
batches): a slow client gets several batches merged into one frame, and one that falls
5 s behind gets its queue dropped and a fresh snapshot instead; neither the bus reader
nor the other clients ever wait for it.

The access token is never sent anywhere: no endpoint exposes settings, and bus payloads
containing it are masked before they are stored or forwarded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import re
import signal
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402
import uvicorn  # noqa: E402
import zmq  # noqa: E402
import zmq.asyncio  # noqa: E402
from fastapi import FastAPI, Query, Request, WebSocket  # noqa: E402
from fastapi.responses import FileResponse, Response  # noqa: E402

from api.blotter import Blotter, backfill as blotter_backfill  # noqa: E402
from api.hub import Client, Hub, now_ms  # noqa: E402
from api import history as history_mod  # noqa: E402
from scripts import service  # noqa: E402
from trading_core import bus as bus_mod, logs, messages as m, settings as settings_mod  # noqa: E402

FRONTEND = ROOT / "frontend"
VENDOR_JS = FRONTEND / "node_modules" / "lightweight-charts" / "dist" / "lightweight-charts.standalone.production.js"
PAGE_FILES = {"index.html": "text/html; charset=utf-8",
              "app.js": "text/javascript; charset=utf-8",
              "style.css": "text/css; charset=utf-8",
              "console.html": "text/html; charset=utf-8",       # the SQL console (issue 7)
              "console.js": "text/javascript; charset=utf-8",
              "blotter.js": "text/javascript; charset=utf-8",       # the execution blotter (issue 6)
              "strategies.js": "text/javascript; charset=utf-8",    # the strategies panel (issue 5)
              "tpo.js": "text/javascript; charset=utf-8",           # the TPO profile panel (issue 8)
              "options.js": "text/javascript; charset=utf-8",       # option premium charts (issue 8)
              "history.js": "text/javascript; charset=utf-8"}       # History mode (api/history.py)
NO_CACHE = {"Cache-Control": "no-cache"}

BATCH_S = 0.1               # WebSocket batch period
HEALTH_S = 1.0              # health.api period
ABORT_AFTER_S = 0.4         # on shutdown, connections still open after this are aborted
DRAIN_MAX = 5000            # bus frames handled per event-loop turn
# Ticks arrive conflated (messages.LastTicks): every print of a busy F&O day would cost this
# process a core at full replay speed for prices nobody can read at that rate.
SUBSCRIPTIONS = (m.LAST_TICKS, "candle.", "signal.", "profile.", "risk.", "order.", "fill.", "position.",
                 "event.", "health.")   # health last: see _probe

log = logging.getLogger("api")
STRATEGY_NAME = re.compile(r"[a-z][a-z0-9_]{0,47}")      # configs/strategies.schema.json
_json = msgspec.json.Encoder().encode


class _CountedPub(zmq.Socket):
    """A plain PUB socket that counts the frames it sent (``published``), so ``health.api`` carries
    the API's bus rates like every other service (see :class:`scripts.service.BusRates`)."""

    published = 0

    def send(self, data, flags=0, copy=True, track=False, **kwargs):
        sent = super().send(data, flags, copy=copy, track=track, **kwargs)
        self.published += 1
        return sent


class _Pub:
    """Adapter so :class:`scripts.service.HealthReporter` can publish on our PUB socket."""

    def __init__(self, sock: zmq.Socket):
        self.sock = sock

    def publish(self, topic: str, message: m.Message) -> None:
        try:
            self.sock.send(m.encode(topic, message), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass                  # HWM reached or socket closing: a lost health report is harmless


class BusBridge:
    """The API's two bus sockets and its three loops: reader, 100 ms flusher, health."""

    def __init__(self, settings: settings_mod.Settings, hub: Hub, url: str):
        self.settings = settings
        self.hub = hub
        self.blotter = Blotter()                  # risk/order/fill/position frames (api/blotter.py)
        self.url = url
        self.ctx = zmq.asyncio.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, bus_mod.HWM)
        self.sub.setsockopt(zmq.LINGER, 0)
        # Draining is done on a blocking shadow of the same socket: one await per burst of
        # frames instead of one Future per frame.
        self.sub_sync = zmq.Socket.shadow(self.sub.underlying)
        self.pub = _CountedPub(self.ctx, zmq.PUB)  # plain socket: PUB sends never block
        self.pub.setsockopt(zmq.SNDHWM, bus_mod.HWM)
        self.pub.setsockopt(zmq.LINGER, 500)
        self.sub.connect(settings.bus_sub)        # raises zmq.ZMQError on a malformed endpoint
        self.pub.connect(settings.bus_pub)
        for prefix in SUBSCRIPTIONS:
            self.sub.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        self.probe_topic = f"{bus_mod.PROBE_PREFIX}api.{os.getpid()}.{uuid.uuid4().hex[:8]}".encode()
        hub.probe_topic = self.probe_topic
        self.reporter = service.HealthReporter(_Pub(self.pub), "api", HEALTH_S,  # type: ignore[arg-type]
                                               bus_counts=lambda: (self.pub.published, hub.msgs_in))
        self.status = "starting"
        self.ready_at = 0.0
        self._tasks: list[asyncio.Task] = []

    # --- loops ---------------------------------------------------------------------------
    async def _reader(self) -> None:
        hub, sub, sync, blotter = self.hub, self.sub, self.sub_sync, self.blotter
        while True:
            try:
                frame = await sub.recv()
            except (zmq.ContextTerminated, zmq.ZMQError):
                return
            hub.ingest(frame)
            blotter.ingest(frame)
            for _ in range(DRAIN_MAX):
                try:
                    frame = sync.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                except zmq.ZMQError:
                    return
                hub.ingest(frame)
                blotter.ingest(frame)
            else:
                await asyncio.sleep(0)        # a long burst: let the flusher and clients run

    async def _flusher(self) -> None:
        loop = asyncio.get_running_loop()
        next_t = loop.time()
        while True:
            next_t += BATCH_S
            delay = next_t - loop.time()
            if delay < 0:                      # we fell behind (busy loop): don't try to catch up
                next_t = loop.time()
                delay = 0
            await asyncio.sleep(delay)
            try:
                self.hub.flush()
            except Exception:                  # never let one bad message stop the stream
                log.exception("flush failed")

    async def _probe(self) -> None:
        """Publish a probe until it comes back to our SUB socket, then report ``ready``.

        ZeroMQ sends subscriptions in order on one connection, and ``health.`` is the last
        one set, so the probe's return proves every subscription is active at the proxy.
        """
        frame = self.probe_topic + m.SEPARATOR + _json(
            m.Health(service="probe", pid=os.getpid(), status="probe", ts=0))
        started = time.monotonic()
        warned = False
        while not self.hub.probe_seen:
            with contextlib.suppress(zmq.ZMQError):
                self.pub.send(frame, zmq.NOBLOCK)
            await asyncio.sleep(0.05)
            if not warned and time.monotonic() - started > 5:
                warned = True
                log.warning("no round trip through the bus yet (pub %s, sub %s); is the bus running?",
                            self.settings.bus_pub, self.settings.bus_sub)
        self.status = "ready"
        self.ready_at = time.monotonic()
        log.info("bus round trip ok after %.0f ms: ready", (self.ready_at - started) * 1000)
        self.reporter.send("ready", **self.details())

    async def _health(self) -> None:
        warned = False
        while True:
            self.reporter.send(self.status, **self.details())
            bus_ok = self.bus_ok()
            if not bus_ok and not warned and self.status == "ready":
                log.warning("our own health reports stopped coming back through the bus")
            warned = not bus_ok
            await asyncio.sleep(HEALTH_S)

    # --- state ---------------------------------------------------------------------------
    def bus_ok(self) -> bool:
        """True once ready while our own ``health.api`` keeps returning through the proxy."""
        if self.status != "ready":
            return False
        if time.monotonic() - self.ready_at < 3:
            return True
        return now_ms() - self.hub.own_health_rx_ms < 5000

    def details(self) -> dict[str, Any]:
        d: dict[str, Any] = self.hub.stats()
        d["bus_ok"] = self.bus_ok()
        d["url"] = self.url
        return d

    def own_health(self) -> dict[str, Any]:
        return {"type": "health", "v": m.SCHEMA_VERSION, "service": "api", "pid": os.getpid(),
                "status": self.status, "ts": now_ms(),
                "details": {**self.reporter.rates.last, **self.details()}}

    async def start(self) -> None:
        for coro in (self._reader(), self._flusher(), self._probe(), self._health(),
                     blotter_backfill(self.blotter, self.settings)):      # earlier trades, from DuckDB
            self._tasks.append(asyncio.create_task(coro))

    async def stop(self) -> None:
        self.status = "stopping"
        self.reporter.send("stopping", **self.details())
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self.sub.close(0)
        self.pub.close(300)                    # let "stopping" leave
        self.ctx.term()


def create_app(settings: settings_mod.Settings, bridge: BusBridge) -> FastAPI:
    hub = bridge.hub

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await bridge.start()
        try:
            yield
        finally:
            await bridge.stop()
            log.info("stopped")

    app = FastAPI(title="AMT desk API", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)

    # --- HTTP ----------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> Response:
        return Response(_json(hub.health(bridge.own_health())), media_type="application/json",
                        headers=NO_CACHE)

    @app.get("/api/snapshot")
    async def snapshot() -> Response:
        return Response(hub.snapshot_frame(None), media_type="application/json", headers=NO_CACHE)

    @app.get("/api/candles")
    async def candles(instrument_key: str = Query(..., description="e.g. NSE_INDEX|Nifty 50")) -> Response:
        bars = hub.candles(instrument_key)
        if bars is None:
            return Response(_json({"detail": f"unknown instrument_key {instrument_key!r}",
                                   "instruments": list(hub.store.instruments)}),
                            status_code=404, media_type="application/json")
        return Response(_json({"instrument_key": instrument_key, "interval": "1m", "candles": bars}),
                        media_type="application/json", headers=NO_CACHE)

    @app.get("/api/instruments")
    async def instruments() -> Response:
        from data_handling.instruments import classify
        return Response(_json({"instruments": [classify(k).as_json() for k in hub.store.instruments]}),
                        media_type="application/json", headers=NO_CACHE)

    # The page's own files: each name in PAGE_FILES at /<name>, plus "/" and "/console". Only
    # these are served, never the rest of frontend/.
    def page_route(name: str):
        async def serve() -> Response:
            return FileResponse(FRONTEND / name, media_type=PAGE_FILES[name], headers=NO_CACHE)
        return serve

    for path, name in [("/", "index.html"), ("/console", "console.html"),
                       *((f"/{n}", n) for n in PAGE_FILES)]:
        app.add_api_route(path, page_route(name), methods=["GET"])

    # --- History mode: GET /api/history/days and WS /ws/history (api/history.py) -------------
    history_mod.install(app, settings)

    # --- research SQL console (scripts/research.py: read-only, time and row limits) ---------

    @app.get("/api/sql/examples")
    async def sql_examples() -> Response:
        from scripts import research
        return Response(_json(research.api_examples()), media_type="application/json", headers=NO_CACHE)

    @app.post("/api/sql")
    async def sql_query(request: Request) -> Response:
        from scripts import research
        status, body = await research.api_sql(settings, request.headers.get("content-type", ""),
                                              await request.body())
        return Response(_json(body), status_code=status, media_type="application/json", headers=NO_CACHE)

    # --- execution blotter and kill switch (api/blotter.py, scripts/execution.py) -----------
    @app.get("/api/execution")
    async def execution() -> Response:
        return Response(_json(bridge.blotter.snapshot()), media_type="application/json", headers=NO_CACHE)

    @app.post("/api/kill-switch")
    async def kill_switch(request: Request) -> Response:
        # JSON only: a cross-site form cannot send it without a CORS preflight, which we never allow
        if not request.headers.get("content-type", "").startswith("application/json"):
            return Response(_json({"error": "send application/json"}), status_code=415,
                            media_type="application/json")
        try:
            body = msgspec.json.decode(await request.body() or b"{}")
        except msgspec.DecodeError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("resume", False), bool):
            return Response(_json({"error": 'body must be {"resume": false|true}'}), status_code=400,
                            media_type="application/json")
        command = "resume" if body.get("resume") else "kill_switch"
        bridge.pub.send(m.encode(m.control_topic("execution"),
                                 m.Control(command=command, target="browser", ts=now_ms())))
        log.warning("kill switch: %s requested from the browser (%s)", command,
                    request.client.host if request.client else "?")
        return Response(_json({"sent": command}), media_type="application/json", headers=NO_CACHE)

    # --- strategy control (scripts/strategy_manager.py answers on reply.strategy_manager) -----
    @app.post("/api/strategies/control")
    async def strategy_control(request: Request) -> Response:
        # JSON only, as the kill switch: no cross-site form can send it
        if not request.headers.get("content-type", "").startswith("application/json"):
            return Response(_json({"error": "send application/json"}), status_code=415,
                            media_type="application/json")
        try:
            body = msgspec.json.decode(await request.body() or b"{}")
        except msgspec.DecodeError:
            body = None
        command = body.get("command") if isinstance(body, dict) else None
        target = body.get("target") if isinstance(body, dict) else None
        if command not in ("restart", "enable", "disable") or not isinstance(target, str) \
                or not STRATEGY_NAME.fullmatch(target):
            return Response(_json({"error": 'body must be {"command": "restart"|"enable"|"disable", '
                                            '"target": "<strategy name>"}'}),
                            status_code=400, media_type="application/json")
        control = m.Control(command=command, target=target, ts=now_ms())
        bridge.pub.send(m.encode(m.control_topic("strategy_manager"), control))
        log.info("strategy %s: %s requested from the browser (%s)", target, command,
                 request.client.host if request.client else "?")
        return Response(_json({"sent": control}), status_code=202, media_type="application/json",
                        headers=NO_CACHE)

    @app.get("/favicon.ico")
    async def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/vendor/lightweight-charts.js")
    async def vendor_chart() -> Response:
        if not VENDOR_JS.is_file():
            return Response("// lightweight-charts is not installed: run `npm ci --prefix frontend`\n",
                            status_code=404, media_type="text/javascript")
        return FileResponse(VENDOR_JS, media_type="text/javascript; charset=utf-8",
                            headers={"Cache-Control": "max-age=3600"})

    # --- WebSocket -----------------------------------------------------------------------
    async def send_loop(ws: WebSocket, client: Client) -> None:
        while True:
            await client.wake.wait()
            client.wake.clear()
            frame = client.next_frame(hub)
            if frame is None:
                continue
            await ws.send_text(frame.decode())
            client.sent += 1
            hub.frames_sent += 1

    def on_client_message(client: Client, text: str | None) -> None:
        def bad(why: str) -> None:
            client.bad_messages += 1
            hub.bad_client_messages += 1
            if client.bad_messages <= 5 or client.bad_messages % 100 == 0:
                log.warning("ws client %d (%s): ignored message (%s): %.80r [%d from this client]",
                            client.id, client.peer, why, text, client.bad_messages)

        if not text:
            return bad("empty or binary")
        try:
            msg = msgspec.json.decode(text)
        except msgspec.DecodeError:
            return bad("not JSON")
        if not isinstance(msg, dict):
            return bad("not a JSON object")
        if "subscribe" in msg:
            sub = msg["subscribe"]
            if sub is None or sub == "*":
                client.only = None
            elif isinstance(sub, list) and all(isinstance(k, str) for k in sub):
                client.only = None if "*" in sub else frozenset(sub)
            else:
                return bad("subscribe wants a list of instrument keys")
            log.info("ws client %d: subscribed to %s", client.id,
                     "all instruments" if client.only is None else sorted(client.only))
        elif msg.get("snapshot") is not True:
            return bad("unknown message")
        client.need_snapshot = True
        client.wake.set()

    @app.websocket("/ws")
    async def ws_endpoint(ws: WebSocket) -> None:
        await ws.accept()
        peer = f"{ws.client.host}:{ws.client.port}" if ws.client else "?"
        client = hub.add_client(peer, asyncio.Event())
        log.info("ws client %d connected from %s (%d connected)", client.id, peer, len(hub.clients))
        sender = asyncio.create_task(send_loop(ws, client))
        receiver = asyncio.create_task(ws.receive())
        try:
            while True:
                done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
                if sender in done:           # send failed: the connection is gone
                    break
                msg = receiver.result()
                if msg["type"] == "websocket.disconnect":
                    break
                on_client_message(client, msg.get("text"))
                receiver = asyncio.create_task(ws.receive())
        except Exception as exc:              # connection errors end this client only
            log.debug("ws client %d: %r", client.id, exc)
        finally:
            hub.remove_client(client)
            for t in (sender, receiver):
                t.cancel()
            for t in (sender, receiver):
                with contextlib.suppress(BaseException):
                    await t
            log.info("ws client %d disconnected: %d frames sent, %d batches merged, %d dropped "
                     "(%d connected)", client.id, client.sent, client.merged, client.dropped,
                     len(hub.clients))
            # No ws.close() here: the peer is gone or uvicorn already sent the close frame, and
            # a close queued behind a stalled peer's unread data would only wait.

    return app


class _Server(uvicorn.Server):
    """uvicorn's server, but a connection whose peer stopped reading cannot hold up shutdown.

    uvicorn closes every connection on shutdown and waits for them to finish; a transport
    that still holds data for a peer that never reads would keep it waiting for the whole
    graceful timeout. After :data:`ABORT_AFTER_S` such transports are aborted.
    """

    async def shutdown(self, sockets=None) -> None:
        async def abort_stragglers() -> None:
            await asyncio.sleep(ABORT_AFTER_S)
            for conn in list(self.server_state.connections):
                transport = getattr(conn, "transport", None)
                if transport is not None:
                    with contextlib.suppress(Exception):
                        transport.abort()

        aborter = asyncio.create_task(abort_stragglers())
        try:
            await super().shutdown(sockets)
        finally:
            aborter.cancel()


def bind_or_exit(host: str, port: int) -> socket.socket:
    """Bind the listening socket now, so a taken port is one clear line and EXIT_CONFIG."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as uvicorn: ignore TIME_WAIT
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            service.fatal(log, f"api: port {port} on {host} is in use; "
                               "stop the other process or set API_PORT / --port")
        service.fatal(log, f"api: cannot listen on {host}:{port} ({exc.strerror or exc}); "
                           "check API_HOST / --host")
    sock.set_inheritable(False)
    return sock


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    service.die_with_parent()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", help="listen address (default API_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default API_PORT, 8000)")
    parser.add_argument("--config", help="config file (default config.py, else config.example.py)")
    args = parser.parse_args(argv)
    try:
        settings = settings_mod.load(args.config)
    except Exception as exc:                     # noqa: BLE001 - any config error is fatal, once
        print(f"api: bad configuration: {exc}", file=sys.stderr)
        return service.EXIT_CONFIG
    logs.setup("api", settings.log_dir, [settings.access_token])
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)   # per-connection chatter; we log our own
    host = args.host or settings.api_host
    port = args.port if args.port is not None else settings.api_port
    sock = bind_or_exit(host, port)
    if not _is_loopback(host):
        log.warning("listening on %s, reachable from other machines; the desk has no login", host)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    try:
        bridge = BusBridge(settings, Hub(settings.watchlist, settings.access_token), url)
    except zmq.ZMQError as exc:
        service.fatal(log, f"api: bad bus endpoint {settings.bus_sub!r} / {settings.bus_pub!r}: {exc}")
    if not VENDOR_JS.is_file():
        log.warning("frontend/node_modules is missing: run `npm ci --prefix frontend` "
                    "to install the chart library (the page loads without charts)")
    log.info("desk at %s (bus sub %s, pub %s)", url, settings.bus_sub, settings.bus_pub)

    config = uvicorn.Config(create_app(settings, bridge), log_config=None, access_log=False,
                            lifespan="on", ws="websockets-sansio", ws_max_size=1 << 16,
                            timeout_graceful_shutdown=1)
    server = _Server(config)

    # uvicorn installs its own SIGTERM/SIGINT handlers while it serves, and after a clean
    # shutdown restores ours and re-raises the signal. Ours turns that into a normal exit 0,
    # and a signal that arrives before uvicorn took over makes it stop right after startup.
    def on_signal(signum, frame) -> None:
        server.should_exit = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
