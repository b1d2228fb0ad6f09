"""Receive-time stamps for latency benchmarks (``benchmarks/bench_system.py``).

With ``AMT_LATENCY_PROBE=DIR`` in its environment the ingestor stamps ``time.time_ns()``
(CLOCK_REALTIME, shared by every process of the machine) as it takes each tick from its
feed source, before encoding and publishing it, and writes ``DIR/ingestor_recv.npy``: an
int64 array of shape ``(n, 2)``, rows ``[seq, recv_ns]`` in feed order. Off by default: the
unprobed feed loop has no extra per-tick work.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

ENV = "AMT_LATENCY_PROBE"
FILE_NAME = "ingestor_recv.npy"
_BLOCK = 1 << 16


class LatencyProbe:
    """Stamps ticks passing through :meth:`wrap`; :meth:`dump` writes what it has so far."""

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / FILE_NAME
        self._blocks: list[np.ndarray] = []
        self._current = np.empty((_BLOCK, 3), dtype=np.int64)   # [first_seq, count, recv_ns]
        self._n = 0

    @classmethod
    def from_env(cls) -> "LatencyProbe | None":
        """A probe writing to ``$AMT_LATENCY_PROBE``, or None when it is unset."""
        directory = os.environ.get(ENV)
        return cls(directory) if directory else None

    def wrap(self, ticks: Iterable) -> Iterator:
        """Yield the items of ``ticks`` unchanged, stamping those with a ``seq`` (ticks)."""
        for item in ticks:
            seq = getattr(item, "seq", None)
            if seq is not None:
                self.stamp_batch(seq, 1)
            yield item

    def stamp_batch(self, first_seq: int, count: int) -> None:
        """Stamp ``count`` ticks with consecutive ``seq`` from ``first_seq``, all taken from the
        feed now (a replay hands the ingestor the ticks due within 2 ms as one batch). Kept as
        one row per batch, so a long run's stamps take little memory (the memory benchmark
        runs with the probe on)."""
        if self._n == _BLOCK:
            self._blocks.append(self._current)
            self._current = np.empty((_BLOCK, 3), dtype=np.int64)
            self._n = 0
        self._current[self._n] = (first_seq, count, time.time_ns())
        self._n += 1

    def stamps(self) -> np.ndarray:
        """Every stamp so far, one row per tick: int64 ``(n, 2)``, rows ``[seq, recv_ns]``."""
        batches = np.concatenate([*self._blocks, self._current[: self._n]])
        first, count, recv = batches[:, 0], batches[:, 1], batches[:, 2]
        starts = np.repeat(first - np.cumsum(count) + count, count)     # each batch's first seq, per tick
        seq = starts + np.arange(int(count.sum()), dtype=np.int64)
        return np.column_stack([seq, np.repeat(recv, count)])

    def dump(self) -> Path:
        """Write every stamp so far to ``DIR/ingestor_recv.npy`` (atomically); return the path."""
        stamps = self.stamps()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp.npy")
        np.save(tmp, stamps)
        os.replace(tmp, self.path)
        return self.path
