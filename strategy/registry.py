"""Strategy classes by name, and the loader of ``configs/strategies.json``.

Config format (validated against ``configs/strategies.schema.json``, then each
entry's ``params`` against its class's :attr:`Strategy.params_schema`)::

    {"strategies": [
        {"name": "ib_breakout_nifty",            # ^[a-z][a-z0-9_]{0,47}$, unique
         "class": "ib_breakout",                 # a key of STRATEGY_CLASSES, or "module:Class"
         "enabled": true,                        # optional, default true
         "instruments": ["NSE_INDEX|Nifty 50"],  # Upstox instrument keys, >= 1
         "params": {"ib_minutes": 60},           # optional; class defaults fill the rest
         "heartbeat_timeout_s": 10,              # optional: silent this long = stuck, restarted
         "warm_days": 10}                        # optional: prior days replayed on warm start
    ]}

``"module:Class"`` names a strategy of your own, importable from the project root (e.g.
``"strategy.examples:PriorHighBreakout"``); the file is your own configuration, like
``config.py``, so it may name any module. Rule strategies' expressions are compiled here too.

Every problem is reported as one line naming the file, the strategy and the
field, e.g. ``configs/strategies.json: strategy 'ib_breakout_nifty':
params.ib_minutes: 'sixty' is not of type 'integer'``. A strategy without a
usable name is called ``strategy #N`` (1-based position in the list), a
duplicated name ``strategy 'x' (#N)``.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jsonschema

from strategy.base import Strategy, param_errors, schema_error_line
from strategy.eighty_percent import EightyPercentRule
from strategy.ib_acceptance import IBAcceptance
from strategy.ib_breakout import IBBreakout
from strategy.open_drive import OpenDrive
from strategy.rule import RuleStrategy
from strategy.value_fade import ValueFade
from trading_core.messages import Signal

#: Class key used in ``"class"`` of the config -> Strategy subclass.
STRATEGY_CLASSES: dict[str, type[Strategy]] = {
    "ib_breakout": IBBreakout,
    "ib_acceptance": IBAcceptance,
    "eighty_percent": EightyPercentRule,
    "open_drive": OpenDrive,
    "value_fade": ValueFade,
    "rule": RuleStrategy,
}

def resolve_class(cls_name: str) -> type[Strategy]:
    """The Strategy subclass named ``cls_name``: a key of :data:`STRATEGY_CLASSES`, or
    ``"package.module:ClassName"`` for a strategy of your own (importable from the project root,
    e.g. ``"strategy.my_strategy:CloseAbove"``). Raises ``LookupError`` with a one-line reason
    (unknown key, module that fails to import, missing class, not a Strategy subclass)."""
    cls = STRATEGY_CLASSES.get(cls_name)
    if cls is not None:
        return cls
    if ":" not in cls_name:
        raise LookupError(f"unknown strategy class {cls_name!r} (known: {', '.join(sorted(STRATEGY_CLASSES))}; "
                          "or \"module:ClassName\")")
    module_name, _, attr = cls_name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's to see, in one line
        why = str(exc).splitlines()[0] if str(exc) else ""
        raise LookupError(f"cannot import {module_name!r}: {type(exc).__name__}: {why}") from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise LookupError(f"{cls_name!r} is not a Strategy subclass")
    return cls


SCHEMA_PATH = Path(__file__).resolve().parent.parent / "configs" / "strategies.schema.json"


class StrategyConfigError(ValueError):
    """Invalid strategies file. ``errors``: every problem, one line each (``file: strategy 'x':
    field: why``); ``str(exc)`` is the first one (plus a count of the others), on one line."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
        super().__init__(f"{errors[0]}{more}")


@dataclass
class StrategyConfig:
    """One validated entry of the strategies file; ``params`` has the class defaults filled in.

    ``heartbeat_timeout_s``: the manager restarts the process when it sends no heartbeat for this
    long (a hook stuck in a loop). ``warm_days``: recorded trading days before the current one to
    replay at start, besides the current day's candles (``None``: the class's
    :attr:`Strategy.warm_days`).
    """

    name: str
    cls_name: str
    enabled: bool = True
    instruments: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    heartbeat_timeout_s: float = 10.0
    warm_days: int | None = None

    @property
    def history_days(self) -> int:
        """Prior trading days replayed on warm start (config, else the class default)."""
        if self.warm_days is not None:
            return self.warm_days
        try:
            return resolve_class(self.cls_name).warm_days
        except LookupError:
            return 0

    def to_entry(self) -> dict[str, Any]:
        """This config as an entry of the strategies file (JSON-able; re-validates to itself)."""
        entry = {"name": self.name, "class": self.cls_name, "enabled": self.enabled,
                 "instruments": list(self.instruments), "params": dict(self.params),
                 "heartbeat_timeout_s": self.heartbeat_timeout_s}
        if self.warm_days is not None:
            entry["warm_days"] = self.warm_days
        return entry


def load_strategies(path: str | os.PathLike[str],
                    schema_path: str | os.PathLike[str] = SCHEMA_PATH) -> list[StrategyConfig]:
    """Read, validate and return every entry (enabled or not) of a strategies file, in file order.

    Raises :class:`StrategyConfigError` listing all problems found: unreadable file, invalid
    JSON (with line and column) or a duplicate key, schema violations, unknown class (the known
    ones are named), invalid params (every bad expression of a rule strategy), duplicate names.
    """
    where = _display(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StrategyConfigError([f"{where}: cannot read: {getattr(exc, 'strerror', None) or exc}"])
    return parse_strategies(text, where, schema_path)


def parse_strategies(text: str, where: str = "<strategies>",
                     schema_path: str | os.PathLike[str] = SCHEMA_PATH) -> list[StrategyConfig]:
    """Validate the JSON text of a strategies document (``where`` names it in errors); as
    :func:`load_strategies`. Raises :class:`StrategyConfigError`."""
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise StrategyConfigError(
            [f"{where}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"]) from None
    except _DuplicateKey as exc:
        raise StrategyConfigError([f"{where}: invalid JSON: duplicate key {exc.args[0]!r}"]) from None

    schema = json.loads(Path(schema_path).read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    entries = doc.get("strategies") if isinstance(doc, dict) else None
    entries = entries if isinstance(entries, list) else []

    names = [e.get("name") if isinstance(e, dict) else None for e in entries]

    def label(i: int) -> str:
        name = names[i]
        if not isinstance(name, str) or not name:
            return f"strategy #{i + 1}"
        return f"strategy {name!r}" + (f" (#{i + 1})" if names.count(name) > 1 else "")

    errors: list[str] = []
    per_entry: dict[int, list[str]] = {i: [] for i in range(len(entries))}
    for err in sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path]):
        path = list(err.absolute_path)
        if len(path) >= 2 and path[0] == "strategies" and isinstance(path[1], int) and entries:
            per_entry[path[1]].append(schema_error_line(err, skip=2, whole="entry"))
        else:
            errors.append(f"{where}: {schema_error_line(err)}")

    configs: list[StrategyConfig] = []
    first_seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        problems = per_entry[i]
        if isinstance(entry, dict):
            name, cls_name = entry.get("name"), entry.get("class")
            cls = None
            if isinstance(cls_name, str):
                try:
                    cls = resolve_class(cls_name)
                except LookupError as exc:
                    problems.append(f"class: {exc}")
            params = entry.get("params", {})
            if cls is not None and isinstance(params, dict):
                problems.extend(param_errors(cls, params))
            if isinstance(name, str):
                if name in first_seen:
                    problems.append(f"name: duplicate name (first used by strategy #{first_seen[name] + 1})")
                first_seen.setdefault(name, i)
            if not problems:
                configs.append(StrategyConfig(
                    name=name, cls_name=cls_name, enabled=entry.get("enabled", True),
                    instruments=list(entry["instruments"]),
                    params={**cls.param_defaults(), **params},
                    heartbeat_timeout_s=float(entry.get("heartbeat_timeout_s", 10.0)),
                    warm_days=entry.get("warm_days")))
        errors.extend(f"{where}: {label(i)}: {p}" for p in problems)
    if errors:
        raise StrategyConfigError(errors)
    return configs


def build(config: StrategyConfig, emit: Callable[[Signal], None]) -> Strategy:
    """Instantiate the strategy of ``config``; ``emit`` receives its signals.

    Raises :class:`StrategyConfigError` for an unknown class, ``ValueError`` for invalid params
    (both impossible for a config returned by :func:`load_strategies`).
    """
    try:
        cls = resolve_class(config.cls_name)
    except LookupError as exc:
        raise StrategyConfigError([f"strategy {config.name!r}: class: {exc}"]) from None
    return cls(config.name, config.instruments, config.params, emit)


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _display(path: str | os.PathLike[str]) -> str:
    """``path`` relative to the working directory when it lies inside it, else as given."""
    p = Path(path)
    if p.is_absolute():
        try:
            return str(p.relative_to(Path.cwd()))
        except ValueError:
            pass
    return str(path)
