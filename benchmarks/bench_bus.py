"""Raw throughput of the ZeroMQ bus: one publisher -> the project's proxy -> 1 and 4 subscriber
processes, real ticks in the project's wire encoding, every message counted (zero-loss check).

    python3 benchmarks/bench_bus.py                  # about 30 s; prints a markdown section
    python3 benchmarks/bench_bus.py --append         # ... and appends it to benchmarks/RESULTS.md
    python3 benchmarks/bench_bus.py --quick          # about 15 s: 200,000 messages, one run per phase (run_all.py)
    python3 benchmarks/bench_bus.py --smoke          # a couple of seconds (tests/test_benchmarks.py)
    python3 benchmarks/bench_bus.py --messages 1000000

Set-up, as the running system has it:
- the proxy is ``scripts/bus.py`` in its own process (``trading_core.bus.run_proxy``: XSUB/XPUB,
  high-water marks of 2 M messages), on free ``tcp://127.0.0.1`` ports (``AMT_BUS_PUB`` /
  ``AMT_BUS_SUB``), logging to a temporary folder;
- the publisher (this process) is a ``trading_core.bus.BusClient`` sending pre-encoded frames with
  ``publish_raw``, as the ingestor does; frames are ``messages.encode(tick_topic(key), tick)`` of
  real ticks (``ReplaySource`` of ``nse-fo-ticks/2022-11-18``, the 9 futures and 20 busiest
  options, cycled up to ``--messages``); encoding cost is measured apart in ``bench_codec.py``;
- each subscriber is its own process with a ``BusClient`` subscribed to ``tick.``, waits until
  its subscription is live (``wait_ready``), then counts frames (``recv`` of the SUB socket, as
  ``BusClient.recv_raw``) until it has them all or none came for ``--idle`` seconds.
The publisher starts only after every subscriber is ready and its own ``wait_ready`` returned, so
no message is lost to the slow-joiner window; any shortfall is a real drop and fails the check.

Phases: 1 subscriber; 4 subscribers; then (not with ``--smoke``) 1 subscriber that also decodes
every frame with ``messages.decode`` (what a real consumer pays); 1 subscriber with the same
messages sent as two frames (``send_multipart``/``recv_multipart``), the layout the project
rejected; and 1 subscriber with the publisher calling ``socket.send(frame)`` (copy=True) instead of
``publish_raw``'s ``send(frame, copy=False)``, which for frames this small is the slower call.
Each phase runs ``--repeat`` times (default 2, 1 with ``--quick``) and the fastest run is reported; every run must
deliver every message. Reported per phase: the publisher's send rate, the delivery rate (messages
/ time from the first send to the last message received by the slowest subscriber, clocks from
``time.monotonic``, system-wide on Linux), messages received per subscriber, and CPU seconds
used by publisher (with its ZeroMQ I/O thread), proxy and subscribers (the bus is CPU-bound).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import zmq  # noqa: E402

from trading_core import messages as m  # noqa: E402
from trading_core.bus import BusClient  # noqa: E402


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (asked of the kernel)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------- subscriber
def subscriber(pub_ep: str, sub_ep: str, expect: int, decode: bool, multipart: bool, idle_s: float,
               start_s: float) -> dict:
    """One subscriber process's work: subscribe to ``tick.``, say ready on stdout, count frames.

    Returns ``{"ready", "count", "first", "last", "cpu_s", "bad"}``: ``first``/``last`` are
    ``time.monotonic()`` (system-wide on Linux) of the first and last message, ``last`` None if
    it stopped on the idle timeout (messages were lost); ``bad`` frames that failed to decode.
    """
    client = BusClient(pub_ep, sub_ep, ["tick."])
    ready = client.wait_ready(30)
    print(json.dumps({"ready": ready}), flush=True)
    sock = client.sub
    recv = sock.recv_multipart if multipart else sock.recv
    count = bad = 0
    first = last = None
    cpu0 = time.process_time()
    sock.setsockopt(zmq.RCVTIMEO, int(start_s * 1000))
    try:
        frame = recv()
        first = time.monotonic()
        count = 1
        sock.setsockopt(zmq.RCVTIMEO, int(idle_s * 1000))
        if decode:
            dec = m.decode
            while count < expect:
                try:
                    dec(frame)
                except ValueError:
                    bad += 1
                frame = recv()
                count += 1
            try:
                dec(frame)
            except ValueError:
                bad += 1
        else:
            while count < expect:
                frame = recv()
                count += 1
        last = time.monotonic()
    except zmq.Again:
        pass
    cpu = time.process_time() - cpu0
    client.close()
    return {"ready": ready, "count": count, "first": first, "last": last, "cpu_s": cpu, "bad": bad}


# ----------------------------------------------------------------------------------- publisher side
class Proxy:
    """``scripts/bus.py`` in its own process on free 127.0.0.1 ports; a context manager."""

    def __init__(self, log_dir: Path):
        self.pub = f"tcp://127.0.0.1:{free_port()}"
        self.sub = f"tcp://127.0.0.1:{free_port()}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AMT_")}
        env.update(AMT_BUS_PUB=self.pub, AMT_BUS_SUB=self.sub, AMT_LOG_DIR=str(log_dir))
        self.proc = subprocess.Popen([sys.executable, str(HERE.parent / "scripts" / "bus.py")], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        import psutil
        self.ps = psutil.Process(self.proc.pid)

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the proxy has used so far."""
        t = self.ps.cpu_times()
        return t.user + t.system

    def __enter__(self) -> "Proxy":
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def phase(proxy: Proxy, frames: list[bytes], n_subs: int, decode: bool = False, multipart: bool = False,
          copy: bool = False, idle_s: float = 5.0) -> dict:
    """Run one phase (see the module doc). ``copy``: send with ``socket.send(frame)`` (copy=True)
    instead of the project's ``BusClient.publish_raw`` (copy=False). Returns the measurements."""
    n = len(frames)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_subscriber", proxy.pub, proxy.sub, str(n),
           str(int(decode)), str(int(multipart)), str(idle_s)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(n_subs)]
    try:
        for p in procs:
            line = p.stdout.readline()
            if not line or not json.loads(line).get("ready"):
                raise RuntimeError(f"a subscriber did not get ready (exit code {p.poll()}): {line!r}")
        client = BusClient(proxy.pub, proxy.sub)
        if not client.wait_ready(30):
            raise RuntimeError(f"the publisher's probe did not come back through the proxy at {proxy.pub}")
        proxy_cpu0 = proxy.cpu_s()
        cpu0 = time.process_time()
        t0 = time.monotonic()
        if multipart:
            parts = [list(f.partition(m.SEPARATOR)[::2]) for f in frames]
            cpu0 = time.process_time()
            t0 = time.monotonic()
            send = client.pub.send_multipart
            for p in parts:
                send(p, copy=False)
        elif copy:
            send = client.pub.send
            for f in frames:
                send(f)
        else:
            publish = client.publish_raw
            for f in frames:
                publish(f)
        t_sent = time.monotonic()
        pub_cpu = time.process_time() - cpu0
        results = []
        for p in procs:
            out, _ = p.communicate(timeout=600)
            results.append(json.loads(out.strip().splitlines()[-1]))
        proxy_cpu = proxy.cpu_s() - proxy_cpu0
        client.close()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    counts = [r["count"] for r in results]
    complete = all(r["last"] is not None for r in results)
    t_end = max(r["last"] for r in results) if complete else None
    return {"subscribers": n_subs, "decode": decode, "multipart": multipart, "copy": copy, "sent": n, "counts": counts,
            "lost": [n - c for c in counts], "bad": sum(r["bad"] for r in results),
            "send_rate": n / (t_sent - t0), "delivery_rate": n / (t_end - t0) if complete else None,
            "cpu_s": {"publisher": pub_cpu, "proxy": proxy_cpu,
                      "subscribers": [round(r["cpu_s"], 3) for r in results]},
            "seconds": (t_end - t0) if complete else None}


def describe(r: dict) -> tuple[str, str]:
    """A table row for one phase's result."""
    from common import human_rate
    what = (f"{r['subscribers']} subscriber{'s' if r['subscribers'] > 1 else ''}"
            + (", each decoding every frame (messages.decode)" if r["decode"] else "")
            + (", two-frame messages (send_multipart)" if r["multipart"] else "")
            + (", publisher sends with `socket.send(frame)` (copy=True)" if r.get("copy") else ""))
    lost = sum(r["lost"])
    recv = ("received " + " / ".join(f"{c:,}" for c in r["counts"]) + f" of {r['sent']:,} "
            + ("(none lost)" if lost == 0 else f"(**{lost:,} LOST**)"))
    rate = (f"**{human_rate(r['delivery_rate'], 'msg/s')} delivered** to every subscriber"
            if r["delivery_rate"] else "delivery incomplete")
    cpu = r["cpu_s"]
    cpu_s = (f"CPU s: publisher {cpu['publisher']:.2f}, proxy {cpu['proxy']:.2f}, subscribers "
             + " / ".join(f"{c:.2f}" for c in cpu["subscribers"]))
    return what, f"{rate}; publisher sent at {human_rate(r['send_rate'], 'msg/s')}; {recv}; {cpu_s}"


def main() -> int:
    import common
    ap = common.parser(__doc__, quick=True)
    ap.add_argument("--messages", type=int,
                    help="messages per phase (default 400,000; 200,000 with --quick, 20,000 with --smoke)")
    ap.add_argument("--repeat", type=int, help="runs of each phase, the fastest reported (default 2; 1 with "
                    "--quick or --smoke); every run must deliver every message")
    ap.add_argument("--idle", type=float, default=5.0,
                    help="a subscriber stops after this many seconds without a message (default 5)")
    args = ap.parse_args()
    mode = common.mode_of(args)
    n = args.messages or {"smoke": 20_000, "quick": 200_000}.get(mode, 400_000)
    repeat = args.repeat or (2 if mode == "default" else 1)
    bench = common.Bench("bus", "Bus throughput: publisher -> proxy process -> subscriber processes",
                         ["zmq", "msgspec"], mode,
                         note=(f"fastest of {repeat} runs per phase" if repeat > 1 else "one run per phase")
                         + "; proxy = scripts/bus.py in its own process")
    if n < 1 or repeat < 1:
        ap.error(f"--messages and --repeat must be at least 1, got {n} and {repeat}")
    ticks = common.real_ticks(None if n > 50_000 else n, smoke=args.smoke)
    base = [m.encode(m.tick_topic(t.instrument_key), t) for t in ticks]
    frames = [base[i % len(base)] for i in range(n)]
    bench.data["frame_bytes_avg"] = sum(len(f) for f in base) / len(base)
    bench.data["distinct_frames"] = len(base)
    phases = [dict(n_subs=1), dict(n_subs=4)]
    if not args.smoke:
        phases += [dict(n_subs=1, decode=True), dict(n_subs=1, multipart=True), dict(n_subs=1, copy=True)]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_bus_") as tmp, Proxy(Path(tmp)) as proxy:
        for ph in phases:
            runs = [phase(proxy, frames, idle_s=args.idle, **ph) for _ in range(repeat)]
            complete = [r for r in runs if r["delivery_rate"] is not None]
            r = max(complete, key=lambda x: x["delivery_rate"]) if len(complete) == len(runs) else runs[0]
            r["runs_delivery_rate"] = [x["delivery_rate"] for x in runs]
            results.append(r)
            bench.row(*describe(r))
            label = describe(r)[0]
            lost = sum(sum(x["lost"]) for x in runs)
            bad = sum(x["bad"] for x in runs)
            bench.check(f"{label}: every message received", lost == 0 and bad == 0,
                        f"{min(min(x['counts']) for x in runs):,} of {n:,} at the emptiest subscriber "
                        f"in {repeat} run(s), {bad} undecodable")
        if proxy.proc.poll() is not None:
            bench.check("proxy alive", False, f"scripts/bus.py exited with {proxy.proc.returncode}: "
                        f"{proxy.proc.stderr.read().decode(errors='replace')[-300:]}")
    bench.data["phases"] = results
    for r in results:
        if r["delivery_rate"] is None:
            continue
        tag = ("1 sub + decode" if r["decode"] else "1 sub, multipart" if r["multipart"]
               else "1 sub, send copy=True" if r["copy"]
               else f"{r['subscribers']} sub{'s' if r['subscribers'] > 1 else ''}")
        bench.headline(f"bus PUB->proxy->SUB, {tag}", r["delivery_rate"], "msg/s",
                       common.human_rate(r["delivery_rate"], "msg/s") + " each")
    bench.footer = [
        f"{n:,} messages per phase: real tick frames of {bench.data['frame_bytes_avg']:.0f} bytes on "
        f"average ({len(base):,} distinct, cycled). The bus is CPU-bound: publisher, proxy and "
        "subscribers share the machine's cores, so with 4 subscribers each message is copied to 4 "
        "queues by the proxy and received by 4 Python processes; the delivery rate is per subscriber "
        "(every subscriber got every message). High-water marks are the project's (2 M messages), so "
        "a slow subscriber queues rather than drops: a shortfall would show as LOST."]
    return bench.finish(args)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_subscriber":
        pub_ep, sub_ep, expect, dec, multi, idle = sys.argv[2:8]
        res = subscriber(pub_ep, sub_ep, int(expect), dec == "1", multi == "1", float(idle), start_s=60.0)
        print(json.dumps(res), flush=True)
        sys.exit(0)
    sys.exit(main())
