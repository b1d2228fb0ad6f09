"""The strategy manager: one OS process per enabled strategy in ``configs/strategies.json``.

It validates the file at start (a bad file is one line naming file, strategy and field,
and exit code 2), starts ``scripts/strategy_process.py NAME`` for each enabled strategy,
restarts one that dies (backoff, crash-loop limit) without touching the others, restarts
one on request (``control.strategy_manager`` ``{"command": "restart", "target": NAME}``),
and publishes ``health.strategy_manager`` once a second with every strategy's pid, uptime,
restarts, CPU, RSS, signals and last message time.
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
from trading_core.supervision import Child, child_env, python_cmd, stop_all  # noqa: E402

SERVICE = "strategy_manager"
PROCESS_SCRIPT = str(Path(__file__).resolve().parent / "strategy_process.py")


def main() -> int:
    settings = settings_mod.load()
    log = logs.setup(SERVICE, settings.log_dir, [settings.access_token])
    service.die_with_parent()
    stopping = service.stop_on_signals(lambda: None)
    try:
        configs = registry.load_strategies(settings.strategies_path)
    except registry.StrategyConfigError as exc:
        service.fatal(log, str(exc))
    enabled = [c for c in configs if c.enabled]

    bus = BusClient(settings.bus_pub, settings.bus_sub,
                    [m.control_topic(SERVICE), m.health_topic("strategy.")])
    bus.wait_ready(15)
    reporter = service.HealthReporter(bus, SERVICE)
    children = {c.name: Child(c.name, python_cmd(PROCESS_SCRIPT, c.name), child_env({}))
                for c in enabled}
    reported: dict[str, m.Health] = {}
    for child in children.values():
        child.start()
        log.info("strategy %s started (pid %d)", child.name, child.pid)
    if not enabled:
        log.warning("no enabled strategy in %s", settings.strategies_path)

    def ready() -> bool:
        return all(name in reported and reported[name].pid == child.pid
                   for name, child in children.items())

    def details() -> dict:
        out = {}
        for name, child in children.items():
            info = child.stats()
            h = reported.get(name)
            if h is not None and h.pid == child.pid:
                info["state"] = h.status
                info["signals"] = h.details.get("signals", 0)
                info["errors"] = h.details.get("errors", 0)
                info["last_message_ts"] = h.details.get("last_message_ts", 0)
            else:
                info["state"] = "starting" if child.alive() else ("failed" if child.gave_up else "restarting")
            out[name] = info
        return {"strategies": out}

    while not stopping.is_set():
        got = bus.recv(100)
        while got is not None:
            topic, msg = got
            if isinstance(msg, m.Health) and msg.service.startswith("strategy."):
                reported[msg.service.removeprefix("strategy.")] = msg
            elif isinstance(msg, m.Control) and msg.command == "restart":
                if msg.target in children:
                    log.info("restart of %s requested", msg.target)
                    children[msg.target].restart_now()
                    log.info("strategy %s restarted (pid %d)", msg.target, children[msg.target].pid)
                else:
                    log.warning("restart requested for unknown strategy '%s'", msg.target)
            got = bus.recv(0)
        for child in children.values():
            event = child.check()
            if event == "exited":
                log.warning("strategy %s (pid %d) exited with code %s; restarting in %.1f s",
                            child.name, child.pid, child.last_exit, child.restart_at - time.monotonic())
            elif event == "restarted":
                log.info("strategy %s restarted (pid %d, restart %d)", child.name, child.pid, child.restarts)
            elif event == "crash_loop":
                log.error("strategy %s crashed %d times in %.0f s; giving up on it (see logs/strategy.%s.log)",
                          child.name, len(child.deaths), child.policy.window_s, child.name)
            elif event == "config_error":
                log.error("strategy %s stopped with a configuration error; not restarting", child.name)
        reporter.maybe_send("ready" if ready() else "starting", **details())

    reporter.send("stopping")
    stop_all(list(children.values()), timeout_s=2.0)
    for child in children.values():
        log.info("strategy %s stopped (exit %s)", child.name, child.last_exit)
    bus.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
