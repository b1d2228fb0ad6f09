"""Research SQL against the whole system started by ``run.py``: queries from another process, the
CLI and the browser's endpoint while a replay of real F&O ticks records at 50,000 ticks/s, the exact
count afterwards, the same queries on the stopped file, and signals recorded by the ingestor."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import polars as pl
import pytest

from tests.conftest import FO_TICKS, INDEX_1MIN
from tests.system_harness import ROOT, System, free_port
from trading_core import query as q, query_client, settings as settings_mod, views

# Every futures file of the day and twelve busy option contracts: about 310,000 real prints,
# about 6 s at a constant 50,000 ticks/s (near the system's full speed, and paced so that the
# test sees the count grow batch by batch whatever the machine's speed).
OPTIONS = ["BANKNIFTY22112442500CE", "BANKNIFTY22112442500PE", "BANKNIFTY22112442400PE",
           "NIFTY22112418300PE", "BANKNIFTY22112442300PE", "BANKNIFTY22112442400CE",
           "BANKNIFTY22112442600CE", "BANKNIFTY22112442000PE", "BANKNIFTY22112442300CE",
           "NIFTY22112418200PE", "BANKNIFTY22112442200PE", "NIFTY22112418250PE"]


def replay_folder(tmp: Path) -> tuple[Path, dict[str, int]]:
    """A folder of symlinks to the real files, and the prints per instrument counted from the
    files themselves (one line per print)."""
    folder = tmp / "replay"
    (folder / "Futures").mkdir(parents=True)
    (folder / "Options").mkdir()
    files = sorted((FO_TICKS / "Futures").glob("*.csv")) + [FO_TICKS / "Options" / f"{o}.csv" for o in OPTIONS]
    lines = {}
    for f in files:
        (folder / f.parent.name / f.name).symlink_to(f)
        lines[f"NSE_FO|{f.stem}"] = sum(1 for line in f.read_text().splitlines() if line.strip())
    return folder, lines


def count(settings, **kw) -> q.Result:
    return query_client.query_result("SELECT count(*) AS n FROM ticks", settings=settings, timeout_s=10, **kw)


def test_queries_while_a_fast_replay_records(tmp_path, shared_data):
    folder, lines = replay_folder(tmp_path)
    expected = sum(lines.values())
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    system = System(tmp_path, "--replay", str(folder), "--rate", "50000", "--query-endpoint", endpoint)
    settings = dataclasses.replace(settings_mod.load(), duckdb_path=system.db, query_endpoint=endpoint)
    seen: list[int] = []
    try:
        system.wait(lambda h: query_client.server_listening(endpoint), 60, "the query service")
        finished = False
        cli_done = api_done = refused_done = False
        deadline = time.monotonic() + 180
        while not finished and time.monotonic() < deadline:
            finished = system.health().get("ingestor", {}).get("status") == "finished"
            r = count(settings)
            assert r.via == "server"
            seen.append(r.table.column("n")[0].as_py())
            if 0 < seen[-1] < expected and not refused_done:
                with pytest.raises(q.QueryRefused):
                    query_client.query("DELETE FROM ticks", settings=settings)
                refused_done = True
            elif 0 < seen[-1] < expected and not api_done:
                resp = httpx.post(f"http://127.0.0.1:{system.port}/api/sql", timeout=30,
                                  json={"sql": "SELECT count(*) AS n FROM ticks"})
                assert resp.status_code == 200, resp.text
                assert 0 < resp.json()["rows"][0][0] <= expected
                api_done = True
            elif 0 < seen[-1] < expected and not cli_done:
                out = subprocess.run(
                    [sys.executable, str(ROOT / "run.py"), "sql", "--query-endpoint", endpoint,
                     "--format", "json", "SELECT count(*) AS n FROM ticks"],
                    capture_output=True, text=True, timeout=60, cwd=tmp_path)
                assert out.returncode == 0, out.stderr
                assert 0 < json.loads(out.stdout)[0]["n"] <= expected
                cli_done = True
            time.sleep(0.02)
        assert finished, f"the replay did not finish; counts seen {seen[-5:]}"
        growing = sorted(set(n for n in seen if 0 < n < expected))
        assert len(growing) >= 3, f"too few counts seen during the replay: {seen}"
        assert seen == sorted(seen), "a later query saw fewer ticks than an earlier one"
        assert cli_done and api_done and refused_done

        # After the replay, still running: the writer commits what it still has queued ("finished"
        # means every tick was published), the count never overshoots and ends exact.
        deadline = time.monotonic() + 120
        while (n := count(settings).table.column("n")[0].as_py()) < expected and time.monotonic() < deadline:
            seen.append(n)
            time.sleep(0.1)
        assert n == expected and seen == sorted(seen)
        per = query_client.query("SELECT instrument_key, count(*) AS n FROM ticks GROUP BY ALL",
                                 settings=settings)
        assert dict(per.iter_rows()) == lines
        # Every saved example query runs on the recording system.
        live = {e["name"]: query_client.query(e["sql"], settings=settings) for e in views.EXAMPLES}
        assert live["days"]["ticks"].sum() == expected
        # The browser console is served, linked from the desk, and the ingestor reports its queries.
        base = f"http://127.0.0.1:{system.port}"
        assert 'href="/console"' in httpx.get(base + "/", timeout=5).text
        page = httpx.get(base + "/console", timeout=5)
        assert page.status_code == 200 and '<script src="/console.js">' in page.text
        assert "fetch(\"/api/sql\"" in httpx.get(base + "/console.js", timeout=5).text
        names = [e["name"] for e in httpx.get(base + "/api/sql/examples", timeout=5).json()["examples"]]
        assert names == [e["name"] for e in views.EXAMPLES]
        system.wait(lambda h: h.get("ingestor", {}).get("details", {}).get("query", {}).get("served", 0)
                    >= len(seen), 10, "query counters in the ingestor's health")
        system.terminate(timeout=20)   # shutdown time is test_system's subject; here the data after it
        assert system.proc.returncode == 0, system.output()[-2000:]
    finally:
        system.close()

    # The system is stopped: the same queries run on the file, read-only.
    r = count(settings)
    assert r.via == "file" and r.table.column("n")[0].as_py() == expected
    for e in views.EXAMPLES:
        off = query_client.query(e["sql"], settings=settings)
        if e["name"] != "storage":                     # database_size differs once checkpointed
            assert off.equals(live[e["name"]]), e["name"]


def test_signals_are_recorded_and_a_replay_of_the_same_day_replaces_them(tmp_path, shared_data):
    day_file, day = INDEX_1MIN / "2022_JUN_NIFTY.txt", "2022-06-09"
    runs = []
    db = tmp_path / "market.duckdb"
    for i in range(2):
        run_dir = tmp_path / f"run{i}"
        run_dir.mkdir()
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        system = System(run_dir, "--replay", str(day_file), "--date", day, "--speed", "0",
                        "--query-endpoint", endpoint, "--db", str(db))
        settings = dataclasses.replace(settings_mod.load(), duckdb_path=db, query_endpoint=endpoint)
        try:
            system.wait(lambda h: h.get("ingestor", {}).get("status") == "finished", 90, "the replay")
            snapshot: list = []
            deadline = time.monotonic() + 30
            stored = pl.DataFrame()
            while time.monotonic() < deadline:
                snapshot = httpx.get(f"http://127.0.0.1:{system.port}/api/snapshot", timeout=5).json()["signals"]
                stored = query_client.query("SELECT * FROM signals ORDER BY ts, strategy", settings=settings)
                if snapshot and stored.height >= len(snapshot):
                    break
                time.sleep(0.3)
            assert snapshot, "no signal reached the API"
            got = {(r["strategy"], r["instrument_key"], r["ts"], r["side"], r["entry"], r["stop_loss"],
                    r["target"]) for r in stored.iter_rows(named=True)}
            want = {(s["strategy"], s["instrument_key"], s["ts"], s["side"], s["entry"], s["stop_loss"],
                     s["target"]) for s in snapshot}
            assert got == want
            assert set(stored["source"]) == {"replay"}
            outcomes = query_client.query(
                "SELECT o.*, s.day_type FROM signal_outcomes o JOIN sessions s ON s.instrument_key = "
                "o.instrument_key AND s.date = o.date_ist AND s.source = o.source", settings=settings)
            assert outcomes.height == stored.height
            assert set(outcomes["exit_reason"]) <= {"stop", "target", "close"}
            runs.append(stored.drop("received_ms", "run_id"))
            system.terminate(timeout=20)
        finally:
            system.close()
    assert runs[1].equals(runs[0]), "replaying the day again must replace its signals, not add to them"
