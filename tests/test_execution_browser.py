"""The execution blotter and the kill switch in a real browser (Playwright on Debian's chromium, as
``tests/test_browser.py``): a replayed real day's signals each show their risk decision and, when
traded, the closed position's PnL; the kill-switch button engages and releases the switch on the
running execution service. Screenshots go to ``test-artifacts/``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.system_harness import ROOT, System, free_port
from tests.test_execution_system import Tape, replay_folder, wait_until
from trading_core import messages as m

CHROMIUM = os.environ.get("AMT_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"browser tests need Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    pytest.skip(f"no chromium at {CHROMIUM}: apt-get install chromium to run the browser tests",
                allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


def test_blotter_and_kill_switch_in_the_browser(tmp_path):
    folder = replay_folder(tmp_path, "2021_JUNE_NIFTY.txt", "2021_JUNE_BNF.txt")
    cfg = tmp_path / "config_test.py"
    cfg.write_text("MAX_SIGNAL_DELAY_S = 120\n")
    pub, sub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    system = System(tmp_path, "--replay", str(folder), "--date", "2021-06-22", "--speed", "0", "--config",
                    str(cfg), "--bus-pub", pub, "--bus-sub", sub,
                    "--query-endpoint", f"tcp://127.0.0.1:{free_port()}")
    tape = Tape(pub, sub)
    try:
        system.wait(lambda h: h.get("ingestor", {}).get("status") == "finished", 90, "the replay")
        wait_until(system, lambda: len(tape.of(m.Signal)) == 4 and tape.resolved(), 60, "every signal resolved")
        decisions = {d.signal_id: d for d in tape.of(m.RiskDecision)}
        closed = {p.position_id: p for p in tape.of(m.Position) if p.status == "closed"}
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page(viewport={"width": 1500, "height": 1100})
                page.on("dialog", lambda dialog: dialog.accept())       # the confirm() of the buttons
                page.goto(f"http://127.0.0.1:{system.port}/")
                page.wait_for_function("() => document.querySelectorAll('#blotter-body tr:not(.empty)').length"
                                       " === 4", timeout=20_000)
                rows = page.eval_on_selector_all("#blotter-body tr", "rs => rs.map(r => "
                                                 "[...r.cells].map(c => c.innerText.trim()))")
                statuses = sorted(r[-1] for r in rows)
                assert statuses == sorted("closed" if d.approved else "rejected" for d in decisions.values())
                shown_pnl = sorted(float(r[10].replace(",", "")) for r in rows if r[-1] == "closed")
                assert shown_pnl == sorted(round(p.realised_pnl, 2) for p in closed.values())
                assert all("instrument_locked" in r[4] for r in rows if r[-1] == "rejected")
                assert page.inner_text("#exec-client").strip().lower() == "paper"
                ARTIFACTS.mkdir(exist_ok=True)
                page.locator(".blotter-panel").screenshot(path=str(ARTIFACTS / "execution-blotter.png"))

                # Each closed position is marked on its instrument's chart: a circle at the entry
                # fill's minute, a square at the exit's naming the reason (times: IST-shifted seconds).
                assert closed, "the replayed day trades"
                for key in sorted({p.instrument_key for p in closed.values()}):
                    page.select_option("#instrument", key)
                    mine = [p for p in closed.values() if p.instrument_key == key]
                    want = sorted([((p.entry_ts // 60_000) * 60 + 19_800, "entry") for p in mine]
                                  + [((p.exit_ts // 60_000) * 60 + 19_800, "exit") for p in mine])
                    page.wait_for_function(f"() => window.amt.state.selected === '{key}' && window.amt.markers"
                                           f".markers().filter(m => m.kind !== 'signal').length === {len(want)}",
                                           timeout=10_000)
                    drawn = page.evaluate("() => window.amt.markers.markers().filter(m => m.kind !== 'signal')"
                                          ".map(m => [m.time, m.kind, m.text])")
                    assert sorted((t, kind) for t, kind, _ in drawn) == want
                    reasons = {text.split()[1] for _, kind, text in drawn if kind == "exit"}
                    labels = {"stop": "SL", "breakeven_stop": "BE", "target": "TGT", "time": "TIME",
                              "square_off": "SQ", "kill_switch": "KILL"}
                    assert reasons == {labels[p.exit_reason] for p in mine}
                page.evaluate("() => window.amt.chart.timeScale().fitContent()")
                page.locator(".chart-panel").screenshot(path=str(ARTIFACTS / "execution-markers.png"))

                page.click("#kill-switch")
                page.wait_for_selector("#kill-resume:not([hidden])", timeout=15_000)
                assert "KILL SWITCH ON" in page.inner_text("#exec-state")
                page.locator(".blotter-panel").screenshot(path=str(ARTIFACTS / "execution-kill-switch.png"))
                page.click("#kill-resume")
                page.wait_for_selector("#kill-switch:not([hidden])", timeout=15_000)
                assert page.inner_text("#exec-state").strip() == ""
            finally:
                browser.close()
        system.terminate(timeout=30)
    finally:
        tape.stop.set()
        system.close()
    events = [line for line in (tmp_path / "run.out").read_text().splitlines() if "execution " in line]
    assert any("kill switch ENGAGED" in line for line in events)
    assert any("kill switch released" in line for line in events)
