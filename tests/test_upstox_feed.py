"""UpstoxSource against the local fake Upstox (tests/fake_upstox.py), with the real SDK streamer:
what arrives field by field, reconnect and re-subscribe, gap backfill, bad frames, token
problems, the backoff against a flapping server, the market-hours watchdog, TLS verification."""

from __future__ import annotations

import datetime as dt
import io
import logging
import re
import ssl
import subprocess
import threading
import time

import certifi
import pytest
import upstox_client
import websocket
from upstox_client.feeder.proto import MarketDataFeedV3_pb2 as pb
from websockets.sync.server import serve

from data_handling.upstox_backfill import Backfill, gap_minutes
from data_handling.upstox_feed import (AUTHORIZE_PATH, Backoff, Subscription, UpstoxSource, VerifiedFeederV3,
                                       rest_client, token_from_settings)
from data_handling.upstox_instruments import UpstoxConfigError
from tests.fake_upstox import (BANK_KEY, EQUITY_KEY, FUT_KEY, NIFTY_KEY, FakeUpstox, expected_ltq, feed_of,
                               frame, sent_feeds)
from trading_core import messages as m
from trading_core.logs import RedactFilter

IST = dt.timezone(dt.timedelta(hours=5, minutes=30))
CANON = {NIFTY_KEY: NIFTY_KEY, BANK_KEY: BANK_KEY, FUT_KEY: "NSE_FO|NIFTY22NOVFUT",
         EQUITY_KEY: "NSE_EQ|RELIANCE"}
OPTION = "NSE_FO|NIFTY22112418400CE"
QUOTE_FIELDS = ("mode", "cp", "vtt", "atp", "iv", "tbq", "tsq", "bid", "bid_qty", "ask", "ask_qty",
                "delta", "theta", "gamma", "vega", "rho")


def subscriptions(fake: FakeUpstox) -> list[Subscription]:
    """Index (full, ltpc), future (full), option (option_greeks), equity (full_d30)."""
    return [Subscription(NIFTY_KEY, NIFTY_KEY, "full"), Subscription(BANK_KEY, BANK_KEY, "ltpc"),
            Subscription(FUT_KEY, CANON[FUT_KEY], "full"),
            Subscription(fake.option_key, OPTION, "option_greeks"),
            Subscription(EQUITY_KEY, CANON[EQUITY_KEY], "full_d30")]


def make_source(fake: FakeUpstox, token=None, **options) -> UpstoxSource:
    options.setdefault("backoff", Backoff(0.1, 1.0))
    return UpstoxSource(subscriptions(fake), token or (lambda: fake.token), base_url=fake.base_url,
                        authorize_url=fake.base_url + AUTHORIZE_PATH, **options)


class Collector:
    """Consumes ``source.ticks()`` in a thread, like the ingestor."""

    def __init__(self, source: UpstoxSource):
        self.source = source
        self.items: list = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for item in self.source.ticks():
                if item is not None:
                    self.items.append(item)
        except BaseException as exc:          # noqa: BLE001 - handed to the test
            self.error = exc

    def ticks(self, key: str | None = None) -> list[m.Tick]:
        return [i for i in list(self.items) if isinstance(i, m.Tick) and (key is None or i.instrument_key == key)]

    def wait(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            if self.error is not None:
                raise AssertionError(f"feed failed while waiting for {what}: {self.error}")
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; health: {self.source.health()}")

    def close(self) -> None:
        self.source.close()
        self.thread.join(timeout=5)


def settle(fake: FakeUpstox, col: Collector, timeout: float = 15) -> dict[str, list[dict]]:
    """Stop the fake's stream and wait until every feed it sent has been received."""
    fake.pause()
    time.sleep(0.2)
    sent = sent_feeds(fake)
    col.wait(lambda: len(col.ticks()) >= sum(len(v) for v in sent.values()), timeout,
             "every sent feed to arrive")          # (backfilled ticks come inside Backfill items)
    return sent


def canon(fake: FakeUpstox, key: str) -> str:
    return OPTION if key == fake.option_key else CANON[key]


def assert_ticks_match(fake: FakeUpstox, sent: dict[str, list[dict]], got: list[m.Tick]) -> None:
    """Per instrument, the ticks equal the sent feeds one to one, field by field."""
    assert set(sent) == {s.upstox_key for s in subscriptions(fake)}
    for key, feeds in sent.items():
        ticks = [t for t in got if t.instrument_key == canon(fake, key) and not t.backfilled]
        assert len(ticks) == len(feeds), key
        for t, f, ltq in zip(ticks, feeds, expected_ltq(feeds)):
            assert (t.ts, t.ltp, t.oi, t.ltq, t.source, t.quote.feed_ts) == (
                f["ts"], f["ltp"], f["oi"], ltq, "upstox", f["feed_ts"]), (key, f)
            for name in QUOTE_FIELDS:
                if name in f:
                    assert getattr(t.quote, name) == f[name], (key, name, f)
            if "depth" in f:
                assert [(d.bid_qty, d.bid, d.ask_qty, d.ask) for d in t.quote.depth] == f["depth"]
            if "ohlc" in f:
                assert [(b.interval, b.open, b.high, b.low, b.close, b.volume, b.ts)
                        for b in t.quote.ohlc] == f["ohlc"]
        assert [t.seq for t in ticks] == sorted(t.seq for t in ticks)


def test_every_mode_arrives_field_by_field_with_market_status():
    with FakeUpstox() as fake:
        col = Collector(make_source(fake))
        try:
            col.wait(lambda: all(len(col.ticks(canon(fake, s.upstox_key))) >= 3 for s in subscriptions(fake)),
                     30, "ticks of every instrument")
            sent = settle(fake, col)
            assert_ticks_match(fake, sent, col.ticks())
            (status,) = [i for i in col.items if isinstance(i, m.MarketStatus)]
            assert status.segments["NSE_FO"] == status.segments["NSE_INDEX"] == "NORMAL_OPEN"
            health = col.source.health()
            assert health["market_status"]["segments"] == status.segments
            assert health["upstox"]["bad_input"] == {} and health["upstox"]["connections"] == 1
            modes = {(r["data"]["mode"], k) for r in fake.connections[0].requests for k in r["data"]["instrumentKeys"]}
            assert modes == {(s.mode, s.upstox_key) for s in subscriptions(fake)}
        finally:
            col.close()


def test_reconnect_resubscribes_everything_and_backfills_the_gap():
    with FakeUpstox() as fake:
        col = Collector(make_source(fake))
        try:
            col.wait(lambda: all(col.ticks(canon(fake, s.upstox_key)) for s in subscriptions(fake)), 30,
                     "ticks of every instrument")
            time.sleep(0.5)
            before = {canon(fake, s.upstox_key): len(col.ticks(canon(fake, s.upstox_key))) for s in subscriptions(fake)}
            fake.drop(outage_s=1.5)                   # ~2-4 market minutes at 60x
            col.wait(lambda: len([b for b in col.items if isinstance(b, Backfill)]) == 5, 30,
                     "a backfill of every instrument")
            col.wait(lambda: all(len(col.ticks(k)) > n + 8 + 2 for k, n in before.items()), 30,
                     "ticks of every instrument after the reconnect")
            sent = settle(fake, col)
            assert len(fake.connections) == 2 and fake.rejected_handshakes == 0
            first, second = ({(r["method"], r["data"]["mode"], k) for r in c.requests for k in r["data"]["instrumentKeys"]}
                             for c in fake.connections)
            assert first == second and len(second) == 5          # every key, in its mode, again
            assert fake.connections[0].code != fake.connections[1].code   # a fresh single-use URL
            assert all(any(f["conn"] == 1 for f in feeds) for feeds in sent.values())
            assert_ticks_match(fake, sent, col.ticks())
            for b in (i for i in col.items if isinstance(i, Backfill)):
                key = next(k for k in sent if canon(fake, k) == b.instrument_key)
                live = [t for t in col.ticks(b.instrument_key) if not t.backfilled]
                assert b.gap_from_ts == max(f["ts"] for f in sent[key] if f["conn"] == 0)
                assert b.gap_to_ts == min(f["ts"] for f in sent[key] if f["conn"] == 1)
                first_bar, last_bar = gap_minutes(b.gap_from_ts, b.gap_to_ts)
                p = fake.prints[key]
                want = [c for c in p.candles(b.gap_to_ts) if first_bar <= _ms(c[0]) <= last_bar][::-1]
                assert want and [(c.ts, c.open, c.high, c.low, c.close, c.volume, c.oi) for c in b.candles] == [
                    (_ms(c[0]), *c[1:]) for c in want]
                assert all(t.backfilled and t.source == "upstox" for t in b.ticks) and len(b.ticks) == 4 * len(want)
                for c in b.candles:
                    inside = [t for t in b.ticks if c.ts <= t.ts < c.ts + 60_000]
                    assert (inside[0].ltp, max(t.ltp for t in inside), min(t.ltp for t in inside),
                            inside[-1].ltp, sum(t.ltq for t in inside)) == (c.open, c.high, c.low, c.close, c.volume)
                    assert not [t for t in live if c.ts <= t.ts < c.ts + 60_000]   # the minute had no live tick
            h = col.source.health()["upstox"]
            assert (h["reconnects"], h["gaps"], h["backfill_errors"]) == (1, 5, 0)
            assert h["backfilled_ticks"] == sum(len(b.ticks) for b in col.items if isinstance(b, Backfill))
        finally:
            col.close()


def _ms(iso: str) -> int:
    return int(dt.datetime.fromisoformat(iso).timestamp() * 1000)


def test_bad_frames_are_counted_logged_once_and_no_good_tick_is_lost(caplog):
    with FakeUpstox() as fake:
        col = Collector(make_source(fake))
        try:
            col.wait(lambda: len(col.ticks(CANON[FUT_KEY])) >= 5, 30, "future ticks")
            fut = fake.prints[FUT_KEY]

            def bad_frames() -> list:
                now_i = fut.last_at(fake.market_ms())       # a good print, not older than any sent
                mixed = frame(pb.live_feed, {"NSE_FO|99999": feed_of(fut, now_i, "full"),
                                             FUT_KEY: feed_of(fut, now_i, "full")}, 7)
                zero = pb.Feed()
                zero.ltpc.CopyFrom(pb.LTPC(ltp=0.0, ltt=int(fut.ts[now_i])))
                unknown_type = pb.FeedResponse(currentTs=1)
                unknown_type.type = 9
                return [b"\x00\xff\xfe\xfd", "not protobuf, a text frame", unknown_type.SerializeToString(),
                        mixed, frame(pb.live_feed, {FUT_KEY: zero}, 8),
                        frame(pb.live_feed, {FUT_KEY: feed_of(fut, 0, "full")}, 9), b"\x12\x05\xff\xff\xff"]

            with caplog.at_level(logging.WARNING, logger="upstox"):
                fake.inject(bad_frames())
                col.wait(lambda: col.source.bad.counts.get("undecodable") == 3, 10, "the bad frames")
                fake.inject(bad_frames())             # the same again: counted, not logged again
                col.wait(lambda: col.source.bad.counts.get("undecodable") == 6, 10, "the bad frames again")
                sent = settle(fake, col)
            assert col.source.bad.counts == {"undecodable": 6, "unknown_type": 2, "unknown_instrument": 2,
                                             "bad_price": 2, "out_of_order": 2}
            lines = [r.getMessage() for r in caplog.records if "bad feed input" in r.getMessage()]
            assert sorted(re.search(r"\((\w+)\)", line)[1] for line in lines) == sorted(
                ["undecodable", "unknown_type", "unknown_instrument", "bad_price", "out_of_order"])
            # the good feed of the mixed frame arrived (twice), and so did every streamed feed
            extra = [t for t in col.ticks(CANON[FUT_KEY]) if t.quote.feed_ts == 7]
            assert len(extra) == 2
            others = [t for t in col.ticks() if t.quote.feed_ts != 7]
            for key, feeds in sent.items():
                assert len([t for t in others if t.instrument_key == canon(fake, key)]) == len(feeds)
            futs = col.ticks(CANON[FUT_KEY])                   # and no volume was counted twice
            assert sum(t.ltq for t in futs) == max(f["vtt"] for f in sent[FUT_KEY]) - sent[FUT_KEY][0]["vtt"]
        finally:
            col.close()


def test_a_rejected_token_stops_the_feed_with_one_clear_error():
    with FakeUpstox() as fake:
        col = Collector(make_source(fake, token=lambda: "expired-token-0000"))
        col.thread.join(timeout=20)
        assert isinstance(col.error, UpstoxConfigError)
        text = str(col.error)
        assert "rejected the access token" in text and "401" in text and "Invalid token" in text
        assert "get a new one" in text and "03:30 IST" in text and "\n" not in text
        assert "expired-token-0000" not in text
        assert len(fake.authorize_calls) == 1 and not fake.connections      # no retry loop
        col.close()


def test_a_reconnect_reads_the_current_token(tmp_path, monkeypatch):
    cfg = tmp_path / "config.py"
    cfg.write_text('ACCESS_TOKEN = "morning-token-1111"\nWATCHLIST = ["NSE_INDEX|Nifty 50"]\n')
    monkeypatch.setenv("AMT_CONFIG", str(cfg))
    monkeypatch.delenv("UPSTOX_ACCESS_TOKEN", raising=False)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RedactFilter(["morning-token-1111"]))
    logging.getLogger().addHandler(handler)
    try:
        with FakeUpstox(token="morning-token-1111") as fake:
            col = Collector(make_source(fake, token=token_from_settings("morning-token-1111")))
            try:
                col.wait(lambda: len(col.ticks()) > 5, 30, "ticks")
                fake.set_token("next-day-token-2222")          # the old one is now rejected
                cfg.write_text('ACCESS_TOKEN = "next-day-token-2222"\nWATCHLIST = ["NSE_INDEX|Nifty 50"]\n')
                fake.drop()
                col.wait(lambda: len(fake.connections) == 2 and fake.connections[1].sent, 30, "the reconnect")
                n = len(col.ticks())
                col.wait(lambda: len(col.ticks()) > n + 5, 30, "ticks after the reconnect")
                assert fake.authorize_calls[-1] == fake.connections[1].authorization == "Bearer next-day-token-2222"
                logging.getLogger("upstox").warning("echo next-day-token-2222 morning-token-1111")
                assert col.error is None
            finally:
                col.close()
    finally:
        logging.getLogger().removeHandler(handler)
    assert "next-day-token" not in out.getvalue() and "morning-token" not in out.getvalue()
    assert "echo *** ***" in out.getvalue()


def test_a_server_that_accepts_then_drops_gets_backoff_not_a_loop(caplog):
    with FakeUpstox() as fake:
        fake.accept_and_drop = True
        with caplog.at_level(logging.WARNING, logger="upstox"):
            col = Collector(make_source(fake, backoff=Backoff(0.1, 0.8)))
            time.sleep(4.0)
            col.close()
        delays = [float(x) for x in re.findall(r"reconnecting in ([\d.]+) s", caplog.text)]
        # delays 0.05-0.1, 0.1-0.2, 0.2-0.4, then 0.4-0.8 each: at most ~12 attempts in 4 s
        assert 3 <= len(fake.connections) <= 13, len(fake.connections)
        assert len(delays) >= 3 and all(0.4 <= d <= 0.8 for d in delays[3:])
        assert col.source.backoff.attempt >= len(fake.connections) - 1    # never reset: never stable


def _wall_clock(day: str, hhmm: str):
    h, mi = map(int, hhmm.split(":"))
    d = dt.date.fromisoformat(day)
    base, t0 = dt.datetime(d.year, d.month, d.day, h, mi, tzinfo=IST).timestamp(), time.monotonic()
    return lambda: base + time.monotonic() - t0


@pytest.mark.parametrize("day, status, trips", [
    ("2022-11-18", "NORMAL_OPEN", True),       # a Friday in session: silence means a stalled feed
    ("2022-11-19", "NORMAL_OPEN", False),      # Saturday
    ("2022-11-18", "NORMAL_CLOSE", False),     # the feed says the market is closed (a holiday)
])
def test_watchdog_reconnects_a_silent_feed_only_in_market_hours(day, status, trips):
    with FakeUpstox(market_status=status) as fake:
        col = Collector(make_source(fake, clock=_wall_clock(day, "10:00"), silence_s=1.5))
        try:
            col.wait(lambda: len(col.ticks()) > 5, 30, "ticks")
            fake.pause()
            if trips:
                col.wait(lambda: col.source.watchdog_reconnects >= 1 and len(fake.connections) >= 2, 15,
                         "the watchdog to reconnect")
                fake.resume()
                n = len(col.ticks())
                col.wait(lambda: len(col.ticks()) > n + 3, 30, "ticks after the watchdog's reconnect")
            else:
                time.sleep(3.5)
                assert col.source.watchdog_reconnects == 0 and len(fake.connections) == 1
        finally:
            col.close()


def test_tls_is_verified_against_certifi(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = serve(lambda ws: ws.send(b"hello"), "127.0.0.1", 0, ssl=context, compression=None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"wss://127.0.0.1:{server.socket.getsockname()[1]}/feed"
    try:
        assert VerifiedFeederV3.sslopt() == {"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": certifi.where(),
                                             "check_hostname": True}
        errors, opened = [], []
        feeder = VerifiedFeederV3(rest_client("http://127.0.0.1:9", "t"), url, on_open=lambda ws: opened.append(1),
                                  on_message=lambda ws, msg: None, on_error=lambda ws, e: errors.append(e),
                                  on_close=lambda *a: None)
        feeder.connect()
        assert feeder.ended.wait(10) and not opened
        assert any(isinstance(e, ssl.SSLCertVerificationError) for e in errors), errors
        # the SDK's own options (CERT_NONE) would have accepted this self-signed server
        ws = websocket.create_connection(url, sslopt={"cert_reqs": ssl.CERT_NONE, "check_hostname": False})
        assert ws.recv() == b"hello"
        ws.close()
    finally:
        server.shutdown()


def test_rest_client_is_immune_to_the_sdk_configuration_default():
    other = upstox_client.Configuration()
    other.host, other.access_token, other.verify_ssl = "https://somewhere.else", "other-token", False
    upstox_client.Configuration.set_default(other)
    try:
        assert upstox_client.Configuration().host == "https://somewhere.else"   # the trap
        client = rest_client("http://127.0.0.1:8123/", "mine-1234")
        cfg = client.configuration
        assert (cfg.host, cfg.access_token, cfg.verify_ssl, cfg.ssl_ca_cert) == (
            "http://127.0.0.1:8123", "mine-1234", True, certifi.where())
        client.pool.close()
    finally:
        upstox_client.Configuration.set_default(None)


def test_from_settings_resolves_the_watchlist_or_names_what_is_unknown(tmp_path, monkeypatch):
    from trading_core import settings as settings_mod
    monkeypatch.delenv("UPSTOX_ACCESS_TOKEN", raising=False)
    with FakeUpstox() as fake:
        cfg = tmp_path / "config.py"
        cfg.write_text(f'ACCESS_TOKEN = "{fake.token}"\nUPSTOX_BASE_URL = "{fake.base_url}"\n'
                       f'INSTRUMENTS_CACHE = "{tmp_path / "cache"}"\n'
                       'WATCHLIST = ["Nifty Bank", "NIFTY22D0118400CE", "NSE_FO|NIFTY22NOVFUT"]\n'
                       'UPSTOX_MODES = {"NIFTY22D0118400CE": "option_greeks"}\n')
        source = UpstoxSource.from_settings(settings_mod.load(cfg))
        try:
            assert {(s.canonical, s.mode) for s in source.subscriptions.values()} == {
                (BANK_KEY, "full"), ("NSE_FO|NIFTY22120118400CE", "option_greeks"), (CANON[FUT_KEY], "full")}
            assert source.subscriptions[FUT_KEY].canonical == CANON[FUT_KEY]
        finally:
            source.close()
        cfg.write_text(cfg.read_text().replace('"Nifty Bank"', '"Nifty Bankk", "NIFTY22NOV99000CE"'))
        with pytest.raises(UpstoxConfigError) as err:
            UpstoxSource.from_settings(settings_mod.load(cfg))
        assert "'Nifty Bankk'" in str(err.value) and "'NIFTY22NOV99000CE'" in str(err.value)
        assert isinstance(err.value, ValueError)        # the ingestor's start-up path: exit code 2
        assert fake.instrument_downloads == 1           # the second start used today's cached copy
