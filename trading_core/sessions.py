"""Trading-session calendar: when an NSE session opens and closes, and how it is cut into TPO periods.

Pure functions and frozen values only; no I/O. Times on the wire are epoch milliseconds UTC
(int); the exchange runs on IST (Asia/Kolkata, UTC+05:30, no DST), so a session's *date* is the IST
calendar date and its bounds are IST minutes after midnight.

Sources
-------
- Regular NSE equity-derivatives session 09:15-15:30 IST (pre-open call auction 09:00-09:08 in
  the cash market, which is the ``09:08`` bar of the index data).
- TPO periods of 30 minutes lettered from the open (A, B, C...): CBOT, *Market Profile Handbook*;
  Dalton, *Mind Over Markets*. The last period of a regular day is the short
  ``M`` = 15:15-15:30.
- Special sessions shipped in :data:`NSE_SPECIAL_SESSIONS` (each from NSE's announcements of
  the day; override or extend them in config):
  * 2021-02-24: NSE's outage. Trading was halted in the late morning (the index feed in the
    recorded data already stops after 10:07) and resumed at 15:45 after a call auction,
    with the session extended to 17:00.
  * 2021-11-04 and 2022-10-24: Diwali *Muhurat* trading, 18:15-19:15 (pre-open 18:00-18:08).

Days the calendar does not know can still be recognised from the data: see
:func:`infer_sessions`, which turns a day whose prints all lie outside the configured hours into an
``"inferred"`` session instead of silently dropping it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from typing import Iterable, Mapping

import numpy as np

IST_OFFSET_MS = 19_800_000          # +05:30
DAY_MS = 86_400_000
MINUTE_MS = 60_000
_EPOCH = _dt.date(1970, 1, 1)

# Session kinds. "regular" and "extended" are real trading days (they serve as the prior session
# of the next day and get a day type); the others are "not a regular session".
REGULAR = "regular"
EXTENDED = "extended"
MUHURAT = "muhurat"
INFERRED = "inferred"
HOLIDAY = "holiday"
TRADING_DAY_KINDS = frozenset({REGULAR, EXTENDED})

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def ist_day(ts_ms: int) -> int:
    """Days since 1970-01-01 of the IST calendar date of ``ts_ms`` (epoch ms UTC)."""
    return (ts_ms + IST_OFFSET_MS) // DAY_MS


def day_to_date(day: int) -> _dt.date:
    """The ``datetime.date`` of an IST day number (see :func:`ist_day`)."""
    return _EPOCH + _dt.timedelta(days=int(day))


def date_to_day(date: _dt.date | str) -> int:
    """IST day number of a date (``datetime.date`` or ISO ``"YYYY-MM-DD"``)."""
    if isinstance(date, str):
        date = _dt.date.fromisoformat(date)
    return (date - _EPOCH).days


def ist_ms(date: _dt.date | str, hhmm: str | int, seconds: int = 0) -> int:
    """Epoch ms UTC of an IST wall time: ``ist_ms("2022-06-01", "09:15")``; ``hhmm`` may also be
    minutes after midnight (int)."""
    minute = hhmm if isinstance(hhmm, int) else parse_hhmm(hhmm)
    return date_to_day(date) * DAY_MS - IST_OFFSET_MS + minute * MINUTE_MS + seconds * 1000


def parse_hhmm(text: str) -> int:
    """Minutes after midnight of ``"HH:MM"``. Raises ``ValueError`` on anything else."""
    hh, sep, mm = text.partition(":")
    if not sep or not hh.isdigit() or not mm.isdigit() or not (0 <= int(hh) < 24 and 0 <= int(mm) < 60):
        raise ValueError(f"not an HH:MM time: {text!r}")
    return int(hh) * 60 + int(mm)


def fmt_hhmm(minute: int) -> str:
    """``"HH:MM"`` of minutes after midnight."""
    return f"{minute // 60:02d}:{minute % 60:02d}"


def fmt_ist(ts_ms: int) -> str:
    """``"YYYY-MM-DD HH:MM:SS"`` IST of an epoch-ms timestamp (for notes and logs)."""
    day = ist_day(ts_ms)
    sec = (ts_ms + IST_OFFSET_MS - day * DAY_MS) // 1000
    return f"{day_to_date(day).isoformat()} {sec // 3600:02d}:{sec // 60 % 60:02d}:{sec % 60:02d}"


def period_letter(index: int) -> str:
    """Letter of TPO period ``index`` (0 = ``A``): ``A``-``Z`` then ``a``-``z`` (CBOT's convention
    for the periods after ``Z``), then ``#<n>``."""
    if 0 <= index < len(_LETTERS):
        return _LETTERS[index]
    return f"#{index}"


@dataclasses.dataclass(frozen=True, slots=True)
class SpecialSession:
    """A configured non-standard day: IST ``open``/``close`` (``"HH:MM"``), ``kind`` (one of
    ``extended``, ``muhurat``, ``holiday``, ``inferred``), ``breaks`` (IST ``(start, end)`` pairs
    when the market was halted; prints inside are ignored) and a human ``note``."""

    open: str
    close: str
    kind: str
    breaks: tuple[tuple[str, str], ...] = ()
    note: str = ""


NSE_SPECIAL_SESSIONS: Mapping[_dt.date, SpecialSession] = {
    _dt.date(2021, 2, 24): SpecialSession(
        "09:15", "17:00", EXTENDED, breaks=(("11:40", "15:45"),),
        note="NSE outage: trading halted in the late morning (the index feed stops after 10:07), "
             "resumed 15:45 after a call auction, session extended to 17:00"),
    _dt.date(2021, 11, 4): SpecialSession(
        "18:15", "19:15", MUHURAT, note="Diwali Muhurat trading (one evening hour)"),
    _dt.date(2022, 10, 24): SpecialSession(
        "18:15", "19:15", MUHURAT, note="Diwali Muhurat trading (one evening hour)"),
}


@dataclasses.dataclass(frozen=True, slots=True)
class SessionSpec:
    """One day's session, resolved. ``open_ms``/``close_ms``: epoch ms UTC, the session is the
    half-open interval ``[open_ms, close_ms)`` (a bar belongs to it when its *open* time does).
    ``breaks``: halted intervals ``[start_ms, end_ms)`` inside it."""

    day: int
    open_ms: int
    close_ms: int
    kind: str = REGULAR
    breaks: tuple[tuple[int, int], ...] = ()
    note: str = ""

    @property
    def date(self) -> _dt.date:
        return day_to_date(self.day)

    @property
    def regular(self) -> bool:
        """True for a regular session (standard hours)."""
        return self.kind == REGULAR

    @property
    def trading_day(self) -> bool:
        """True when the day is a real trading day (regular or extended): it gets a day type and
        becomes the next day's prior session. Muhurat, inferred and holiday sessions do not."""
        return self.kind in TRADING_DAY_KINDS

    def in_break(self, ts_ms: int) -> bool:
        """True when ``ts_ms`` falls in a trading halt."""
        for start, end in self.breaks:
            if start <= ts_ms < end:
                return True
        return False

    def n_periods(self, period_ms: int) -> int:
        """Number of TPO periods in the session (the last one may be short, like ``M``)."""
        return max(0, -(-(self.close_ms - self.open_ms) // period_ms))


@dataclasses.dataclass(frozen=True)
class SessionCalendar:
    """Session hours per IST date: the regular ``open``/``close`` (IST ``"HH:MM"``) for every day,
    except the dates in ``special`` (default :data:`NSE_SPECIAL_SESSIONS`).

    Weekends are not excluded: a print on a Saturday (a special trading Saturday) gets regular
    hours. Mark known holidays as ``SpecialSession(..., kind="holiday")`` to have their prints
    reported as "not a regular session".
    """

    open: str = "09:15"
    close: str = "15:30"
    special: Mapping[_dt.date, SpecialSession] = dataclasses.field(
        default_factory=lambda: dict(NSE_SPECIAL_SESSIONS))

    def __post_init__(self) -> None:
        if parse_hhmm(self.open) >= parse_hhmm(self.close):
            raise ValueError(f"session open {self.open} is not before close {self.close}")

    def spec(self, day: int) -> SessionSpec:
        """The :class:`SessionSpec` of IST day number ``day``."""
        day = int(day)
        date = day_to_date(day)
        sp = self.special.get(date)
        base = day * DAY_MS - IST_OFFSET_MS
        if sp is None:
            return SessionSpec(day, base + parse_hhmm(self.open) * MINUTE_MS,
                               base + parse_hhmm(self.close) * MINUTE_MS)
        if sp.kind == HOLIDAY:
            return SessionSpec(day, base, base, HOLIDAY, (), sp.note or "exchange holiday")
        breaks = tuple((base + parse_hhmm(a) * MINUTE_MS, base + parse_hhmm(b) * MINUTE_MS)
                       for a, b in sp.breaks)
        return SessionSpec(day, base + parse_hhmm(sp.open) * MINUTE_MS,
                           base + parse_hhmm(sp.close) * MINUTE_MS, sp.kind, breaks, sp.note)

    @classmethod
    def from_config(cls, special: Mapping[str, Mapping | tuple] | None = None, open: str = "09:15",
                    close: str = "15:30", include_nse_defaults: bool = True) -> "SessionCalendar":
        """A calendar from plain config values, e.g. in ``config.py``::

            PROFILE_SESSIONS = {"2024-01-20": {"open": "09:15", "close": "15:30", "kind": "extended",
                                               "note": "special Saturday session"},
                                "2024-11-01": ("18:00", "19:00", "muhurat")}

        Each value is a mapping with ``open``, ``close``, ``kind`` (and optional ``breaks`` as
        ``[["HH:MM", "HH:MM"], ...]`` and ``note``) or a tuple ``(open, close, kind[, note])``.
        Entries override :data:`NSE_SPECIAL_SESSIONS` (kept when ``include_nse_defaults``).
        Raises ``ValueError`` on a malformed date, time or kind.
        """
        merged: dict[_dt.date, SpecialSession] = dict(NSE_SPECIAL_SESSIONS) if include_nse_defaults else {}
        kinds = {REGULAR, EXTENDED, MUHURAT, INFERRED, HOLIDAY}
        for date_text, value in (special or {}).items():
            if isinstance(value, Mapping):
                sp = SpecialSession(str(value["open"]), str(value["close"]), str(value["kind"]),
                                    tuple((str(a), str(b)) for a, b in value.get("breaks", ())),
                                    str(value.get("note", "")))
            else:
                sp = SpecialSession(str(value[0]), str(value[1]), str(value[2]),
                                    note=str(value[3]) if len(value) > 3 else "")
            if sp.kind not in kinds:
                raise ValueError(f"session {date_text}: unknown kind {sp.kind!r}")
            for hhmm in (sp.open, sp.close, *(t for pair in sp.breaks for t in pair)):
                parse_hhmm(hhmm)
            merged[_dt.date.fromisoformat(date_text)] = sp
        return cls(open, close, merged)

    def with_special(self, extra: Mapping[_dt.date, SpecialSession]) -> "SessionCalendar":
        """A copy with ``extra`` special sessions added (they override existing dates)."""
        merged = dict(self.special)
        merged.update(extra)
        return SessionCalendar(self.open, self.close, merged)


def infer_sessions(ts_ms: Iterable[int] | np.ndarray, calendar: SessionCalendar,
                   isolated_gap_min: int = 3, round_to_min: int = 15) -> dict[_dt.date, SpecialSession]:
    """Sessions the data shows but the calendar does not know.

    For every IST date with prints, none of them inside the calendar's hours for that date (for
    example an unlisted Muhurat evening), infer the session from the prints' minutes: drop
    isolated prints (no other print within ``isolated_gap_min`` minutes, like the pre-open
    ``18:08`` call-auction bar), take the first and last remaining minute, and round the open
    down and the close (last minute + 1) to the nearest ``round_to_min`` minutes. Returns
    ``{date: SpecialSession(kind="inferred")}``; feed it to :meth:`SessionCalendar.with_special`.
    ``ts_ms``: print (or bar-open) times, epoch ms UTC, any order.
    """
    ts = np.asarray(ts_ms, dtype=np.int64)
    out: dict[_dt.date, SpecialSession] = {}
    if ts.size == 0:
        return out
    days = (ts + IST_OFFSET_MS) // DAY_MS
    for day in np.unique(days):
        day_ts = ts[days == day]
        spec = calendar.spec(int(day))
        inside = (day_ts >= spec.open_ms) & (day_ts < spec.close_ms)
        if inside.any():
            continue
        minutes = np.unique((day_ts + IST_OFFSET_MS - int(day) * DAY_MS) // MINUTE_MS)
        if minutes.size > 1:
            gaps = np.diff(minutes)
            near_prev = np.concatenate(([False], gaps < isolated_gap_min))
            near_next = np.concatenate((gaps < isolated_gap_min, [False]))
            kept = minutes[near_prev | near_next]
            if kept.size:
                minutes = kept
        first, last = int(minutes[0]), int(minutes[-1]) + 1
        open_min = first // round_to_min * round_to_min
        close_min = max(open_min + round_to_min, (last + round_to_min // 2) // round_to_min * round_to_min)
        close_min = min(close_min, 24 * 60 - 1)
        out[day_to_date(int(day))] = SpecialSession(
            fmt_hhmm(open_min), fmt_hhmm(close_min), INFERRED,
            note=f"not a regular session: no prints in the configured hours; session "
                 f"{fmt_hhmm(open_min)}-{fmt_hhmm(close_min)} IST inferred from the data")
    return out
