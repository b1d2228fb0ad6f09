"""The recorder process (scripts/recorder.py): what the ingestor hands over reaches DuckDB whole,
in order, with its run's last_seq; a recorder that is gone stops the feed with a clear error;
Ctrl-C (SIGINT to the process group) does not stop it before the ingestor has handed everything
over."""

from __future__ import annotations

import os
import signal

import duckdb
import pytest

from data_handling.replay import ReplaySource
from scripts import recorder
from scripts.recorder import RecorderError, RecorderLink
from tests.conftest import FO_TICKS
from tests.system_harness import recorder_environment
from trading_core import messages as m, persistence, query_client, settings as settings_mod


@pytest.fixture()
def recorder_env(tmp_path):
    """A bus proxy and the settings the recorder process reads from its environment; returns
    the DuckDB path (not created)."""
    db = tmp_path / "rec.duckdb"
    with recorder_environment(db, tmp_path / "logs"):
        yield db


def start(db, run_id: str = "r1", source: str = "replay") -> RecorderLink:
    """The ingestor's start-up: register the run on its own connection, close it, open the link."""
    link = RecorderLink(run_id, source)
    con = persistence.connect(db)
    persistence.start_run(con, run_id, source, "x")
    con.close()
    link.open()
    return link


def test_a_real_replay_reaches_duckdb_whole_and_in_order(recorder_env, shared_data):
    futures = ReplaySource(FO_TICKS / "Futures", limit=20_000)
    link = start(recorder_env)
    expected = list(futures.ticks())
    for batch in futures.batches(rows=3_000, frames=False):      # a replay's column-wise path
        link.add_tick_table(batch.rows)
    candle = m.Candle(instrument_key=expected[0].instrument_key, interval="1m",
                      ts=expected[0].ts // 60_000 * 60_000, open=1, high=2, low=0.5, close=1.5,
                      volume=10, oi=0, ticks=3)
    link.add_candle(candle)
    link.checkpoint()
    link.finish_run()
    link.close()
    assert link.proc.returncode == 0
    assert (link.rows_written, link.checkpoints, link.error) == (len(expected), 1, None)
    con = duckdb.connect(str(recorder_env), read_only=True)
    stored = con.execute("SELECT instrument_key, ts, ltp, ltq, oi, seq, source FROM ticks ORDER BY seq").fetchall()
    assert stored == [(t.instrument_key, t.ts, t.ltp, t.ltq, t.oi, t.seq, "replay") for t in expected]
    assert con.execute("SELECT open, high, low, close, volume, source FROM candles_1m").fetchall() == [
        (1.0, 2.0, 0.5, 1.5, 10, "replay")]
    assert con.execute("SELECT last_seq, finished FROM feed_runs WHERE run_id = 'r1'").fetchone() == (
        len(expected) - 1, True)
    con.close()


def test_research_queries_are_served_while_recording(recorder_env, shared_data):
    link = start(recorder_env)
    try:
        for t in ReplaySource(FO_TICKS / "Futures", limit=500).ticks():
            link.add_tick(t)
        link.handover()
        settings = settings_mod.load()
        for _ in range(100):                    # committed within a few of the writer's turns
            result = query_client.query_result("SELECT count(*) AS n FROM ticks", settings=settings,
                                               via="server")
            if result.table.column("n")[0].as_py() == 500:
                break
        assert result.via == "server" and result.table.column("n")[0].as_py() == 500
        for _ in range(20):                     # its stats come at most every 0.25 s
            link.poll_stats(0.3)
            if link.research.get("query", {}).get("served"):
                break
        assert link.research["query"]["served"] >= 1 and link.rows_written == 500
        assert link.process["pid"] == link.pid and link.process["rss_bytes"] > 50 * 2**20   # DuckDB, Arrow
    finally:
        link.close()


def test_a_recorder_that_is_gone_stops_the_feed_with_a_clear_error(recorder_env, shared_data):
    link = start(recorder_env)
    link.proc.kill()
    link.proc.wait(5)
    ticks = list(ReplaySource(FO_TICKS / "Futures", limit=10).ticks())
    with pytest.raises(RecorderError, match=rf"recorder process \(pid {link.pid}\)"):
        for t in ticks:
            link.add_tick(t)
            link.handover()
    link.close()                                 # never raises


def test_ctrl_c_reaching_the_recorder_loses_nothing(recorder_env, shared_data):
    link = start(recorder_env)
    ticks = list(ReplaySource(FO_TICKS / "Futures", limit=2_000).ticks())
    for t in ticks[:1_000]:
        link.add_tick(t)
    link.handover()
    os.kill(link.pid, signal.SIGINT)             # Ctrl-C reaches every process of the group
    os.kill(link.pid, signal.SIGTERM)
    for t in ticks[1_000:]:
        link.add_tick(t)
    link.close()
    assert link.rows_written == len(ticks)
    con = duckdb.connect(str(recorder_env), read_only=True)
    assert con.execute("SELECT count(DISTINCT seq), max(seq) FROM ticks").fetchone() == (2_000, 1_999)
    con.close()


def test_the_pipe_to_the_recorder_holds_a_second_of_hand_overs(monkeypatch, caplog):
    r, w = os.pipe()
    try:
        assert recorder._widen_pipe(w) == recorder.PIPE_BYTES == 1 << 20      # Linux's default maximum
        real = recorder.fcntl.fcntl

        def refuse(fd, op, arg=0):
            if op == recorder.fcntl.F_SETPIPE_SZ:
                raise PermissionError(1, "Operation not permitted")
            return real(fd, op, arg)

        monkeypatch.setattr(recorder.fcntl, "fcntl", refuse)
        assert recorder._widen_pipe(w, 1 << 22) == 1 << 20                    # kept, and said so
        assert "recorder pipe kept at 1048576 bytes (asked for 4194304: Operation not permitted)" in caplog.text
    finally:
        os.close(r)
        os.close(w)
