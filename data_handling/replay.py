"""Replay of recorded NSE data as a stream of :class:`trading_core.messages.Tick`.

Two recorded formats (see ``../shared/data/README.md``), both CSV without a header:

* **1-minute bars**, ``*.txt``: ``SYMBOL,YYYYMMDD,HH:MM,OPEN,HIGH,LOW,CLOSE,VOLUME,OI``.
  The minute labels the bar's *close*: the first regular bar of a day is ``09:16``
  (the 09:15-09:16 IST minute), the last ``15:30``. This was verified on the data:
  the minute returns of the NIFTY index bars of 2022-11-18 correlate ~0.9 with the
  NIFTY-I future's candles that *open* one minute earlier, and ~0 with those that open
  at the labelled minute (``tests/test_replay.py::test_bar_minute_labels_the_close``).
  :func:`read_bars` therefore gives each bar ``ts`` = its *open* time.
* **ticks**, ``*.csv``: ``YYYYMMDD,HH:MM:SS,PRICE,QTY,OI``, one trade print a line, the
  instrument named by the file (``Futures/NIFTY-I.csv``). One-second resolution.

Units: prices in rupees, quantities in units, ``ts`` epoch milliseconds UTC. File times
are IST (UTC+05:30, no DST); ``date`` columns are the IST trading date written in the
file. Instrument keys come from :mod:`data_handling.instruments`.

Bad input raises a one-line ``ValueError`` naming the file and line, e.g.
``2022_JUN_NIFTY.txt line 17: bad price 'abc' (OPEN)``; blank lines (or lines of only
commas) are the only lines skipped. Every recorded bar is kept, including the 09:08 pre-open bar, the post-15:30
bars and the oddities of 2021-02-24 and the Muhurat sessions: a replay replays what was
recorded.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass
import math
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import polars as pl
import pyarrow as pa

from data_handling.instruments import instrument_key, tick_file_key
from trading_core.messages import Tick, tick_frames, tick_frames_rows

IST_OFFSET_MS = (5 * 60 + 30) * 60_000
"""IST - UTC in milliseconds (India has no DST)."""
DAY_MS = 86_400_000
BAR_MS = 60_000
BAR_TICK_OFFSETS_MS = (0, 15_000, 30_000, 45_000)
"""Offsets, from a bar's open, of the 4 ticks a bar becomes (open, near extreme, far extreme, close)."""
BAR_SUFFIX = ".txt"
TICK_SUFFIX = ".csv"
SLEEP_QUANTUM_S = 0.002
"""A paced replay's batch holds the ticks due within this many seconds of the first (sent up to
this early), so the feed sends one batch per quantum rather than one per tick."""
CHUNK = 65_536
"""Rows converted to Python objects at a time while iterating."""
ROW_FRAMES_MAX = 1_024
"""A paced batch smaller than this gets its bus frames built row by row (no cost per call),
a larger one column-wise (see :func:`trading_core.messages.tick_frames_rows`)."""

BAR_COLUMNS = ("instrument_key", "ts", "open", "high", "low", "close", "volume", "oi", "date")
TICK_COLUMNS = ("instrument_key", "ts", "ltp", "ltq", "oi")
FRAME_COLUMNS = (*TICK_COLUMNS, "seq")

_BAR_FIELDS = ("SYMBOL", "YYYYMMDD", "HH:MM", "OPEN", "HIGH", "LOW", "CLOSE", "VOLUME", "OI")
_TICK_FIELDS = ("YYYYMMDD", "HH:MM:SS", "PRICE", "QTY", "OI")

# Codes of validation problems (0 = good line); _describe turns them into messages.
_E_FIELDS, _E_SYMBOL, _E_DATE, _E_TIME, _E_BAR = 1, 2, 3, 4, 5
_E_PRICE = {name: 10 + i for i, name in enumerate(("OPEN", "HIGH", "LOW", "CLOSE", "PRICE"))}
_E_VOLUME, _E_OI = 20, 21


class _Kind:
    """Parsing rules of one file format: ``noun`` for messages, field names, time regex."""

    def __init__(self, noun: str, fields: tuple[str, ...], time_regex: str) -> None:
        self.noun = noun
        self.fields = fields
        self.time_regex = time_regex


_BARS = _Kind("bars", _BAR_FIELDS, r"^\d{2}:\d{2}$")
_TICKS = _Kind("ticks", _TICK_FIELDS, r"^\d{2}:\d{2}:\d{2}$")


# --------------------------------------------------------------------------- parsing
def _as_dates(dates: Iterable[dt.date | str] | dt.date | str | None) -> list[dt.date] | None:
    """Normalise a date filter to a sorted list of ``datetime.date`` (None = no filter)."""
    if dates is None:
        return None
    if isinstance(dates, (str, dt.date)):
        dates = [dates]
    out: set[dt.date] = set()
    for d in dates:
        if isinstance(d, dt.datetime):
            out.add(d.date())
        elif isinstance(d, dt.date):
            out.add(d)
        elif isinstance(d, str):
            try:
                out.add(dt.date.fromisoformat(d.strip()))
            except ValueError:
                raise ValueError(f"bad date {d!r}: expected 'YYYY-MM-DD'") from None
        else:
            raise ValueError(f"bad date {d!r}: expected a datetime.date or 'YYYY-MM-DD'")
    return sorted(out)


def _as_keys(instruments: Iterable[str] | str | None) -> set[str] | None:
    if instruments is None:
        return None
    if isinstance(instruments, str):
        return {instruments}
    return set(instruments)


def _field_ok_price(col: pl.Expr) -> pl.Expr:
    return col.is_not_null() & col.is_finite() & (col > 0)


def _field_ok_count(col: pl.Expr) -> pl.Expr:
    return col.is_not_null() & col.is_finite() & (col >= 0) & (col == col.floor())


def _parse_lazy(files: list[Path], kind: _Kind, by_line: bool = False) -> pl.LazyFrame:
    """Lazy parse of ``files`` (all of one kind, read in this order), with validation.

    Columns: ``_path`` (String, the file of the row), ``_line`` (row number counted over
    all ``files`` from 1: the line number when there is a single file), ``_bad`` (0 for a
    good line, else an ``_E_*`` code), ``date`` (pl.Date), ``ts`` (Int64 epoch ms UTC: bar
    open / tick time), then for bars ``symbol, open, high, low, close, volume, oi`` and for
    ticks ``ltp, ltq, oi``. Blank lines (and lines of nothing but commas) are dropped.
    Rows of a file are contiguous.

    The default lets the CSV reader split fields (fast); a line with too *many* fields
    then makes ``collect`` raise a ``polars`` error that does not say where. ``by_line``
    reads whole lines and splits them itself (slower), so that such a line is reported as
    a ``_bad`` row like any other problem.
    """
    n_fields = len(kind.fields)
    names = [f"_f{i}" for i in range(n_fields)]
    common = dict(
        has_header=False,
        quote_char=None,
        include_file_paths="_path",
        row_index_name="_line",
        row_index_offset=1,
        raise_if_empty=False,
        encoding="utf8-lossy",
    )
    if by_line:
        lf = pl.scan_csv(
            [str(p) for p in files], separator="\x1f", schema={"line": pl.String}, **common
        )
        lf = lf.filter(pl.col("line").str.contains("[^,]")).select(
            "_path",
            "_line",
            _count=pl.col("line").str.count_matches(",", literal=True) + 1,
            _fields=pl.col("line").str.split_exact(",", n_fields - 1).struct.rename_fields(names),
        ).unnest("_fields")
    else:
        # Missing and empty fields read as null; a line with too few fields is then
        # reported by the field it lacks (and _describe counts the fields of the raw line).
        lf = pl.scan_csv(
            [str(p) for p in files], schema={n: pl.String for n in names}, **common
        )
        blank = pl.col(names[0]).is_null()
        for n in names[1:]:
            blank = blank & pl.col(n).is_null()
        lf = lf.filter(~blank).with_columns(
            _count=pl.lit(n_fields, pl.UInt32)
        )
    raw = [pl.col(n) for n in names]

    off = 1 if kind is _BARS else 0  # index of the date field
    d_raw, t_raw = raw[off], raw[off + 1]
    date = (
        pl.when(d_raw.str.contains(r"^\d{8}$"))
        .then(d_raw.str.to_date("%Y%m%d", strict=False))
    )
    hh = t_raw.str.slice(0, 2).cast(pl.Int64, strict=False)
    mm = t_raw.str.slice(3, 2).cast(pl.Int64, strict=False)
    ss = t_raw.str.slice(6, 2).cast(pl.Int64, strict=False) if kind is _TICKS else pl.lit(0, pl.Int64)
    lf = lf.with_columns(_hh=hh, _mm=mm, _ss=ss, _t_re=t_raw.str.contains(kind.time_regex))
    t_ok = (pl.col("_t_re") & (pl.col("_hh") < 24) & (pl.col("_mm") < 60) & (pl.col("_ss") < 60)).fill_null(False)
    tod_ms = (pl.col("_hh") * 3600 + pl.col("_mm") * 60 + pl.col("_ss")) * 1000
    ts = pl.col("date").cast(pl.Int64) * DAY_MS + pl.col("_tod") - IST_OFFSET_MS
    if kind is _BARS:
        ts = ts - BAR_MS  # the file's minute labels the bar's close

    f64 = [r.cast(pl.Float64, strict=False) for r in raw]
    if kind is _BARS:
        cols = {
            "symbol": raw[0],
            "open": f64[3],
            "high": f64[4],
            "low": f64[5],
            "close": f64[6],
            "_vol": f64[7],
            "oi": f64[8],
        }
    else:
        cols = {"ltp": f64[2], "_vol": f64[3], "oi": f64[4]}
    lf = lf.select("_path", "_line", "_count", date=date, _t_ok=t_ok, _tod=tod_ms, **cols)

    c = pl.col
    bad = pl.when(c("_count") != n_fields).then(_E_FIELDS)
    if kind is _BARS:
        bad = bad.when(c("symbol").is_null() | (c("symbol").str.strip_chars() == "")).then(_E_SYMBOL)
    bad = bad.when(c("date").is_null()).then(_E_DATE).when(~c("_t_ok")).then(_E_TIME)
    if kind is _BARS:
        for name in ("OPEN", "HIGH", "LOW", "CLOSE"):
            bad = bad.when(~_field_ok_price(c(name.lower()))).then(_E_PRICE[name])
    else:
        bad = bad.when(~_field_ok_price(c("ltp"))).then(_E_PRICE["PRICE"])
    bad = bad.when(~_field_ok_count(c("_vol"))).then(_E_VOLUME)
    bad = bad.when(~(c("oi").is_not_null() & c("oi").is_finite() & (c("oi") >= 0))).then(_E_OI)
    if kind is _BARS:
        inconsistent = (c("low") > pl.min_horizontal("open", "close")) | (
            c("high") < pl.max_horizontal("open", "close")
        )
        bad = bad.when(inconsistent).then(_E_BAR)
    bad = bad.otherwise(0).cast(pl.Int8)

    vol_name = "volume" if kind is _BARS else "ltq"
    lf = lf.with_columns(_bad=bad).with_columns(
        ts=pl.when(c("_bad") == 0).then(ts.cast(pl.Int64)),
        **{vol_name: pl.when(c("_bad") == 0).then(c("_vol")).cast(pl.Int64)},
    )
    if kind is _BARS:
        order = ["_path", "_line", "_bad", "date", "symbol", "ts", "open", "high", "low", "close", "volume", "oi"]
    else:
        order = ["_path", "_line", "_bad", "date", "ts", "ltp", "ltq", "oi"]
    return lf.select(order)


def _raw_line(path: Path, line_no: int) -> str:
    """Text of line ``line_no`` (1-based) of ``path``, without its line ending."""
    with open(path, "rb") as fh:
        for raw in itertools.islice(fh, line_no - 1, line_no):
            return raw.rstrip(b"\r\n").decode("utf-8", errors="replace")
    return ""


def _describe(kind: _Kind, code: int, line: str) -> str:
    """Human description of validation problem ``code`` on ``line``."""
    fields = line.split(",")
    n = len(kind.fields)
    if code == _E_FIELDS:
        shown = line if len(line) <= 80 else line[:77] + "..."
        return f"expected {n} comma-separated fields ({','.join(kind.fields)}), found {len(fields)}: {shown!r}"
    off = 1 if kind is _BARS else 0
    if code == _E_SYMBOL:
        return f"bad symbol {fields[0]!r}"
    if code == _E_DATE:
        return f"bad date {fields[off]!r} (expected YYYYMMDD)"
    if code == _E_TIME:
        return f"bad time {fields[off + 1]!r} (expected {kind.fields[off + 1]})"
    for name, c in _E_PRICE.items():
        if code == c:
            i = kind.fields.index(name)
            return f"bad price {fields[i]!r} ({name})"
    if code == _E_VOLUME:
        name = "VOLUME" if kind is _BARS else "QTY"
        i = kind.fields.index(name)
        label = "volume" if kind is _BARS else "quantity"
        return f"bad {label} {fields[i]!r} (expected a whole number >= 0)"
    if code == _E_OI:
        return f"bad oi {fields[n - 1]!r} (expected a number >= 0)"
    if code == _E_BAR:
        o, h, l, c = fields[3:7]
        return f"bad bar: low {l} and high {h} do not enclose open {o} and close {c}"
    return f"bad line (code {code})"  # pragma: no cover - every code is described above


def _load(
    files: list[Path],
    kind: _Kind,
    names: list[str],
    dates: list[dt.date] | None,
) -> pl.DataFrame:
    """Parse and validate ``files``; keep only rows of ``dates``; raise on the first bad line.

    Every line is validated, whatever ``dates``; the date filter is applied before the rows
    are materialised. Returns a frame of ``_file`` (UInt32 index into ``files``), ``date``,
    ``_key`` (instrument code; bars: from SYMBOL; ticks: from the file name), ``ts`` and the
    value columns, rows in (file, line) order, and the list of instrument keys that
    ``_key`` (UInt32) indexes.
    """
    index = {str(p): i for i, p in enumerate(files)}

    def parse(by_line: bool) -> pl.DataFrame:
        lf = _parse_lazy(files, kind, by_line)
        if dates is not None:
            lf = lf.filter((pl.col("_bad") != 0) | pl.col("date").is_in(dates))
        return lf.collect()

    try:
        df = parse(by_line=False)
    except pl.exceptions.PolarsError as exc:  # e.g. a line with too many fields
        df = parse(by_line=True)
        if not df.filter(pl.col("_bad") != 0).height:
            where = names[0] if len(names) == 1 else f"{len(names)} {kind.noun} files"
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"{where}: cannot read: {detail}") from exc
    bad = df.filter(pl.col("_bad") != 0)
    if bad.height:
        f = index[bad.item(0, "_path")]
        # Row numbers count across files: re-read the one file for its line number.
        first = _parse_lazy([files[f]], kind, by_line=True).filter(pl.col("_bad") != 0)
        first = first.head(1).collect()
        line_no, code = first.item(0, "_line"), first.item(0, "_bad")
        text = _raw_line(files[f], line_no)
        raise ValueError(f"{names[f]} line {line_no}: {_describe(kind, code, text)}")
    # A file's rows are contiguous: number the runs of equal paths, map runs to files.
    paths = df.get_column("_path")
    run = paths.rle_id()
    run_files = [index[p] for p in paths.rle().struct.field("value").to_list()]
    df = df.drop("_bad", "_path", "_line").with_columns(
        _file=pl.Series(run_files, dtype=pl.UInt32).gather(run)
    )
    codes: dict[str, int] = {}  # instrument key -> code, in order of first appearance
    if kind is _BARS:
        symbols = df.get_column("symbol").unique(maintain_order=True).to_list()
        mapping = {s: codes.setdefault(instrument_key(s), len(codes)) for s in symbols}
        key = pl.col("symbol").replace_strict(mapping, return_dtype=pl.UInt32)
        if not mapping:  # no rows; replace_strict({}) would keep the String dtype
            key = pl.lit(None, dtype=pl.UInt32)
        df = df.with_columns(_key=key).drop("symbol")
    else:
        run_codes = [codes.setdefault(tick_file_key(files[f]), len(codes)) for f in run_files]
        df = df.with_columns(_key=pl.Series(run_codes, dtype=pl.UInt32).gather(run))
    return df, list(codes)


def _with_keys(df: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Replace the ``_key`` codes of ``df`` by an ``instrument_key`` String column."""
    return df.with_columns(
        instrument_key=pl.Series(keys, dtype=pl.String).gather(df.get_column("_key"))
    ).drop("_key")


def _missing_dates_error(noun: str, missing: list[dt.date], where: str) -> ValueError:
    listed = ", ".join(d.isoformat() for d in missing[:5]) + (" ..." if len(missing) > 5 else "")
    return ValueError(f"no {noun} for {listed} in {where}")


def read_bars(path: str | Path, dates: Iterable[dt.date | str] | None = None) -> pl.DataFrame:
    """Read one 1-minute bar file ``SYMBOL,YYYYMMDD,HH:MM,O,H,L,C,VOLUME,OI`` (no header).

    Returns one row per bar, in file order, columns: ``instrument_key`` (String, see
    :func:`data_handling.instruments.instrument_key`), ``ts`` (Int64, the bar's *open* time
    in epoch ms UTC: the file's minute labels the close, so ``20220601,09:16`` -> 09:15 IST
    -> ``1654055100000``), ``open, high, low, close`` (Float64, rupees), ``volume`` (Int64,
    units), ``oi`` (Float64, units), ``date`` (pl.Date, the IST trading date in the file).
    Every bar is kept (pre-open 09:08, post-15:30, Muhurat...).

    ``dates``: optional IST trading dates (``datetime.date`` or ``"YYYY-MM-DD"``) to keep.

    Raises ``FileNotFoundError`` if ``path`` is missing, ``ValueError`` naming file and line
    for a malformed line (wrong field count, bad date/time/price/volume/OI, or a low/high
    that does not enclose open/close), and ``ValueError`` if the file holds no bars or a
    requested date has none.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"bar file not found: {path}")
    want = _as_dates(dates)
    df, keys = _load([path], _BARS, [path.name], want)
    _check_dates(df, want, "bars", path.name)
    return _with_keys(df, keys).select(BAR_COLUMNS)


def read_ticks(path: str | Path, dates: Iterable[dt.date | str] | None = None) -> pl.DataFrame:
    """Read one tick file ``YYYYMMDD,HH:MM:SS,PRICE,QTY,OI`` (no header).

    The instrument is the file's name (``Futures/NIFTY-I.csv`` -> ``NSE_FO|NIFTY-I``).
    Returns one row per print, in file order (several prints share a second), columns:
    ``instrument_key`` (String), ``ts`` (Int64 epoch ms UTC, second resolution), ``ltp``
    (Float64 rupees), ``ltq`` (Int64 units), ``oi`` (Float64 units), ``date`` (pl.Date, the
    IST trading date in the file).

    ``dates`` and errors as in :func:`read_bars` ("no ticks for ...").
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tick file not found: {path}")
    want = _as_dates(dates)
    df, keys = _load([path], _TICKS, [path.name], want)
    _check_dates(df, want, "ticks", path.name)
    return _with_keys(df, keys).select(*TICK_COLUMNS, "date")


def _check_dates(df: pl.DataFrame, want: list[dt.date] | None, noun: str, where: str) -> None:
    if df.height == 0 and want is None:
        raise ValueError(f"no {noun} in {where}")
    if want is not None:
        have = set(df.get_column("date").unique().to_list())
        missing = [d for d in want if d not in have]
        if missing:
            raise _missing_dates_error(noun, missing, where)


_BAR_INPUT = ("instrument_key", "ts", "open", "high", "low", "close", "volume", "oi")


def _expand_bars(bars: pl.DataFrame, keep: tuple[str, ...]) -> pl.DataFrame:
    """4 ticks per bar (see :func:`bars_to_ticks`): columns ``keep`` + ts, ltp, ltq, oi."""
    o, h, l, c = (pl.col(n) for n in ("open", "high", "low", "close"))
    ts, v = pl.col("ts"), pl.col("volume").cast(pl.Int64)
    high_first = (o - h).abs() <= (o - l).abs()
    near = pl.when(high_first).then(h).otherwise(l)
    far = pl.when(high_first).then(l).otherwise(h)
    q = v // 4
    a, b, cc, d = BAR_TICK_OFFSETS_MS
    return bars.select(
        *keep,
        ts=pl.concat_list(ts + a, ts + b, ts + cc, ts + d).cast(pl.List(pl.Int64)),
        ltp=pl.concat_list(o, near, far, c).cast(pl.List(pl.Float64)),
        ltq=pl.concat_list(q, q, q, v - 3 * q),
        oi=pl.col("oi").cast(pl.Float64),
    ).explode(["ts", "ltp", "ltq"])


def bars_to_ticks(bars: pl.DataFrame) -> pl.DataFrame:
    """Expand 1-minute bars into 4 synthetic ticks each, vectorised.

    ``bars``: a frame with at least ``instrument_key, ts, open, high, low, close, volume,
    oi`` as returned by :func:`read_bars` (``ts`` = bar open, epoch ms UTC).

    Each bar becomes, in this order: ``open`` at ``ts + 0 s``; the extreme nearer to the
    open (high if ``|open-high| <= |open-low|``, else low) at ``+15 s``; the other extreme
    at ``+30 s``; ``close`` at ``+45 s``. All four lie inside the bar's minute, so a
    1-minute candle built from them reproduces the bar's OHLC exactly. ``volume`` is split
    ``v//4, v//4, v//4, v - 3*(v//4)`` (sums exactly to ``v``); ``oi`` is the bar's OI on
    all four.

    Returns ``instrument_key`` (String), ``ts`` (Int64), ``ltp`` (Float64), ``ltq`` (Int64),
    ``oi`` (Float64); ``4 * len(bars)`` rows in bar order. Raises ``ValueError`` if a
    column is missing or holds nulls.
    """
    missing = [c for c in _BAR_INPUT if c not in bars.columns]
    if missing:
        raise ValueError(f"bars_to_ticks: missing column(s) {missing}")
    nulls = [c for c in _BAR_INPUT if bars.get_column(c).null_count()]
    if nulls:
        raise ValueError(f"bars_to_ticks: null values in column(s) {nulls}")
    return _expand_bars(bars, keep=("instrument_key",)).select(TICK_COLUMNS)


# --------------------------------------------------------------------------- replay
def _data_files(path: Path) -> list[Path]:
    """Data files of ``path``: itself, or every ``*.txt``/``*.csv`` below it, sorted by path."""
    if not path.exists():
        raise FileNotFoundError(f"replay path not found: {path}")
    if path.is_file():
        if path.suffix.lower() not in (BAR_SUFFIX, TICK_SUFFIX):
            raise ValueError(f"{path.name}: not a replay file (expected *.txt bars or *.csv ticks)")
        return [path]
    files = sorted(
        p
        for p in path.rglob("*")
        if p.suffix.lower() in (BAR_SUFFIX, TICK_SUFFIX)
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise FileNotFoundError(f"no *.txt bar files or *.csv tick files under {path}")
    return files


class ReplaySource:
    """Recorded data replayed as :class:`~trading_core.messages.Tick` messages in time order.

    ``path``: a 1-minute bar file (``*.txt``), a tick file (``*.csv``), or a folder whose
    ``*.txt``/``*.csv`` files (recursively, hidden ones excepted) are merged. Bars become 4
    ticks each (:func:`bars_to_ticks`). The merge is a stable sort by ``ts``: ticks sharing
    a timestamp keep file order, and files their sorted path order.

    ``speed``: 0 = as fast as possible (never sleeps); ``X > 0`` = X times real time.
    ``rate``: 0, or a constant pace in ticks per second whatever the market times say
    (overrides ``speed``; for load tests and benchmarks). ``limit``: None, or replay only the
    first ``limit`` ticks of the merged stream.
    ``dates``: None, or IST trading dates (``datetime.date`` / ``"YYYY-MM-DD"``) to keep.
    ``instruments``: None, or the instrument keys to keep (tick files of other instruments
    are not even read). ``max_gap_ms``: a market-time gap longer than this (overnight,
    holidays, the 2021-02-24 outage) is not waited for. ``sleep``: the sleep function
    (injectable for tests).

    Everything is loaded and validated in the constructor, which raises
    ``FileNotFoundError`` for a missing path or a folder without data files, and
    ``ValueError`` (one line, naming file and line) for a malformed line, a requested
    date or instrument without data, or a bad argument.

    Attributes: ``trading_dates`` (sorted ``datetime.date`` list), ``instrument_keys``
    (sorted list of keys replayed).
    """

    def __init__(
        self,
        path: str | Path,
        speed: float = 0.0,
        dates: Iterable[dt.date | str] | None = None,
        instruments: Iterable[str] | None = None,
        max_gap_ms: int = 15 * 60_000,
        sleep: Callable[[float], object] = time.sleep,
        rate: float = 0.0,
        limit: int | None = None,
    ) -> None:
        if not (isinstance(speed, (int, float)) and math.isfinite(speed) and speed >= 0):
            raise ValueError(f"speed must be a finite number >= 0, got {speed!r}")
        if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate >= 0):
            raise ValueError(f"rate must be a finite number of ticks per second >= 0, got {rate!r}")
        if limit is not None and not (isinstance(limit, int) and limit > 0):
            raise ValueError(f"limit must be a positive number of ticks, got {limit!r}")
        if max_gap_ms < 0:
            raise ValueError(f"max_gap_ms must be >= 0, got {max_gap_ms!r}")
        self.path = Path(path)
        self.speed = float(speed)
        self.rate = float(rate)
        self.max_gap_ms = int(max_gap_ms)
        self._sleep = sleep
        want_dates = _as_dates(dates)
        want_keys = _as_keys(instruments)

        files = _data_files(self.path)
        if self.path.is_dir():
            names = [p.relative_to(self.path).as_posix() for p in files]
            where = str(self.path)
        else:
            names = [self.path.name]
            where = self.path.name
        bar_ix = [i for i, p in enumerate(files) if p.suffix.lower() == BAR_SUFFIX]
        tick_ix = [i for i, p in enumerate(files) if p.suffix.lower() == TICK_SUFFIX]
        if want_keys is not None:  # a tick file holds one instrument, known from its name
            tick_ix = [i for i in tick_ix if tick_file_key(files[i]) in want_keys]
        noun = "bars" if not tick_ix else "ticks" if not bar_ix else "data"

        parts: list[pl.DataFrame] = []  # each with _file (global index) and _key codes
        self._keys: list[str] = []  # instrument key of each _key code
        for ix, kind in ((bar_ix, _BARS), (tick_ix, _TICKS)):
            if not ix:
                continue
            part, keys = _load([files[i] for i in ix], kind, [names[i] for i in ix], want_dates)
            part = part.with_columns(
                _file=pl.Series(ix, dtype=pl.UInt32).gather(part.get_column("_file")),
                _key=pl.col("_key") + len(self._keys),
            )
            if want_keys is not None and kind is _BARS:
                wanted = [len(self._keys) + i for i, k in enumerate(keys) if k in want_keys]
                part = part.filter(pl.col("_key").is_in(wanted))
            self._keys.extend(keys)
            parts.append(part)

        present_dates: set[dt.date] = set()
        present_keys: set[str] = set()
        for part in parts:
            present_dates.update(part.get_column("date").unique().to_list())
            present_keys.update(self._keys[k] for k in part.get_column("_key").unique().to_list())
        if want_keys is not None:
            absent = sorted(want_keys - present_keys)
            if absent:
                raise ValueError(f"no {noun} for instrument(s) {', '.join(absent)} in {where}")
        if want_dates is not None:
            missing = [d for d in want_dates if d not in present_dates]
            if missing:
                raise _missing_dates_error(noun, missing, where)
        if not present_keys:
            raise ValueError(f"no {noun} in {where}")
        self.trading_dates: list[dt.date] = sorted(present_dates)
        self.instrument_keys: list[str] = sorted(present_keys)

        frames = []
        for part in parts:
            if "open" in part.columns:
                frames.append(_expand_bars(part, keep=("_file", "_key")))
            else:
                frames.append(part.select("_file", "_key", "ts", "ltp", "ltq", "oi"))
        df = pl.concat(frames, how="vertical") if len(frames) > 1 else frames[0]
        # Rows are in (file, line) order within each kind; with both kinds the file index
        # restores global path order for ticks sharing a timestamp.
        sort_by = ["ts", "_file"] if len(frames) > 1 else ["ts"]
        df = df.sort(sort_by, maintain_order=True).drop("_file")
        if limit is not None:
            df = df.head(limit)
        df = df.rechunk()
        self._codes = df.get_column("_key").to_numpy()
        self._df = _with_keys(df, self._keys).with_columns(
            seq=pl.int_range(pl.len(), dtype=pl.Int64)
        ).select(FRAME_COLUMNS)
        self._ts = self._df.get_column("ts").to_numpy()
        self._ltp = self._df.get_column("ltp").to_numpy()
        self._ltq = self._df.get_column("ltq").to_numpy()
        self._oi = self._df.get_column("oi").to_numpy()
        self._key_array = pa.array(self._keys, pa.string())

    def frame(self) -> pl.DataFrame:
        """All ticks to replay, in replay order: ``instrument_key`` (String), ``ts`` (Int64
        epoch ms UTC), ``ltp`` (Float64), ``ltq`` (Int64), ``oi`` (Float64), ``seq`` (Int64,
        0..n-1). The frame is shared, not copied: do not mutate it."""
        return self._df

    def __len__(self) -> int:
        """Number of ticks to replay."""
        return self._df.height

    def ticks(self, start_seq: int = 0) -> Iterator[Tick]:
        """Iterate the ticks from ``seq == start_seq`` on (to resume a restarted ingestor).

        Yields :class:`Tick` with ``source="replay"`` and ``seq`` set, paced as
        :meth:`batches` paces them. Raises ``ValueError`` if ``start_seq`` is not in
        ``0..len(self)``.
        """
        batches = self.batches(start_seq, frames=False)
        return (tick for batch in batches for tick in batch.ticks())

    def batches(self, start_seq: int = 0, rows: int = CHUNK, frames: bool = True) -> Iterator["TickBatch"]:
        """Iterate the ticks from ``seq == start_seq`` on as :class:`TickBatch` runs of
        consecutive ticks, each with its bus frames (``frames=True``): built column-wise
        (:func:`trading_core.messages.tick_frames`), or row by row for a paced batch of fewer
        than :data:`ROW_FRAMES_MAX` ticks (:func:`trading_core.messages.tick_frames_rows`).

        ``speed == 0`` and ``rate == 0``: batches of ``rows`` ticks, never sleeping. Otherwise
        each tick has a due time after the first (``rate``: ``i / rate`` seconds; ``speed``:
        the market-time gap since the previous tick ``/ speed``, gaps over ``max_gap_ms``
        counting as 0); when its next tick is not yet due the iterator sleeps until it is,
        then yields that tick with every tick due within :data:`SLEEP_QUANTUM_S` after it
        (one batch per quantum at a steady rate, each tick at most a quantum early). The
        schedule is kept on ``time.monotonic`` (or, with an injected fake sleep, on the sum
        of the sleeps asked for), so a slow consumer catches up rather than drifting.
        Raises ``ValueError`` if ``start_seq`` is not in ``0..len(self)``.
        """
        n = len(self)
        if not (isinstance(start_seq, (int, np.integer)) and 0 <= start_seq <= n):
            raise ValueError(f"start_seq must be in 0..{n}, got {start_seq!r}")
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows!r}")
        return self._batches(int(start_seq), rows, frames)

    def _batches(self, start: int, rows: int, frames: bool) -> Iterator["TickBatch"]:
        n = len(self)
        due = self._due_s(start)
        if due is None:
            for lo in range(start, n, rows):
                yield self._batch(lo, min(lo + rows, n), frames)
            return
        sleep, clock = self._sleep, time.monotonic
        t0 = clock()
        slept = 0.0              # total seconds asked of sleep(); a fake sleep advances no clock
        chunk = min(rows, 4_096)  # a paced replay builds frames a little ahead, never far
        for lo in range(start, n, chunk):
            hi = min(lo + chunk, n)
            batch = self._batch(lo, hi, frames=False)
            d = due[lo - start:hi - start]
            j = 0
            while j < len(d):
                ahead = d[j] - max(clock() - t0, slept)
                if ahead > 0:           # nothing due yet: wait for it, never spin on tiny batches
                    sleep(ahead)
                    slept += ahead
                now = max(clock() - t0, slept)
                k = max(int(np.searchsorted(d, now + SLEEP_QUANTUM_S, side="right")), j + 1)
                part = batch if (j, k) == (0, len(d)) else batch.slice(j, k)
                if frames:              # built per batch: a whole chunk's at once would hold the feed ~5 ms
                    part.frames = (tick_frames_rows(part.keys, part.ts, part.ltp, part.ltq, part.oi,
                                                    part.first_seq, "replay")
                                   if len(part) < ROW_FRAMES_MAX else tick_frames(part.table, "replay"))
                yield part
                j = k

    def _due_s(self, start: int) -> np.ndarray | None:
        """Seconds after the first replayed tick at which each tick from ``start`` is due;
        None when the replay is not paced."""
        count = len(self) - start
        if self.rate > 0:
            return np.arange(count, dtype=np.float64) / self.rate
        if self.speed > 0:
            gaps = np.diff(self._ts[start:], prepend=self._ts[start] if count else 0)
            gaps = np.where((gaps > 0) & (gaps <= self.max_gap_ms), gaps, 0)
            return np.cumsum(gaps, dtype=np.float64) / (self.speed * 1000.0)
        return None

    def _batch(self, lo: int, hi: int, frames: bool) -> "TickBatch":
        part = self._df.slice(lo, hi - lo)
        return TickBatch(
            first_seq=lo,
            keys=[self._keys[c] for c in self._codes[lo:hi].tolist()],
            ts=self._ts[lo:hi].tolist(),
            ltp=self._ltp[lo:hi].tolist(),
            ltq=self._ltq[lo:hi].tolist(),
            oi=self._oi[lo:hi].tolist(),
            frames=tick_frames(part, "replay") if frames else None,
            table=part,
            rows=pa.table([self._key_array.take(self._codes[lo:hi]), self._ts[lo:hi], self._ltp[lo:hi],
                           self._ltq[lo:hi], self._oi[lo:hi], np.arange(lo, hi, dtype=np.int64)],
                          names=list(FRAME_COLUMNS)),
        )


@dataclass(slots=True)
class TickBatch:
    """A run of consecutive replayed ticks held as columns: ``keys`` (instrument_key),
    ``ts`` (epoch ms UTC), ``ltp`` (rupees), ``ltq`` (units), ``oi`` (units), equal-length
    lists; the ticks' ``seq`` run from ``first_seq``. ``frames``: their bus frames
    (``topic\\0json``, one per tick) or None. ``table``: the same rows as a polars frame with
    :data:`FRAME_COLUMNS`, for the column-wise candles and profiles of a big batch; ``rows``:
    them again as a ``pyarrow.Table`` (instrument_key string, ts/ltq/seq int64, ltp/oi double),
    for writing to DuckDB (:meth:`trading_core.persistence.TickBatcher.add_tick_table`) without
    a Python object per tick or polars' cost per call (its numeric columns share the source's arrays)."""

    first_seq: int
    keys: list[str]
    ts: list[int]
    ltp: list[float]
    ltq: list[int]
    oi: list[float]
    frames: list[bytes] | None
    table: pl.DataFrame
    rows: pa.Table

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def last_seq(self) -> int:
        """``seq`` of the batch's last tick."""
        return self.first_seq + len(self.ts) - 1

    def ticks(self) -> Iterator[Tick]:
        """The batch as :class:`Tick` messages (``source="replay"``)."""
        seq = self.first_seq
        for key, ts, ltp, ltq, oi in zip(self.keys, self.ts, self.ltp, self.ltq, self.oi):
            yield Tick(instrument_key=key, ts=ts, ltp=ltp, ltq=ltq, oi=oi, seq=seq, source="replay")
            seq += 1

    def slice(self, lo: int, hi: int) -> "TickBatch":
        """Rows ``lo:hi`` of the batch (the table slice shares memory with the batch's)."""
        return TickBatch(self.first_seq + lo, self.keys[lo:hi], self.ts[lo:hi], self.ltp[lo:hi],
                         self.ltq[lo:hi], self.oi[lo:hi],
                         self.frames[lo:hi] if self.frames is not None else None,
                         self.table.slice(lo, hi - lo), self.rows.slice(lo, hi - lo))
