"""The risk guard's rules on real signals: the IB-breakout strategy run over recorded NSE months
(../shared/data/nse-index-1min), each rule checked against its definition computed here from the
signal's own prices, and the sizing against the NSE lot of the day."""

from __future__ import annotations

import datetime as dt
import math
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.execution_days import BANK, NIFTY, day_ticks, month_files, month_signals, replay_day
from trading_core import messages as m
from trading_core.paper import PaperConfig
from trading_core.risk import (RULES, LotSizes, RiskBook, RiskConfig, ist_date, ist_minute,
                               parse_lot_sizes, signal_id, underlying_of)


def rr(sig: m.Signal) -> float:
    return abs(sig.target - sig.entry) / abs(sig.entry - sig.stop_loss)


def fresh(sig: m.Signal, **cfg) -> "object":
    """The decision on ``sig`` of a risk guard that has seen nothing else."""
    return RiskBook(RiskConfig(**cfg)).evaluate(sig)


def test_reward_to_risk_minimum_on_real_signals(shared_data):
    signals = month_signals(2021, "JUN")
    below = [s for s in signals if rr(s) < 1.5]
    above = [s for s in signals if rr(s) >= 1.5]
    assert below and above, "June 2021 has breakouts on both sides of 1.5 R"
    for s in below:
        d = fresh(s)
        assert not d.approved and d.rule == "reward_risk", (s, d)
        assert f"{rr(s):.2f}" in d.reason and "1.5" in d.reason
    for s in above:
        d = fresh(s)
        assert "reward_risk" not in d.failed
        assert d.reward_risk == pytest.approx(rr(s))
    # a stricter minimum rejects exactly the signals below it
    strict = [s for s in signals if fresh(s, min_reward_risk=1.9).rule == "reward_risk"]
    assert strict == [s for s in signals if rr(s) < 1.9] and len(strict) > len(below)


def test_sizing_is_whole_lots_within_the_risk_budget_with_the_lot_of_the_day(shared_data):
    signals = month_signals(2021, "JUN")
    cfg = RiskConfig()
    nse = {"NIFTY": [], "BANKNIFTY": []}
    for s in signals:
        d = fresh(s)
        if not d.approved:
            continue
        under = underlying_of(s.instrument_key)
        lot = 75 if (under == "NIFTY" and ist_date(s.ts) < dt.date(2021, 6, 25)) else 50 if under == "NIFTY" else 25
        nse[under].append((ist_date(s.ts), d.lot_size))
        assert d.lot_size == lot, (s, d)                    # NSE/FAOP/47854: NIFTY 75 -> 50 from July 2021 expiry
        unit = abs(s.entry - s.stop_loss)
        assert d.quantity == d.lots * lot and d.lots >= 1
        assert d.risk_amount == pytest.approx(d.quantity * unit)
        assert d.risk_amount <= cfg.budget + 1e-6                     # within 1 % of capital
        assert (d.lots + 1) * lot * unit > cfg.budget                 # and the largest such size
    nifty_lots = {lot for _, lot in nse["NIFTY"]}
    assert nifty_lots == {75, 50}, "June 2021 straddles NIFTY's lot change"


def test_risk_per_trade_rejects_a_signal_whose_one_lot_risks_too_much(shared_data):
    signals = [s for s in month_signals(2022, "JUN") if s.instrument_key == BANK]
    capital = 300_000                                   # 1 % = Rs 3,000
    rejected, approved = [], []
    for s in signals:
        d = fresh(s, capital=capital)
        one_lot = abs(s.entry - s.stop_loss) * 25
        if one_lot > 3_000:
            assert d.rule == "risk_per_trade" and d.quantity == 0, (s, d)
            assert f"{one_lot:,.0f}" in d.reason.replace("\u20b9", "") or "above" in d.reason
            rejected.append(s)
        elif rr(s) >= 1.5:
            assert d.approved and d.lots == math.floor(3_000 / one_lot), (s, d)
            approved.append(s)
    assert rejected and approved


def test_intraday_lock_one_trade_per_instrument_per_day(shared_data):
    files = sorted(month_files(2021, "JUN"))
    seen_locked_after_close = False
    locked = 0
    for day in ("2021-06-09", "2021-06-17", "2021-06-22", "2021-06-30"):
        run = replay_day(day_ticks(files, day), paper=PaperConfig(time_exit_minutes=0))
        decisions = run.decisions()
        first: dict[str, m.RiskDecision] = {}
        for sig in run.signals:
            d = decisions[signal_id(sig)]
            if sig.instrument_key in first:
                assert "instrument_locked" in d.failed and not d.approved, (day, sig, d)
                locked += 1
                earlier = run.closed().get(first[sig.instrument_key].signal_id)
                if earlier is not None and earlier.exit_ts < sig.ts:
                    seen_locked_after_close = True          # the lock outlives the closed trade
            elif d.approved:
                first[sig.instrument_key] = d
            else:
                assert "instrument_locked" not in d.failed
    assert locked >= 4
    assert seen_locked_after_close


def test_daily_loss_limit_stops_new_trades_after_real_losses(shared_data):
    files = sorted(month_files(2022, "JUN"))
    limit = 8_000
    bitten = passed = 0
    for day in ("2022-06-01", "2022-06-06", "2022-06-07", "2022-06-09", "2022-06-15", "2022-06-28",
                "2022-06-29"):
        run = replay_day(day_ticks(files, day), risk=RiskConfig(daily_loss_limit=limit))
        closed = list(run.closed().values())
        decisions = run.decisions()
        for sig in run.signals:
            d = decisions[signal_id(sig)]
            still_open = [p for p in closed if p.entry_ts <= sig.ts < p.exit_ts and p.signal_id != d.signal_id]
            if still_open:
                continue                  # the unrealised part is the engine's: covered elsewhere
            realised = sum(p.realised_pnl for p in closed if p.exit_ts <= sig.ts)
            if realised <= -limit:
                assert d.rule == "daily_loss_limit" or "daily_loss_limit" in d.failed, (day, sig, d, realised)
                assert not d.approved
                bitten += 1
            else:
                assert "daily_loss_limit" not in d.failed
                passed += 1
    assert bitten >= 1 and passed >= 1


def test_max_trades_per_day(shared_data):
    files = sorted(month_files(2022, "JUN"))
    capped = 0
    for day in ("2022-06-03", "2022-06-10", "2022-06-14", "2022-06-16", "2022-06-21"):
        run = replay_day(day_ticks(files, day), risk=RiskConfig(max_trades_per_day=1))
        decisions = [run.decisions()[signal_id(s)] for s in run.signals]
        approved = [d for d in decisions if d.approved]
        assert len(approved) == 1, (day, decisions)
        first = decisions.index(approved[0])
        for d in decisions[first + 1:]:
            assert "max_trades" in d.failed and d.rule in ("max_trades", "instrument_locked"), d
            capped += 1
    assert capped >= 5


def test_entry_cutoff_and_trading_hours(shared_data):
    late = [s for s in month_signals(2021, "JUN", last_entry="15:30")]
    after = [s for s in late if ist_minute(s.ts) >= 14 * 60 + 45]
    assert after, "IB breakouts after 14:45 exist in June 2021"
    for s in late:
        d = fresh(s)
        assert ("entry_cutoff" in d.failed) == (ist_minute(s.ts) >= 14 * 60 + 45), (s, d)
    for s in after:
        assert fresh(s, entry_cutoff="15:29").rule != "entry_cutoff"
    # the recorded bars after the close (15:31) and before the open (09:08) are outside the session
    ticks = day_ticks([month_files(2022, "JUN")[1]], "2022-06-09")
    outside = [t for t in ticks if not 9 * 60 + 15 <= ist_minute(t.ts) < 15 * 60 + 30]
    assert {ist_minute(t.ts) // 60 for t in outside} == {9, 15}
    for t in outside:
        sig = m.Signal(strategy="probe", instrument_key=t.instrument_key, side="BUY", entry=t.ltp,
                       stop_loss=t.ltp - 40, target=t.ltp + 100, reason="real print outside the session",
                       ts=t.ts)
        d = fresh(sig)
        assert d.rule == "trading_hours" and "outside trading hours" in d.reason


def test_duplicate_and_kill_switch(shared_data):
    sig = month_signals(2022, "JUN")[0]
    book = RiskBook(RiskConfig())
    assert book.decide(sig).approved
    again = book.decide(sig)
    assert again.rule == "duplicate" and not again.approved
    other = month_signals(2022, "JUN")[1]
    d = RiskBook(RiskConfig()).decide(other, kill_switch=True)
    assert d.rule == "kill_switch" and "kill switch" in d.reason
    assert list(RULES).index("duplicate") == 0


def test_lot_sizes_follow_the_nse_circulars_and_config():
    lots = LotSizes()
    assert lots.lot_size(NIFTY, dt.date(2021, 6, 24)) == 75
    assert lots.lot_size(NIFTY, dt.date(2021, 6, 25)) == 50
    assert lots.lot_size("NSE_FO|NIFTY-I", dt.date(2022, 11, 18)) == 50
    assert lots.lot_size("NSE_FO|NIFTY24DECFUT", dt.date(2024, 12, 2)) == 75
    assert lots.lot_size("NSE_FO|NIFTY24042524000CE", dt.date(2024, 4, 25)) == 50
    assert lots.lot_size("NSE_FO|NIFTY24050224000CE", dt.date(2024, 4, 26)) == 25
    assert lots.lot_size("NSE_FO|BANKNIFTY_F1", dt.date(2019, 1, 4)) == 20
    assert lots.lot_size(BANK, dt.date(2022, 6, 9)) == 25
    assert lots.lot_size("NSE_FO|FINNIFTY22112218000CE", dt.date(2022, 11, 18)) == 40
    assert lots.lot_size("NSE_FO|43885", dt.date(2024, 1, 1)) is None
    assert LotSizes({"NIFTY": 65}).lot_size(NIFTY, dt.date(2021, 1, 1)) == 65
    assert LotSizes({"NIFTY": 65}, extra=lambda k: 75 if k == "NSE_FO|43885" else None).lot_size(
        "NSE_FO|43885", dt.date(2026, 1, 1)) == 75
    sig = m.Signal(strategy="x", instrument_key="NSE_FO|43885", side="BUY", entry=100, stop_loss=90,
                   target=130, reason="", ts=1654749000000)
    d = fresh(sig)
    assert d.rule == "lot_size" and "LOT_SIZES" in d.reason
    for bad, where in (({"NIFTY": 0}, "NIFTY"), ({"NIFTY": [("2021-13-01", 50)]}, "2021-13-01"),
                       ({"NIFTY": [("2022-01-01", 50), ("2021-01-01", 75)]}, "ascending"), ([], "dict")):
        with pytest.raises(ValueError, match=where):
            parse_lot_sizes(bad)


def test_bad_risk_settings_are_one_line_errors_naming_the_setting(tmp_path):
    from trading_core import settings as settings_mod
    for text, name in (("RISK_PER_TRADE_PCT = 150", "RISK_PER_TRADE_PCT"), ("CAPITAL = -5", "CAPITAL"),
                       ("ENTRY_CUTOFF = '16:00'", "ENTRY_CUTOFF"), ("SLIPPAGE = -1", "SLIPPAGE"),
                       ("LOT_SIZES = {'NIFTY': 'fifty'}", "LOT_SIZES"), ("LIVE_TRADING = 'yes'", "LIVE_TRADING"),
                       ("MAX_TRADES_PER_DAY = 0", "MAX_TRADES_PER_DAY")):
        cfg = tmp_path / "bad_config.py"
        cfg.write_text(text + "\n")
        with pytest.raises(ValueError, match=name) as err:
            settings_mod.load(cfg)
        assert "bad_config.py" in str(err.value) and "\n" not in str(err.value)
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), "--config", str(cfg)],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    lines = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "MAX_TRADES_PER_DAY" in lines[0], lines


def test_daily_loss_limit_counts_open_positions_at_their_last_price(shared_data):
    """A signal that arrives while another position is under water: the limit compares today's
    PnL including that position's unrealised loss at its last tick before the signal."""
    files = sorted(month_files(2022, "JUN"))
    checked = 0
    for day in ("2022-06-03", "2022-06-10", "2022-06-14"):
        ticks = day_ticks(files, day)
        base = replay_day(ticks)
        for sig in base.signals:
            sid = signal_id(sig)
            trigger = next(t for t in ticks if t.instrument_key == sig.instrument_key and t.ts >= sig.ts)
            for p in base.closed().values():
                if p.signal_id == sid or not p.entry_ts <= sig.ts < p.exit_ts:
                    continue
                last = [t for t in ticks if t.instrument_key == p.instrument_key and t.seq < trigger.seq][-1]
                u = (last.ltp - p.entry_price) * (1 if p.side == "BUY" else -1) * p.quantity
                realised = sum(q.realised_pnl for q in base.closed().values() if q.exit_ts <= sig.ts)
                loss = -(u + realised)
                if loss < 500:
                    continue
                tight = replay_day(ticks, risk=RiskConfig(daily_loss_limit=loss * 0.9)).decisions()[sid]
                loose = replay_day(ticks, risk=RiskConfig(daily_loss_limit=loss * 1.1)).decisions()[sid]
                assert tight.rule == "daily_loss_limit", (day, sig, tight)
                assert "daily_loss_limit" not in loose.failed, (day, sig, loose)
                checked += 1
    assert checked >= 1
