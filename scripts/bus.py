"""The bus process: a ZeroMQ XSUB/XPUB proxy on BUS_PUB / BUS_SUB (127.0.0.1 by default).

Started by ``run.py``; run alone with ``python3 scripts/bus.py``.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zmq  # noqa: E402

from trading_core import bus, logs, settings as settings_mod  # noqa: E402
from scripts import scheduling, service  # noqa: E402


def main() -> int:
    settings = settings_mod.load()
    log = logs.setup("bus", settings.log_dir, [settings.access_token])
    scheduling.use_tick_path_priority(settings, log)
    ctx = zmq.Context.instance()
    service.die_with_parent()
    # The proxy holds no state: on SIGTERM just leave (pyzmq re-raises from the blocking call).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        log.info("proxy: publishers -> %s, subscribers <- %s", settings.bus_pub, settings.bus_sub)
        bus.run_proxy(settings.bus_pub, settings.bus_sub, ctx)
    except zmq.ZMQError as exc:
        log.error("cannot bind bus endpoints %s / %s: %s", settings.bus_pub, settings.bus_sub, exc)
        return service.EXIT_CONFIG
    except KeyboardInterrupt:
        pass
    log.info("proxy stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
