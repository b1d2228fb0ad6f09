"""The ingestor's live profiles: every index and future gets one, options none, unknown
instruments get derived rows, and publication is throttled."""

from __future__ import annotations

from data_handling.replay import ReplaySource
from scripts.profiles import ProfileFeed, wants_profile
from tests.conftest import FO_TICKS


def test_futures_of_every_underlying_get_a_profile_and_options_none():
    src = ReplaySource(FO_TICKS / "Futures")
    sent = []
    feed = ProfileFeed(lambda topic, msg: sent.append((topic, msg)))
    for tick in src.ticks():
        feed.on_tick(tick)
    feed.publish_due(force=True)
    keys = {msg.instrument_key for _, msg in sent}
    assert keys == set(src.instrument_keys)  # FINNIFTY and MIDCPNIFTY have no preset row size
    fin = next(msg for _, msg in sent if msg.instrument_key == "NSE_FO|FINNIFTY-I")
    assert fin.row_size > 0 and fin.val <= fin.poc <= fin.vah and fin.session == "2022-11-18"
    assert not wants_profile("NSE_FO|BANKNIFTY22112429000PE") and wants_profile("NSE_FO|NIFTY-I")


def test_publication_is_throttled_to_once_a_second_per_instrument():
    src = ReplaySource(FO_TICKS / "Futures" / "NIFTY-I.csv")
    sent = []
    feed = ProfileFeed(lambda topic, msg: sent.append(msg))
    ticks = list(src.ticks())
    for i, tick in enumerate(ticks[:2000]):
        feed.on_tick(tick)
        feed.publish_due(now_ms=1_000_000 + i)  # 2000 updates within 2 s of wall time
    # at most one a second, plus one per TPO period close seen in those ticks
    periods = len({(t.ts - ticks[0].ts) // 1_800_000 for t in ticks[:2000]})
    assert 1 <= len(sent) <= 2 + periods
