"""Shared test fixtures. Real recorded data lives in ``../shared/data`` beside the checkout
(override with ``AMT_SHARED_DATA``); it is never copied into the repository."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHARED_DATA = Path(os.environ.get("AMT_SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()
INDEX_1MIN = SHARED_DATA / "nse-index-1min"
FUT_1MIN = SHARED_DATA / "nse-fut-1min" / "BANKNIFTY_F1_2019-01_2019-06.txt"
FO_TICKS = SHARED_DATA / "nse-fo-ticks" / "2022-11-18"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``../shared/data``; fails (not skips) when it is missing, since CI provides it."""
    assert SHARED_DATA.is_dir(), f"recorded data not found at {SHARED_DATA} (set AMT_SHARED_DATA)"
    return SHARED_DATA
