"""The browser's blotter (api/blotter.py) fed a replayed real day's bus stream: one row per signal
with its decision and outcome, day totals, and the read-back from the audit trail merged with
what arrived live."""

from __future__ import annotations

import pytest

from api.blotter import Blotter
from tests.execution_days import day_ticks, month_files, replay_day
from trading_core import messages as m
from trading_core.paper import PaperConfig


@pytest.fixture(scope="module")
def day(shared_data):
    return replay_day(day_ticks(sorted(month_files(2021, "JUN")), "2021-06-22"),
                      paper=PaperConfig(time_exit_minutes=0))


def frames(published):
    return [m.encode(t, msg) for t, msg in published]


def test_one_row_per_signal_with_its_outcome(day):
    b = Blotter()
    for f in frames(day.published):
        b.ingest(f)
    b.ingest(b"tick.NSE_INDEX|Nifty 50\x00{}")                    # ticks cost nothing and change nothing
    snap = b.snapshot()
    decisions, closed = day.decisions(), day.closed()
    assert len(snap["rows"]) == len(day.signals) == 4
    assert [r["signal_ts"] for r in snap["rows"]] == sorted((s.ts for s in day.signals), reverse=True)
    for row in snap["rows"]:
        d = decisions[row["signal_id"]]
        assert row["status"] == ("closed" if d.approved else "rejected")
        if d.approved:
            assert row["position"]["realised_pnl"] == closed[row["signal_id"]].realised_pnl
            kinds = {o["kind"]: o["status"] for o in row["orders"]}
            assert kinds["entry"] == "filled" and len(row["fills"]) == 2
    assert snap["totals"] == {"signals": 4, "approved": 2, "rejected": 2, "open": 0, "closed": 2,
                              "realised": round(sum(p.realised_pnl for p in closed.values()), 2),
                              "unrealised": 0.0}
    assert snap["day"] == "2021-06-22"


def test_a_duplicate_decision_does_not_hide_the_first(day):
    b = Blotter()
    for f in frames(day.published):
        b.ingest(f)
    approved = next(d for d in day.of(m.RiskDecision) if d.approved)
    dup = m.RiskDecision(**{**{f: getattr(approved, f) for f in approved.__struct_fields__},
                            "approved": False, "rule": "duplicate", "reason": "duplicate"})
    b.ingest(m.encode(m.risk_topic(dup.strategy), dup))
    row = next(r for r in b.snapshot()["rows"] if r["signal_id"] == approved.signal_id)
    assert row["decision"]["approved"] and row["status"] == "closed"


def test_read_back_rows_merge_with_the_live_ones(day):
    stream = frames(day.published)
    half = len(stream) // 2
    live = Blotter()
    for f in stream[half:]:                 # the API came up half-way through the day
        live.ingest(f)
    older = Blotter()
    for f in stream:                        # the audit trail has all of it
        older.ingest(f)
    whole = Blotter()
    for f in stream:
        whole.ingest(f)
    live.merge_older(older)
    strip = lambda s: [{k: v for k, v in r.items() if k != "fills"} | {"fills": sorted(f["fill_id"] for f in r["fills"])}
                       for r in s["rows"]]
    assert strip(live.snapshot()) == strip(whole.snapshot())
    assert live.snapshot()["totals"] == whole.snapshot()["totals"]
