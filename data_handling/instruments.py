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
"""

from __future__ import annotations

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
