"""Market Profile settings per instrument: row size, price resolution, periods and rule thresholds.

Defaults follow common practice for the Indian index derivatives: rows of 5 points for NIFTY and 10
points for BANKNIFTY; other instruments get a row size derived from their tick size and recent
range (:func:`derive_row_size`). Every threshold of the open-type and day-type rules lives here so
that a trader can tune them without touching the rules (:mod:`trading_core.profile_rules`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re

# Row size (rupees) of the instruments the platform trades. Keys are normalised instrument names
# (the part after "|" of an Upstox key, upper case); futures symbols match by prefix.
DEFAULT_ROW_SIZES = {"NIFTY 50": 5.0, "NIFTY BANK": 10.0, "NIFTY": 5.0, "BANKNIFTY": 10.0}
_DERIVATIVE = re.compile(r"^(BANKNIFTY|NIFTY)(?=$|[0-9_\-])")


@dataclasses.dataclass(frozen=True, slots=True)
class ProfileConfig:
    """Settings of one instrument's profile. Prices in rupees.

    - ``row_size``: height of a profile row; must be a whole multiple of ``tick_size``.
    - ``tick_size``: price resolution; every price is rounded to it before bucketing (0.01 for the
      NSE indices, whose values have two decimals; 0.05 for NSE futures).
    - ``period_minutes``: TPO period length (30, CBOT); ``ib_periods``: periods in the initial
      balance (2 = A and B, 09:15-10:15; Dalton).
    - ``value_area_percent``: share of TPOs (or volume) in the value area (70, CBOT/Dalton).
    - ``reference_print_qty``: leading prints of a session with exactly this quantity are taken for
      reference prices, not trades, and skipped (the NSE F&O tick files open with one or two
      ``QTY=1`` prints; no F&O lot is a single unit); ``None`` keeps them (use ``None`` for cash
      equities, where one share is a real trade). Only LTQ quantities of ticks are checked.
    - ``gap_minutes``: a pause longer than this between prints is reported as a gap.
    - ``history_sessions``: prior trading days whose median range is the typical day range (the
      Non-trend test's yardstick; needs at least 3).
    - open-type thresholds, as fractions of period A's range: ``open_near`` (the open is "at" an
      extreme), ``open_test_max`` (largest probe against the drive that is still a test),
      ``open_drive_close`` (A must close at least this far into its range in the drive direction).
    - day-type thresholds: ``extension_min`` (range extension counts from this fraction of the IB
      range), ``trend_extension`` (a trend day extends at least this many IB ranges),
      ``trend_close_zone`` (and closes in this outer fraction of the day's range),
      ``dd_min_rows``/``dd_min_share`` (double distribution: a band of at least this many
      single-print rows with at least this share of TPOs on each side), ``non_trend_fraction``
      (a day without range extension whose range is below this fraction of the typical range is
      Non-trend), ``typical_range_pct`` (typical day range, % of the open, used until three days
      of history exist).
    """

    row_size: float = 5.0
    tick_size: float = 0.01
    period_minutes: int = 30
    ib_periods: int = 2
    value_area_percent: int = 70
    reference_print_qty: int | None = 1
    gap_minutes: int = 5
    history_sessions: int = 10
    open_near: float = 0.10
    open_test_max: float = 0.35
    open_drive_close: float = 0.75
    extension_min: float = 0.10
    trend_extension: float = 1.0
    trend_close_zone: float = 0.25
    dd_min_rows: int = 3
    dd_min_share: float = 0.20
    non_trend_fraction: float = 0.5
    typical_range_pct: float = 1.0

    def __post_init__(self) -> None:
        if not (self.tick_size > 0 and self.row_size > 0):
            raise ValueError("row_size and tick_size must be positive")
        tpr = self.row_size / self.tick_size
        if abs(tpr - round(tpr)) > 1e-6:
            raise ValueError(f"row_size {self.row_size} is not a multiple of tick_size {self.tick_size}")
        if not (0 < self.value_area_percent <= 100):
            raise ValueError("value_area_percent must be in (0, 100]")
        if self.period_minutes <= 0 or self.ib_periods <= 0:
            raise ValueError("period_minutes and ib_periods must be positive")

    @property
    def ticks_per_row(self) -> int:
        """Row size in ticks."""
        return int(round(self.row_size / self.tick_size))

    @property
    def inv_tick(self) -> float:
        """``1 / tick_size``: a price is ``round(price * inv_tick)`` ticks."""
        return 1.0 / self.tick_size

    @property
    def period_ms(self) -> int:
        return self.period_minutes * 60_000

    @property
    def decimals(self) -> int:
        """Decimals needed to print a tick-aligned price."""
        return price_decimals(self.tick_size)


@functools.lru_cache(maxsize=64)
def price_decimals(tick_size: float) -> int:
    """Decimals needed to print prices on a ``tick_size`` grid (0.05 -> 2, 5 -> 0)."""
    for digits in range(10):
        if abs(round(tick_size, digits) - tick_size) < 1e-12:
            return digits
    return 10


def _name(instrument_key: str) -> str:
    return instrument_key.rpartition("|")[2].strip().upper()


def derive_row_size(tick_size: float, recent_range: float, target_rows: int = 40) -> float:
    """Row size for an instrument without a configured one: about ``recent_range / target_rows``,
    rounded up to a "nice" multiple of ``tick_size`` (1, 2, 2.5 or 5 times a power of ten ticks).

    ``recent_range``: a typical day's high-low range in rupees. Raises ``ValueError`` if either
    argument is not positive.
    """
    if tick_size <= 0 or recent_range <= 0 or target_rows <= 0:
        raise ValueError("tick_size, recent_range and target_rows must be positive")
    raw_ticks = max(1.0, recent_range / target_rows / tick_size)
    exp = 10 ** math.floor(math.log10(raw_ticks))
    for step in (1, 2, 2.5, 5, 10):
        ticks = step * exp
        if ticks >= raw_ticks - 1e-9 and abs(ticks - round(ticks)) < 1e-9:
            return round(round(ticks) * tick_size, 10)
    return round(round(10 * exp) * tick_size, 10)


def config_for(instrument_key: str, recent_range: float | None = None, **overrides) -> ProfileConfig:
    """The :class:`ProfileConfig` of an instrument: NIFTY (``NSE_INDEX|Nifty 50``, NIFTY futures)
    5-point rows, BANKNIFTY (``NSE_INDEX|Nifty Bank``, BANKNIFTY futures) 10-point rows; tick
    0.05 for ``NSE_FO|`` keys, else 0.01. Any other instrument needs ``row_size`` in
    ``overrides`` or a ``recent_range`` to derive it from; otherwise ``ValueError``.
    """
    name = _name(instrument_key)
    fields = {}
    if instrument_key.upper().startswith(("NSE_FO|", "BSE_FO|", "MCX_FO|")):
        fields["tick_size"] = 0.05
    row = DEFAULT_ROW_SIZES.get(name)
    if row is None:
        match = _DERIVATIVE.match(name)
        if match:
            row = DEFAULT_ROW_SIZES[match.group(1)]
    if row is not None:
        fields["row_size"] = row
    fields.update(overrides)
    if "row_size" not in fields:
        if recent_range is None:
            raise ValueError(f"no default row size for {instrument_key!r}: pass row_size or recent_range")
        fields["row_size"] = derive_row_size(fields.get("tick_size", 0.01), recent_range)
    return ProfileConfig(**fields)
