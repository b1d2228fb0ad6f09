"""The API process end to end: a real bus proxy, ``python3 api/server.py`` as a subprocess,
real ZeroMQ publishers and real WebSocket clients (the ``websockets`` package)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import websockets
import zmq

from trading_core import messages as m
from trading_core.bus import BusClient, now_ms, run_proxy

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "api" / "server.py"
VENDOR = ROOT / "frontend" / "node_modules" / "lightweight-charts" / "dist"
TOKEN = "test-token-must-never-leave-4f9a"
NIFTY = "NSE_INDEX|Nifty 50"
BANK = "NSE_INDEX|Nifty Bank"
SESSION_OPEN = 1795578300000      # 2026-11-25 09:15 IST (03:45 UTC), epoch ms

pytestmark = pytest.mark.timeout(90)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    proc: subprocess.Popen
    port: int
    bus: BusClient
    pub: str
    sub: str
    log_dir: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("api-logs")
    pub, sub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    ctx = zmq.Context()
    proxy = threading.Thread(target=run_proxy, args=(pub, sub, ctx), daemon=True)
    proxy.start()
    port = free_port()
    env = dict(os.environ, AMT_BUS_PUB=pub, AMT_BUS_SUB=sub, AMT_API_PORT=str(port),
               AMT_API_HOST="127.0.0.1", AMT_LOG_DIR=str(log_dir), UPSTOX_ACCESS_TOKEN=TOKEN)
    out = open(log_dir / "stdout.txt", "wb")
    proc = subprocess.Popen([sys.executable, str(SERVER)], env=env, cwd=ROOT, stdout=out,
                            stderr=subprocess.STDOUT)
    bus = BusClient(pub, sub, ["health.api"], context=ctx)
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, (log_dir / "stdout.txt").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "API did not answer /health in 15 s"
            time.sleep(0.1)
        assert bus.wait_ready(10)
        # The supervisor's rule: publish nothing until the API says "ready".
        while True:
            got = bus.recv(timeout_ms=int(max(0.0, deadline - time.monotonic()) * 1000))
            assert got is not None, "no health.api status 'ready'"
            if isinstance(got[1], m.Health) and got[1].status == "ready":
                break
        yield Stack(proc, port, bus, pub, sub, log_dir)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        out.close()
        bus.close()
        ctx.term()           # ends the proxy thread


def tick(key: str, i: int, ltp: float) -> m.Tick:
    return m.Tick(instrument_key=key, ts=SESSION_OPEN + 120_000 + i * 10, ltp=ltp, seq=i, source="test")


def publish_tick(bus, t: m.Tick) -> None:
    """Publish ``t`` as the ingestor hands ticks to the API: in a conflated ``last_ticks`` frame."""
    bus.publish_raw(m.last_ticks_frame([(t.instrument_key, m.encode(m.tick_topic(t.instrument_key), t))]))


def candle(key: str, minute: int, close: float) -> m.Candle:
    return m.Candle(instrument_key=key, interval="1m", ts=SESSION_OPEN + minute * 60_000, open=close - 3,
                    high=close + 4, low=close - 5, close=close, volume=0, ticks=60)


async def recv_json(ws, timeout: float = 3.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def collect(ws, done, timeout: float = 5.0) -> list[dict]:
    """Batches until ``done(batches)`` is true; fails after ``timeout``."""
    batches: list[dict] = []
    deadline = time.monotonic() + timeout
    while not done(batches):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; got {len(batches)} batches"
        frame = await recv_json(ws, left)
        assert frame["type"] == "batch", frame["type"]
        batches.append(frame)
    return batches


def test_health_lists_services_and_hides_the_token(stack: Stack):
    stack.bus.publish(m.health_topic("ingestor"),
                      m.Health(service="ingestor", pid=4242, status="running", ts=now_ms(),
                               details={"ticks": 7, "oops": f"token={TOKEN}"}))
    deadline = time.monotonic() + 3
    while True:
        r = httpx.get(stack.http + "/health")
        body = r.json()
        if "ingestor" in body["services"] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert r.status_code == 200
    services = body["services"]
    api, ing = services["api"], services["ingestor"]
    assert api["status"] == "ready" and api["pid"] == stack.proc.pid
    assert api["details"]["bus_ok"] is True
    assert {"ws_clients", "msgs_in", "frames_dropped"} <= set(api["details"])
    assert ing["pid"] == 4242 and ing["status"] == "running" and ing["details"]["ticks"] == 7
    assert 0 <= ing["age_ms"] < 2000 and ing["stale"] is False
    assert TOKEN not in r.text and "***" in ing["details"]["oops"]
    assert TOKEN not in httpx.get(stack.http + "/api/snapshot").text


def test_snapshot_batches_coalescing_and_late_client(stack: Stack):
    async def run():
        async with websockets.connect(stack.ws, max_size=None) as ws:
            snap = await recv_json(ws)
            assert snap["type"] == "snapshot"
            assert {"instruments", "candles", "ticks", "profiles", "signals", "health"} <= set(snap)
            for minute, close in ((0, 24300.5), (1, 24310.25)):
                stack.bus.publish(m.candle_topic(NIFTY), candle(NIFTY, minute, close))
            for i in range(200):          # a burst far faster than 100 ms
                publish_tick(stack.bus, tick(NIFTY, i, 24300 + i * 0.05))
                publish_tick(stack.bus, tick(BANK, i, 52000 + i * 0.05))
            sig = m.Signal(strategy="ib_breakout_nifty", instrument_key=NIFTY, side="BUY", entry=24310.0,
                           stop_loss=24290.0, target=24350.0, reason="close above IBH",
                           ts=SESSION_OPEN + 61_000)
            stack.bus.publish(m.signal_topic(sig.strategy), sig)
            stack.bus.publish_raw(m.profile_topic(NIFTY).encode() + m.SEPARATOR
                                  + json.dumps({"instrument_key": NIFTY, "poc": 24305.0}).encode())
            t0 = time.monotonic()

            def seen_all(bs):
                last = {}
                for b in bs:
                    last.update(b["ticks"])
                return (sum(len(b["candles"]) for b in bs) >= 2 and any(b["signals"] for b in bs)
                        and last.get(NIFTY, {}).get("seq") == 199 and last.get(BANK, {}).get("seq") == 199
                        and any(NIFTY in b["profiles"] for b in bs))

            batches = await collect(ws, seen_all)
            latency = time.monotonic() - t0
            print(f"burst of 402 ticks + 2 candles + signal + profile delivered in {latency * 1000:.0f} ms "
                  f"as {len(batches)} batches")
            with_ticks = [b for b in batches if b["ticks"]]
            # 400 ticks published within a few ms arrive as a handful of coalesced ticks
            assert 1 <= len(with_ticks) <= 4, [list(b["ticks"]) for b in with_ticks]
            assert sum(len(b["ticks"]) for b in batches) <= 8
            assert with_ticks[-1]["ticks"][NIFTY]["ltp"] == pytest.approx(24300 + 199 * 0.05)
            candles = [c for b in batches for c in b["candles"]]
            assert [c["close"] for c in candles] == [24300.5, 24310.25]
            sigs = [s for b in batches for s in b["signals"]]
            assert sigs[-1]["strategy"] == "ib_breakout_nifty" and sigs[-1]["side"] == "BUY"
            assert latency < 1.0

        # A page opened later sees the day in its first frame.
        async with websockets.connect(stack.ws, max_size=None) as late:
            snap = await recv_json(late)
            assert snap["type"] == "snapshot" and snap["filter"] is None
            assert NIFTY in snap["instruments"] and BANK in snap["instruments"]
            assert [c["close"] for c in snap["candles"][NIFTY]][-2:] == [24300.5, 24310.25]
            assert snap["ticks"][NIFTY]["seq"] == 199 and snap["ticks"][BANK]["seq"] == 199
            assert snap["signals"][-1]["reason"] == "close above IBH"
            assert snap["profiles"][NIFTY]["poc"] == 24305.0
            assert "api" in snap["health"]

    asyncio.run(run())
    r = httpx.get(stack.http + "/api/candles", params={"instrument_key": NIFTY})
    assert r.status_code == 200 and [c["ts"] for c in r.json()["candles"]][-2:] == [
        SESSION_OPEN, SESSION_OPEN + 60_000]
    assert httpx.get(stack.http + "/api/candles", params={"instrument_key": "NOPE|x"}).status_code == 404
    snap = httpx.get(stack.http + "/api/snapshot").json()
    assert snap["ticks"][BANK]["ltp"] == pytest.approx(52000 + 199 * 0.05)


def test_subscribe_filter_and_bad_client_json(stack: Stack):
    async def run():
        async with websockets.connect(stack.ws, max_size=None) as ws:
            assert (await recv_json(ws))["type"] == "snapshot"
            await ws.send("this is {not json")        # ignored, the connection stays up
            await ws.send(json.dumps({"subscribe": [BANK]}))
            while True:                               # a batch may be in flight before the answer
                snap = await recv_json(ws)
                if snap["type"] == "snapshot":
                    break
            assert snap["filter"] == [BANK] and set(snap["ticks"]) <= {BANK} and NIFTY not in snap["candles"]
            for i in range(300, 320):
                publish_tick(stack.bus, tick(NIFTY, i, 24400.0))
                publish_tick(stack.bus, tick(BANK, i, 52100.0))
            stack.bus.publish(m.candle_topic(NIFTY), candle(NIFTY, 2, 24320.0))
            stack.bus.publish(m.candle_topic(BANK), candle(BANK, 2, 52120.0))
            batches = await collect(ws, lambda bs: any(c["instrument_key"] == BANK
                                                       for b in bs for c in b["candles"])
                                    and any(b["ticks"].get(BANK, {}).get("seq") == 319 for b in bs))
            assert all(set(b["ticks"]) <= {BANK} for b in batches)
            assert all(c["instrument_key"] == BANK for b in batches for c in b["candles"])
            await ws.send(json.dumps({"subscribe": None}))   # back to everything
            while (await recv_json(ws))["type"] != "snapshot":
                pass

    asyncio.run(run())
    assert httpx.get(stack.http + "/health").json()["services"]["api"]["details"]["bad_client_messages"] >= 1
    assert "ignored message (not JSON)" in (stack.log_dir / "api.log").read_text()


def _stalled_ws(port: int) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads again."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # small window: backpressure soon
    s.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def test_slow_client_does_not_block_others(stack: Stack):
    stalled = _stalled_ws(stack.port)
    try:
        async def run():
            async with websockets.connect(stack.ws, max_size=None) as ws:
                assert (await recv_json(ws))["type"] == "snapshot"
                # ~8 MB of candles: more than the kernel buffers of the stalled connection hold
                for i in range(40_000):
                    stack.bus.publish(m.candle_topic("TEST|FLOOD"), candle("TEST|FLOOD", i, 100.0 + i))
                got = await collect(ws, lambda bs: sum(len(b["candles"]) for b in bs) >= 40_000, timeout=15)
                assert got[-1]["candles"][-1]["close"] == 100.0 + 39_999
                # Then 6 s of live ticks: each must reach the reading client promptly while the
                # stalled client's queue fills up and is dropped (MAX_PENDING = 5 s of batches).
                lags = []
                for i in range(60):
                    sent = time.monotonic()
                    publish_tick(stack.bus, tick(NIFTY, 1000 + i, 24500.0 + i))
                    await collect(ws, lambda bs: any(b["ticks"].get(NIFTY, {}).get("seq") == 1000 + i
                                                     for b in bs), timeout=2)
                    lags.append(time.monotonic() - sent)
                    await asyncio.sleep(0.1 - min(0.1, lags[-1]))
                return sorted(lags)

        lags = asyncio.run(run())
        print(f"reading client lag with a stalled peer: median {lags[len(lags) // 2] * 1000:.0f} ms, "
              f"max {lags[-1] * 1000:.0f} ms")
        assert lags[len(lags) // 2] < 0.2 and lags[-1] < 1.0, lags
        details = httpx.get(stack.http + "/health").json()["services"]["api"]["details"]
        assert details["frames_dropped"] > 0 and details["resyncs"] >= 1, details
    finally:
        stalled.close()


def test_page_is_served(stack: Stack):
    r = httpx.get(stack.http + "/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert '<script src="/vendor/lightweight-charts.js"></script>' in r.text and "/app.js" in r.text
    js = httpx.get(stack.http + "/app.js")
    assert js.status_code == 200 and "createSeriesMarkers" in js.text
    assert httpx.get(stack.http + "/style.css").status_code == 200


def test_chart_library_is_served(stack: Stack):
    if not (VENDOR / "lightweight-charts.standalone.production.js").is_file():
        pytest.skip("frontend/node_modules absent: run `npm ci --prefix frontend` to serve the chart library")
    r = httpx.get(stack.http + "/vendor/lightweight-charts.js")
    assert r.status_code == 200 and "javascript" in r.headers["content-type"]
    assert "createSeriesMarkers" in r.text and len(r.content) > 100_000


def test_port_in_use_exits_2_with_one_line(stack: Stack):
    env = dict(os.environ, AMT_BUS_PUB=stack.pub, AMT_BUS_SUB=stack.sub, AMT_API_PORT=str(stack.port),
               AMT_API_HOST="127.0.0.1", AMT_LOG_DIR=str(stack.log_dir / "second"))
    res = subprocess.run([sys.executable, str(SERVER)], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=20)
    assert res.returncode == 2
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert (f"api: port {stack.port} on 127.0.0.1 is in use; stop the other process "
            "or set API_PORT / --port") in lines[0]


def test_sigterm_stops_within_2s(stack: Stack):
    """Even with one reading client and one that stopped reading with megabytes queued."""
    stalled = _stalled_ws(stack.port)

    async def run():
        async with websockets.connect(stack.ws, max_size=None) as ws:
            assert (await recv_json(ws))["type"] == "snapshot"
            for i in range(40_000):
                stack.bus.publish(m.candle_topic("TEST|FLOOD"), candle("TEST|FLOOD", i, 100.0 + i))
            await collect(ws, lambda bs: sum(len(b["candles"]) for b in bs) >= 40_000, timeout=15)
            t0 = time.monotonic()
            stack.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(stack.proc.wait, 5)
            elapsed = time.monotonic() - t0
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 2)
            return code, elapsed

    try:
        code, elapsed = asyncio.run(run())
    finally:
        stalled.close()
    print(f"SIGTERM -> exit {code} in {elapsed * 1000:.0f} ms")
    assert code == 0 and elapsed < 2.0, (code, elapsed)
