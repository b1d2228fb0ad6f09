"""The latency floor of the bus alone: one publisher -> the project's proxy -> N subscriber
processes, real tick frames at a paced rate, nothing else running. What ``bench_system.py``'s
tick -> strategy latency cannot go below on this machine.

    python3 benchmarks/bus_latency_floor.py                       # 10,000 ticks/s, 4 subscribers, tcp
    python3 benchmarks/bus_latency_floor.py --rate 1000 --subscribers 1
    python3 benchmarks/bus_latency_floor.py --ipc                 # ipc:// endpoints instead of tcp
    python3 benchmarks/bus_latency_floor.py --direct              # no proxy: subscribers connect to the publisher

The publisher paces like a replay (the ticks due within 2 ms sent together, each stamped with
``time.time_ns()`` when its burst starts) and sends the frames ``BusClient.publish`` sends; each
subscriber (``BusClient.recv_batch`` + ``messages.decode``) stamps each tick on arrival. Prints
p50 / p99 / p99.9 / max in microseconds over every subscriber's ticks.

``--direct`` leaves the proxy out: the publisher binds its own socket (an XPUB, to see every
subscription arrive before it starts) and the subscribers connect to it, which is what a tick
path without the bus's proxy would cost (two wake-ups of the proxy's threads fewer per burst).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402
import zmq  # noqa: E402

from tests.system_harness import free_port  # noqa: E402
from trading_core import messages as m  # noqa: E402
from trading_core.bus import HWM, BusClient, run_proxy  # noqa: E402


def _subscriber(pub: str, sub: str, n: int, out: mp.Queue, direct: bool = False) -> None:
    bus = BusClient(pub, sub, ["tick."])
    if not direct:                          # no proxy to send a probe through: the publisher waits
        bus.wait_ready(10)
    out.put("ready")
    # Stamps go into a preallocated array: a growing list of tuples made the garbage collector
    # scan it again and again, and those pauses were the "floor" this bench used to report.
    got = np.zeros((n, 2), dtype=np.int64)
    k = 0
    while k < n:
        for frame in bus.recv_batch(1000):
            got[k] = (m.decode(frame)[1].seq, time.time_ns())
            k += 1
    out.put(got)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--rate", type=float, default=10_000, help="ticks per second (default 10,000)")
    ap.add_argument("--subscribers", type=int, default=4)
    ap.add_argument("--ticks", type=int, default=50_000)
    ap.add_argument("--ipc", action="store_true", help="ipc:// endpoints (Unix sockets) instead of tcp")
    ap.add_argument("--direct", action="store_true", help="no proxy: the subscribers connect to the publisher")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="amt-floor-")
    pub, sub = ((f"ipc://{tmp}/pub", f"ipc://{tmp}/sub") if args.ipc else
                (f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"))
    if args.direct:
        xpub = zmq.Context.instance().socket(zmq.XPUB)
        xpub.setsockopt(zmq.SNDHWM, HWM)
        xpub.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscriber's subscription, not only the first
        xpub.bind(sub)
        send = xpub.send
    else:
        mp.Process(target=run_proxy, args=(pub, sub), daemon=True).start()
    out: mp.Queue = mp.Queue()
    subs = [mp.Process(target=_subscriber, args=(pub, sub, args.ticks, out, args.direct), daemon=True)
            for _ in range(args.subscribers)]
    for p in subs:
        p.start()
    for _ in subs:
        out.get(timeout=30)
    if args.direct:
        for _ in subs:                      # each subscriber's "tick." subscription has arrived
            xpub.recv()
    else:
        bus = BusClient(pub, sub)
        bus.wait_ready(10)
        send = bus.pub.send
    time.sleep(0.5)
    stamps = np.zeros(args.ticks, dtype=np.int64)
    topic = m.tick_topic("NSE_FO|NIFTY-I")
    t0, i = time.monotonic(), 0
    while i < args.ticks:
        ahead = i / args.rate - (time.monotonic() - t0)
        if ahead > 0:                       # as the replay paces: one burst per 2 ms, no spinning
            time.sleep(ahead)
        k = min(args.ticks, max(i + 1, int((time.monotonic() - t0 + 0.002) * args.rate) + 1))
        now = time.time_ns()
        for seq in range(i, k):
            send(m.encode(topic, m.Tick(instrument_key="NSE_FO|NIFTY-I", ts=1_668_742_500_000 + seq,
                                        ltp=18_300.0, ltq=50, oi=1e7, seq=seq, source="replay")))
            stamps[seq] = now
        i = k
    lat = np.concatenate([(lambda a: a[:, 1] - stamps[a[:, 0]])(out.get(timeout=60))
                          for _ in subs]) / 1e3
    p50, p99, p999 = np.percentile(lat, [50, 99, 99.9])
    print(f"bus latency floor, {'ipc' if args.ipc else 'tcp'}{', direct (no proxy)' if args.direct else ''}, "
          f"{args.rate:,.0f} ticks/s, {args.subscribers} "
          f"subscriber(s), {args.ticks:,} ticks: p50 {p50:,.0f} us, p99 {p99:,.0f} us, p99.9 {p999:,.0f} us, "
          f"max {lat.max():,.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
