"""The ingestor's latency probe stamps each tick it takes from the feed, in feed order."""

from __future__ import annotations

import time

import numpy as np

from data_handling.replay import ReplaySource
from scripts.latency_probe import FILE_NAME, LatencyProbe
from tests.conftest import FO_TICKS


def test_probe_stamps_every_tick_in_order_and_passes_them_through(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("AMT_LATENCY_PROBE", str(tmp_path / "probe"))
    monkeypatch.setattr("scripts.latency_probe._BLOCK", 10_000)    # several blocks of stamps
    probe = LatencyProbe.from_env()
    src = ReplaySource(FO_TICKS / "Futures", limit=35_000)
    before = time.time_ns()
    passed = list(probe.wrap(src.ticks()))
    after = time.time_ns()
    assert [t.seq for t in passed] == src.frame()["seq"].to_list()
    stamps = np.load(probe.dump())
    assert probe.path == tmp_path / "probe" / FILE_NAME
    assert stamps.shape == (35_000, 2)
    assert (stamps[:, 0] == np.arange(35_000)).all()
    assert (np.diff(stamps[:, 1]) >= 0).all()
    assert before <= stamps[0, 1] and stamps[-1, 1] <= after


def test_no_probe_without_the_variable(monkeypatch):
    monkeypatch.delenv("AMT_LATENCY_PROBE", raising=False)
    assert LatencyProbe.from_env() is None


def test_batches_are_stamped_like_single_ticks(shared_data, tmp_path, monkeypatch):
    monkeypatch.setattr("scripts.latency_probe._BLOCK", 1_000)
    probe = LatencyProbe(tmp_path)
    src = ReplaySource(FO_TICKS / "Futures", limit=5_000)
    for batch in src.batches(rows=700):
        probe.stamp_batch(batch.first_seq, len(batch))
    stamps = np.load(probe.dump())
    assert (stamps[:, 0] == np.arange(5_000)).all()
    assert (np.diff(stamps[:, 1]) >= 0).all()
    assert len(np.unique(stamps[:, 1])) <= 8           # one time per batch of 700


def test_a_resumed_feed_keeps_its_seq_and_each_batch_its_time(tmp_path):
    probe = LatencyProbe(tmp_path)
    for first, count in ((5_000, 3), (5_003, 1), (7_000, 2)):      # a restart resumes at 7,000
        probe.stamp_batch(first, count)
    stamps = probe.stamps()
    assert stamps[:, 0].tolist() == [5_000, 5_001, 5_002, 5_003, 7_000, 7_001]
    assert len(set(stamps[:3, 1])) == 1 and len(set(stamps[4:, 1])) == 1
    assert stamps[3, 1] >= stamps[0, 1] and stamps[4, 1] >= stamps[3, 1]
