"""Run every benchmark in ``benchmarks/``, print one table of their headline numbers and append the
whole run to ``benchmarks/RESULTS.md``.

    python3 benchmarks/run_all.py               # everything, under 10 minutes on 2 cores; appends
    python3 benchmarks/run_all.py --no-append   # ... without touching RESULTS.md
    python3 benchmarks/run_all.py --smoke       # every bench for a second or so (never appends)
    python3 benchmarks/run_all.py --only bus,codec
    python3 benchmarks/run_all.py --json all.json

Each bench runs as its own process (``python3 benchmarks/bench_X.py ... --json TMP``), one after
the other, so they do not compete for the cores: the raw parts first (``bench_bus.py``,
``bench_codec.py``, ``bench_storage.py``), then the engine (``bench_profile.py --quick``), storage
on a real day (``bench_query.py --quick``: bytes per tick, recording beside research queries), and
the whole system (``bench_system.py``, if present; given the bus result with ``--bus-json`` when it
takes that option). ``--smoke`` passes ``--smoke`` to every bench; ``--full`` runs the long
default modes of ``bench_profile.py`` and ``bench_query.py`` instead of ``--quick`` (over 10
minutes). Each bench's result is its ``--json`` file (see ``benchmarks/common.py``).

The appended section holds the summary table (every bench's headline numbers), the checks, and
each bench's own section. Exit code 1 if a bench failed or one of its checks did.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

# name, script, arguments by mode ("smoke", "default", "full")
BENCHES: list[tuple[str, str, dict[str, list[str]]]] = [
    ("bus", "bench_bus.py", {"smoke": ["--smoke"], "default": ["--quick"], "full": []}),
    ("codec", "bench_codec.py", {"smoke": ["--smoke"], "default": ["--quick"], "full": []}),
    ("storage", "bench_storage.py", {"smoke": ["--smoke"], "default": ["--quick"], "full": []}),
    ("profile", "bench_profile.py", {"smoke": ["--smoke"], "default": ["--quick"], "full": []}),
    ("query", "bench_query.py", {"smoke": ["--smoke"], "default": ["--quick"], "full": []}),
    ("system", "bench_system.py", {"smoke": ["--smoke"], "default": [], "full": []}),
]
OPTIONAL = {"system"}          # written separately: skipped (and said so) when the file is absent


def headline_rows(res: dict) -> list[tuple[str, str]]:
    """(measure, result) pairs for the summary table from one bench's JSON result: its
    ``headlines``; else its table ``rows``; else its top-level numbers."""
    if res.get("headlines"):
        return [(h["name"], h.get("text") or f"{h['value']:,.3g} {h.get('unit', '')}") for h in res["headlines"]]
    if res.get("rows"):
        return [(str(a), str(b)) for a, b in res["rows"]]
    return [(k, f"{v:,.3g}" if isinstance(v, float) else str(v)) for k, v in res.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)]


def run_one(name: str, script: Path, args: list[str], out: Path, timeout_s: float) -> dict:
    """Run one bench; its JSON result with ``exit_code`` and ``wall_s`` added, or a stand-in
    ``{"bench", "error", ...}`` when it failed to produce one."""
    cmd = [sys.executable, str(script), *args, "--json", str(out)]
    print(f"\n=== {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout_s,
                              cwd=common.ROOT)
        code, tail = proc.returncode, proc.stdout[-400:]
    except subprocess.TimeoutExpired:
        code, tail = None, f"timed out after {timeout_s:.0f} s"
    wall = time.perf_counter() - started
    res: dict = {}
    if out.exists():
        try:
            res = json.loads(out.read_text())
        except ValueError as exc:
            res = {"error": f"unreadable --json output: {exc}"}
    if not res or code not in (0, 1):
        res = {**res, "error": res.get("error") or (f"exit code {code}" if code is not None else tail)}
    res.setdefault("bench", name)
    res["exit_code"], res["wall_s"] = code, round(wall, 1)
    print(f"=== {name}: {'ok' if code == 0 else 'FAILED' if 'error' in res else 'check failed'} "
          f"in {wall:.1f} s", file=sys.stderr, flush=True)
    return res


def summary(results: list[dict], total_s: float, mode: str, load: tuple[float, float], ref_us: float,
            skipped: list[str]) -> str:
    """The markdown section for RESULTS.md: head, summary table, checks, each bench's section."""
    lines = common.header_lines("All benchmarks (benchmarks/run_all.py)", load[0], load[1],
                                ["zmq", "msgspec", "orjson", "duckdb", "pyarrow", "polars", "numpy"],
                                common.command_line(), f"mode {mode}, {total_s:.0f} s in all", ref_us)
    lines += ["", "| Bench | Measure | Result |", "|---|---|---|"]
    for res in results:
        name = res.get("bench", "?")
        if "error" in res and not res.get("headlines"):
            lines.append(f"| {name} | **failed** | {res['error']} |")
            continue
        for measure, result in headline_rows(res):
            lines.append(f"| {name} | {measure} | {result} |")
    checks = [(r.get("bench", "?"), c) for r in results for c in r.get("checks", [])]
    failed = [(b, c) for b, c in checks if not c.get("ok")]
    lines += ["", f"Checks: {len(checks) - len(failed)} of {len(checks)} passed"
              + ("." if not failed else "; **failed**: " + "; ".join(f"{b}: {c['name']} ({c['detail']})"
                                                                   for b, c in failed))]
    if skipped:
        lines.append("Not run: " + ", ".join(skipped) + ".")
    for res in results:
        md = res.get("markdown")
        if md:
            lines += [""] + [("#" + ln if ln.startswith("## ") else ln) for ln in md.rstrip().splitlines()]
    return "\n".join(lines) + "\n"


def print_table(results: list[dict]) -> None:
    """The summary table on stdout, aligned for a terminal."""
    rows = [("bench", "measure", "result")]
    for res in results:
        name = res.get("bench", "?")
        if "error" in res and not res.get("headlines"):
            rows.append((name, "FAILED", str(res["error"])[:80]))
            continue
        rows += [(name, a, b.replace("**", "")) for a, b in headline_rows(res)]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    print()
    for i, (a, b, c) in enumerate(rows):
        print(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}")
        if i == 0:
            print(f"{'-' * widths[0]}  {'-' * widths[1]}  {'-' * 20}")


def main() -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--full", action="store_true",
                    help="run bench_profile.py and bench_query.py in their long default modes")
    ap.add_argument("--only", help="comma-separated benches to run: " + ", ".join(b[0] for b in BENCHES))
    ap.add_argument("--skip", default="", help="comma-separated benches to leave out")
    ap.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    ap.add_argument("--timeout", type=float, default=900, help="seconds allowed per bench (default 900)")
    args = ap.parse_args()
    known = {b[0] for b in BENCHES}
    only = set(filter(None, (args.only or "").split(","))) or known
    skip = set(filter(None, args.skip.split(",")))
    unknown = (only | skip) - known
    if unknown:
        ap.error(f"unknown bench(es) {', '.join(sorted(unknown))}; choose from {', '.join(b[0] for b in BENCHES)}")
    mode = "smoke" if args.smoke else "full" if args.full else "default"
    load_before, ref_us = common.load_avg(), common.reference_us()
    started = time.perf_counter()
    results: list[dict] = []
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="run_all_") as tmp:
        for name, script_name, modes in BENCHES:
            if name not in only or name in skip:
                continue
            script = HERE / script_name
            if not script.exists():
                if name in OPTIONAL:
                    skipped.append(f"{script_name} (not present)")
                    print(f"=== {name}: {script_name} not present, skipped", file=sys.stderr)
                    continue
            extra = list(modes[mode])
            if name == "system":
                bus_json = Path(tmp) / "bus.json"
                if bus_json.exists() and "--bus-json" in script.read_text():
                    extra += ["--bus-json", str(bus_json)]
            results.append(run_one(name, script, extra, Path(tmp) / f"{name}.json", args.timeout))
    total = time.perf_counter() - started
    load_after = common.load_avg()
    text = summary(results, total, mode, (load_before, load_after), ref_us, skipped)
    print_table(results)
    noun = "bench" if len(results) == 1 else "benches"
    print(f"\n{len(results)} {noun} in {total:.0f} s (mode {mode}); load average {load_before:.2f} -> "
          f"{load_after:.2f}" + (f"; not run: {', '.join(skipped)}" if skipped else ""))
    failed = [r.get("bench", "?") for r in results
              if "error" in r or r.get("exit_code") != 0 or not all(c.get("ok") for c in r.get("checks", []))]
    if failed:
        print("FAILED: " + ", ".join(failed))
    if args.json:
        common.write_json(args.json, {"mode": mode, "seconds": round(total, 1),
                                      "load_avg_1m": [load_before, load_after], "reference_us": ref_us,
                                      "results": results, "markdown": text})
    if (args.append or not args.no_append) and mode != "smoke":
        common.append_results(text)
        print(f"appended to {common.RESULTS}")
    elif args.append and mode == "smoke":
        print("--smoke results are not appended to RESULTS.md")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
