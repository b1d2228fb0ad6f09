"""Instrument keys of recorded data files, in one place.

The platform names every instrument by its Upstox instrument key
(``"<segment>|<name>"``). Recorded files name instruments their own way:

* 1-minute bar files carry a ``SYMBOL`` column: the two NSE indices are
  ``NIFTY`` and ``BANKNIFTY``; anything else (e.g. the continuous future
  ``BANKNIFTY_F1``) is taken to be an F&O contract.
* tick files carry no symbol: the file name's stem is the symbol
  (``Futures/NIFTY-I.csv`` -> ``NIFTY-I``,
  ``Options/BANKNIFTY22112429000PE.csv`` -> ``BANKNIFTY22112429000PE``).

Both go through :func:`instrument_key`.

:func:`classify` goes the other way: from an instrument key to what it names (index, future,
option with underlying, expiry, strike and side, equity), from the name alone, so recorded,
simulated and live keys are classified the same way without the Upstox instruments master.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from pathlib import Path

#: Upstox keys of the index symbols used in recorded bar files.
INDEX_KEYS: dict[str, str] = {
    "NIFTY": "NSE_INDEX|Nifty 50",
    "BANKNIFTY": "NSE_INDEX|Nifty Bank",
}

#: Segment prefix given to every symbol that is not in :data:`INDEX_KEYS`.
FO_SEGMENT = "NSE_FO"


def instrument_key(symbol: str) -> str:
    """Upstox instrument key of a recorded-data symbol.

    ``"NIFTY"`` -> ``"NSE_INDEX|Nifty 50"``, ``"BANKNIFTY"`` -> ``"NSE_INDEX|Nifty Bank"``,
    any other symbol ``S`` -> ``"NSE_FO|S"`` (``"BANKNIFTY_F1"`` -> ``"NSE_FO|BANKNIFTY_F1"``,
    ``"NIFTY-I"`` -> ``"NSE_FO|NIFTY-I"``). Raises ``ValueError`` for an empty symbol.
    """
    symbol = symbol.strip()
    if not symbol:
        raise ValueError("empty instrument symbol")
    return INDEX_KEYS.get(symbol, f"{FO_SEGMENT}|{symbol}")


def tick_file_key(path: str | Path) -> str:
    """Instrument key of a tick file, from its name: ``Futures/NIFTY-I.csv`` -> ``"NSE_FO|NIFTY-I"``."""
    return instrument_key(Path(path).stem)


# --- classification ---------------------------------------------------------------------------

#: Underlying symbol of each index key (the indices whose options NSE lists).
INDEX_UNDERLYING: dict[str, str] = {
    "NSE_INDEX|Nifty 50": "NIFTY",
    "NSE_INDEX|Nifty Bank": "BANKNIFTY",
    "NSE_INDEX|Nifty Fin Service": "FINNIFTY",
    "NSE_INDEX|NIFTY MID SELECT": "MIDCPNIFTY",
    "NSE_INDEX|Nifty Next 50": "NIFTYNXT50",
}

_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_WEEKLY_MONTH = {**{str(i): i for i in range(1, 10)}, "O": 10, "N": 11, "D": 12}
_STRIKE = r"(\d+(?:\.\d+)?)"
# After the underlying: exact expiry yymmdd (canonical names and NSE tick files), NSE's weekly
# yy + month code (1-9, O, N, D) + dd, or NSE's monthly yy + MON (the month's last expiry).
_OPTION_FORMS = (
    ("exact", re.compile(rf"(\d\d)(\d\d)(\d\d){_STRIKE}(CE|PE)")),
    ("weekly", re.compile(rf"(\d\d)([1-9OND])(\d\d){_STRIKE}(CE|PE)")),
    ("monthly", re.compile(rf"(\d\d)({'|'.join(_MONTHS)}){_STRIKE}(CE|PE)")),
)
# Futures: NSE tick files' continuous names (NIFTY-I, -II, -III), the 1-minute vendor's
# (BANKNIFTY_F1) and the canonical yyMONFUT.
_FUTURE_RE = re.compile(rf"([A-Z][A-Z0-9&]*?)(?:-(I|II|III)|_F(\d)|(\d\d)({'|'.join(_MONTHS)})FUT)")


@dataclasses.dataclass(frozen=True, slots=True)
class InstrumentInfo:
    """What an instrument key names, as far as the name tells.

    ``kind``: ``"index"``, ``"future"``, ``"option"``, ``"equity"`` or ``"other"`` (e.g. an
    Upstox numeric key ``NSE_FO|43885``, which only the instruments master can resolve).
    ``underlying``: the F&O underlying symbol (``"NIFTY"``) for indices, futures and options,
    else ``""``. Options only: ``expiry`` (IST date; None for NSE's monthly form, which names
    only the month: see ``expiry_month``), ``expiry_month`` (``"2022-11"``), ``strike``
    (rupees), ``right`` (``"CE"`` or ``"PE"``). ``label``: a short display name
    (``"NIFTY 24 Nov 22 18300 CE"``).
    """

    instrument_key: str
    kind: str
    underlying: str = ""
    expiry: dt.date | None = None
    expiry_month: str = ""
    strike: float | None = None
    right: str = ""
    label: str = ""

    def as_json(self) -> dict:
        """JSON-ready dict (``expiry`` as ``"YYYY-MM-DD"`` or None)."""
        d = dataclasses.asdict(self)
        d["expiry"] = self.expiry.isoformat() if self.expiry else None
        return d


def _strike_text(strike: float) -> str:
    return str(int(strike)) if float(strike).is_integer() else f"{strike:g}"


def _option(key: str, symbol: str) -> InstrumentInfo | None:
    # The underlying may hold digits (NIFTYNXT50): the known index underlyings are tried first
    # (longest first), then each split before a digit, shortest underlying first; each form in
    # order; the first valid date wins. A symbol that fits two forms (NIFTY22112418300CE is
    # 2022-11-24 exact, or 2022-01-12 weekly with strike 418300) is read in the exact form, the
    # one the desk's own names use.
    known = sorted((u for u in INDEX_UNDERLYING.values() if symbol.startswith(u)), key=len, reverse=True)
    splits = [len(u) for u in known] + [i for i in range(1, len(symbol)) if symbol[i].isdigit()]
    for i in splits:
        under, rest = symbol[:i], symbol[i:]
        if not (under[0].isalpha() and re.fullmatch(r"[A-Z0-9&]+", under)):
            continue
        for form, rx in _OPTION_FORMS:
            mt = rx.fullmatch(rest)
            if not mt:
                continue
            year = 2000 + int(mt[1])
            if form == "monthly":
                month, expiry = _MONTHS.index(mt[2]) + 1, None
            else:
                month = int(mt[2]) if form == "exact" else _WEEKLY_MONTH[mt[2]]
                try:
                    expiry = dt.date(year, month, int(mt[3]))
                except ValueError:
                    continue
            strike = float(mt[4] if form != "monthly" else mt[3])
            right = mt[5] if form != "monthly" else mt[4]
            when = f"{expiry.day} {_MONTHS[month - 1].title()} {expiry:%y}" if expiry \
                else f"{_MONTHS[month - 1].title()} {year % 100:02d}"
            return InstrumentInfo(key, "option", under, expiry, f"{year:04d}-{month:02d}", strike, right,
                                  f"{under} {when} {_strike_text(strike)} {right}")
    return None


def classify(key: str) -> InstrumentInfo:
    """What ``key`` (``"SEGMENT|NAME"``) names, from the name alone; see :class:`InstrumentInfo`.

    ``"NSE_INDEX|Nifty 50"`` -> index of NIFTY; ``"NSE_FO|NIFTY-I"``, ``"NSE_FO|NIFTY24DECFUT"``,
    ``"NSE_FO|BANKNIFTY_F1"`` -> futures; ``"NSE_FO|NIFTY22112418300CE"`` (exact expiry),
    ``"NSE_FO|NIFTY22N2418000CE"`` (NSE weekly), ``"NSE_FO|NIFTY22NOV18000PE"`` (NSE monthly) ->
    options; ``"NSE_EQ|RELIANCE"`` -> equity; anything else, including Upstox numeric keys, ->
    ``"other"``. Never raises on a string; ``ValueError`` for a non-string.
    """
    if not isinstance(key, str):
        raise ValueError(f"instrument key must be a string, got {key!r}")
    segment, sep, name = key.partition("|")
    if not sep:
        segment, name = "", key
    segment, symbol = segment.upper(), name.strip().upper().replace(" ", "")
    if segment.endswith("_INDEX"):
        under = INDEX_UNDERLYING.get(key, "")
        return InstrumentInfo(key, "index", under, label=name.strip())
    if segment.endswith("_EQ"):
        return InstrumentInfo(key, "equity", label=name.strip())
    if segment in ("", "NSE_FO", "BSE_FO", "MCX_FO"):
        if symbol.endswith(("CE", "PE")):
            info = _option(key, symbol)
            if info:
                return info
        mt = _FUTURE_RE.fullmatch(symbol)
        if mt:
            return InstrumentInfo(key, "future", mt[1], label=name.strip())
    return InstrumentInfo(key, "other", label=name.strip())


def is_option(key: str) -> bool:
    """True when :func:`classify` reads ``key`` as an option contract."""
    return classify(key).kind == "option"
