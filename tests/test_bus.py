"""The bus: proxy forwarding, prefix and exact-topic filtering, message round trips, bad frames."""

from __future__ import annotations

import threading
import time

import pytest
import zmq

from tests.system_harness import free_port
from trading_core import bus, messages as m


@pytest.fixture()
def proxy():
    ctx = zmq.Context()
    pub, sub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    thread = threading.Thread(target=bus.run_proxy, args=(pub, sub, ctx), daemon=True)
    thread.start()
    yield pub, sub
    ctx.term()
    thread.join(2)


@pytest.fixture()
def tick_pair(proxy):
    """A ``(reader, writer)`` pair on the proxy, both ready: the reader takes every tick."""
    pub_ep, sub_ep = proxy
    reader = bus.BusClient(pub_ep, sub_ep, ["tick."])
    writer = bus.BusClient(pub_ep, sub_ep)
    try:
        assert reader.wait_ready(5) and writer.wait_ready(5)
        yield reader, writer
    finally:
        reader.close()
        writer.close()


def drain(client: bus.BusClient, timeout_ms: int = 300) -> list:
    out = []
    while (got := client.recv(timeout_ms)) is not None:
        out.append(got)
    return out


def test_prefix_and_exact_subscriptions(proxy):
    pub_ep, sub_ep = proxy
    every_tick = bus.BusClient(pub_ep, sub_ep, ["tick."])
    nifty_only = bus.BusClient(pub_ep, sub_ep, [m.exact(m.tick_topic("NSE_INDEX|Nifty 50"))])
    signals = bus.BusClient(pub_ep, sub_ep, ["signal."])
    for c in (every_tick, nifty_only, signals):
        assert c.wait_ready(5)
    publisher = bus.BusClient(pub_ep, sub_ep)
    assert publisher.wait_ready(5)
    sent = []
    for key in ("NSE_INDEX|Nifty 50", "NSE_INDEX|Nifty 500", "NSE_INDEX|Nifty Bank"):
        t = m.Tick(instrument_key=key, ts=1_654_054_500_000, ltp=16602.2, ltq=0, seq=len(sent))
        publisher.publish(m.tick_topic(key), t)
        sent.append(t)
    s = m.Signal(strategy="x", instrument_key="NSE_INDEX|Nifty 50", side="BUY", entry=1.0,
                 stop_loss=0.5, target=2.0, reason="test", ts=1)
    publisher.publish(m.signal_topic("x"), s)

    assert [msg for _, msg in drain(every_tick)] == sent
    assert [msg.instrument_key for _, msg in drain(nifty_only)] == ["NSE_INDEX|Nifty 50"]
    assert drain(signals) == [("signal.x", s)]


def test_round_trip_keeps_schema_version_and_types():
    c = m.Candle(instrument_key="NSE_FO|NIFTY-I", interval="1m", ts=60_000, open=1, high=3, low=0.5,
                 close=2, volume=750, oi=1e7, ticks=4)
    topic, back = m.decode(m.encode(m.candle_topic(c.instrument_key), c))
    assert topic == "candle.1m.NSE_FO|NIFTY-I" and back == c and back.v == m.SCHEMA_VERSION


@pytest.mark.parametrize("frame", [b"no separator", b"tick.X\x00{not json", b'tick.X\x00{"type":"nope"}',
                                   b'tick.X\x00{"type":"tick","instrument_key":"X"}'])
def test_malformed_frames_raise_value_error(frame):
    with pytest.raises(ValueError):
        m.decode(frame)
    with pytest.raises(ValueError):
        m.decode_message(frame)


def test_decode_message_is_decode_without_the_topic():
    frames = [m.encode(m.tick_topic("NSE_INDEX|Nifty 50"),
                       m.Tick(instrument_key="NSE_INDEX|Nifty 50", ts=1_654_054_500_000, ltp=16602.2, ltq=0, seq=7)),
              m.encode(m.candle_topic("NSE_FO|NIFTY-I"),
                       m.Candle(instrument_key="NSE_FO|NIFTY-I", interval="1m", ts=60_000, open=1, high=3, low=0.5,
                                close=2, volume=750, oi=1e7, ticks=4))]
    assert [m.decode_message(f) for f in frames] == [m.decode(f)[1] for f in frames]


def test_recv_batch_returns_every_frame_in_order_in_bursts(tick_pair):
    reader, writer = tick_pair
    assert reader.recv_batch(20) == [] and reader.received == 0          # a timeout: nothing
    frames = [m.encode(m.tick_topic("NSE_FO|NIFTY-I"),
                       m.Tick(instrument_key="NSE_FO|NIFTY-I", ts=i, ltp=18_000.0 + i, ltq=50, seq=i))
              for i in range(2_500)]
    for f in frames:
        writer.publish_raw(f)
    got, bursts = [], []
    deadline = time.monotonic() + 10
    while len(got) < len(frames) and time.monotonic() < deadline:
        burst = reader.recv_batch(500, max_frames=1_000)
        bursts.append(len(burst))
        got += burst
    assert got == frames and reader.received == len(frames)
    assert max(bursts) <= 1_000 and len(bursts) < len(frames)           # bursts, not one by one


# --- frame counters and the health report's bus rates ----------------------------------------

def test_counters_are_exact_over_a_real_exchange_of_frames(proxy):
    import gc
    gc.collect()                       # unclosed clients of earlier tests leave the registry now, not mid-test
    pub_ep, sub_ep = proxy
    base = bus.process_totals()
    reader = bus.BusClient(pub_ep, sub_ep, ["tick."])
    writer = bus.BusClient(pub_ep, sub_ep)
    assert reader.wait_ready(5) and writer.wait_ready(5)
    assert (writer.published, writer.received, reader.published, reader.received) == (0, 0, 0, 0), \
        "wait_ready's probes are not counted"
    keys = ["NSE_FO|NIFTY22112418300CE", "NSE_FO|NIFTY22112418300PE", "NSE_INDEX|Nifty 50"]
    sent = []
    for i in range(300):
        key = keys[i % 3]
        t = m.Tick(instrument_key=key, ts=1_668_742_500_000 + i, ltp=100.0 + i, ltq=50, oi=1e6, seq=i)
        if i % 2:
            writer.publish(m.tick_topic(key), t)
        else:
            writer.publish_raw(m.encode(m.tick_topic(key), t))
        sent.append(t)
    writer.publish(m.signal_topic("x"), m.Signal(strategy="x", instrument_key=keys[0], side="BUY", entry=1.0,
                                                 stop_loss=0.5, target=2.0, reason="not subscribed", ts=1))
    got = [msg for _, msg in drain(reader)]
    assert got == sent
    assert writer.published == 301 and writer.received == 0
    assert reader.received == 300 and reader.published == 0
    assert reader.recv(50) is None and reader.received == 300      # a timeout counts nothing
    assert bus.process_totals() == (base[0] + 301, base[1] + 300)
    writer.close()
    reader.close()
    reader.close()                                                  # twice: counted once
    assert bus.process_totals() == (base[0] + 301, base[1] + 300), "closed clients stay in the totals"


def test_frames_kept_while_waiting_are_counted_when_returned(tick_pair):
    reader, writer = tick_pair
    t = m.Tick(instrument_key="NSE_FO|NIFTY-I", ts=1, ltp=18417.0, ltq=3750, seq=0)
    writer.publish(m.tick_topic(t.instrument_key), t)
    deadline = time.monotonic() + 5
    while not reader.sub.poll(50) and time.monotonic() < deadline:
        pass
    assert reader.wait_ready(5)                 # the tick arrives during this wait: kept in _pending
    assert reader.received == 0
    assert reader.recv(1000) == ("tick.NSE_FO|NIFTY-I", t)
    assert reader.received == 1


def test_health_report_carries_the_process_bus_rates(proxy):
    """Frames published by one client in another thread (as the ingestor's feed thread does) show
    in the health report sent through a second client, as totals and as a rate over the interval."""
    from scripts.service import HealthReporter
    pub_ep, sub_ep = proxy
    watcher = bus.BusClient(pub_ep, sub_ep, [m.exact(m.health_topic("rates_test"))])
    health_bus = bus.BusClient(pub_ep, sub_ep)
    try:
        assert watcher.wait_ready(5) and health_bus.wait_ready(5)
        reporter = HealthReporter(health_bus, "rates_test")
        clock = [100.0]
        reporter.rates.clock = lambda: clock[0]           # exact rates: a fake clock for the interval
        reporter.rates.sample()                           # start of the interval at t = 100 s
        out0, in0 = bus.process_totals()

        def feed() -> None:
            client = bus.BusClient(pub_ep, sub_ep)
            for i in range(1000):
                client.publish_raw(m.encode(m.tick_topic("NSE_FO|NIFTY-I"),
                                            m.Tick(instrument_key="NSE_FO|NIFTY-I", ts=i, ltp=1.0, seq=i)))
            client.close()

        th = threading.Thread(target=feed)
        th.start()
        th.join(10)
        clock[0] = 102.0                                  # two seconds later
        reporter.send("running", custom=1)
        _, h = watcher.recv(5000)
        d = h.details
        assert h.service == "rates_test" and d["custom"] == 1
        assert d["bus_out"] == out0 + 1000 and d["bus_out_per_s"] == 500.0
        assert d["bus_in"] == in0 and d["bus_in_per_s"] == 0.0
        clock[0] = 103.0
        reporter.send()                                   # the first report's own frame, 1 s later
        _, h = watcher.recv(5000)
        assert h.details["bus_out"] == out0 + 1001 and h.details["bus_out_per_s"] == 1.0
        assert watcher.received == 2
    finally:
        watcher.close()
        health_bus.close()


def test_health_reporter_counts_what_it_is_given():
    """``bus_counts`` replaces the process totals (the API counts its own raw sockets)."""
    from scripts.service import BusRates
    counts = [10, 20]
    clock = [0.0]
    rates = BusRates(lambda: tuple(counts), clock=lambda: clock[0])
    counts[:] = [40, 25]
    clock[0] = 1.5
    assert rates.sample() == {"bus_out_per_s": 20.0, "bus_in_per_s": 3.3, "bus_out": 40, "bus_in": 25}
    counts[:] = [30, 25]                                  # a counter going back never gives a negative rate
    clock[0] = 2.5
    assert rates.sample()["bus_out_per_s"] == 0.0
    assert rates.last["bus_out"] == 30
