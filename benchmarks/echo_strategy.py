"""A benchmark strategy: records when each tick reaches ``on_tick`` and echoes a signal now and then.

Used by ``benchmarks/bench_system.py`` to measure the whole ``run.py`` system end to end. Named in
a generated strategies file as ``"class": "benchmarks.echo_strategy:EchoStrategy"`` with every
replayed instrument in ``instruments``.

- ``on_tick``: stamps ``time.time_ns()`` (CLOCK_REALTIME, epoch ns, the clock every process of
  the machine shares) on arrival and keeps ``(seq, arrival_ns)``. A replay's ``seq`` is the
  tick's position in the merged stream (unique across instruments), so it names the tick.
- Every ``signal_every``-th tick (``seq % signal_every == 0``) it emits a BUY signal at the
  tick's price (stop 1 % below, target 2 % above, ``ts`` = the tick's market time) whose
  ``reason`` is ``"echo seq=<seq>"``, so a listener can match the signal to its tick. Keep
  ``signal_every`` large enough that execution, risk and the audit trail are not flooded.
- Samples go to the directory named by the environment variable :data:`ENV_DIR` (benchmarks may
  do I/O; the trading strategies do none): ``<dir>/<name>.<pid>.ticks.bin``, raw native-endian
  int64 pairs ``[seq, arrival_ns]`` appended by a background thread every
  :data:`FLUSH_S` seconds (and a ``.signals.bin`` of ``[seq, emit_ns]``), so the process's
  memory stays bounded and a sample survives the process being stopped, except the last
  ``FLUSH_S`` seconds. Read them with :func:`read_samples`. Without :data:`ENV_DIR` nothing is
  written; the counts still are in the process's health report (``ticks``, ``signals``).
"""

from __future__ import annotations

import os
import threading
import time
from array import array
from pathlib import Path
from typing import Any

from strategy.base import Strategy
from trading_core.messages import Tick

ENV_DIR = "AMT_BENCH_ECHO_DIR"
"""Environment variable: the directory the samples are written to."""
FLUSH_S = 0.2
"""Seconds between two appends of the buffered samples to the files."""


class EchoStrategy(Strategy):
    """Benchmark probe; see the module doc. Params: ``signal_every`` (int >= 1, default 100):
    one signal per this many ticks (by ``seq``)."""

    params_schema = {
        "type": "object", "additionalProperties": False,
        "properties": {
            "signal_every": {"type": "integer", "minimum": 1, "default": 100},
        },
    }

    def on_start(self) -> None:
        self._every = int(self.params["signal_every"])
        self._lock = threading.Lock()
        self._ticks = array("q")
        self._signals = array("q")
        self._now = time.time_ns
        folder = os.environ.get(ENV_DIR)
        self._paths = None
        if folder:
            base = Path(folder) / f"{self.name}.{os.getpid()}"
            self._paths = (Path(f"{base}.ticks.bin"), Path(f"{base}.signals.bin"))
            threading.Thread(target=self._flush_loop, name="echo-flush", daemon=True).start()

    def on_tick(self, tick: Tick) -> None:
        arrived = self._now()
        seq = tick.seq
        with self._lock:
            self._ticks.append(seq)
            self._ticks.append(arrived)
        if seq % self._every == 0:
            price = tick.ltp
            emitted = self._now()
            self.signal(tick.instrument_key, "BUY", price, price * 0.99, price * 1.02,
                        f"echo seq={seq}", tick.ts)
            with self._lock:
                self._signals.append(seq)
                self._signals.append(emitted)

    def _flush_loop(self) -> None:
        while True:
            time.sleep(FLUSH_S)
            self.flush()

    def flush(self) -> None:
        """Append the buffered samples to the files (no-op without :data:`ENV_DIR`)."""
        if self._paths is None:
            return
        with self._lock:
            ticks, self._ticks = self._ticks, array("q")
            signals, self._signals = self._signals, array("q")
        for path, data in zip(self._paths, (ticks, signals)):
            if data:
                with open(path, "ab") as f:
                    data.tofile(f)


def read_samples(folder: str | Path, name: str, kind: str = "ticks") -> Any:
    """All samples strategy ``name`` wrote to ``folder`` (every process of it, e.g. after a
    restart), as an int64 numpy array of shape ``(n, 2)``: ``[seq, time_ns]`` (``kind``
    ``"ticks"``: arrival at ``on_tick``; ``"signals"``: emission). Empty ``(0, 2)`` if none."""
    import numpy as np
    parts = [np.fromfile(p, dtype="=i8") for p in sorted(Path(folder).glob(f"{name}.*.{kind}.bin"))]
    data = np.concatenate(parts) if parts else np.zeros(0, dtype="=i8")
    return data[: len(data) // 2 * 2].reshape(-1, 2)
