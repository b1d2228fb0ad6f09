"""The strategy manager: one OS process per enabled strategy in ``configs/strategies.json``.

- Validates the file at start (the same validation as ``scripts/validate_strategies.py``: schema,
  params, every rule expression compiled); a bad file is one line naming file, strategy and field,
  and exit code 2.
- Starts ``scripts/strategy_process.py NAME`` for each enabled strategy, handing it its validated
  config (``AMT_STRATEGY_CONFIG``) and the keys of its signals already seen on the bus
  (``AMT_EMITTED_SIGNALS``, so a restarted strategy does not send them again).
- Watches them (psutil: alive, CPU, RSS; heartbeats: each strategy's ``health.strategy.<NAME>``).
  One that dies is restarted with backoff (0.5 s doubling, capped; more than 5 deaths in 2 minutes
  and it is given up, shown as ``failed``). One alive but silent for its ``heartbeat_timeout_s``
  (stuck in a loop) is killed, then restarted the same way. The others are never touched.
- Obeys ``control.strategy_manager`` commands (from ``python3 run.py restart NAME`` and the
  browser's REST endpoint), answering each on ``reply.strategy_manager``:
  ``restart`` (re-reads and re-validates the file, so edited params apply to that strategy only;
  a bad file refuses the restart and keeps the running process), ``enable``, ``disable`` (for this
  run; the file is not rewritten).
- Publishes ``health.strategy_manager`` once a second: per strategy ``state`` (``starting``,
  ``waiting``, ``warming``, ``running``, ``restarting``, ``failed``, ``disabled``, ``stopped``),
  pid, uptime, restarts, CPU %, RSS, signals today (IST date of the latest market data seen),
  heartbeat age, last exit code.
"""

from __future__ import annotations

import collections
import datetime as _dt
import json
import os
import signal as _signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts import service  # noqa: E402
from strategy import registry  # noqa: E402
from trading_core import logs, messages as m, settings as settings_mod  # noqa: E402
from trading_core.bus import BusClient, now_ms  # noqa: E402
from trading_core.supervision import Child, child_env, python_cmd, stop_all  # noqa: E402

SERVICE = "strategy_manager"
PROCESS_SCRIPT = str(Path(__file__).resolve().parent / "strategy_process.py")
START_GRACE_S = 30.0        # a fresh process may take this long to send its first heartbeat
MAX_KEYS_PASSED = 1500      # signal keys handed to a restarted strategy (environment size)
IST_OFFSET_MS = 19_800_000


@dataclass
class StrategyChild(Child):
    """A :class:`Child` whose environment is rebuilt (``make_env``) at every (re)start."""

    make_env: Callable[[], dict[str, str]] | None = None

    def start(self) -> None:
        if self.make_env is not None:
            self.env = self.make_env()
        super().start()


@dataclass
class Slot:
    """What the manager knows about one strategy name."""

    config: registry.StrategyConfig
    child: StrategyChild | None = None
    enabled: bool = True
    health: m.Health | None = None
    last_beat: float = 0.0
    keys: collections.deque = field(default_factory=lambda: collections.deque(maxlen=MAX_KEYS_PASSED))
    signals_by_date: collections.Counter = field(default_factory=collections.Counter)
    stuck_kills: int = 0


def ist_date(ts_ms: int) -> str:
    """IST calendar date ``YYYY-MM-DD`` of an epoch-ms-UTC timestamp."""
    return (_dt.date(1970, 1, 1) + _dt.timedelta(days=(ts_ms + IST_OFFSET_MS) // 86_400_000)).isoformat()


class Manager:
    """The manager's state and decisions; :func:`main` drives it from the bus."""

    def __init__(self, settings: settings_mod.Settings, configs: list[registry.StrategyConfig], bus,
                 log) -> None:
        self.settings, self.bus, self.log = settings, bus, log
        self.slots: dict[str, Slot] = {c.name: Slot(c, enabled=c.enabled) for c in configs}
        self.last_command: dict[str, Any] = {}
        self.market_ts = 0

    # --- processes ----------------------------------------------------------------------------
    def _env(self, name: str) -> dict[str, str]:
        slot = self.slots[name]
        return child_env({"AMT_STRATEGY_CONFIG": json.dumps(slot.config.to_entry()),
                          "AMT_EMITTED_SIGNALS": json.dumps([list(k) for k in slot.keys])})

    def start(self, name: str) -> None:
        slot = self.slots[name]
        slot.child = StrategyChild(name, python_cmd(PROCESS_SCRIPT, name),
                                   make_env=lambda n=name: self._env(n))
        slot.child.start()
        slot.health, slot.last_beat = None, 0.0
        self.log.info("strategy %s started (pid %d)", name, slot.child.pid)

    def restart(self, name: str) -> tuple[int | None, int | None]:
        """Stop (if running) and start ``name`` at once; returns ``(old_pid, new_pid)``."""
        slot = self.slots[name]
        if slot.child is None:
            self.start(name)
            return None, slot.child.pid
        child = slot.child
        old = child.pid if child.alive() else None
        child.stop(2.0)
        child.gave_up = False
        child.deaths.clear()
        child.consecutive = 0
        child.restarts += 1
        child.start()
        slot.health, slot.last_beat = None, 0.0
        self.log.info("strategy %s restarted on request (pid %s -> %d)", name, old, child.pid)
        return old, child.pid

    def stop(self, name: str) -> int | None:
        slot = self.slots[name]
        if slot.child is None:
            return None
        old = slot.child.pid if slot.child.alive() else None
        slot.child.stop(2.0)
        slot.child.gave_up = True          # not restarted by check()
        self.log.info("strategy %s stopped (pid %s)", name, old)
        return old

    def check(self) -> None:
        """Poll every child: restarts with backoff, heartbeat timeouts."""
        now = time.monotonic()
        for name, slot in self.slots.items():
            child = slot.child
            if child is None:
                continue
            if child.alive() and slot.enabled:
                limit = slot.config.heartbeat_timeout_s
                if slot.last_beat:
                    silent = now - slot.last_beat
                else:                                   # not a single heartbeat yet
                    silent, limit = now - child.started_at, max(START_GRACE_S, limit)
                if silent > limit:
                    slot.stuck_kills += 1
                    self.log.error("strategy %s (pid %d) sent no heartbeat for %.0f s (stuck?); "
                                   "killing it", name, child.pid, silent)
                    try:
                        os.kill(child.pid, _signal.SIGKILL)
                        child.proc.wait(2)
                    except (ProcessLookupError, OSError, Exception):  # noqa: BLE001
                        pass
            event = child.check(now)
            if event == "exited":
                self.log.warning("strategy %s (pid %d) exited with code %s; restarting in %.1f s",
                                 name, child.pid, child.last_exit, child.restart_at - now)
            elif event == "restarted":
                slot.health, slot.last_beat = None, 0.0
                self.log.info("strategy %s restarted (pid %d, restart %d)", name, child.pid, child.restarts)
            elif event == "crash_loop":
                self.log.error("strategy %s died %d times in %.0f s; giving up on it "
                               "(see logs/strategy.%s.log; `run.py restart %s` tries again)",
                               name, len(child.deaths), child.policy.window_s, name, name)
            elif event == "config_error":
                self.log.error("strategy %s stopped with a configuration error; not restarting", name)

    # --- bus input ------------------------------------------------------------------------------
    def on_health(self, msg: m.Health) -> None:
        slot = self.slots.get(msg.service.removeprefix("strategy."))
        if slot is None or slot.child is None or msg.pid != slot.child.pid:
            return                                  # an old process's last words
        slot.health, slot.last_beat = msg, time.monotonic()
        market = msg.details.get("market_ts") or 0
        self.market_ts = max(self.market_ts, int(market))

    def on_signal(self, msg: m.Signal) -> None:
        slot = self.slots.get(msg.strategy)
        if slot is None:
            return
        slot.keys.append((msg.instrument_key, msg.side, int(msg.ts)))
        slot.signals_by_date[ist_date(msg.ts)] += 1
        self.market_ts = max(self.market_ts, int(msg.ts))

    def on_control(self, msg: m.Control) -> m.ControlReply:
        """Carry out one command; return the reply (also logged)."""
        ok, text, details = self._command(msg.command, msg.target)
        (self.log.info if ok else self.log.warning)("command %s %s: %s", msg.command, msg.target, text)
        self.last_command = {"command": msg.command, "target": msg.target, "ok": ok, "message": text,
                             "ts": now_ms()}
        return m.ControlReply(service=SERVICE, command=msg.command, target=msg.target,
                              request_ts=msg.ts, ok=ok, message=text, details=details, ts=now_ms())

    def _command(self, command: str, name: str) -> tuple[bool, str, dict[str, Any]]:
        if command not in ("restart", "enable", "disable"):
            return False, f"unknown command {command!r} (known: restart, enable, disable)", {}
        try:
            configs = {c.name: c for c in registry.load_strategies(self.settings.strategies_path)}
        except registry.StrategyConfigError as exc:
            running = "; the running process is kept" if name in self.slots else ""
            return False, f"{exc}{running}", {}
        if name not in configs:
            known = ", ".join(sorted(configs)) or "none"
            return False, f"no strategy named {name!r} in {self.settings.strategies_path} (known: {known})", {}
        config = configs[name]
        slot = self.slots.get(name)
        if slot is None:
            slot = self.slots[name] = Slot(config, enabled=config.enabled)
        changed = slot.config != config
        if config.enabled != slot.config.enabled:
            slot.enabled = config.enabled           # "enabled" was edited in the file: it wins
        slot.config = config
        if command == "disable" or (command == "restart" and not slot.enabled):
            slot.enabled = False
            old = self.stop(name)
            if command == "restart" and old is None:
                return False, f"{name} is disabled; enable it first", {}
            return True, f"{name} disabled" + (f" (pid {old} stopped)" if old else ""), {"old_pid": old}
        slot.enabled = True
        if command == "enable" and slot.child is not None and slot.child.alive():
            return True, f"{name} is already running (pid {slot.child.pid})", {"pid": slot.child.pid}
        old, new = self.restart(name)
        verb = "restarted" if command == "restart" else "enabled"
        note = " with the new configuration" if changed else ""
        pids = f"pid {old} -> {new}" if old else f"pid {new}"
        return True, f"{verb} {name}{note} ({pids})", {"old_pid": old, "pid": new, "config_changed": changed}

    # --- reporting ------------------------------------------------------------------------------
    def ready(self) -> bool:
        """True when every running strategy process has reported (so its bus subscriptions are
        live: the supervisor starts the feed only then). Dead ones do not hold it up: they
        warm-start from DuckDB when they come back."""
        return all(s.health is not None for s in self.slots.values()
                   if s.enabled and s.child is not None and s.child.alive() and not s.child.gave_up)

    def details(self) -> dict[str, Any]:
        today = ist_date(self.market_ts) if self.market_ts else None
        out = {}
        now = time.monotonic()
        for name, slot in self.slots.items():
            child = slot.child
            info: dict[str, Any] = child.stats() if child is not None else {
                "pid": None, "alive": False, "restarts": 0, "uptime_s": 0, "gave_up": False,
                "last_exit": None}
            alive = child is not None and child.alive()
            h = slot.health
            if alive and h is not None:
                state = h.status
                for k in ("signals", "errors", "last_message_ts", "market_ts", "warm", "late", "suppressed",
                          "history", "cpu_percent", "rss_bytes", "params"):
                    if k in h.details:
                        info[k] = h.details[k]
            elif alive:
                state = "starting"
            elif not slot.enabled:
                state = "disabled"
            elif child is None:
                state = "stopped"
            elif child.gave_up:
                state = "failed"
            elif child.restart_at is not None:
                state = "restarting"
            else:
                state = "stopped"
            info.update(state=state, enabled=slot.enabled, cls=slot.config.cls_name,
                        instruments=slot.config.instruments,
                        signals_today=slot.signals_by_date.get(today, 0) if today else 0,
                        signals_total=sum(slot.signals_by_date.values()),
                        heartbeat_age_s=round(now - slot.last_beat, 1) if alive and slot.last_beat else None,
                        heartbeat_timeout_s=slot.config.heartbeat_timeout_s, stuck_kills=slot.stuck_kills)
            out[name] = info
        return {"strategies": out, "market_date": today, "last_command": self.last_command}


def main() -> int:
    settings = settings_mod.load()
    log = logs.setup(SERVICE, settings.log_dir, [settings.access_token])
    service.die_with_parent()
    stopping = service.stop_on_signals(lambda: None)
    try:
        configs = registry.load_strategies(settings.strategies_path)
    except registry.StrategyConfigError as exc:
        service.fatal(log, str(exc))

    bus = BusClient(settings.bus_pub, settings.bus_sub,
                    [m.control_topic(SERVICE), m.health_topic("strategy."), "signal."])
    bus.wait_ready(15)
    reporter = service.HealthReporter(bus, SERVICE)
    manager = Manager(settings, configs, bus, log)
    for name, slot in manager.slots.items():
        if slot.enabled:
            manager.start(name)
    if not any(s.enabled for s in manager.slots.values()):
        log.warning("no enabled strategy in %s", settings.strategies_path)

    while not stopping.is_set():
        got = bus.recv_raw(100)
        while got is not None:
            try:
                _, msg = m.decode(got)
            except ValueError as exc:
                log.warning("undecodable bus frame skipped: %s", exc)
                msg = None
            if isinstance(msg, m.Health):
                manager.on_health(msg)
            elif isinstance(msg, m.Signal):
                manager.on_signal(msg)
            elif isinstance(msg, m.Control):
                bus.publish(m.reply_topic(SERVICE), manager.on_control(msg))
                reporter.send(None, **manager.details())
            got = bus.recv_raw(0)
        manager.check()
        if reporter.due():
            reporter.send("ready" if manager.ready() else "starting", **manager.details())

    reporter.send("stopping")
    children = [s.child for s in manager.slots.values() if s.child is not None]
    stop_all(children, timeout_s=2.0)
    for child in children:
        log.info("strategy %s stopped (exit %s)", child.name, child.last_exit)
    bus.close()
    return 0


if __name__ == "__main__":
    service.exit_now(main())
