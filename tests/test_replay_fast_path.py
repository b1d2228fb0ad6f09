"""The ingestor's fast path for replays: frames built column-wise, ticks stored as tables,
conflated last ticks for the API, and the execution service taking only the ticks it trades.
Each must be indistinguishable from the one-message-per-tick path on real data."""

from __future__ import annotations

import threading
import time

import msgspec
import polars as pl
import pytest
import zmq
from hypothesis import given, settings, strategies as st

from api.hub import Hub
from data_handling.replay import ReplaySource
from scripts.execution import TickSubscriptions
from tests.conftest import FO_TICKS
from tests.system_harness import free_port
from trading_core import bus, messages as m, persistence


@pytest.fixture(scope="module")
def futures(shared_data) -> ReplaySource:
    return ReplaySource(FO_TICKS / "Futures")


def test_column_frames_decode_to_the_same_ticks_as_encode(futures):
    batches = list(futures.batches(rows=10_000))
    assert sum(len(b) for b in batches) == len(futures) == 43_441
    ticks = list(futures.ticks())
    frames = [f for b in batches for f in b.frames]
    for frame, tick in zip(frames, ticks, strict=True):
        assert m.decode(frame) == m.decode(m.encode(m.tick_topic(tick.instrument_key), tick))


@settings(max_examples=200, deadline=None)
@given(key=st.text(min_size=1, max_size=30).filter(lambda k: "\x00" not in k),
       ts=st.integers(0, 2**62), ltp=st.floats(0.01, 1e9), ltq=st.integers(0, 2**40),
       oi=st.floats(0, 1e12), seq=st.integers(0, 2**40))
def test_column_frames_of_any_values(key, ts, ltp, ltq, oi, seq):
    frame = pl.DataFrame({"instrument_key": [key], "ts": [ts], "ltp": [ltp], "ltq": [ltq], "oi": [oi],
                          "seq": [seq]})
    tick = m.Tick(instrument_key=key, ts=ts, ltp=ltp, ltq=ltq, oi=oi, seq=seq, source="replay")
    assert m.decode(m.tick_frames(frame, "replay")[0]) == (m.tick_topic(key), tick)


@settings(max_examples=200, deadline=None)
@given(key=st.text(min_size=1, max_size=30).filter(lambda k: "\x00" not in k),
       ts=st.integers(0, 2**62), ltp=st.floats(0.01, 1e9), ltq=st.integers(0, 2**40),
       oi=st.floats(0, 1e12), seq=st.integers(0, 2**40))
def test_row_frames_of_any_values(key, ts, ltp, ltq, oi, seq):
    tick = m.Tick(instrument_key=key, ts=ts, ltp=ltp, ltq=ltq, oi=oi, seq=seq, source="replay")
    assert m.decode(m.tick_frames_rows([key], [ts], [ltp], [ltq], [oi], seq, "replay")[0]) == (
        m.tick_topic(key), tick)


def test_row_frames_are_the_column_frames(futures):
    batch = next(futures.batches(rows=4_096, start_seq=30_000, frames=False))
    rows = m.tick_frames_rows(batch.keys, batch.ts, batch.ltp, batch.ltq, batch.oi, batch.first_seq, "replay")
    assert rows == m.tick_frames(batch.table, "replay")


def test_paced_batches_carry_the_frames_of_their_ticks(futures, fake_clock):
    # small paced batches get row-built frames, a batch of a whole chunk column-built ones
    _, _, sleep = fake_clock
    for rate in (10_000, 10_000_000):
        src = ReplaySource(FO_TICKS / "Futures", rate=rate, limit=8_192, sleep=sleep)
        batches = list(src.batches())
        assert (min(len(b) for b in batches) < 1_024) == (rate == 10_000)
        assert max(len(b) for b in batches) == (21 if rate == 10_000 else 4_096)
        frames = [f for b in batches for f in b.frames]
        assert [m.decode(f) for f in frames] == [(m.tick_topic(t.instrument_key), t) for t in src.ticks()]


@pytest.mark.parametrize("kind", ["arrow", "polars"])
def test_tick_tables_are_stored_like_ticks(futures, tmp_path, kind):
    con = persistence.connect(tmp_path / "t.duckdb")
    persistence.start_run(con, "r", "replay", "x")
    writer = persistence.BatchWriter(con, "r", "replay", max_rows=20_000)
    for batch in futures.batches(rows=7_000, frames=False):
        assert batch.rows.schema == persistence.TICK_TABLE_SCHEMA      # the writer's no-cast path
        writer.add_tick_table(batch.rows if kind == "arrow" else batch.table)
    writer.close()
    stored = con.execute("SELECT instrument_key, ts, ltp, ltq, oi, seq, source, backfilled, bid "
                         "FROM ticks ORDER BY seq").fetchall()
    assert stored == [(t.instrument_key, t.ts, t.ltp, t.ltq, t.oi, t.seq, "replay", False, None)
                      for t in futures.ticks()]
    assert persistence.start_run(con, "r", "replay", "x") == len(futures)      # resumes after the last


@pytest.fixture
def fake_clock(monkeypatch):
    """``(clock, slept, sleep)``: the replay's ``time.monotonic`` reads ``clock[0]`` (starting at
    100 s), which only ``sleep`` (recording each request in ``slept``) or the test advances."""
    clock = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr("data_handling.replay.time.monotonic", lambda: clock[0])
    return clock, slept, sleep


def test_paced_batches_hold_the_ticks_due_together(futures, fake_clock):
    _, slept, sleep = fake_clock
    src = ReplaySource(FO_TICKS / "Futures", rate=10_000, limit=5_000, sleep=sleep)
    batches = list(src.batches())
    assert [t.seq for b in batches for t in b.ticks()] == list(range(5_000))
    # the ticks due within the 2 ms sleep quantum travel together: 21 at 10,000 ticks/s
    # (20 when the float schedule lands a hair short of a due time; fewer where a batch ends at
    # the 4,096-row chunk in which frames are built)
    sizes = [len(b) for b in batches]
    assert max(sizes) == 21 and sum(s >= 20 for s in sizes) >= len(sizes) - 3
    # slept exactly until each batch was due, never ahead of it
    assert sum(slept) == pytest.approx(batches[-1].first_seq / 10_000, abs=1e-6)


def test_a_busy_consumer_still_gets_one_batch_per_quantum(futures, fake_clock):
    # The consumer (the ingestor publishing a batch) takes 0.3 ms of the clock per batch. A pacer
    # that sleeps only when it is a whole quantum ahead never sleeps here: it hands over the
    # 3 ticks that fell due meanwhile, again and again, and wakes every subscriber per handful.
    clock, slept, sleep = fake_clock
    src = ReplaySource(FO_TICKS / "Futures", rate=10_000, limit=5_000, sleep=sleep)
    sizes = []
    for batch in src.batches():
        now = clock[0] - 100.0                          # seconds since the first tick was due
        first_due, last_due = batch.first_seq / 10_000, (batch.first_seq + len(batch) - 1) / 10_000
        # handed over once its first tick is due (late by at most the consumer's work), and no
        # tick more than the 2 ms quantum early
        assert now - 0.0003 - 1e-9 <= first_due <= now + 1e-9
        assert last_due <= now + 0.002 + 1e-9
        sizes.append(len(batch))
        clock[0] += 0.0003
    assert sum(sizes) == 5_000
    assert sorted(sizes)[len(sizes) // 2] >= 20           # the median batch: the ticks of 2 ms
    assert len(sizes) <= 5_000 / 20 + 3 and len(slept) >= len(sizes) - 3


def test_last_ticks_carry_the_last_tick_of_each_instrument_to_the_hub(futures):
    last: dict[str, bytes] = {}
    for batch in futures.batches(rows=5_000):
        for key, frame in zip(batch.keys, batch.frames):
            last[key] = frame
    frame = m.last_ticks_frame(last.items())
    topic, message = m.decode(frame)
    expected = futures.frame().group_by("instrument_key").last()
    assert topic == m.LAST_TICKS and len(message.ticks) == expected.height > 1
    for row in expected.iter_rows(named=True):
        t = message.ticks[row["instrument_key"]]
        assert (t.ts, t.ltp, t.ltq, t.oi, t.seq) == (row["ts"], row["ltp"], row["ltq"], row["oi"], row["seq"])
    hub = Hub()
    hub.ingest(frame)
    hub.flush()
    assert {k: msgspec.json.decode(v, type=m.Tick) for k, v in hub.store.ticks.items()} == message.ticks
    hub.ingest(m.LAST_TICKS.encode() + m.SEPARATOR + b'{"ticks": 5}')
    assert hub.bad_frames == 1


def test_execution_takes_the_ticks_of_its_instruments_only():
    ctx = zmq.Context()
    pub, sub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    thread = threading.Thread(target=bus.run_proxy, args=(pub, sub, ctx), daemon=True)
    thread.start()
    sender, receiver = bus.BusClient(pub, sub), bus.BusClient(pub, sub)
    try:
        follow = TickSubscriptions(receiver)
        follow.follow(["NSE_FO|NIFTY-I"])
        follow.follow(["NSE_FO|NIFTY-I"])                 # twice: one subscription
        assert sender.wait_ready() and receiver.wait_ready()

        def exchange(keys):
            for i, key in enumerate(keys):
                sender.publish(m.tick_topic(key), m.Tick(instrument_key=key, ts=i, ltp=1.0, seq=i))
            got = []
            while (item := receiver.recv(300)) is not None:
                got.append(item[1].instrument_key)
            return got

        keys = ["NSE_FO|NIFTY-I", "NSE_FO|NIFTY-II", "NSE_FO|NIFTY22N2418000CE", "NSE_FO|NIFTY-I"]
        assert exchange(keys) == ["NSE_FO|NIFTY-I", "NSE_FO|NIFTY-I"]
        follow.follow(["NSE_FO|NIFTY22N2418000CE"])     # a signal names another instrument
        time.sleep(0.3)                                  # a subscription takes effect shortly after
        assert exchange(keys) == ["NSE_FO|NIFTY-I", "NSE_FO|NIFTY22N2418000CE", "NSE_FO|NIFTY-I"]
        follow.follow(None)                              # strategies file unreadable: everything
        time.sleep(0.3)
        assert exchange(keys) == keys
    finally:
        sender.close()
        receiver.close()
        ctx.term()
        thread.join(2)


def test_an_unfiltered_snapshot_leaves_out_option_candles():
    hub = Hub()
    keys = ["NSE_FO|NIFTY-I", "NSE_FO|NIFTY22N2418300CE", "NSE_INDEX|Nifty 50"]
    for key in keys:
        candle = m.Candle(instrument_key=key, interval="1m", ts=1_668_743_100_000, open=1, high=2, low=1,
                          close=2, volume=10)
        hub.ingest(m.encode(m.candle_topic(key), candle))
    hub.flush()
    everything = hub.snapshot()
    assert everything["instruments"] == keys
    assert set(everything["candles"]) == {"NSE_FO|NIFTY-I", "NSE_INDEX|Nifty 50"}
    named = hub.snapshot(frozenset({"NSE_FO|NIFTY22N2418300CE"}))
    assert set(named["candles"]) == {"NSE_FO|NIFTY22N2418300CE"}


def test_the_column_wise_batch_path_equals_tick_by_tick(tmp_path, shared_data):
    """What the ingestor does with a big replay batch (candles and profiles per batch, candle
    frames built column-wise, candles stored as a table) equals its tick-by-tick path on the real
    day's futures and three option contracts: the same candles closed after the same ticks, the
    same frames, the same profiles, the same rows in ``candles_1m``."""
    from data_handling.candles import CandleBuilder, candles_of
    from scripts.profiles import ProfileFeed
    keys = [f"NSE_FO|{p.stem}" for p in sorted((FO_TICKS / "Futures").glob("*.csv"))]
    keys += ["NSE_FO|NIFTY22112418300CE", "NSE_FO|NIFTY22112418300PE", "NSE_FO|BANKNIFTY22112442500CE"]
    src = ReplaySource(FO_TICKS, instruments=keys)
    batches = list(src.batches(rows=20_000))
    assert len(src) > 60_000 and len(batches) >= 3

    rows_b, rows_p = CandleBuilder("1m"), ProfileFeed(lambda *a: None)
    table_b, table_p = CandleBuilder("1m"), ProfileFeed(lambda *a: None)
    by_row, by_table = [], []                  # (tick seq that closed it, frame)
    dbs = {}
    for name in ("rows", "table"):
        con = persistence.connect(tmp_path / f"{name}.duckdb")
        persistence.start_run(con, "r", "replay", "x")
        dbs[name] = (con, persistence.BatchWriter(con, "r", "replay"))
    for batch in batches:
        for i, (key, ts, ltp, ltq, oi) in enumerate(zip(batch.keys, batch.ts, batch.ltp, batch.ltq, batch.oi)):
            rows_p.on_print(key, ts, ltp, ltq)
            for c in rows_b.update_print(key, ts, ltp, ltq, oi):
                by_row.append((batch.first_seq + i, m.encode(m.candle_topic(c.instrument_key), c)))
                dbs["rows"][1].add_candle(c)
        closed = table_b.update_table(batch.table)
        table_p.on_table(batch.table)
        frames = m.candle_frames(closed)
        assert [m.decode(f)[1] for f in frames] == candles_of(closed)
        by_table += [(batch.first_seq + r, f) for r, f in zip(closed.get_column("row").to_list(), frames)]
        dbs["table"][1].add_candle_table(closed)
    assert len(by_row) > 1_000
    assert [s for s, _ in by_table] == [s for s, _ in by_row]
    assert [m.decode(f) for _, f in by_table] == [m.decode(f) for _, f in by_row]
    assert table_b.flush() == rows_b.flush()
    assert table_p.engines.keys() == rows_p.engines.keys() and len(rows_p.engines) == 9   # futures only
    for key, engine in rows_p.engines.items():
        assert table_p.engines[key].profile == engine.profile, key
    stored = {}
    for name, (con, writer) in dbs.items():
        writer.close()
        stored[name] = con.execute("SELECT * FROM candles_1m ORDER BY instrument_key, ts").fetchall()
        con.close()
    assert stored["table"] == stored["rows"] and len(stored["rows"]) == len(by_row)
