"""WATCHLIST entries -> Upstox instrument keys through the instruments master (the contracts of the
recorded F&O day, in Upstox's JSON format), and the master's daily disk cache."""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import json
import logging

import pytest

from data_handling.upstox_instruments import (IST, InstrumentsMaster, UpstoxConfigError, cache_paths,
                                              canonical_name, check_settings, entry_modes, load_master)
from tests.fake_upstox import FakeUpstox, master_rows
from trading_core import settings as settings_mod


@pytest.fixture(scope="module")
def rows_and_keys():
    return master_rows()


@pytest.fixture(scope="module")
def master(rows_and_keys):
    return InstrumentsMaster(rows_and_keys[0], "test master")


def test_canonical_names_follow_the_recorded_data(master, rows_and_keys):
    _, keys = rows_and_keys
    # every recorded option file's name is its contract's canonical name
    for symbol, key in keys.items():
        if symbol.endswith(("CE", "PE")):
            assert master.get(key).canonical == f"NSE_FO|{symbol}"
    assert master.get(keys["NIFTY-I"]).canonical == "NSE_FO|NIFTY22NOVFUT"
    assert master.get(keys["BANKNIFTY-II"]).canonical == "NSE_FO|BANKNIFTY22DECFUT"
    assert master.get("NSE_INDEX|Nifty 50").canonical == "NSE_INDEX|Nifty 50"
    assert master.get("NSE_EQ|INE002A01018").canonical == "NSE_EQ|RELIANCE"
    assert canonical_name({"segment": "NSE_FO", "instrument_key": "NSE_FO|1", "instrument_type": "CE",
                           "underlying_symbol": "IDEA", "expiry": 1706207399000, "strike_price": 22.5}) \
        == "NSE_FO|IDEA24012522.5CE"        # 2024-01-25 23:59:59 IST


@pytest.mark.parametrize("entry, canonical", [
    ("NSE_INDEX|Nifty 50", "NSE_INDEX|Nifty 50"),
    ("NSE_INDEX|Nifty Bank", "NSE_INDEX|Nifty Bank"),
    ("Nifty Bank", "NSE_INDEX|Nifty Bank"),
    ("NIFTY22NOV18400CE", "NSE_FO|NIFTY22112418400CE"),          # NSE monthly symbol
    ("NIFTY22DEC18400CE", "NSE_FO|NIFTY22122918400CE"),          # the month's last expiry, not 01 Dec
    ("NIFTY22D0118400CE", "NSE_FO|NIFTY22120118400CE"),          # NSE weekly symbol (month code D)
    ("NIFTY22120118400PE", "NSE_FO|NIFTY22120118400PE"),         # exact expiry date
    ("NSE_FO|NIFTY22112418400CE", "NSE_FO|NIFTY22112418400CE"),  # a canonical name
    ("NIFTY 18400 CE 24 NOV 22", "NSE_FO|NIFTY22112418400CE"),   # Upstox's trading symbol
    ("nifty 18400 ce 24 nov 22", "NSE_FO|NIFTY22112418400CE"),
    ("NIFTY22NOVFUT", "NSE_FO|NIFTY22NOVFUT"),
    ("BANKNIFTY23JANFUT", "NSE_FO|BANKNIFTY23JANFUT"),
    ("RELIANCE", "NSE_EQ|RELIANCE"),
    ("NSE_EQ|RELIANCE", "NSE_EQ|RELIANCE"),
    ("NSE_EQ|INE002A01018", "NSE_EQ|RELIANCE"),                  # an Upstox instrument key
])
def test_watchlist_forms_resolve(master, entry, canonical):
    assert master.resolve(entry).canonical == canonical


def test_an_upstox_key_resolves_to_itself(master, rows_and_keys):
    _, keys = rows_and_keys
    key = keys["BANKNIFTY22112429000PE"]
    inst = master.resolve(key)
    assert (inst.instrument_key, inst.canonical, inst.strike, inst.expiry) == (
        key, "NSE_FO|BANKNIFTY22112429000PE", 29000.0, dt.date(2022, 11, 24))


@pytest.mark.parametrize("entry", ["NIFTY22NOV99999CE", "NSE_FO|NIFTY22NOVFUTX", "NSE_EQ|NOSUCH",
                                   "NSE_FO|RELIANCE", "NIFTY22JUN18400CE", "NIFTY22113118400CE"])
def test_an_unknown_entry_fails_naming_it(master, entry):
    with pytest.raises(UpstoxConfigError) as err:
        master.resolve(entry)
    assert repr(entry) in str(err.value) and "\n" not in str(err.value)


def test_every_bad_entry_is_named_at_once(master):
    with pytest.raises(UpstoxConfigError) as err:
        master.resolve_all(["NSE_INDEX|Nifty 50", "NOPE1", "NIFTY22NOV18400CE", "NOPE2"])
    assert "'NOPE1'" in str(err.value) and "'NOPE2'" in str(err.value) and "2 WATCHLIST entries" in str(err.value)


def test_an_ambiguous_entry_lists_the_candidates(rows_and_keys):
    rows = rows_and_keys[0] + [dict(r, segment="BSE_FO", instrument_key="BSE_FO|" + r["exchange_token"])
                                for r in rows_and_keys[0] if r.get("trading_symbol") == "NIFTY FUT 24 NOV 22"]
    master = InstrumentsMaster(rows, "two exchanges")
    with pytest.raises(UpstoxConfigError) as err:
        master.resolve("NIFTY22NOVFUT")
    assert "matches 2 instruments" in str(err.value) and "BSE_FO|" in str(err.value)
    assert master.resolve("BSE_FO|NIFTY22NOVFUT").segment == "BSE_FO"


# --- the daily cache ---------------------------------------------------------------------------
def _clock(day: str, hhmm: str = "08:00"):
    h, m = map(int, hhmm.split(":"))
    d = dt.date.fromisoformat(day)
    return lambda: dt.datetime(d.year, d.month, d.day, h, m, tzinfo=IST).timestamp()


def test_master_downloaded_once_a_day_and_cached(tmp_path, caplog):
    with FakeUpstox() as fake:
        url = f"{fake.base_url}/market-quote/instruments/exchange/NSE.json.gz"
        first = load_master(url, tmp_path, clock=_clock("2024-12-20", "07:00"))
        again = load_master(url, tmp_path, clock=_clock("2024-12-20", "23:59"))
        assert fake.instrument_downloads == 1
        assert len(first) == len(again) == len(fake.rows) and not again.stale
        next_day = load_master(url, tmp_path, clock=_clock("2024-12-21", "00:01"))
        assert fake.instrument_downloads == 2 and "downloaded 2024-12-21" in next_day.source
    data, meta = cache_paths(url, tmp_path)
    assert json.loads(meta.read_text())["ist_date"] == "2024-12-21"
    assert gzip.decompress(data.read_bytes()) == json.dumps(fake.rows).encode()
    # the server is gone: the cached copy is used, with a warning naming its day
    with caplog.at_level(logging.WARNING, logger="upstox"):
        stale = load_master(url, tmp_path, clock=_clock("2024-12-23"))
    assert stale.stale and stale.resolve("NIFTY22NOVFUT").canonical == "NSE_FO|NIFTY22NOVFUT"
    assert any("2024-12-21" in r.getMessage() and "cached copy" in r.getMessage() for r in caplog.records)
    with pytest.raises(UpstoxConfigError, match="older day's copy"):
        stale.resolve("NIFTY24DEC24000CE")


def test_no_master_and_no_cache_is_one_clear_error(tmp_path):
    def offline(url):
        raise OSError("Network is unreachable")
    with pytest.raises(UpstoxConfigError) as err:
        load_master("https://assets.upstox.com/market-quote/instruments/exchange/NSE.json.gz",
                    tmp_path / "none", clock=_clock("2024-12-20"), fetch=offline)
    text = str(err.value)
    assert "Network is unreachable" in text and str(tmp_path / "none") in text and "UPSTOX_INSTRUMENTS_URL" in text


def test_a_corrupt_cache_or_download_is_not_used(tmp_path, rows_and_keys):
    url = "https://example.invalid/NSE.json.gz"
    good = gzip.compress(json.dumps(rows_and_keys[0]).encode())
    answers = [good, b"<html>503</html>"]
    load_master(url, tmp_path, clock=_clock("2024-12-20"), fetch=lambda u: answers.pop(0))
    data, _ = cache_paths(url, tmp_path)
    data.write_bytes(good[: len(good) // 2])                       # truncated on disk
    with pytest.raises(UpstoxConfigError, match="not JSON"):      # and the new download is junk
        load_master(url, tmp_path, clock=_clock("2024-12-20"), fetch=lambda u: answers.pop(0))


def test_settings_checks_and_modes(tmp_path, monkeypatch):
    monkeypatch.delenv("UPSTOX_ACCESS_TOKEN", raising=False)
    cfg = tmp_path / "config.py"
    cfg.write_text('WATCHLIST = ["NSE_INDEX|Nifty 50", "NIFTY22NOV18400CE"]\n'
                   'UPSTOX_MODES = {"NIFTY22NOV18400CE": "option_greeks"}\n')
    s = settings_mod.load(cfg)
    assert "access token" in check_settings(s)
    s = dataclasses.replace(s, access_token="abcd1234")
    assert check_settings(s) is None
    assert entry_modes(s) == {"NSE_INDEX|Nifty 50": "full", "NIFTY22NOV18400CE": "option_greeks"}
    assert "UPSTOX_BASE_URL" in check_settings(dataclasses.replace(s, upstox_base_url="api.upstox.com"))
    assert "not in WATCHLIST" in check_settings(dataclasses.replace(s, upstox_modes=(("X", "ltpc"),)))
    monkeypatch.setenv("UPSTOX_BASE_URL", "http://127.0.0.1:9999/")
    s = settings_mod.load(cfg)
    assert (s.upstox_authorize_url, s.upstox_instruments_url) == (
        "http://127.0.0.1:9999/v3/feed/market-data-feed/authorize",
        "http://127.0.0.1:9999/market-quote/instruments/exchange/NSE.json.gz")
    cfg.write_text('WATCHLIST = ["NSE_INDEX|Nifty 50"]\nUPSTOX_MODE = "depth"\n')
    with pytest.raises(ValueError, match="'depth'"):
        settings_mod.load(cfg)
