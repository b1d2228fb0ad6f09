"""What every benchmark in ``benchmarks/`` shares: the command-line convention, the machine and
version header, timing helpers, the ``--json`` result file and the append to ``RESULTS.md``.

Command-line convention (:func:`parser`): every bench takes ``--smoke`` (about a second, for
``tests/test_benchmarks.py``: proves the bench still runs and its checks hold; the numbers mean
little), ``--json PATH`` (write the result as JSON, see below) and ``--append`` (append its
markdown section to ``benchmarks/RESULTS.md``). Without ``--smoke`` a new bench runs for a few
tens of seconds; the older, longer ones (``bench_profile.py``, ``bench_query.py``) also take
``--quick``, the mode ``run_all.py`` uses. A bench exits with code 1 when one of its checks
failed (messages lost, rows missing), after writing its result.

JSON result (one object, :meth:`Bench.result`)::

    {"bench": "bus", "title": "...", "date": "2026-11-25", "mode": "smoke|quick|default",
     "command": "cd /work/main && python3 benchmarks/bench_bus.py --smoke",
     "machine": {"cores": 2, "cpu": "...", "os": "Linux 6.1"}, "versions": {"pyzmq": "27.3.0", ...},
     "load_avg_1m": [before, after], "reference_us": 27.0, "seconds": 12.3,
     "rows": [["measure", "result text"], ...],                       # the markdown table
     "headlines": [{"name": "...", "value": 1.23e6, "unit": "msg/s", "text": "1.23 M msg/s"}],
     "checks": [{"name": "...", "ok": true, "detail": "..."}],
     "data": {...},                                                   # bench-specific raw numbers
     "markdown": "## ...\\n..."}                                       # the section for RESULTS.md

``run_all.py`` reads ``headlines`` for its summary table and ``markdown`` for RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DATA = Path(os.environ.get("AMT_SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()
"""The recorded data (``../shared/data``, or ``$AMT_SHARED_DATA``)."""
FO_DAY = DATA / "nse-fo-ticks" / "2022-11-18"
"""The real F&O tick day: 2.78 M prints of 1,381 contracts."""
RESULTS = ROOT / "benchmarks" / "RESULTS.md"

# import name -> name shown in the header
_DIST_NAMES = {"zmq": "pyzmq", "duckdb": "duckdb", "msgspec": "msgspec", "orjson": "orjson",
               "numpy": "numpy", "polars": "polars", "pyarrow": "pyarrow", "psutil": "psutil"}


def parser(doc: str, quick: bool = False) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with the shared options ``--smoke``, ``--json PATH``, ``--append``
    (and ``--quick`` if ``quick``). ``doc``: the bench module's docstring (first line = description)."""
    ap = argparse.ArgumentParser(description=doc.strip().splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
    ap.add_argument("--smoke", action="store_true", help="run for about a second (for the test suite)")
    if quick:
        ap.add_argument("--quick", action="store_true", help="the shorter run that run_all.py uses")
    ap.add_argument("--json", metavar="PATH", type=Path, help="write the result as JSON to PATH")
    ap.add_argument("--append", action="store_true", help=f"append the markdown section to {RESULTS}")
    return ap


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (else ``platform.machine()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """``{"cores": int, "cpu": str, "os": str, "python": str}`` of this machine."""
    return {"cores": os.cpu_count(), "cpu": cpu_model(), "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version()}


def versions(modules: Iterable[str]) -> dict[str, str]:
    """Installed versions of the given import names, e.g. ``["zmq", "duckdb"]`` ->
    ``{"pyzmq": "27.3.0", "duckdb": "2.0.1"}`` (libzmq's version added for ``zmq``)."""
    out = {"Python": platform.python_version()}
    for name in modules:
        mod = importlib.import_module(name)
        out[_DIST_NAMES.get(name, name)] = getattr(mod, "__version__", "?")
        if name == "zmq":
            out["libzmq"] = mod.zmq_version()
    return out


def reference_us() -> float:
    """Microseconds for ``sum(range(1000))`` (best of 5 x 2,000): how fast this machine runs Python
    right now (lower is faster), so runs on other machines or under other load can be compared."""
    import timeit
    return min(timeit.repeat("sum(range(1000))", number=2000, repeat=5)) / 2000 * 1e6


def load_avg() -> float:
    """The 1-minute load average (other engineers' work shares the cores: recorded before/after)."""
    return os.getloadavg()[0]


def command_line(argv: list[str] | None = None) -> str:
    """The exact command that ran this bench, relative to the repository's root."""
    argv = sys.argv if argv is None else argv
    script = Path(argv[0]).resolve()
    try:
        script_s = str(script.relative_to(ROOT))
    except ValueError:
        script_s = str(script)
    return f"cd {ROOT} && python3 " + " ".join(shlex.quote(a) for a in [script_s, *argv[1:]])


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """Smallest wall time, seconds, of ``repeat`` calls of ``fn`` (the least disturbed run)."""
    best = float("inf")
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def human_rate(per_s: float, unit: str) -> str:
    """``1234567, "msg/s"`` -> ``"1.23 M msg/s"``; ``12345`` -> ``"12.3 k ..."``."""
    if per_s >= 1e6:
        return f"{per_s / 1e6:.2f} M {unit}"
    if per_s >= 1e4:
        return f"{per_s / 1e3:.1f} k {unit}"
    return f"{per_s:,.0f} {unit}"


def header_lines(title: str, load_before: float, load_after: float, modules: Iterable[str],
                 command: str, note: str = "", ref_us: float | None = None) -> list[str]:
    """The markdown head of a RESULTS.md section: title with today's date, machine, versions,
    load average before/after, the Python reference loop (:func:`reference_us`, measured now if
    ``ref_us`` is None), the exact command (and ``note``)."""
    mach = machine()
    ref_us = reference_us() if ref_us is None else ref_us
    vers = ", ".join(f"{k} {v}" for k, v in versions(modules).items())
    lines = [f"## {title} ({dt.date.today().isoformat()})", "",
             f"Machine: {mach['cores']} cores, {mach['cpu']}; {mach['os']}. {vers}.",
             f"Load average (1 min) before/after: {load_before:.2f}/{load_after:.2f} (other work shares "
             "the cores; numbers on an idle machine are higher); Python reference loop `sum(range(1000))` "
             f"{ref_us:.1f} us.",
             f"Command: `{command}`" + (f" ({note})" if note else "")]
    return lines


def append_results(text: str, path: Path = RESULTS) -> None:
    """Append a markdown section to ``RESULTS.md`` (created with its title if missing), separated
    from the previous section by a blank line."""
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a") as f:
        f.write("# Benchmark results\n\n" if new else "\n")
        f.write(text if text.endswith("\n") else text + "\n")


class Bench:
    """Collects one bench run: rows of its markdown table, headline numbers and checks.

    ``name``: short id (``"bus"``); ``title``: the RESULTS.md section title; ``modules``: import
    names whose versions go in the header; ``mode``: ``"smoke"``, ``"quick"`` or ``"default"``.
    The load average is read at construction and again in :meth:`result`; the Python reference
    loop (:func:`reference_us`) at construction.
    """

    def __init__(self, name: str, title: str, modules: Iterable[str], mode: str, note: str = ""):
        self.name, self.title, self.modules, self.mode, self.note = name, title, list(modules), mode, note
        self.command = command_line()
        self.load_before = load_avg()
        self.ref_us = reference_us()
        self.started = time.perf_counter()
        self.rows: list[tuple[str, str]] = []
        self.headlines: list[dict] = []
        self.checks: list[dict] = []
        self.data: dict = {}
        self.footer: list[str] = []

    def row(self, measure: str, result: str, progress: bool = True) -> None:
        """Add one row to the section's table (and print it to stderr as progress)."""
        self.rows.append((measure, result))
        if progress:
            print(f"[{self.name}] {measure}: {result}", file=sys.stderr, flush=True)

    def headline(self, name: str, value: float, unit: str, text: str | None = None) -> None:
        """A number for run_all's summary table: ``value`` in ``unit`` (e.g. 1.2e6, "msg/s")."""
        self.headlines.append({"name": name, "value": value, "unit": unit,
                               "text": text if text is not None else f"{value:,.3g} {unit}"})

    def check(self, name: str, ok: bool, detail: str) -> bool:
        """Record a correctness check (e.g. received == sent); a failed one makes the exit code 1."""
        self.checks.append({"name": name, "ok": bool(ok), "detail": detail})
        if not ok:
            print(f"[{self.name}] CHECK FAILED: {name}: {detail}", file=sys.stderr, flush=True)
        return bool(ok)

    @property
    def ok(self) -> bool:
        return all(c["ok"] for c in self.checks)

    def result(self) -> dict:
        """The JSON result (see the module doc), with the markdown section."""
        load_after = load_avg()
        lines = header_lines(self.title, self.load_before, load_after, self.modules, self.command, self.note,
                             self.ref_us)
        lines += ["", "| Measure | Result |", "|---|---|"]
        lines += [f"| {a} | {b} |" for a, b in self.rows]
        failed = [c for c in self.checks if not c["ok"]]
        if self.checks:
            lines += ["", "Checks: " + ("all passed: " if not failed else "**FAILED**: ")
                      + "; ".join(f"{c['name']} ({c['detail']})" for c in (failed or self.checks))]
        if self.footer:
            lines += [""] + self.footer
        return {"bench": self.name, "title": self.title, "date": dt.date.today().isoformat(),
                "mode": self.mode, "command": self.command, "machine": machine(),
                "versions": versions(self.modules), "load_avg_1m": [self.load_before, load_after],
                "reference_us": round(self.ref_us, 2), "seconds": round(time.perf_counter() - self.started, 2),
                "rows": [list(r) for r in self.rows], "headlines": self.headlines, "checks": self.checks,
                "data": self.data, "markdown": "\n".join(lines) + "\n"}

    def finish(self, args: argparse.Namespace) -> int:
        """Print the markdown section, write ``--json`` and ``--append`` as asked; return the exit
        code (0, or 1 if a check failed)."""
        res = self.result()
        print(res["markdown"])
        if getattr(args, "json", None):
            write_json(args.json, res)
        if getattr(args, "append", False):
            append_results(res["markdown"])
        return 0 if self.ok else 1


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as indented JSON to ``path`` (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


def mode_of(args: argparse.Namespace) -> str:
    """``"smoke"``, ``"quick"`` or ``"default"`` from the parsed shared options."""
    if getattr(args, "smoke", False):
        return "smoke"
    if getattr(args, "quick", False):
        return "quick"
    return "default"


def tick_subset(smoke: bool = False) -> list[str]:
    """Instrument keys of the real-tick subset the raw benches use: the 9 futures of
    2022-11-18 and its 20 busiest option contracts (by file size; 481,171 ticks in all), or
    the futures alone for ``smoke`` (43,441 ticks)."""
    from data_handling.instruments import tick_file_key
    futures = sorted((FO_DAY / "Futures").glob("*.csv"))
    keys = [tick_file_key(p) for p in futures]
    if not smoke:
        options = sorted((FO_DAY / "Options").glob("*.csv"), key=lambda p: (-p.stat().st_size, p.name))
        keys += [tick_file_key(p) for p in options[:20]]
    return keys


def real_ticks(n: int | None = None, smoke: bool = False):
    """Real ticks of :func:`tick_subset` in replay order (``data_handling.replay.ReplaySource``,
    as the ingestor reads them): a list of ``messages.Tick``, the first ``n`` if given.
    Raises ``FileNotFoundError`` when the recorded data is missing."""
    from data_handling.replay import ReplaySource
    if not FO_DAY.is_dir():
        raise FileNotFoundError(f"recorded F&O day not found at {FO_DAY} (set AMT_SHARED_DATA)")
    src = ReplaySource(FO_DAY, instruments=tick_subset(smoke), limit=n)
    return list(src.ticks())
