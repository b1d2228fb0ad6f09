"""Configuration template. Copy to ``config.py`` (git-ignored) and edit.

Every value can also be overridden by an environment variable named in
brackets; ``python3 run.py`` options override both.
"""

# Upstox access token [UPSTOX_ACCESS_TOKEN]. Empty: the built-in simulator feeds
# the system. The token is never logged, stored in DuckDB or sent to the browser.
ACCESS_TOKEN = ""

# Instruments to watch. Names as used everywhere in the desk: "NSE_INDEX|Nifty 50",
# "NSE_FO|NIFTY24122624000CE" (underlying, expiry YYMMDD, strike, CE/PE), "NSE_FO|NIFTY24DECFUT",
# "NSE_EQ|RELIANCE". With the Upstox feed these also resolve through the instruments master:
# an Upstox key ("NSE_FO|43885"), an Upstox trading symbol ("NIFTY 24000 CE 26 DEC 24") or an NSE
# symbol ("NIFTY24DEC24000CE" = the monthly contract); an unknown symbol stops start-up, named.
WATCHLIST = ["NSE_INDEX|Nifty 50", "NSE_INDEX|Nifty Bank"]

# Upstox live feed (used when ACCESS_TOKEN is set). Feed mode per watchlist entry
# [UPSTOX_MODES, a JSON object]; entries not listed get UPSTOX_MODE [UPSTOX_MODE]:
# "ltpc" (price, time, quantity, previous close), "full" (+ 5-level depth, OHLC, OI, volume,
# average price; indices: price and OHLC), "option_greeks" (+ best bid/ask, greeks, IV, OI),
# "full_d30" (full with 30 levels).
UPSTOX_MODE = "full"
UPSTOX_MODES = {}   # e.g. {"NSE_FO|NIFTY24122624000CE": "option_greeks"}

# Upstox endpoints: the REST host [UPSTOX_BASE_URL]; the feed authorize URL
# [UPSTOX_FEED_AUTHORIZE_URL] and the instruments master [UPSTOX_INSTRUMENTS_URL] default to
# Upstox's, or to the same host as UPSTOX_BASE_URL when that is changed (a local test server).
UPSTOX_BASE_URL = "https://api.upstox.com"
UPSTOX_FEED_AUTHORIZE_URL = ""
UPSTOX_INSTRUMENTS_URL = ""

# Where the instruments master is cached, refreshed once a day [UPSTOX_INSTRUMENTS_CACHE].
INSTRUMENTS_CACHE = "data/upstox"

# DuckDB file that the ingestor owns (ticks, 1-minute candles) [AMT_DUCKDB_PATH].
DUCKDB_PATH = "data/market.duckdb"

# ZeroMQ bus: publishers connect to BUS_PUB (the proxy's XSUB side), subscribers
# to BUS_SUB (its XPUB side) [AMT_BUS_PUB, AMT_BUS_SUB]. Loopback only by default.
BUS_PUB = "tcp://127.0.0.1:5555"
BUS_SUB = "tcp://127.0.0.1:5556"

# Browser UI and API [AMT_API_HOST, AMT_API_PORT].
API_HOST = "127.0.0.1"
API_PORT = 8000

# Strategy definitions [AMT_STRATEGIES].
STRATEGIES_PATH = "configs/strategies.json"

# Service logs, rotated at 5 MB x 3 files [AMT_LOG_DIR].
LOG_DIR = "logs"

# Seed of the built-in simulator, so a demo is repeatable [AMT_SIM_SEED].
SIM_SEED = 7

# Research SQL: the ingestor answers read-only queries (python3 run.py sql, the browser console,
# trading_core.query_client.query) on this endpoint, loopback only [AMT_QUERY_ENDPOINT]; each
# query gets at most QUERY_TIMEOUT_S seconds and QUERY_MAX_ROWS rows
# [AMT_QUERY_TIMEOUT_S, AMT_QUERY_MAX_ROWS].
QUERY_ENDPOINT = "tcp://127.0.0.1:5557"
QUERY_TIMEOUT_S = 30
QUERY_MAX_ROWS = 1_000_000

# Real-time scheduling of the tick path [AMT_REALTIME_PRIORITY]: 0 = off (the default). 1-98 runs
# the bus, the ingestor's feed process and every strategy process under SCHED_FIFO at that
# priority, so on a busy machine a tick is never kept waiting behind the recorder, the API or
# another program's time slice (benchmarks/RESULTS.md: p50 and p99 tick -> strategy about halved
# on 2 cores). Needs root or CAP_SYS_NICE (e.g. `sudo setcap cap_sys_nice+ep $(readlink -f
# $(which python3))`); without it each process says so in one line and runs at normal priority.
# The kernel keeps 5 % of each second for normal work (sched_rt_runtime_us), and a strategy stuck
# in a loop is still killed by its heartbeat timeout; keep it off on a laptop you work on.
REALTIME_PRIORITY = 0

# Scheduler slice of the tick and order path, in microseconds [AMT_LATENCY_SLICE_US]: the bus,
# the ingestor's feed process, every strategy process and execution ask Linux (6.12+) for this
# slice instead of the default (about 1.4 ms on 2 cores). A waking task with a shorter slice
# than the running one, and owed CPU time, takes its core at once, so a tick need not wait out
# the API's or another program's slice; the CPU share of each process is unchanged. No privilege needed; on an older
# kernel each process says in one line that it runs with the default. 100-100000, or 0 for the
# kernel's default. The recorder (DuckDB, research SQL) keeps the default slice at nice 10, so a
# waking tick-path process can preempt it (scripts/scheduling.py).
LATENCY_SLICE_US = 100

# --- Risk guard and execution (scripts/execution.py). Money in rupees, times HH:MM IST. ---------
# Every signal passes the risk guard (trading_core/risk.py) before it may become an order.
CAPITAL = 1_000_000            # trading capital the sizing works from
RISK_PER_TRADE_PCT = 1.0       # a trade may lose at most this % of CAPITAL at its stop; sized in
                               # whole lots: lots = floor(CAPITAL * pct / 100 / (|entry - stop| * lot))
MIN_REWARD_RISK = 1.5          # reject below this |target - entry| / |entry - stop|
DAILY_LOSS_LIMIT = 20_000      # no new trades once today's PnL (realised + open) is this far down
MAX_TRADES_PER_DAY = 4         # approved trades per IST day, all instruments together
ENTRY_CUTOFF = "14:45"         # no new trades at or after this time (session 09:15-15:30)
# One trade per instrument per day (the intraday lock) is always on.

# Paper execution and position management (trading_core/paper.py): fills at the first tick at or
# after the signal's time; SLIPPAGE rupees per unit against us on market fills, or a dict by
# underlying, e.g. {"NIFTY": 0.5, "BANKNIFTY": 1.0, "default": 0.5}.
SLIPPAGE = 0.5
TIME_EXIT_MINUTES = 30         # close a position this long after its entry (0: never)
TRAIL_TRIGGER = 0.5            # move the stop to break-even once this share of the target is made (0: never)
SQUARE_OFF = "15:15"           # close everything still open at this time
MAX_SIGNAL_DELAY_S = 10        # reject a signal arriving this long after the market passed its time

# Lot sizes (units per lot) by underlying: a number, or [(first IST date, lot), ...] so replays of
# old days use the lot of the day. None: NSE's history from its circulars (trading_core/risk.py,
# NSE_LOT_SIZES: NIFTY 75 -> 50 on 2021-06-25 -> 25 -> 75 -> 65, BANKNIFTY 20 -> 25 -> 15 -> 30 -> 35 -> 30).
# Check NSE's current lots before trading live; e.g. LOT_SIZES = {"NIFTY": 75, "BANKNIFTY": 35}
LOT_SIZES = None

# Real orders through Upstox (trading_core/execution_client.py). Only with the Upstox live feed,
# and run.py asks you to type LIVE at start-up. False: paper trading.
LIVE_TRADING = False
# Upstox's order host (place/cancel) [UPSTOX_ORDER_BASE_URL]; empty: https://api-hft.upstox.com,
# or UPSTOX_BASE_URL when that points elsewhere (a local test server).
UPSTOX_ORDER_BASE_URL = ""
