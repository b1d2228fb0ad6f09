"""Runtime settings: ``config.py`` (or ``config.example.py`` defaults), then environment overrides.

A fresh clone has no ``config.py``; the defaults in ``config.example.py`` then
apply, so ``python3 run.py`` works at once on the simulator.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# Environment variables through which the supervisor hands its options to services.
ENV = {
    "duckdb_path": "AMT_DUCKDB_PATH",
    "bus_pub": "AMT_BUS_PUB",
    "bus_sub": "AMT_BUS_SUB",
    "api_host": "AMT_API_HOST",
    "api_port": "AMT_API_PORT",
    "strategies_path": "AMT_STRATEGIES",
    "log_dir": "AMT_LOG_DIR",
    "sim_seed": "AMT_SIM_SEED",
    "query_endpoint": "AMT_QUERY_ENDPOINT",
    "query_timeout_s": "AMT_QUERY_TIMEOUT_S",
    "query_max_rows": "AMT_QUERY_MAX_ROWS",
    "realtime_priority": "AMT_REALTIME_PRIORITY",
    "latency_slice_us": "AMT_LATENCY_SLICE_US",
    "access_token": "UPSTOX_ACCESS_TOKEN",
    "upstox_base_url": "UPSTOX_BASE_URL",
    "upstox_order_base_url": "UPSTOX_ORDER_BASE_URL",
    "upstox_authorize_url": "UPSTOX_FEED_AUTHORIZE_URL",
    "upstox_instruments_url": "UPSTOX_INSTRUMENTS_URL",
    "upstox_mode": "UPSTOX_MODE",
    "upstox_modes": "UPSTOX_MODES",
    "instruments_cache": "UPSTOX_INSTRUMENTS_CACHE",
}

# Upstox endpoints (see data_handling/upstox_feed.py). With UPSTOX_BASE_URL changed (e.g. a
# local test server) the authorize and instruments URLs default to the same host.
UPSTOX_BASE_URL = "https://api.upstox.com"
UPSTOX_AUTHORIZE_PATH = "/v3/feed/market-data-feed/authorize"
UPSTOX_INSTRUMENTS_PATH = "/market-quote/instruments/exchange/NSE.json.gz"
UPSTOX_INSTRUMENTS_URL = "https://assets.upstox.com" + UPSTOX_INSTRUMENTS_PATH
UPSTOX_MODES = ("ltpc", "full", "option_greeks", "full_d30")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Resolved settings. Paths are absolute; ``access_token`` must never be logged (see ``repr``)."""

    access_token: str
    watchlist: tuple[str, ...]
    duckdb_path: Path
    bus_pub: str
    bus_sub: str
    api_host: str
    api_port: int
    strategies_path: Path
    log_dir: Path
    sim_seed: int
    config_file: Path
    upstox_base_url: str = UPSTOX_BASE_URL
    upstox_authorize_url: str = UPSTOX_BASE_URL + UPSTOX_AUTHORIZE_PATH
    upstox_instruments_url: str = UPSTOX_INSTRUMENTS_URL
    upstox_mode: str = "full"                            # feed mode of watchlist entries not in upstox_modes
    upstox_modes: tuple[tuple[str, str], ...] = ()       # (watchlist entry, mode) pairs
    instruments_cache: Path = ROOT / "data" / "upstox"   # the instruments master, downloaded once a day
    # Research SQL (trading_core.query_server): where the ingestor serves read-only queries, and
    # the per-query ceilings (seconds of wall time, rows of result).
    query_endpoint: str = "tcp://127.0.0.1:5557"
    query_timeout_s: float = 30.0
    query_max_rows: int = 1_000_000
    realtime_priority: int = 0                            # SCHED_FIFO priority of the tick path; 0 = off
    latency_slice_us: int = 100                           # scheduler slice of the tick and order path; 0 = kernel's
    # Risk guard, paper execution and live orders (trading_core/risk.py, paper.py,
    # execution_client.py; validated by _execution_settings). Money in rupees, times HH:MM IST.
    capital: float = 1_000_000.0
    risk_per_trade_pct: float = 1.0
    min_reward_risk: float = 1.5
    daily_loss_limit: float = 20_000.0
    max_trades_per_day: int = 4
    entry_cutoff: str = "14:45"
    slippage: Any = 0.5                                   # rupees per unit, or {underlying: .., "default": ..}
    time_exit_minutes: float = 30.0
    trail_trigger: float = 0.5
    square_off: str = "15:15"
    max_signal_delay_s: float = 10.0
    lot_sizes: dict = dataclasses.field(default_factory=dict)   # {} = trading_core.risk.NSE_LOT_SIZES
    live_trading: bool = False
    upstox_order_base_url: str = "https://api-hft.upstox.com"

    def __repr__(self) -> str:  # the token must not leak through a debug print
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["access_token"] = "<set>" if self.access_token else "<empty>"
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in fields.items()) + ")"


def _load_module(path: Path):
    spec = importlib.util.spec_from_file_location(f"_amt_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _abs(path: str | Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (ROOT / p).resolve()


def load(config_file: str | Path | None = None) -> Settings:
    """Load settings from ``config_file`` (default ``$AMT_CONFIG``, then ``config.py``, else
    ``config.example.py``).

    Environment variables in :data:`ENV` override the file. Raises ``ValueError``
    with the file and field named when a value has the wrong type.
    """
    config_file = config_file or os.environ.get("AMT_CONFIG")
    if config_file and not _abs(config_file).exists():
        raise ValueError(f"config file {config_file} does not exist")
    path = _abs(config_file) if config_file else ROOT / "config.py"
    if not path.exists():
        path = ROOT / "config.example.py"
    module = _load_module(path)

    def get(name: str, default):
        env_name = ENV.get(name)
        if env_name and os.environ.get(env_name):
            return os.environ[env_name]
        return getattr(module, name.upper(), default)

    try:
        port = int(get("api_port", 8000))
        seed = int(get("sim_seed", 7))
    except ValueError as exc:
        raise ValueError(f"{path.name}: API_PORT and SIM_SEED must be integers ({exc})") from None
    watchlist = getattr(module, "WATCHLIST", ["NSE_INDEX|Nifty 50"])
    if isinstance(watchlist, str) or not all(isinstance(w, str) for w in watchlist):
        raise ValueError(f"{path.name}: WATCHLIST must be a list of instrument keys")
    base_url = str(get("upstox_base_url", UPSTOX_BASE_URL) or UPSTOX_BASE_URL).rstrip("/")
    modes = get("upstox_modes", {}) or {}
    if isinstance(modes, str):          # from the environment: a JSON object
        import json
        try:
            modes = json.loads(modes)
        except ValueError as exc:
            raise ValueError(f"UPSTOX_MODES must be a JSON object {{entry: mode}} ({exc})") from None
    mode = str(get("upstox_mode", "full") or "full")
    if not isinstance(modes, dict) or not all(isinstance(k, str) for k in modes):
        raise ValueError(f"{path.name}: UPSTOX_MODES must map watchlist entries to a mode")
    for entry, entry_mode in [("UPSTOX_MODE", mode), *modes.items()]:
        if entry_mode not in UPSTOX_MODES:
            raise ValueError(f"{path.name}: Upstox mode {entry_mode!r} for {entry!r} is not one of "
                             f"{', '.join(UPSTOX_MODES)}")
    return Settings(
        upstox_base_url=base_url,
        upstox_authorize_url=str(get("upstox_authorize_url", "") or base_url + UPSTOX_AUTHORIZE_PATH),
        upstox_instruments_url=str(get("upstox_instruments_url", "") or (
            UPSTOX_INSTRUMENTS_URL if base_url == UPSTOX_BASE_URL else base_url + UPSTOX_INSTRUMENTS_PATH)),
        upstox_mode=mode,
        upstox_modes=tuple(modes.items()),
        instruments_cache=_abs(get("instruments_cache", "data/upstox")),
        access_token=str(get("access_token", "") or ""),
        watchlist=tuple(watchlist),
        duckdb_path=_abs(get("duckdb_path", "data/market.duckdb")),
        bus_pub=str(get("bus_pub", "tcp://127.0.0.1:5555")),
        bus_sub=str(get("bus_sub", "tcp://127.0.0.1:5556")),
        api_host=str(get("api_host", "127.0.0.1")),
        api_port=port,
        strategies_path=_abs(get("strategies_path", "configs/strategies.json")),
        log_dir=_abs(get("log_dir", "logs")),
        sim_seed=seed,
        config_file=path,
        realtime_priority=_realtime_priority(path.name, get),
        latency_slice_us=_latency_slice(path.name, get),
        **_query_settings(path.name, get),
        **_execution_settings(path.name, get, base_url),
    )


def _realtime_priority(name: str, get) -> int:
    """REALTIME_PRIORITY: 0 (off) or a SCHED_FIFO priority 1-98; raises ``ValueError`` naming it."""
    raw = get("realtime_priority", 0)
    try:
        priority = int(raw or 0)
    except (TypeError, ValueError):
        priority = -1
    if not 0 <= priority <= 98:
        raise ValueError(f"{name}: REALTIME_PRIORITY must be 0 (off) or a SCHED_FIFO priority 1-98, got {raw!r}")
    return priority


def _latency_slice(name: str, get) -> int:
    """LATENCY_SLICE_US: 0 (the kernel's default slice) or 100-100,000 microseconds (the range
    Linux accepts); raises ``ValueError`` naming it."""
    raw = get("latency_slice_us", 100)
    try:
        slice_us = int(raw)
    except (TypeError, ValueError):
        slice_us = -1
    if slice_us != 0 and not 100 <= slice_us <= 100_000:
        raise ValueError(f"{name}: LATENCY_SLICE_US must be 0 (the kernel's default) or 100-100000 "
                         f"microseconds, got {raw!r}")
    return slice_us


def _query_settings(name: str, get) -> dict:
    """QUERY_ENDPOINT, QUERY_TIMEOUT_S, QUERY_MAX_ROWS; raises ``ValueError`` naming the field."""
    endpoint = str(get("query_endpoint", "tcp://127.0.0.1:5557"))
    if not endpoint.startswith(("tcp://", "ipc://")):
        raise ValueError(f"{name}: QUERY_ENDPOINT must be tcp://HOST:PORT or ipc://PATH, got {endpoint!r}")
    try:
        timeout_s = float(get("query_timeout_s", 30.0))
        max_rows = int(get("query_max_rows", 1_000_000))
    except ValueError as exc:
        raise ValueError(f"{name}: QUERY_TIMEOUT_S must be a number and QUERY_MAX_ROWS an integer "
                         f"({exc})") from None
    if timeout_s <= 0 or max_rows <= 0:
        raise ValueError(f"{name}: QUERY_TIMEOUT_S and QUERY_MAX_ROWS must be positive")
    return {"query_endpoint": endpoint, "query_timeout_s": timeout_s, "query_max_rows": max_rows}


def _execution_settings(name: str, get, base_url: str) -> dict:
    """CAPITAL, RISK_PER_TRADE_PCT, MIN_REWARD_RISK, DAILY_LOSS_LIMIT, MAX_TRADES_PER_DAY,
    ENTRY_CUTOFF, SLIPPAGE, TIME_EXIT_MINUTES, TRAIL_TRIGGER, SQUARE_OFF, MAX_SIGNAL_DELAY_S,
    LOT_SIZES, LIVE_TRADING, UPSTOX_ORDER_BASE_URL (see config.example.py). Raises ``ValueError``
    naming the file and the setting."""
    from trading_core.paper import PaperConfig
    from trading_core.risk import NSE_LOT_SIZES, LotSizes, RiskConfig, hhmm

    def num(setting: str, default):
        value = get(setting.lower(), default)
        if isinstance(value, str):                      # from the environment
            try:
                value = float(value) if "." in value else int(value)
            except ValueError:
                raise ValueError(f"{name}: {setting} must be a number, got {value!r}") from None
        return value

    out = {k: num(k.upper(), d) for k, d in (
        ("capital", 1_000_000.0), ("risk_per_trade_pct", 1.0), ("min_reward_risk", 1.5),
        ("daily_loss_limit", 20_000.0), ("max_trades_per_day", 4), ("time_exit_minutes", 30.0),
        ("trail_trigger", 0.5), ("max_signal_delay_s", 10.0))}
    out["entry_cutoff"] = str(get("entry_cutoff", "14:45"))
    out["square_off"] = str(get("square_off", "15:15"))
    out["slippage"] = get("slippage", 0.5)
    if isinstance(out["slippage"], str):
        out["slippage"] = num("SLIPPAGE", 0.5)
    lots = get("lot_sizes", None)
    out["lot_sizes"] = dict(NSE_LOT_SIZES) if lots is None else lots
    live = get("live_trading", False)
    if not isinstance(live, bool):
        raise ValueError(f"{name}: LIVE_TRADING must be True or False, got {live!r}")
    out["live_trading"] = live
    order_url = str(get("upstox_order_base_url", "") or "")
    out["upstox_order_base_url"] = (order_url or ("https://api-hft.upstox.com" if base_url == UPSTOX_BASE_URL
                                                  else base_url)).rstrip("/")
    try:
        RiskConfig(capital=out["capital"], risk_per_trade_pct=out["risk_per_trade_pct"],
                   min_reward_risk=out["min_reward_risk"], daily_loss_limit=out["daily_loss_limit"],
                   max_trades_per_day=out["max_trades_per_day"], entry_cutoff=out["entry_cutoff"],
                   lot_sizes=LotSizes(out["lot_sizes"])).validate()
        PaperConfig(slippage=out["slippage"], time_exit_minutes=out["time_exit_minutes"],
                    trail_trigger=out["trail_trigger"], square_off=out["square_off"]).validate()
        if hhmm(out["entry_cutoff"], "ENTRY_CUTOFF") > hhmm(out["square_off"], "SQUARE_OFF"):
            raise ValueError(f"ENTRY_CUTOFF {out['entry_cutoff']} must not be after SQUARE_OFF "
                             f"{out['square_off']}")
        delay = out["max_signal_delay_s"]
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay <= 0:
            raise ValueError(f"MAX_SIGNAL_DELAY_S: must be positive seconds, got {delay!r}")
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    return out

