"""The Upstox instruments master: daily download, disk cache, and resolution of WATCHLIST entries.

Upstox names an instrument by its *instrument key* (``"NSE_FO|43885"``, ``"NSE_EQ|INE002A01018"``,
``"NSE_INDEX|Nifty 50"``); the feed and the REST APIs speak only those. The desk names
instruments the way recorded data does (see ``data_handling/instruments.py``), and those
*canonical names* are what every tick, candle, strategy and chart uses:

==============  =======================================  ==========================================
kind            canonical name                           example
==============  =======================================  ==========================================
index           the Upstox key itself                    ``NSE_INDEX|Nifty 50``
equity          ``SEGMENT|TRADING_SYMBOL``               ``NSE_EQ|RELIANCE``
future          ``SEGMENT|UNDERLYINGyyMONFUT``           ``NSE_FO|NIFTY24DECFUT``
option          ``SEGMENT|UNDERLYINGyymmddSTRIKE(CE|PE)``  ``NSE_FO|NIFTY24122624000CE``
==============  =======================================  ==========================================

Options carry their exact expiry date (``yymmdd``) as in the recorded NSE tick files, so a weekly
and a monthly contract never share a name. A WATCHLIST entry may be any of: an Upstox key, a
canonical name, ``SEGMENT|SYMBOL`` or a bare symbol, where a symbol is an Upstox trading symbol
(``NIFTY 24000 CE 26 DEC 24``), an index name (``Nifty Bank``), an equity symbol (``RELIANCE``),
or an NSE contract symbol: ``NIFTY24DEC24000CE`` (the monthly contract, i.e. the month's last
expiry), ``NIFTY24D2624000CE`` (weekly: month code 1-9, O, N, D), ``NIFTY24122624000CE`` (exact
date), ``NIFTY24DECFUT``. An entry that matches nothing, or several instruments, is an error
naming it.

The master (``NSE.json.gz``: a gzipped JSON array of objects with ``segment``, ``instrument_key``,
``instrument_type``, ``trading_symbol``, ``name``, ``underlying_symbol``, ``expiry`` (epoch ms),
``strike_price``...; source: https://upstox.com/developer/api-documentation/instruments) is
downloaded at most once per IST calendar day into the cache folder and reused from there; a
failed download falls back to the cached copy with a warning naming its date, and with no
cached copy start-up stops with one line saying what to do.

This module does no SDK import, so ``run.py``'s preflight and the ingestor can use it cheaply.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import hashlib
import json
import logging
import os
import re
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import urlparse

log = logging.getLogger("upstox")

IST = dt.timezone(dt.timedelta(hours=5, minutes=30))
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_WEEKLY_MONTH = {**{str(i): i for i in range(1, 10)}, "O": 10, "N": 11, "D": 12}
_STRIKE = r"(\d+(?:\.\d+)?)"
_EXACT_RE = re.compile(rf"^(\d\d)(\d\d)(\d\d){_STRIKE}(CE|PE)$")
_WEEKLY_RE = re.compile(rf"^(\d\d)([1-9OND])(\d\d){_STRIKE}(CE|PE)$")
_MONTHLY_RE = re.compile(rf"^(\d\d)({'|'.join(MONTHS)}){_STRIKE}(CE|PE)$")
_FUT_RE = re.compile(rf"^(\d\d)({'|'.join(MONTHS)})FUT$")
DOWNLOAD_TIMEOUT_S = 60.0
TOKEN_HELP = ("get a new one (README, 'Going live with Upstox': log in at "
              "https://api.upstox.com/v2/login/authorization/dialog and exchange the code at "
              "/v2/login/authorization/token) and put it in config.py ACCESS_TOKEN or the "
              "UPSTOX_ACCESS_TOKEN environment variable; Upstox tokens expire every day at 03:30 IST")


class UpstoxConfigError(ValueError):
    """An Upstox problem only the user can fix (unknown WATCHLIST symbol, no instruments master,
    an expired or invalid access token). The message is one line; the ingestor exits with
    ``EXIT_CONFIG`` (2) on it, so the supervisor does not restart into the same failure."""


@dataclasses.dataclass(frozen=True, slots=True)
class Instrument:
    """One row of the instruments master. ``expiry`` is the IST expiry date (None for an index or
    equity); ``strike`` rupees (0 if none); ``canonical``: the desk's name (see the module doc)."""

    instrument_key: str
    canonical: str
    segment: str
    instrument_type: str
    trading_symbol: str
    name: str
    underlying_symbol: str
    expiry: dt.date | None
    strike: float
    lot_size: int


def _strike_text(strike: float) -> str:
    return str(int(strike)) if float(strike).is_integer() else f"{strike:g}"


def _expiry_date(ms: Any) -> dt.date | None:
    if not ms:
        return None
    return dt.datetime.fromtimestamp(int(ms) / 1000, IST).date()


def canonical_name(row: dict[str, Any]) -> str:
    """The desk's name of one master row (see the module doc). Raises ``KeyError`` without
    ``segment``/``instrument_key``."""
    segment, kind = row["segment"], str(row.get("instrument_type") or "").upper()
    under = str(row.get("underlying_symbol") or row.get("asset_symbol") or "").upper()
    expiry = _expiry_date(row.get("expiry"))
    if kind == "INDEX" or segment.endswith("_INDEX"):
        return row["instrument_key"]
    if kind in ("CE", "PE") and under and expiry:
        return f"{segment}|{under}{expiry:%y%m%d}{_strike_text(float(row.get('strike_price') or 0))}{kind}"
    if kind == "FUT" and under and expiry:
        return f"{segment}|{under}{expiry:%y}{MONTHS[expiry.month - 1]}FUT"
    symbol = str(row.get("trading_symbol") or "").upper().replace(" ", "")
    return f"{segment}|{symbol}" if symbol else row["instrument_key"]


def _norm(text: str) -> str:
    return " ".join(text.upper().split())


class InstrumentsMaster:
    """Lookups over the instruments master.

    ``rows``: the master's objects. ``source``: where it came from, for error messages (e.g.
    ``"NSE.json.gz, downloaded 2024-12-20"``); ``stale``: True when it is an older day's copy.
    Only cheap indexes are built up front (the real master has ~100k rows); an
    :class:`Instrument` is made for the rows a lookup touches. Rows without ``instrument_key``
    or ``segment`` are skipped (counted in ``skipped``).
    """

    def __init__(self, rows: Iterable[dict[str, Any]], source: str = "", stale: bool = False):
        self.source = source
        self.stale = stale
        self.skipped = 0
        self._rows: dict[str, dict[str, Any]] = {}                 # instrument key -> row
        self._by_symbol: dict[str, list[str]] = {}                 # trading symbol / index name -> keys
        self._contracts: dict[tuple[str, str, float], list[str]] = {}   # (under, CE/PE/FUT, strike) -> keys
        self._made: dict[str, Instrument] = {}
        for row in rows:
            try:
                key, kind = row["instrument_key"], str(row.get("instrument_type") or "").upper()
                row["segment"]
                if kind in ("CE", "PE", "FUT") and row.get("expiry") and row.get("underlying_symbol"):
                    c = (str(row["underlying_symbol"]).upper(), kind, round(float(row.get("strike_price") or 0), 4))
                    self._contracts.setdefault(c, []).append(key)
            except (KeyError, TypeError, ValueError):
                self.skipped += 1
                continue
            self._rows[key] = row
            symbol = row.get("trading_symbol")
            if symbol:
                self._by_symbol.setdefault(_norm(str(symbol)), []).append(key)
            if kind == "INDEX" and row.get("name"):
                self._by_symbol.setdefault(_norm(str(row["name"])), []).append(key)
        self._underlyings = sorted({c[0] for c in self._contracts}, key=len, reverse=True)

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, instrument_key: str) -> Instrument | None:
        """The instrument of an Upstox key, or None."""
        inst = self._made.get(instrument_key)
        if inst is None and instrument_key in self._rows:
            row = self._rows[instrument_key]
            inst = self._made[instrument_key] = Instrument(
                instrument_key=instrument_key, canonical=canonical_name(row), segment=row["segment"],
                instrument_type=str(row.get("instrument_type") or "").upper(),
                trading_symbol=str(row.get("trading_symbol") or ""), name=str(row.get("name") or ""),
                underlying_symbol=str(row.get("underlying_symbol") or "").upper(),
                expiry=_expiry_date(row.get("expiry")), strike=float(row.get("strike_price") or 0),
                lot_size=int(row.get("lot_size") or 1))
        return inst

    # --- resolution --------------------------------------------------------------------------
    def _nse_symbol(self, symbol: str) -> list[Instrument]:
        """Contracts named by an NSE symbol (``NIFTY24DEC24000CE``, ``NIFTY24D2624000CE``,
        ``NIFTY24122624000CE``, ``NIFTY24DECFUT``)."""
        found: list[Instrument] = []
        for under in self._underlyings:
            if not symbol.startswith(under) or len(symbol) == len(under):
                continue
            rest = symbol[len(under):]
            exact: list[tuple[dt.date, str, str]] = []
            for rx, month_of in ((_EXACT_RE, lambda g: int(g)), (_WEEKLY_RE, lambda g: _WEEKLY_MONTH[g])):
                mt = rx.match(rest)
                if mt:
                    try:
                        exact.append((dt.date(2000 + int(mt[1]), month_of(mt[2]), int(mt[3])), mt[4], mt[5]))
                    except ValueError:
                        pass
            for day, strike, kind in exact:
                found += [i for i in self._contract(under, kind, strike) if i.expiry == day]
            monthly = [(mt[1], mt[2], mt[3], mt[4]) for mt in [_MONTHLY_RE.match(rest)] if mt]
            monthly += [(mt[1], mt[2], "0", "FUT") for mt in [_FUT_RE.match(rest)] if mt]
            for yy, mon, strike, kind in monthly:
                year, month = 2000 + int(yy), MONTHS.index(mon) + 1
                same_month = [i for i in self._contract(under, kind, strike)
                              if i.expiry and (i.expiry.year, i.expiry.month) == (year, month)]
                if same_month:   # NSE's monthly symbol names the month's last expiry
                    last = max(i.expiry for i in same_month)
                    found += [i for i in same_month if i.expiry == last]
        return list({i.instrument_key: i for i in found}.values())

    def _contract(self, under: str, kind: str, strike: str) -> list[Instrument]:
        return [self.get(k) for k in self._contracts.get((under, kind, round(float(strike), 4)), [])]

    def candidates(self, entry: str) -> list[Instrument]:
        """Every instrument ``entry`` could name (see the module doc); [] when none."""
        entry = entry.strip()
        if entry in self._rows:
            return [self.get(entry)]
        segment, sep, symbol = entry.partition("|")
        if not sep:
            segment, symbol = "", entry
        symbol = _norm(symbol)
        found = [self.get(k) for k in self._by_symbol.get(symbol, [])]
        if not found:                 # an NSE contract symbol, or a canonical name's symbol part
            found = self._nse_symbol(symbol.replace(" ", ""))
        if segment:
            found = [i for i in found if i.segment == segment.upper()]
        elif len({i.segment for i in found}) > 1 and any(i.segment == "NSE_EQ" for i in found):
            found = [i for i in found if i.segment == "NSE_EQ"]   # a bare equity symbol means NSE's
        return list({i.instrument_key: i for i in found}.values())

    def resolve(self, entry: str) -> Instrument:
        """The one instrument ``entry`` names. Raises :class:`UpstoxConfigError` naming the entry
        when it matches none or several."""
        found = self.candidates(entry)
        if len(found) == 1:
            return found[0]
        if not found:
            stale = (" The cached master is an older day's copy; a contract listed since then is not "
                     "in it." if self.stale else "")
            raise UpstoxConfigError(
                f"WATCHLIST entry {entry!r} is not in the Upstox instruments master ({self.source}, "
                f"{len(self)} instruments); use an Upstox instrument key, a trading symbol or a name "
                f"such as 'NSE_INDEX|Nifty 50' or 'NIFTY24DEC24000CE'.{stale}")
        names = ", ".join(f"{i.canonical} ({i.instrument_key})" for i in found[:6])
        raise UpstoxConfigError(f"WATCHLIST entry {entry!r} matches {len(found)} instruments: {names}"
                                f"{' ...' if len(found) > 6 else ''}; write the one you mean")

    def resolve_all(self, entries: Iterable[str]) -> list[Instrument]:
        """Resolve every entry (duplicates by instrument key dropped, order kept). Raises
        :class:`UpstoxConfigError` naming every entry that failed."""
        out: dict[str, Instrument] = {}
        errors = []
        for entry in entries:
            try:
                inst = self.resolve(entry)
            except UpstoxConfigError as exc:
                errors.append(str(exc))
                continue
            out.setdefault(inst.instrument_key, inst)
        if errors:
            raise UpstoxConfigError(errors[0] if len(errors) == 1 else
                                    f"{len(errors)} WATCHLIST entries failed: " + " | ".join(errors))
        return list(out.values())


# --- download and daily cache -------------------------------------------------------------------
def ist_today(clock: Callable[[], float] = time.time) -> dt.date:
    """Today's date in India (Asia/Kolkata), by ``clock`` (epoch seconds)."""
    return dt.datetime.fromtimestamp(clock(), IST).date()


def cache_paths(url: str, cache_dir: Path) -> tuple[Path, Path]:
    """``(data file, metadata file)`` of ``url``'s cached copy in ``cache_dir``; the name carries a
    hash of the URL so two sources never share a file."""
    name = Path(urlparse(url).path).name or "instruments.json.gz"
    digest = hashlib.sha1(url.encode()).hexdigest()[:8]
    data = cache_dir / f"{digest}-{name}"
    return data, data.with_name(data.name + ".meta.json")


def parse_master(raw: bytes) -> list[dict[str, Any]]:
    """The master's rows from its bytes (gzip or plain JSON). Raises ``ValueError`` if it is not a
    JSON array of objects."""
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"not a valid gzip file ({exc})") from None
    try:
        import orjson
        rows = orjson.loads(raw)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows[:100]):
        raise ValueError("not a JSON array of instruments")
    return rows


def download(url: str, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> bytes:
    """GET ``url`` (TLS verified against certifi's CA bundle). Raises ``OSError``/``ValueError``
    (``urllib.error.URLError`` is an ``OSError``) on failure."""
    import certifi
    context = ssl.create_default_context(cafile=certifi.where())
    request = urllib.request.Request(url, headers={"User-Agent": "amt-desk", "Accept": "*/*"})
    with urllib.request.urlopen(request, timeout=timeout_s, context=context) as response:
        return response.read()


def load_master(url: str, cache_dir: Path, clock: Callable[[], float] = time.time,
                fetch: Callable[[str], bytes] = download) -> InstrumentsMaster:
    """The instruments master of ``url``: today's cached copy, else a fresh download (cached
    atomically), else an older cached copy with a warning.

    Raises :class:`UpstoxConfigError` when the download fails and there is no usable cached copy.
    """
    data_path, meta_path = cache_paths(url, cache_dir)
    today = ist_today(clock)
    meta: dict[str, Any] = {}
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        pass
    host = urlparse(url).netloc or url
    if meta.get("ist_date") == today.isoformat() and data_path.exists():
        try:
            rows = parse_master(data_path.read_bytes())
            log.info("instruments master: today's cached copy (%d instruments) in %s", len(rows), cache_dir)
            return InstrumentsMaster(rows, f"{data_path.name}, cached {today}")
        except (OSError, ValueError) as exc:
            log.warning("instruments master cache %s is unreadable (%s); downloading again", data_path, exc)
    started = time.monotonic()
    try:
        raw = fetch(url)
        rows = parse_master(raw)
    except (OSError, ValueError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
        cached_day = meta.get("ist_date", "an unknown day")
        try:
            rows = parse_master(data_path.read_bytes())
        except (OSError, ValueError):
            raise UpstoxConfigError(
                f"cannot get the Upstox instruments master from {url} ({reason}) and there is no "
                f"cached copy in {cache_dir}; check the network or UPSTOX_INSTRUMENTS_URL") from None
        log.warning("instruments master download from %s failed (%s); using the cached copy of %s "
                    "(contracts listed since then are unknown)", host, reason, cached_day)
        return InstrumentsMaster(rows, f"{data_path.name}, cached {cached_day}",
                                 stale=cached_day != today.isoformat())
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_path.with_name(data_path.name + f".{os.getpid()}.tmp")
    tmp.write_bytes(raw)
    os.replace(tmp, data_path)
    meta_tmp = meta_path.with_name(meta_path.name + f".{os.getpid()}.tmp")
    meta_tmp.write_text(json.dumps({"url": url, "ist_date": today.isoformat(),
                                    "downloaded_ms": int(clock() * 1000), "bytes": len(raw),
                                    "instruments": len(rows)}))
    os.replace(meta_tmp, meta_path)
    log.info("instruments master: downloaded %d instruments (%.1f MB) from %s in %.1f s", len(rows),
             len(raw) / 1e6, host, time.monotonic() - started)
    return InstrumentsMaster(rows, f"{data_path.name}, downloaded {today}")


# --- settings ------------------------------------------------------------------------------------
def entry_modes(settings) -> dict[str, str]:
    """Feed mode of every WATCHLIST entry: ``UPSTOX_MODES[entry]`` else ``UPSTOX_MODE``."""
    modes = dict(settings.upstox_modes)
    return {entry: modes.get(entry, settings.upstox_mode) for entry in settings.watchlist}


def check_settings(settings) -> str | None:
    """Problems with the Upstox settings that need no network (for ``run.py``'s preflight): one
    line, or None."""
    if not settings.access_token.strip():
        return "the Upstox feed needs an access token: set ACCESS_TOKEN in config.py or UPSTOX_ACCESS_TOKEN"
    if not settings.watchlist:
        return "WATCHLIST is empty: nothing to subscribe to on the Upstox feed"
    for name, url, schemes in (("UPSTOX_BASE_URL", settings.upstox_base_url, ("http", "https")),
                               ("UPSTOX_FEED_AUTHORIZE_URL", settings.upstox_authorize_url, ("http", "https")),
                               ("UPSTOX_INSTRUMENTS_URL", settings.upstox_instruments_url,
                                ("http", "https", "file"))):
        parsed = urlparse(url)
        if parsed.scheme not in schemes or not (parsed.netloc or parsed.scheme == "file"):
            return f"{name} must be an {'/'.join(schemes)} URL, got {url!r}"
    unknown = sorted(set(dict(settings.upstox_modes)) - set(settings.watchlist))
    if unknown:
        return f"UPSTOX_MODES names {unknown[0]!r}, which is not in WATCHLIST"
    return None
