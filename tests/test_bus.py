"""The bus: proxy forwarding, prefix and exact-topic filtering, message round trips, bad frames."""

from __future__ import annotations

import threading

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
