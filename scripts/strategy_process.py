"""One strategy in its own OS process: connects a :class:`strategy.base.Strategy` to the bus.

The strategy itself does no I/O; this wrapper subscribes to its instruments' ticks and
1-minute candles (exact topics), calls its hooks, publishes its signals on
``signal.<name>`` and its health on ``health.strategy.<name>``. An exception in a hook is
logged with its traceback and counted, and the process keeps running, so one bad candle
does not wipe the strategy's state for the day.

Started by ``scripts/strategy_manager.py``: ``python3 scripts/strategy_process.py NAME``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts import service  # noqa: E402
from strategy import registry  # noqa: E402
from trading_core import logs, messages as m, settings as settings_mod  # noqa: E402
from trading_core.bus import BusClient  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: strategy_process.py NAME", file=sys.stderr)
        return service.EXIT_CONFIG
    name = argv[0]
    settings = settings_mod.load()
    log = logs.setup(f"strategy.{name}", settings.log_dir, [settings.access_token])
    service.die_with_parent()
    stopping = service.stop_on_signals(lambda: None)
    try:
        configs = {c.name: c for c in registry.load_strategies(settings.strategies_path)}
    except registry.StrategyConfigError as exc:
        service.fatal(log, str(exc))
    if name not in configs:
        service.fatal(log, f"{settings.strategies_path}: no strategy named '{name}'")
    config = configs[name]

    subscriptions: list[bytes] = []
    for key in config.instruments:
        subscriptions += [m.exact(m.tick_topic(key)), m.exact(m.candle_topic(key)),
                          m.exact(m.profile_topic(key))]
    bus = BusClient(settings.bus_pub, settings.bus_sub, subscriptions)
    stats = {"signals": 0, "errors": 0, "ticks": 0, "candles": 0, "last_message_ts": 0}

    def emit(signal: m.Signal) -> None:
        bus.publish(m.signal_topic(name), signal)
        stats["signals"] += 1
        log.info("signal %s %s entry %.2f SL %.2f target %.2f: %s", signal.side,
                 signal.instrument_key, signal.entry, signal.stop_loss, signal.target, signal.reason)

    strat = registry.build(config, emit)
    health = service.HealthReporter(bus, f"strategy.{name}")
    if not bus.wait_ready(15):
        log.warning("bus did not answer within 15 s")
    strat.on_start()
    health.send("ready", **stats)
    log.info("started on %s", ", ".join(config.instruments))

    handlers = {m.Tick: ("ticks", strat.on_tick), m.Candle: ("candles", strat.on_candle)}
    while not stopping.is_set():
        frame = bus.recv_raw(200)
        if frame is not None:
            try:
                _, msg = m.decode(frame)
            except ValueError as exc:
                stats["errors"] += 1
                log.warning("undecodable bus frame skipped: %s", exc)
                continue
            counter, hook = handlers.get(type(msg), ("profiles", strat.on_profile))
            stats[counter] = stats.get(counter, 0) + 1
            stats["last_message_ts"] = int(time.time() * 1000)
            try:
                hook(msg)
            except Exception:  # a strategy bug: report it, keep the process and its state
                stats["errors"] += 1
                log.exception("%s.%s failed on %s", name, hook.__name__, msg)
        health.maybe_send("running", **stats)
    health.send("stopping", **stats)
    bus.close()
    log.info("stopped (%d signals)", stats["signals"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
