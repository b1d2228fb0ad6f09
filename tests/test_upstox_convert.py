"""Upstox V3 frames -> desk messages, through the SDK's own decoding (``MarketDataStreamerV3``'s
``decode_protobuf`` + ``MessageToDict``), on real recorded prints encoded with the SDK's protobuf
classes; and the reconnect policy pieces: backoff with jitter and a cap, the market-hours watchdog."""

from __future__ import annotations

import datetime as dt
import logging
import random

import pytest
from upstox_client.feeder.proto import MarketDataFeedV3_pb2 as pb

from data_handling.upstox_feed import (Backoff, BadInput, FeedConverter, Subscription, UpstoxStreamer,
                                       Watchdog, rest_client)
from tests.fake_upstox import (BANK_KEY, EQUITY_KEY, FUT_KEY, NIFTY_KEY, feed_of, frame, load_market,
                               market_info_frame)

IST = dt.timezone(dt.timedelta(hours=5, minutes=30))
CANON = {NIFTY_KEY: NIFTY_KEY, BANK_KEY: BANK_KEY, FUT_KEY: "NSE_FO|NIFTY22NOVFUT",
         EQUITY_KEY: "NSE_EQ|RELIANCE"}


@pytest.fixture(scope="module")
def market():
    _, prints, option_key = load_market()
    return prints, option_key


@pytest.fixture(scope="module")
def api_client():
    client = rest_client("http://127.0.0.1:9", "unit-test-token")
    yield client
    client.pool.close()
    client.pool.join()


class Pipe:
    """The SDK streamer's message path feeding a FeedConverter, as in UpstoxSource."""

    def __init__(self, api_client, subs: dict[str, tuple[str, str]]):
        self.dicts: list[dict] = []
        self.bad = BadInput()
        self.seq = iter(range(10**9))
        self.converter = FeedConverter({k: Subscription(k, c, mode) for k, (c, mode) in subs.items()},
                                       self.bad, lambda: next(self.seq))
        self.streamer = UpstoxStreamer(api_client, {}, lambda f, why: self.bad.report("undecodable", f, why))
        self.streamer.on("message", self.dicts.append)

    def feed(self, *frames) -> list:
        out = []
        for raw in frames:
            before = len(self.dicts)
            self.streamer.handle_message(None, raw)
            for d in self.dicts[before:]:
                out += self.converter.convert(d)
        return out


def test_sdk_dicts_have_the_known_traps(market, api_client):
    prints, _ = market
    fut = prints[FUT_KEY]
    p = Pipe(api_client, {})
    now = int(fut.ts[10])
    p.feed(frame(pb.initial_feed, {FUT_KEY: feed_of(fut, 10, "full"), BANK_KEY: feed_of(prints[BANK_KEY], 3, "ltpc")}, now),
           frame(pb.live_feed, {FUT_KEY: feed_of(fut, 11, "full")}, now))
    initial, live = p.dicts
    assert "type" not in initial                       # initial_feed is enum 0: left out
    assert live["type"] == "live_feed"
    assert initial["currentTs"] == str(now)            # int64 as a string
    mff = initial["feeds"][FUT_KEY]["fullFeed"]["marketFF"]
    assert mff["ltpc"]["ltt"] == str(int(fut.ts[10])) and mff["vtt"] == str(int(fut.vtt[10]))
    assert "bidAskQuote" in mff["marketLevel"]          # camelCase names
    assert "requestMode" not in initial["feeds"][BANK_KEY]   # ltpc is enum 0: left out
    assert "ltq" not in initial["feeds"][BANK_KEY]["ltpc"]   # an index trades no quantity: 0 left out


def test_full_mode_market_feed_field_by_field(market, api_client):
    prints, _ = market
    fut = prints[FUT_KEY]
    p = Pipe(api_client, {FUT_KEY: (CANON[FUT_KEY], "full")})
    now = int(fut.ts[200]) + 400
    ticks = p.feed(frame(pb.initial_feed, {FUT_KEY: feed_of(fut, 199, "full")}, now),
                   frame(pb.live_feed, {FUT_KEY: feed_of(fut, 200, "full")}, now))
    sent = feed_of(fut, 200, "full").fullFeed.marketFF
    t = ticks[1]
    assert (t.instrument_key, t.ts, t.ltp, t.oi, t.source) == (CANON[FUT_KEY], sent.ltpc.ltt, sent.ltpc.ltp,
                                                                 sent.oi, "upstox")
    q = t.quote
    assert (q.mode, q.feed_ts, q.cp, q.vtt, q.atp, q.tbq, q.tsq) == (
        "full", now, sent.ltpc.cp, sent.vtt, sent.atp, sent.tbq, sent.tsq)
    assert [(d.bid_qty, d.bid, d.ask_qty, d.ask) for d in q.depth] == [
        (x.bidQ, x.bidP, x.askQ, x.askP) for x in sent.marketLevel.bidAskQuote]
    assert len(q.depth) == 5
    assert (q.bid, q.bid_qty, q.ask, q.ask_qty) == (q.depth[0].bid, q.depth[0].bid_qty, q.depth[0].ask,
                                                    q.depth[0].ask_qty)
    assert [(b.interval, b.open, b.high, b.low, b.close, b.volume, b.ts) for b in q.ohlc] == [
        (o.interval, o.open, o.high, o.low, o.close, o.vol, o.ts) for o in sent.marketOHLC.ohlc]
    # carried by the mode but at the protobuf default (a future has no greeks): 0, not None
    assert (q.iv, q.iep, q.ieq, q.cas_eligible) == (0.0, 0.0, 0, False)
    assert q.delta is None                            # optionGreeks not in the frame at all
    assert t.ltq == fut.vtt[200] - fut.vtt[199]       # volume since the previous update


def test_full_d30_option_greeks_ltpc_and_index_modes(market, api_client):
    prints, option_key = market
    opt, eq, bank, nifty = prints[option_key], prints[EQUITY_KEY], prints[BANK_KEY], prints[NIFTY_KEY]
    p = Pipe(api_client, {option_key: ("NSE_FO|NIFTY22112418400CE", "option_greeks"),
                          EQUITY_KEY: (CANON[EQUITY_KEY], "full_d30"), BANK_KEY: (BANK_KEY, "ltpc"),
                          NIFTY_KEY: (NIFTY_KEY, "full")})
    feeds = {option_key: feed_of(opt, 50, "option_greeks"), EQUITY_KEY: feed_of(eq, 40, "full_d30"),
             BANK_KEY: feed_of(bank, 20, "ltpc"), NIFTY_KEY: feed_of(nifty, 20, "full")}
    ticks = {t.instrument_key: t for t in p.feed(frame(pb.live_feed, feeds, int(opt.ts[50])))}
    o, sent = ticks["NSE_FO|NIFTY22112418400CE"], feeds[option_key].firstLevelWithGreeks
    assert (o.quote.mode, o.ltp, o.ts, o.oi, o.quote.vtt, o.quote.iv) == (
        "option_greeks", sent.ltpc.ltp, sent.ltpc.ltt, sent.oi, sent.vtt, sent.iv)
    assert (o.quote.delta, o.quote.theta, o.quote.gamma, o.quote.vega, o.quote.rho) == (
        sent.optionGreeks.delta, sent.optionGreeks.theta, sent.optionGreeks.gamma, sent.optionGreeks.vega,
        sent.optionGreeks.rho)
    assert (o.quote.bid, o.quote.bid_qty, o.quote.ask, o.quote.ask_qty) == (
        sent.firstDepth.bidP, sent.firstDepth.bidQ, sent.firstDepth.askP, sent.firstDepth.askQ)
    assert o.quote.atp is None and o.quote.ohlc is None          # not carried by option_greeks
    e = ticks["NSE_EQ|RELIANCE"]
    assert e.quote.mode == "full_d30" and len(e.quote.depth) == 30
    assert [d.ask for d in e.quote.depth] == [x.askP for x in feeds[EQUITY_KEY].fullFeed.marketFF.marketLevel.bidAskQuote]
    b = ticks[BANK_KEY]
    assert (b.quote.mode, b.ltp, b.ts, b.quote.cp, b.quote.vtt, b.quote.depth) == (
        "ltpc", feeds[BANK_KEY].ltpc.ltp, feeds[BANK_KEY].ltpc.ltt, feeds[BANK_KEY].ltpc.cp, None, None)
    n = ticks[NIFTY_KEY]
    ix = feeds[NIFTY_KEY].fullFeed.indexFF
    assert (n.quote.mode, n.ltp, n.ltq, n.quote.vtt, n.quote.depth) == ("full", ix.ltpc.ltp, 0, None, None)
    assert [b.close for b in n.quote.ohlc] == [x.close for x in ix.marketOHLC.ohlc]


def test_missing_fields_mean_protobuf_defaults(api_client):
    p = Pipe(api_client, {FUT_KEY: ("F", "full")})
    f = pb.Feed(requestMode=pb.full_d5)
    f.fullFeed.marketFF.ltpc.ltp = 101.5
    f.fullFeed.marketFF.ltpc.ltt = 1668744000000
    f.fullFeed.marketFF.marketLevel.bidAskQuote.add(askQ=75, askP=101.6)    # no bid at all
    f.fullFeed.marketFF.optionGreeks.SetInParent()                        # present, every greek 0
    (t,) = p.feed(frame(pb.live_feed, {FUT_KEY: f}, 0))
    assert p.dicts[0]["feeds"][FUT_KEY]["fullFeed"]["marketFF"]["optionGreeks"] == {}
    assert (t.ts, t.ltq, t.oi, t.quote.feed_ts, t.quote.cp, t.quote.vtt) == (1668744000000, 0, 0.0, 0, 0.0, 0)
    assert (t.quote.bid, t.quote.bid_qty, t.quote.ask, t.quote.ask_qty) == (0.0, 0, 101.6, 75)
    assert (t.quote.delta, t.quote.vega) == (0.0, 0.0)


def test_volume_is_counted_once_per_trade(market, api_client):
    prints, _ = market
    fut, bank = prints[FUT_KEY], prints[BANK_KEY]
    p = Pipe(api_client, {FUT_KEY: ("F", "full"), "NSE_FO|X": ("X", "ltpc")})
    frames = [frame(pb.initial_feed, {FUT_KEY: feed_of(fut, 100, "full")}, 0)]
    frames += [frame(pb.live_feed, {FUT_KEY: feed_of(fut, i, "full")}, 0) for i in range(101, 160)]
    ticks = p.feed(*frames)
    assert ticks[0].ltq == 0                                    # the snapshot is a baseline
    assert sum(t.ltq for t in ticks) == fut.vtt[159] - fut.vtt[100]
    assert [t.ltq for t in ticks[1:]] == [int(fut.qty[i]) for i in range(101, 160)]
    p.converter.new_connection()                               # after a reconnect: a new baseline
    (again,) = p.feed(frame(pb.initial_feed, {FUT_KEY: feed_of(fut, 170, "full")}, 0))
    assert again.ltq == 0
    # ltpc mode has no vtt: a trade counts when ltt advances, a repeated ltpc counts nothing
    base = feed_of(fut, 300, "ltpc")
    later = feed_of(fut, 301, "ltpc")
    got = p.feed(*[frame(pb.live_feed, {"NSE_FO|X": f}, 0) for f in (base, later, later)])
    assert [t.ltq for t in got] == [0, later.ltpc.ltq, 0]
    assert bank.qty.sum() == 0


def test_market_info_becomes_market_status(api_client):
    p = Pipe(api_client, {})
    (ms,) = p.feed(market_info_frame(1668742200000, "PRE_OPEN_START"))   # enum 0, inside a map
    assert ms.ts == 1668742200000 and ms.segments["NSE_FO"] == "PRE_OPEN_START"
    assert set(ms.segments) == {"NSE_EQ", "NSE_FO", "NSE_INDEX", "BSE_EQ", "BSE_FO", "MCX_FO"}


def test_bad_input_is_counted_logged_once_per_kind_and_loses_no_good_tick(market, api_client, caplog):
    prints, _ = market
    fut = prints[FUT_KEY]
    p = Pipe(api_client, {FUT_KEY: ("F", "full")})
    good = [feed_of(fut, i, "full") for i in range(500, 506)]
    old = feed_of(fut, 10, "full")                              # a print from 09:15, after 09:2x ones
    zero, negative, no_ts = pb.Feed(), pb.Feed(), pb.Feed()
    zero.ltpc.CopyFrom(pb.LTPC(ltp=0.0, ltt=int(fut.ts[505])))
    negative.ltpc.CopyFrom(pb.LTPC(ltp=-5.0, ltt=int(fut.ts[505])))
    no_ts.ltpc.CopyFrom(pb.LTPC(ltp=5.0))
    unknown_type = pb.FeedResponse(currentTs=1)
    unknown_type.type = 7                                       # a type this SDK does not know
    with caplog.at_level(logging.WARNING, logger="upstox"):
        ticks = p.feed(
            frame(pb.live_feed, {FUT_KEY: good[0]}, 0),
            b"\xff\xfe garbage", b"\x12\x03abc", "a text frame",
            unknown_type.SerializeToString(),
            frame(pb.live_feed, {FUT_KEY: good[1], "NSE_FO|99999": good[1]}, 0),
            frame(pb.live_feed, {FUT_KEY: good[2]}, 0),
            frame(pb.live_feed, {FUT_KEY: old}, 0),
            frame(pb.live_feed, {FUT_KEY: good[3]}, 0),
            frame(pb.live_feed, {FUT_KEY: zero}, 0), frame(pb.live_feed, {FUT_KEY: negative}, 0),
            frame(pb.live_feed, {FUT_KEY: no_ts}, 0),
            b"\xff\xff\xff", frame(pb.live_feed, {"NSE_FO|99999": good[4]}, 0),
            frame(pb.live_feed, {FUT_KEY: good[4]}, 0), frame(pb.live_feed, {FUT_KEY: good[5]}, 0))
    assert [t.ltp for t in ticks] == [g.fullFeed.marketFF.ltpc.ltp for g in good]
    assert p.bad.counts == {"undecodable": 4, "unknown_type": 1, "unknown_instrument": 2,
                            "out_of_order": 1, "bad_price": 2, "no_timestamp": 1}
    lines = [r.getMessage() for r in caplog.records if "bad feed input" in r.getMessage()]
    assert len(lines) == 6 and all("sample:" in line for line in lines)
    assert any("99999" in line for line in lines) and any("price -5.0" in line or "price 0.0" in line
                                                         for line in lines)


# --- backoff and watchdog --------------------------------------------------------------------------
def test_backoff_grows_with_jitter_up_to_the_cap_and_resets():
    b = Backoff(base_s=0.5, cap_s=8.0, rng=random.Random(4))
    delays = [b.next_delay() for _ in range(8)]
    for n, d in enumerate(delays):
        ceiling = min(8.0, 0.5 * 2 ** n)
        assert ceiling / 2 <= d <= ceiling
    assert max(delays) <= 8.0 and delays[-1] >= 4.0             # capped, and stays at the cap
    firsts = {round(Backoff(0.5, 8.0, random.Random(seed)).next_delay(), 6) for seed in range(50)}
    assert len(firsts) > 40                                     # jitter: clients do not retry in step
    b.reset()
    assert b.attempt == 0 and b.next_delay() <= 0.5
    with pytest.raises(ValueError):
        Backoff(base_s=2.0, cap_s=1.0)


def _at(day: str, hhmm: str) -> float:
    h, m = map(int, hhmm.split(":"))
    d = dt.date.fromisoformat(day)
    return dt.datetime(d.year, d.month, d.day, h, m, tzinfo=IST).timestamp()


def test_watchdog_only_minds_silence_during_market_hours():
    now = {"t": _at("2022-11-18", "10:00")}                    # a Friday
    w = Watchdog(silence_s=20, clock=lambda: now["t"], segments=("NSE_FO", "NSE_INDEX"))
    assert w.silent(now["t"] - 25) and not w.silent(now["t"] - 10)
    for day, hhmm in (("2022-11-18", "08:59"), ("2022-11-18", "09:14"), ("2022-11-18", "15:30"),
                      ("2022-11-18", "23:00"), ("2022-11-19", "11:00"), ("2022-11-20", "11:00")):
        now["t"] = _at(day, hhmm)
        assert not w.silent(now["t"] - 3600), (day, hhmm)     # before the open, overnight, weekend
    now["t"] = _at("2022-11-18", "09:15")
    assert w.silent(now["t"] - 21)
    w.market = {"NSE_FO": "NORMAL_CLOSE", "NSE_INDEX": "NORMAL_CLOSE", "MCX_FO": "NORMAL_OPEN"}
    assert not w.silent(now["t"] - 3600)                       # the feed says closed: a holiday
    w.market["NSE_INDEX"] = "NORMAL_OPEN"
    assert w.silent(now["t"] - 21)
