"""Every topic name and every message type on the bus, in one place.

Wire format
-----------
One ZeroMQ frame per message: ``topic + b"\\x00" + payload``. The payload is
JSON (``msgspec.json``) of one of the structs below; each carries ``type`` (the
tag) and ``v`` (the schema version, :data:`SCHEMA_VERSION`). A single frame is
used rather than multipart because pyzmq's per-call cost makes multipart about
5x slower (see ``benchmarks/``).

The NUL after the topic lets a subscriber filter on an *exact* instrument:
subscribing to ``b"tick.NSE_INDEX|Nifty 50\\x00"`` does not also match
``Nifty 500``. Subscribing to a bare prefix (``b"tick."``) gets every tick.

Units everywhere: prices in rupees (float), quantities in units (not lots),
timestamps ``ts`` as epoch milliseconds UTC (int); the UI displays them in
Asia/Kolkata (IST, UTC+05:30, no DST).
"""

from __future__ import annotations

from typing import Any, Iterable, Literal, Union

import msgspec

SCHEMA_VERSION = 1
SEPARATOR = b"\x00"

# --- topic names -----------------------------------------------------------
TICK = "tick"                # tick.<instrument_key>
CANDLE = "candle"            # candle.<interval>.<instrument_key>, interval "1m"
SIGNAL = "signal"            # signal.<strategy>
HEALTH = "health"            # health.<service>
CONTROL = "control"          # control.<service>
PROFILE = "profile"          # profile.<instrument_key>


def tick_topic(instrument_key: str) -> str:
    """Topic of the ticks of one instrument, e.g. ``tick.NSE_INDEX|Nifty 50``."""
    return f"{TICK}.{instrument_key}"


def candle_topic(instrument_key: str, interval: str = "1m") -> str:
    """Topic of closed candles of one instrument, e.g. ``candle.1m.NSE_INDEX|Nifty 50``."""
    return f"{CANDLE}.{interval}.{instrument_key}"


def signal_topic(strategy: str) -> str:
    """Topic of the signals of one strategy instance, e.g. ``signal.ib_breakout_nifty``."""
    return f"{SIGNAL}.{strategy}"


def health_topic(service: str) -> str:
    """Topic of the health reports of one service, e.g. ``health.ingestor``."""
    return f"{HEALTH}.{service}"


def control_topic(service: str) -> str:
    """Topic of control commands addressed to one service, e.g. ``control.strategy_manager``."""
    return f"{CONTROL}.{service}"


def profile_topic(instrument_key: str) -> str:
    """Topic of Market Profile updates of one instrument."""
    return f"{PROFILE}.{instrument_key}"


def exact(topic: str) -> bytes:
    """Subscription bytes that match exactly ``topic`` (not longer topics sharing its prefix)."""
    return topic.encode() + SEPARATOR


# --- message types -----------------------------------------------------------
class Message(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=False):
    """Base of every bus message; ``v`` is the schema version."""

    v: int = SCHEMA_VERSION


class DepthLevel(msgspec.Struct, array_like=True):
    """One level of an order book, on the wire as ``[bid_qty, bid, ask_qty, ask]`` (units, rupees)."""

    bid_qty: int = 0
    bid: float = 0.0
    ask_qty: int = 0
    ask: float = 0.0


class OhlcBar(msgspec.Struct, array_like=True):
    """An OHLC bar a live feed carries, on the wire as ``[interval, open, high, low, close, volume, ts]``.

    Upstox sends ``"1d"`` (the session so far) and ``"I1"`` (1-minute bars); ``ts`` is the bar's
    start, epoch ms UTC; prices rupees; volume units.
    """

    interval: str = ""
    open: float = 0.0
    high: float = 0.0
    low: float = 0.0
    close: float = 0.0
    volume: int = 0
    ts: int = 0


class Quote(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a live feed carries beyond the print (Upstox V3 ``full``/``option_greeks`` modes).

    A field is None when the subscription's mode does not carry it (``ltpc`` carries only
    ``cp``); a field the mode carries but the frame left at its protobuf default is 0.
    ``mode``: ``ltpc`` | ``full`` | ``option_greeks`` | ``full_d30``. ``feed_ts``: the frame's
    ``currentTs`` (epoch ms UTC). ``cp``: previous session's close. ``vtt``: volume traded today
    (units). ``atp``: average traded price today. ``tbq``/``tsq``: total bid/ask quantity
    pending. ``bid``/``ask`` (+ ``_qty``): best level; ``depth``: every level sent (5 in
    ``full``, 30 in ``full_d30``, 1 in ``option_greeks``). ``iv``: implied volatility;
    ``delta``..``rho``: option greeks. ``iep``/``ieq``: pre-open indicative price/quantity;
    ``rp``, ``iiq_total``, ``iiq_m``, ``cas_eligible``: as Upstox sends them. Prices rupees.
    Encoded without its None fields, so a quote costs only what it carries.
    """

    mode: str = ""
    feed_ts: int = 0
    cp: float | None = None
    vtt: int | None = None
    atp: float | None = None
    tbq: float | None = None
    tsq: float | None = None
    bid: float | None = None
    bid_qty: int | None = None
    ask: float | None = None
    ask_qty: int | None = None
    depth: list[DepthLevel] | None = None
    iv: float | None = None
    delta: float | None = None
    theta: float | None = None
    gamma: float | None = None
    vega: float | None = None
    rho: float | None = None
    ohlc: list[OhlcBar] | None = None
    iep: float | None = None
    ieq: int | None = None
    rp: float | None = None
    iiq_total: int | None = None
    iiq_m: int | None = None
    cas_eligible: bool | None = None


class Tick(Message, tag="tick"):
    """One trade print or quote update of one instrument.

    ``ts``: exchange time, epoch ms UTC. ``ltp``: last traded price, rupees.
    ``ltq``: last traded quantity, units (0 when the instrument has no volume,
    e.g. an index). ``oi``: open interest after the trade, units (0 if none).
    ``seq``: position in the source's stream (monotonic per ingestor run), so
    prints sharing a timestamp keep their order.
    ``backfilled``: True for a tick made after a feed gap from the broker's 1-minute candles
    (never published on the bus, only stored). ``quote``: depth, volume and greeks of a live
    feed (see :class:`Quote`); None from sources that have none (simulator, replay).
    """

    instrument_key: str
    ts: int
    ltp: float
    ltq: int = 0
    oi: float = 0.0
    seq: int = 0
    source: str = "sim"
    backfilled: bool = False
    quote: Quote | None = None


class Candle(Message, tag="candle"):
    """OHLCV bar. ``ts`` is the bar's *open* time (epoch ms UTC); ``interval`` e.g. ``"1m"``.

    ``volume`` is the sum of LTQ in the bar (units); ``oi`` the last OI seen.
    ``final`` is False for a bar still forming.
    """

    instrument_key: str
    interval: str
    ts: int
    open: float
    high: float
    low: float
    close: float
    volume: int = 0
    oi: float = 0.0
    ticks: int = 0
    final: bool = True


class Signal(Message, tag="signal"):
    """A trade idea from a strategy: side ``"BUY"``/``"SELL"``, prices in rupees, ``ts`` epoch ms UTC."""

    strategy: str
    instrument_key: str
    side: Literal["BUY", "SELL"]
    entry: float
    stop_loss: float
    target: float
    reason: str
    ts: int


class Health(Message, tag="health"):
    """Periodic status of one service (sent about once a second).

    ``status``: ``starting`` | ``ready`` | ``running`` | ``finished`` | ``stopping`` | ``error``.
    ``ts`` is wall-clock epoch ms UTC. ``details`` holds service-specific
    counters (ticks published, rows written, child processes, ...).
    """

    service: str
    pid: int
    status: str
    ts: int
    details: dict[str, Any] = {}


class Control(Message, tag="control"):
    """A command to a service, e.g. ``{"command": "restart", "target": "ib_breakout_nifty"}``."""

    command: str
    target: str = ""
    ts: int = 0


AnyMessage = Union[Tick, Candle, Signal, Health, Control]  # + Profile, rebound at the end of the module

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyMessage)


def encode(topic: str, message: Message) -> bytes:
    """Encode one bus frame: ``topic\\x00<json>``."""
    return topic.encode() + SEPARATOR + _encoder.encode(message)


def split(frame: bytes) -> tuple[str, bytes]:
    """Split a bus frame into ``(topic, payload)``.

    Raises ``ValueError`` if the frame has no topic separator.
    """
    topic, sep, payload = frame.partition(SEPARATOR)
    if not sep:
        raise ValueError(f"bus frame without topic separator: {frame[:60]!r}")
    return topic.decode(), payload


def decode(frame: bytes) -> tuple[str, AnyMessage]:
    """Decode one bus frame into ``(topic, message)``.

    Raises ``ValueError`` (``msgspec.DecodeError`` is a subclass) on a malformed frame.
    """
    topic, payload = split(frame)
    return topic, _decoder.decode(payload)


def decode_message(frame: bytes) -> AnyMessage:
    """The message of one bus frame, without its topic (what :func:`decode` returns second): for
    receive loops that take every tick and dispatch on the message's type.

    Raises ``ValueError`` (``msgspec.DecodeError`` is a subclass) on a malformed frame.
    """
    sep = frame.find(SEPARATOR)
    if sep < 0:
        raise ValueError(f"bus frame without topic separator: {frame[:60]!r}")
    return _decoder.decode(frame[sep + 1:])


_tick_heads: dict[str, str] = {}


def _tick_head(key: str) -> str:
    """The start of a tick frame of ``key``, up to its ``ts`` value (cached per instrument)."""
    head = _tick_heads.get(key)
    if head is None:
        head = _tick_heads[key] = (f'{tick_topic(key)}\x00{{"type":"tick","v":{SCHEMA_VERSION},'
                                   f'"instrument_key":{_encoder.encode(key).decode()},"ts":')
    return head


def _tick_tail(source: str) -> str:
    return f',"source":{_encoder.encode(source).decode()},"backfilled":false,"quote":null}}'


def tick_frames(ticks, source: str) -> list[bytes]:
    """Bus frames of many ticks at once: what :func:`encode` makes of each row as a
    :class:`Tick` (no quote, not backfilled), built column-wise by polars in about a third of
    the time per tick, for replays that hold their ticks as a table. Each call costs about
    1 ms whatever its size, so :func:`tick_frames_rows` is cheaper below about a thousand rows.

    ``ticks``: a ``polars.DataFrame`` with columns ``instrument_key`` (String), ``ts`` (Int64
    epoch ms UTC), ``ltp`` (Float64 rupees), ``ltq`` (Int64 units), ``oi`` (Float64 units),
    ``seq`` (Int64). Returns one frame per row, in row order. Decoding a frame gives the
    same Tick as decoding ``encode(tick_topic(key), Tick(...))`` (fields may be in another
    order; floats are written as the shortest text that reads back as the same double).
    Raises ``polars.exceptions.ColumnNotFoundError`` for a missing column.
    """
    import polars as pl        # only replays need it; keeps the bus's other users light

    keys = ticks.get_column("instrument_key").unique().to_list()
    text = pl.concat_str([
        pl.col("instrument_key").replace_strict({k: _tick_head(k) for k in keys}, return_dtype=pl.String),
        pl.col("ts").cast(pl.String), pl.lit(',"ltp":'), pl.col("ltp").cast(pl.String),
        pl.lit(',"ltq":'), pl.col("ltq").cast(pl.String), pl.lit(',"oi":'), pl.col("oi").cast(pl.String),
        pl.lit(',"seq":'), pl.col("seq").cast(pl.String), pl.lit(_tick_tail(source))])
    return ticks.select(text.cast(pl.Binary)).to_series().to_list()


def tick_frames_rows(keys: list[str], ts: list[int], ltp: list[float], ltq: list[int],
                     oi: list[float], first_seq: int, source: str) -> list[bytes]:
    """The frames :func:`tick_frames` makes (decoding to the same ticks), from columns as Python lists
    (``keys``: instrument_key; ``ts`` epoch ms UTC; ``ltp`` rupees; ``ltq``, ``oi`` units;
    ``seq`` runs from ``first_seq``), one row at a time: about 1.8 us a tick with no cost per
    call, so a paced replay builds each 2 ms batch as it goes instead of a 4,096-tick chunk
    in one 5 ms step that would hold the feed back (benchmarks/RESULTS.md, issue 9)."""
    head, tail = _tick_head, _tick_tail(source)
    return [f'{head(k)}{t},"ltp":{p!r},"ltq":{q},"oi":{o!r},"seq":{s}{tail}'.encode()
            for s, (k, t, p, q, o) in enumerate(zip(keys, ts, ltp, ltq, oi), first_seq)]


def candle_frames(candles) -> list[bytes]:
    """Bus frames of many final candles at once: what :func:`encode` makes of each row as a
    :class:`Candle` on :func:`candle_topic`, built column-wise (see :func:`tick_frames`).

    ``candles``: a ``polars.DataFrame`` with columns ``instrument_key, interval`` (String),
    ``ts`` (Int64 bar open, epoch ms UTC), ``open, high, low, close`` (Float64 rupees),
    ``volume`` (Int64 units), ``oi`` (Float64), ``ticks`` (Int64). One frame per row, in order.
    """
    import polars as pl

    pairs = candles.select("instrument_key", "interval").unique().rows()
    head = {f"{k}\x00{i}": f'{candle_topic(k, i)}\x00{{"type":"candle","v":{SCHEMA_VERSION},"instrument_key":'
                          f'{_encoder.encode(k).decode()},"interval":{_encoder.encode(i).decode()},"ts":'
            for k, i in pairs}
    text = pl.concat_str([
        pl.concat_str("instrument_key", pl.lit("\x00"), "interval").replace_strict(head, return_dtype=pl.String),
        pl.col("ts").cast(pl.String), pl.lit(',"open":'), pl.col("open").cast(pl.String),
        pl.lit(',"high":'), pl.col("high").cast(pl.String), pl.lit(',"low":'), pl.col("low").cast(pl.String),
        pl.lit(',"close":'), pl.col("close").cast(pl.String), pl.lit(',"volume":'), pl.col("volume").cast(pl.String),
        pl.lit(',"oi":'), pl.col("oi").cast(pl.String), pl.lit(',"ticks":'), pl.col("ticks").cast(pl.String),
        pl.lit(',"final":true}')])
    return candles.select(text.cast(pl.Binary)).to_series().to_list()


# --- Market Profile (appended: trading_core.profile) ------------------------------------------
class Profile(Message, tag="profile"):
    """Market Profile of one instrument's session, published on ``profile.<instrument_key>`` at
    most once a second and at each TPO period close (see ``trading_core.profile``).

    ``ts``: latest print (epoch ms UTC, 0 before any); ``session``: IST date ``YYYY-MM-DD``;
    ``session_kind``: ``regular`` | ``extended`` | ``muhurat`` | ``inferred`` | ``holiday``;
    ``period``: current TPO letter. Prices in rupees; ``poc``/``vah``/``val`` (and the volume
    profile's ``vpoc``/``vvah``/``vval``) are row prices: a row spans
    ``[price, price + row_size)``. ``volume_source`` is ``"tpo"`` when the instrument has no
    volume (then the v* fields repeat the TPO ones). ``ext_up``/``ext_down``: range extension in
    IB multiples. ``tpo``/``volume``: counts per row from ``row_low`` upwards; ``periods``:
    ``[letter, low, high]`` of each traded period, enough to redraw the TPO letters.
    """

    instrument_key: str
    ts: int
    session: str
    session_kind: str = "regular"
    closed: bool = False
    period: str = ""
    row_size: float = 0.0
    open: float | None = None
    high: float | None = None
    low: float | None = None
    last: float | None = None
    poc: float | None = None
    vah: float | None = None
    val: float | None = None
    vpoc: float | None = None
    vvah: float | None = None
    vval: float | None = None
    volume_source: str = "tpo"
    ib_high: float | None = None
    ib_low: float | None = None
    ib_complete: bool = False
    ext_up: float | None = None
    ext_down: float | None = None
    open_type: str = ""
    open_type_final: bool = False
    day_type: str = ""
    day_type_final: bool = False
    poor_high: bool = False
    poor_low: bool = False
    excess_high: bool = False
    excess_low: bool = False
    single_prints: list[list[float]] = []
    prior_high: float | None = None
    prior_low: float | None = None
    prior_close: float | None = None
    prior_poc: float | None = None
    prior_vah: float | None = None
    prior_val: float | None = None
    open_vs_value: str = ""
    open_vs_range: str = ""
    balance: str = ""
    row_low: float | None = None
    tpo: list[int] = []
    volume: list[int] = []
    periods: list[list[Any]] = []


# --- market status (appended: data_handling.upstox_feed) -----------------------------------------
MARKET = "market"            # market.status


def market_status_topic() -> str:
    """Topic of the exchange segments' trading status, ``market.status``."""
    return f"{MARKET}.status"


class MarketStatus(Message, tag="market_status"):
    """Trading status of each exchange segment, from the live feed's market-info message.

    ``ts``: the feed's time of the message (epoch ms UTC). ``segments``: segment -> status, e.g.
    ``{"NSE_FO": "NORMAL_OPEN", "NSE_INDEX": "NORMAL_OPEN"}``; statuses are Upstox's
    ``PRE_OPEN_START`` | ``PRE_OPEN_END`` | ``NORMAL_OPEN`` | ``NORMAL_CLOSE`` |
    ``CLOSING_START`` | ``CLOSING_END``. ``source``: the feed that sent it.
    """

    ts: int
    segments: dict[str, str] = {}
    source: str = "upstox"


# --- control replies (appended: scripts/strategy_manager.py) -------------------------------------
REPLY = "reply"              # reply.<service>


def reply_topic(service: str) -> str:
    """Topic of a service's answers to control commands, e.g. ``reply.strategy_manager``."""
    return f"{REPLY}.{service}"


class ControlReply(Message, tag="control_reply"):
    """The answer to one :class:`Control` command: ``request_ts`` repeats the command's ``ts``
    (the sender's correlation key), ``ok`` whether it was carried out, ``message`` one line for
    the user (e.g. ``"restarted ib_nifty (pid 4242 -> 4250)"`` or the config error),
    ``details`` e.g. ``{"old_pid": 4242, "pid": 4250}``; ``ts`` epoch ms UTC."""

    service: str
    command: str
    target: str = ""
    request_ts: int = 0
    ok: bool = False
    message: str = ""
    details: dict[str, Any] = {}
    ts: int = 0


# --- risk, orders, fills, positions, service events (appended: scripts/execution.py) ------------
RISK = "risk"                # risk.<strategy>
ORDER = "order"              # order.<instrument_key>
FILL = "fill"                # fill.<instrument_key>
POSITION = "position"        # position.<instrument_key>
EVENT = "event"              # event.<service>


def risk_topic(strategy: str) -> str:
    """Topic of the risk guard's decisions on one strategy's signals, e.g. ``risk.ib_breakout_nifty``."""
    return f"{RISK}.{strategy}"


def order_topic(instrument_key: str) -> str:
    """Topic of order state changes of one instrument, e.g. ``order.NSE_INDEX|Nifty 50``."""
    return f"{ORDER}.{instrument_key}"


def fill_topic(instrument_key: str) -> str:
    """Topic of executions (fills) of one instrument, e.g. ``fill.NSE_INDEX|Nifty 50``."""
    return f"{FILL}.{instrument_key}"


def position_topic(instrument_key: str) -> str:
    """Topic of position updates (opened, stop moved, marks, closed) of one instrument."""
    return f"{POSITION}.{instrument_key}"


def event_topic(service: str) -> str:
    """Topic of one service's notable events (start, recovery, kill switch...), e.g. ``event.execution``."""
    return f"{EVENT}.{service}"


class RiskDecision(Message, tag="risk"):
    """The risk guard's verdict on one :class:`Signal` (see ``trading_core/risk.py``).

    ``signal_id``: the signal's identity (``risk.signal_id``: strategy, instrument, side, ts).
    The signal's fields are repeated (``signal_ts`` its ts). ``approved``; ``rule``: the code of
    the first rule that failed (``""`` when approved), ``failed``: every rule that failed,
    ``reason``: one line for a human. Sizing (also on a rejection, where computable):
    ``quantity`` units = ``lots`` x ``lot_size``; ``risk_per_unit`` = |entry - stop| rupees;
    ``risk_amount`` = quantity x risk_per_unit rupees; ``budget``: the most a trade may risk
    (rupees); ``reward_risk`` = |target - entry| / |entry - stop|. ``ts``: market time of the
    decision (the signal's ts), epoch ms UTC; ``decided_ms``: wall clock.
    """

    signal_id: str
    strategy: str
    instrument_key: str
    side: Literal["BUY", "SELL"]
    entry: float
    stop_loss: float
    target: float
    signal_ts: int
    approved: bool
    reason: str
    rule: str = ""
    failed: list[str] = []
    quantity: int = 0
    lots: int = 0
    lot_size: int = 0
    risk_per_unit: float = 0.0
    risk_amount: float = 0.0
    budget: float = 0.0
    reward_risk: float = 0.0
    ts: int = 0
    decided_ms: int = 0


class Order(Message, tag="order"):
    """One state of one order (see ``trading_core/execution_engine.py``).

    ``kind``: ``entry`` (opens the position), ``stop`` / ``target`` (the position's protective
    stop-loss and profit target: working orders the execution service holds and sends as a
    market / limit order when the price reaches them), ``exit`` (time exit, square-off, kill
    switch). ``order_type``: ``MARKET`` | ``LIMIT`` | ``SL-M``; ``price``: limit price or stop
    trigger (rupees; 0 for MARKET). ``status``: ``placed`` | ``modified`` (stop moved) |
    ``filled`` | ``cancelled`` | ``rejected``; ``reason`` says why (exit reason, rejection).
    ``quantity`` units; ``side`` the order's own side (an exit of a long is a SELL).
    ``fill_price``: average fill price once filled. ``client``: ``paper`` | ``upstox``;
    ``broker_order_id``: the broker's id (live only). ``ts``: market time, epoch ms UTC.
    """

    order_id: str
    signal_id: str
    position_id: str
    strategy: str
    instrument_key: str
    side: Literal["BUY", "SELL"]
    quantity: int
    kind: str
    order_type: str
    status: str
    ts: int
    price: float = 0.0
    fill_price: float = 0.0
    reason: str = ""
    client: str = "paper"
    broker_order_id: str = ""


class Fill(Message, tag="fill"):
    """An execution of an order: ``quantity`` units at ``price`` rupees (after slippage).

    ``ltp``: the traded price of the tick it filled on (paper) or 0 (live); ``slippage``:
    rupees per unit paid against ``ltp`` (>= 0 is a cost). ``kind`` as the order's. ``ts``:
    market time, epoch ms UTC.
    """

    fill_id: str
    order_id: str
    position_id: str
    signal_id: str
    strategy: str
    instrument_key: str
    side: Literal["BUY", "SELL"]
    quantity: int
    price: float
    kind: str
    ts: int
    ltp: float = 0.0
    slippage: float = 0.0
    client: str = "paper"


class Position(Message, tag="position"):
    """One update of one position (see ``trading_core/paper.py``).

    ``side``: ``BUY`` = long, ``SELL`` = short; ``quantity`` units (``lots`` x ``lot_size``).
    ``entry_price``: the entry fill (rupees), ``entry_ts`` its time. ``stop_loss``: the stop
    now; ``initial_stop`` the signal's; ``trailed``: the stop was moved to break-even.
    ``status``: ``open`` | ``closed``; ``event``: ``opened`` | ``stop_moved`` | ``mark`` |
    ``recovered`` (a restarted execution service took it over) | ``closed``. ``last_price``:
    the latest traded price; ``unrealised_pnl`` / ``realised_pnl`` rupees (gross: no charges).
    When closed: ``exit_price``, ``exit_ts``, ``exit_reason`` (``stop`` | ``breakeven_stop`` |
    ``target`` | ``time`` | ``square_off`` | ``kill_switch``). ``ts``: market time of the update.
    """

    position_id: str
    signal_id: str
    strategy: str
    instrument_key: str
    side: Literal["BUY", "SELL"]
    quantity: int
    entry_price: float
    entry_ts: int
    stop_loss: float
    target: float
    status: str
    event: str
    ts: int
    lots: int = 0
    lot_size: int = 0
    initial_stop: float = 0.0
    trailed: bool = False
    last_price: float = 0.0
    unrealised_pnl: float = 0.0
    realised_pnl: float = 0.0
    exit_price: float = 0.0
    exit_ts: int = 0
    exit_reason: str = ""
    client: str = "paper"


class ServiceEvent(Message, tag="service_event"):
    """A notable event of one service, kept in the audit trail: ``event`` e.g. ``started``,
    ``recovered``, ``kill_switch``, ``resumed``, ``live_confirmed``, ``error``, ``stopped``;
    ``message`` one line for a human; ``details`` counters; ``ts`` wall clock, epoch ms UTC."""

    service: str
    event: str
    message: str
    ts: int
    details: dict[str, Any] = {}


LAST_TICKS = "last_ticks"   # conflated: the last tick of each instrument, ~10 times a second


class LastTicks(Message, tag="last_ticks"):
    """The last tick of each instrument that printed since the previous LastTicks, published
    by the ingestor on ``last_ticks`` about every 100 ms (and at the end of a replay). For
    consumers that show prices rather than trade on every print (the API and its browsers):
    one frame in place of thousands at full replay speed. ``ticks``: instrument_key -> Tick.
    Build the frame with :func:`last_ticks_frame`."""

    ticks: dict[str, Tick]


def last_ticks_frame(frames: Iterable[tuple[str, bytes]]) -> bytes:
    """The ``last_ticks`` bus frame of ``(instrument_key, tick frame)`` pairs (each a frame as
    :func:`encode` made it for that instrument's tick), splicing the ticks' JSON as it is.
    Decodes to a :class:`LastTicks`."""
    body = b",".join(_encoder.encode(key) + b":" + frame[frame.index(SEPARATOR) + 1:]
                     for key, frame in frames)
    return (LAST_TICKS.encode() + SEPARATOR + b'{"type":"last_ticks","v":'
            + str(SCHEMA_VERSION).encode() + b',"ticks":{' + body + b"}}")


# Profile (and the types appended after it) join the union the decoder accepts.
AnyMessage = Union[Tick, Candle, Signal, Health, Control, Profile, MarketStatus, ControlReply,
                   RiskDecision, Order, Fill, Position, ServiceEvent, LastTicks]
_decoder = msgspec.json.Decoder(AnyMessage)
