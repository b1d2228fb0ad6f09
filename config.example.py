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
