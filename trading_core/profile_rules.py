"""The Auction Market Theory rules, as pure functions on small integer arrays.

Both the incremental engine (:mod:`trading_core.profile`) and the batch path
(:mod:`trading_core.profile_batch`) reduce their input to the same per-period state and then call
these functions, which is what makes the two agree exactly.

Conventions: a profile is an int64 array ``counts`` over consecutive rows, index 0 = lowest row.
Prices are in integer *ticks* (``round(price / tick_size)``); a row holds the prices
``[row * ticks_per_row, (row + 1) * ticks_per_row)``.

Sources
-------
- CBOT, *Market Profile Handbook* (CBOT Market Profile, 1984/1991): TPO = a letter printed on every
  row a period traded through, from the period's low to its high inclusive; POC; value area.
- J. Dalton, E. Jones, R. Dalton, *Mind Over Markets* (1990; 2nd ed. 2013): value area by
  comparing pairs of rows above and below the POC; initial balance; range extension; tails and
  excess; poor highs/lows; single prints; open types (Open-Drive, Open-Test-Drive,
  Open-Rejection-Reverse, Open-Auction in/out of range); day types (Normal, Normal Variation,
  Trend, Double-Distribution Trend, Neutral centre/extreme, Non-trend); value-area relationships.
- P. Steidlmayer, *Markets and Market Logic* (1986): the profile as a distribution, balance vs
  imbalance.
The numeric thresholds that turn Dalton's prose into rules are in
:class:`trading_core.profile_config.ProfileConfig`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# --- labels --------------------------------------------------------------------------------------
OPEN_DRIVE_UP = "Open Drive Up"
OPEN_DRIVE_DOWN = "Open Drive Down"
OPEN_TEST_DRIVE_UP = "Open Test Drive Up"
OPEN_TEST_DRIVE_DOWN = "Open Test Drive Down"
OPEN_REJECTION_REVERSE_UP = "Open Rejection Reverse Up"
OPEN_REJECTION_REVERSE_DOWN = "Open Rejection Reverse Down"
OPEN_AUCTION_IN_RANGE = "Open Auction In Range"
OPEN_AUCTION_OUT_OF_RANGE = "Open Auction Out of Range"
OPEN_AUCTION = "Open Auction"          # no prior session to compare with
UNDETERMINED = "Undetermined"          # not enough data (yet)
NOT_REGULAR = "Not a regular session"

NORMAL = "Normal"
NORMAL_VARIATION = "Normal Variation"
TREND = "Trend"
DOUBLE_DISTRIBUTION = "Double Distribution"
NEUTRAL_CENTER = "Neutral Center"
NEUTRAL_EXTREME = "Neutral Extreme"
NON_TREND = "Non-trend"


def tpo_histogram(lo_rows: np.ndarray, hi_rows: np.ndarray) -> tuple[int, np.ndarray]:
    """TPO count per row from each period's low and high row (CBOT: a period prints one TPO on
    every row from its low to its high inclusive). Returns ``(lowest_row, counts)``; shapes: two
    int64 arrays of length n_periods in, int64 array of length n_rows out. Raises ``ValueError``
    on empty input."""
    if len(lo_rows) == 0:
        raise ValueError("no periods")
    r0 = int(lo_rows.min())
    n = int(hi_rows.max()) - r0 + 1
    diff = np.zeros(n + 1, dtype=np.int64)
    np.add.at(diff, lo_rows - r0, 1)
    np.add.at(diff, hi_rows - r0 + 1, -1)
    return r0, np.cumsum(diff[:-1])


def select_poc(counts: np.ndarray) -> int:
    """Index of the point of control: the row with the most TPOs (or volume). Ties go to the row
    nearest the middle of the profile's range (counted in rows: the centre of the printed chart),
    then to the lower row (CBOT Handbook: "the POC closest to the centre of the range").
    Raises ``ValueError`` on an empty array."""
    if len(counts) == 0:
        raise ValueError("empty profile")
    top = counts.max()
    candidates = np.flatnonzero(counts == top)
    if candidates.size == 1:
        return int(candidates[0])
    distance = np.abs(2 * candidates - (len(counts) - 1))   # twice the distance to the middle
    return int(candidates[int(np.argmin(distance))])        # argmin keeps the first = lower row


def value_area(counts: np.ndarray, poc: int, percent: int = 70) -> tuple[int, int, int]:
    """Value area grown from the POC by the CBOT method (Dalton, *Mind Over Markets*): compare the
    sum of the next two rows above the area with the next two below, add the larger pair (the
    upper pair on a tie), repeat until the area holds at least ``percent`` % of the total. Where
    fewer than two rows remain on a side, what remains is compared; an exhausted side loses.

    Returns ``(low_index, high_index, amount_inside)``, both indices inclusive.
    """
    values = counts.tolist()
    n = len(values)
    total = sum(values)
    lo = hi = poc
    inside = values[poc]
    while inside * 100 < percent * total:
        up = values[hi + 1:hi + 3]
        down = values[max(lo - 2, 0):lo]
        if not up and not down:          # cannot happen while inside < total; defensive
            break
        su, sd = sum(up), sum(down)
        if up and (not down or su >= sd):
            hi += len(up)
            inside += su
        else:
            lo -= len(down)
            inside += sd
    assert 0 <= lo <= poc <= hi < n
    return lo, hi, inside


@dataclasses.dataclass(frozen=True, slots=True)
class Extremes:
    """Tails, poor extremes and single prints of a TPO profile (indices into ``counts``).

    - ``top_run``/``bottom_run``: length of the run of one-TPO rows at the high/low. A run of at
      least two rows is a *tail* (selling tail at the high, buying tail at the low) and marks
      *excess* (Dalton). A one-row run is neither tail nor single print.
    - ``poor_high``/``poor_low``: two or more TPOs on the extreme row (an unfinished auction).
    - ``singles``: runs ``(first, last)`` of one-TPO rows strictly inside the range, the extreme
      runs excluded.
    While no row has two TPOs yet (only the first period has traded) there are no tails and no
    single prints: the whole range is one period's print.
    """

    top_run: int
    bottom_run: int
    poor_high: bool
    poor_low: bool
    excess_high: bool
    excess_low: bool
    singles: tuple[tuple[int, int], ...]


def extremes(counts: np.ndarray) -> Extremes:
    """:class:`Extremes` of a TPO profile (int64 array, index 0 = lowest row)."""
    n = len(counts)
    poor_high = bool(counts[-1] >= 2)
    poor_low = bool(counts[0] >= 2)
    if not (counts >= 2).any():
        return Extremes(0, 0, poor_high, poor_low, False, False, ())
    one = counts == 1
    not_one = np.flatnonzero(~one)
    bottom_run = int(not_one[0])
    top_run = int(n - 1 - not_one[-1])
    inner = one[bottom_run:n - top_run]
    singles: list[tuple[int, int]] = []
    if inner.any():
        edges = np.diff(np.concatenate(([0], inner.astype(np.int8), [0])))
        starts = np.flatnonzero(edges == 1)
        ends = np.flatnonzero(edges == -1) - 1
        singles = [(int(s) + bottom_run, int(e) + bottom_run) for s, e in zip(starts, ends)]
    return Extremes(top_run, bottom_run, poor_high, poor_low, top_run >= 2, bottom_run >= 2,
                    tuple(singles))


def classify_open(open_: int, high: int, low: int, close: int, high_key: int, low_key: int,
                  prior_high: int | None, prior_low: int | None, cfg) -> str:
    """Open type from the opening period (A), after Dalton, *Mind Over Markets* ch. 3.

    Inputs in ticks: the session's open, period A's high, low and last price, and the order in
    which A first reached its high and its low (``high_key`` < ``low_key``: the high came
    first). ``prior_high``/``prior_low``: the prior session's range (``None`` if unknown).
    With R = A's range and the fractions in ``cfg`` (``open_near`` n, ``open_test_max`` t,
    ``open_drive_close`` d):

    - Open Drive: the open is at one extreme of A (within n·R) and A closes at least d·R away
      from it: the market auctions away from the open and never returns.
    - Open Test Drive: price first probes the other way by at most t·R (a test), then reverses
      and A closes at least d·R from the test extreme, beyond the open.
    - Open Rejection Reverse: price first moves the other way by more than t·R (a real move that
      is rejected), then reverses back through the open (A closes beyond the open).
    - Open Auction: anything else (rotation around the open), "In Range" or "Out of Range"
      after whether the open lies inside the prior day's range.
    The direction suffix is the direction of the drive or of the reversal.
    """
    r = high - low
    if r > 0:
        up, down = high - open_, open_ - low
        if down <= cfg.open_near * r and close - low >= cfg.open_drive_close * r:
            return OPEN_DRIVE_UP
        if up <= cfg.open_near * r and high - close >= cfg.open_drive_close * r:
            return OPEN_DRIVE_DOWN
        if low_key < high_key:           # probed down first, then went up
            if down <= cfg.open_test_max * r and close - low >= cfg.open_drive_close * r:
                return OPEN_TEST_DRIVE_UP
            if down > cfg.open_test_max * r and close > open_:
                return OPEN_REJECTION_REVERSE_UP
        elif high_key < low_key:         # probed up first, then went down
            if up <= cfg.open_test_max * r and high - close >= cfg.open_drive_close * r:
                return OPEN_TEST_DRIVE_DOWN
            if up > cfg.open_test_max * r and close < open_:
                return OPEN_REJECTION_REVERSE_DOWN
    if prior_high is None or prior_low is None:
        return OPEN_AUCTION
    return OPEN_AUCTION_OUT_OF_RANGE if (open_ > prior_high or open_ < prior_low) else OPEN_AUCTION_IN_RANGE


def double_distribution(counts: np.ndarray, singles: tuple[tuple[int, int], ...], ib_lo_idx: int,
                        ib_hi_idx: int, side: int, cfg) -> bool:
    """True when a band of at least ``cfg.dd_min_rows`` single-print rows, lying outside the
    initial balance on the extension ``side`` (+1 up, -1 down), separates two distributions each
    holding at least ``cfg.dd_min_share`` of the TPOs (Dalton: Double-Distribution Trend day)."""
    total = int(counts.sum())
    for first, last in singles:
        if last - first + 1 < cfg.dd_min_rows:
            continue
        if side > 0 and first <= ib_hi_idx:
            continue
        if side < 0 and last >= ib_lo_idx:
            continue
        below = int(counts[:first].sum())
        above = int(counts[last + 1:].sum())
        if below >= cfg.dd_min_share * total and above >= cfg.dd_min_share * total:
            return True
    return False


def classify_day(high: int, low: int, close: int, ib_high: int, ib_low: int, counts: np.ndarray,
                 row0: int, ticks_per_row: int, singles: tuple[tuple[int, int], ...],
                 typical_range: float | None, cfg) -> str:
    """Day type after Dalton, *Mind Over Markets* ch. 2, from the day's range, close and initial
    balance (ticks) and the TPO profile (``counts`` from row ``row0``).

    Range extension on a side counts when it exceeds ``cfg.extension_min`` x the IB range.
    - both sides extended: Neutral; *Extreme* if the close is outside the IB, else *Center*.
    - one side: Double Distribution if single prints split the profile beyond the IB
      (:func:`double_distribution`); Trend if the extension is at least ``cfg.trend_extension``
      IB ranges and the close lies in the outer ``cfg.trend_close_zone`` of the day's range on
      that side; otherwise Normal Variation.
    - none: Non-trend if the day's range is under ``cfg.non_trend_fraction`` x
      ``typical_range`` (ticks; the median range of recent days), else Normal.
    """
    ib_range = ib_high - ib_low
    ext_up, ext_down = high - ib_high, ib_low - low
    threshold = cfg.extension_min * ib_range
    up = ext_up > 0 and ext_up > threshold
    down = ext_down > 0 and ext_down > threshold
    day_range = high - low
    if up and down:
        return NEUTRAL_EXTREME if (close > ib_high or close < ib_low) else NEUTRAL_CENTER
    if up or down:
        side = 1 if up else -1
        ib_lo_idx = ib_low // ticks_per_row - row0
        ib_hi_idx = ib_high // ticks_per_row - row0
        if double_distribution(counts, singles, ib_lo_idx, ib_hi_idx, side, cfg):
            return DOUBLE_DISTRIBUTION
        ext = ext_up if up else ext_down
        near_extreme = (high - close if up else close - low) <= cfg.trend_close_zone * day_range
        if ext >= cfg.trend_extension * ib_range and near_extreme:
            return TREND
        return NORMAL_VARIATION
    if typical_range is not None and typical_range > 0 and day_range < cfg.non_trend_fraction * typical_range:
        return NON_TREND
    return NORMAL


def position(price: int, low: int, high: int) -> str:
    """``"above"``, ``"inside"`` or ``"below"`` the inclusive interval ``[low, high]``."""
    if price > high:
        return "above"
    if price < low:
        return "below"
    return "inside"


def value_relation(val: int, vah: int, prior_val: int, prior_vah: int) -> str:
    """Today's value area against the prior day's (Dalton's value-area relationships):
    ``higher`` / ``lower`` (no overlap), ``overlapping higher`` / ``overlapping lower``,
    ``inside`` (within the prior value), ``outside`` (engulfs it), ``unchanged``."""
    if val > prior_vah:
        return "higher"
    if vah < prior_val:
        return "lower"
    if val == prior_val and vah == prior_vah:
        return "unchanged"
    if val >= prior_val and vah <= prior_vah:
        return "inside"
    if val <= prior_val and vah >= prior_vah:
        return "outside"
    return "overlapping higher" if vah > prior_vah else "overlapping lower"
