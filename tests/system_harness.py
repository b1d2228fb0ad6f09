"""Start ``run.py`` as a user would, on free ports and a temporary DuckDB file, and watch it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def recorder_environment(db: Path, log_dir: Path):
    """A bus proxy in this process and the ``AMT_*`` settings a ``scripts/recorder.py`` started
    from here reads (``db``, ``log_dir``, the proxy, a free query endpoint); the environment is
    put back afterwards. Yields ``(bus_pub, bus_sub)``."""
    import threading
    import zmq
    from trading_core import bus
    ctx = zmq.Context()
    pub, sub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    proxy = threading.Thread(target=bus.run_proxy, args=(pub, sub, ctx), daemon=True)
    proxy.start()
    saved = dict(os.environ)
    os.environ.update({"AMT_DUCKDB_PATH": str(db), "AMT_BUS_PUB": pub, "AMT_BUS_SUB": sub,
                       "AMT_LOG_DIR": str(log_dir),
                       "AMT_QUERY_ENDPOINT": f"tcp://127.0.0.1:{free_port()}"})
    try:
        yield pub, sub
    finally:
        os.environ.clear()
        os.environ.update(saved)
        ctx.term()
        proxy.join(2)


class System:
    """A running ``python3 run.py`` with its own ports, database and log folder under ``tmp``."""

    def __init__(self, tmp: Path, *args: str, strategies: Path | None = None,
                 env: dict[str, str] | None = None):
        self.tmp = tmp
        self.port = free_port()
        self.db = tmp / "market.duckdb"
        self.logs = tmp / "logs"
        self.out = open(tmp / "run.out", "w+")
        cmd = [sys.executable, str(ROOT / "run.py"), "--port", str(self.port), "--db", str(self.db),
               "--bus-pub", f"tcp://127.0.0.1:{free_port()}", "--bus-sub", f"tcp://127.0.0.1:{free_port()}",
               "--query-endpoint", f"tcp://127.0.0.1:{free_port()}",
               "--log-dir", str(self.logs), *args]
        if strategies:
            cmd += ["--strategies", str(strategies)]
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AMT_", "UPSTOX_"))},
               **(env or {})}
        self.proc = subprocess.Popen(cmd, stdout=self.out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        self.descendants: set[int] = set()

    def output(self) -> str:
        self.out.flush()
        return (self.tmp / "run.out").read_text()

    def health(self) -> dict:
        """``/health`` of the API server as ``{service: health}``; {} while it is not up."""
        try:
            r = httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2)
        except httpx.HTTPError:
            return {}
        return r.json().get("services", {}) if r.status_code == 200 else {}

    def sql(self, query: str, params: list | None = None) -> list[list]:
        """Rows of a read-only query through the desk's own ``POST /api/sql``."""
        r = httpx.post(f"http://127.0.0.1:{self.port}/api/sql", json={"sql": query, "params": params or []},
                       timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["rows"]

    def wait(self, predicate, timeout: float, what: str):
        """Poll ``predicate(health)`` until truthy; return its value or fail naming ``what``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"run.py exited early ({self.proc.returncode}):\n{self.output()}"
            self.remember_children()
            value = predicate(self.health())
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n"
                             f"health: {json.dumps(self.health(), indent=1)[:3000]}\n{self.output()[-4000:]}")

    def remember_children(self) -> None:
        try:
            self.descendants |= {p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)}
        except psutil.Error:
            pass

    def terminate(self, timeout: float = 5.0) -> float:
        """SIGTERM run.py; return seconds until it exited. Fails if it took longer than ``timeout``."""
        self.remember_children()
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"run.py still running {timeout} s after SIGTERM\n{self.output()[-3000:]}")
        return time.monotonic() - started

    def leftovers(self) -> list[psutil.Process]:
        """Processes started under run.py that are still alive."""
        alive = []
        for pid in self.descendants:
            try:
                p = psutil.Process(pid)
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.Error:
                pass
        return alive

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for p in self.leftovers():
            p.kill()
        self.out.close()
