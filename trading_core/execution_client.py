"""Where orders go: the :class:`ExecutionClient` interface, the paper client (default) and the
Upstox client (live money, used only when config ``LIVE_TRADING = True`` and the user confirmed
at start-up; see ``scripts/execution.py``).

The execution engine (:mod:`trading_core.execution_engine`) decides *what* to send: entry
orders, and the exits its position management triggers (a position's stop-loss and target are
held by the engine and sent as market / limit orders when the price reaches them, so paper and
live manage positions with the same code). A client only carries orders out and reports fills.

Units: prices rupees, quantities units, ``ts`` epoch ms UTC.
"""

from __future__ import annotations

import abc
import logging
import queue
import re
import threading
import time
from typing import Callable

import msgspec
import msgspec.structs

from trading_core import messages as m
from trading_core.paper import PaperConfig, PaperFills

log = logging.getLogger("execution")

Outcome = tuple[m.Order, "m.Fill | None"]


class ExecutionClient(abc.ABC):
    """Carries orders to a market and reports what happened to them.

    ``name``: ``paper`` | ``upstox`` (stamped on orders, fills and positions).
    Outcomes come back as ``(order, fill)`` pairs: a filled order (``status="filled"``,
    ``fill_price``) with its :class:`messages.Fill`, or a rejected / cancelled order with None.
    """

    name = "abstract"
    #: True when a LIMIT order rests at the market until it fills (the paper market simulates a
    #: resting target); False makes the engine send a reached target as a MARKET order, so a live
    #: exit never waits on a limit the price has already left.
    resting_limits = False

    @abc.abstractmethod
    def place(self, order: m.Order) -> m.Order:
        """Send ``order`` (``status="placed"``). Returns it as acknowledged: ``placed`` (live: with
        ``broker_order_id``) or ``rejected`` with ``reason``. Never raises for a market problem."""

    @abc.abstractmethod
    def cancel(self, order: m.Order) -> m.Order:
        """Cancel an order not yet filled; returns it with ``status="cancelled"`` (or unchanged
        with ``reason`` set when the market refused)."""

    def on_tick(self, instrument_key: str, ts: int, ltp: float) -> list[Outcome]:
        """Fills a print causes (the paper client); a live client returns []."""
        return []

    def poll(self) -> list[Outcome]:
        """Outcomes that arrived since the last call (a live client's fills and rejections)."""
        return []

    def resume(self, order: m.Order) -> None:
        """Keep tracking an order placed before a restart (live: by its ``broker_order_id``)."""

    def close(self) -> None:
        """Release connections and threads."""


class PaperExecutionClient(ExecutionClient):
    """Fills on the tick stream, see :class:`trading_core.paper.PaperFills`."""

    name = "paper"
    resting_limits = True

    def __init__(self, config: PaperConfig):
        self.market = PaperFills(config)

    def place(self, order: m.Order) -> m.Order:
        """Queue the order for the next tick at or after its ``ts``."""
        try:
            self.market.submit(order)
        except ValueError as exc:
            return msgspec.structs.replace(order, status="rejected", reason=str(exc))
        return order

    def cancel(self, order: m.Order) -> m.Order:
        """Remove it from the paper market."""
        self.market.cancel(order.order_id)
        return msgspec.structs.replace(order, status="cancelled")

    def on_tick(self, instrument_key: str, ts: int, ltp: float) -> list[Outcome]:
        """Fills this print causes."""
        return self.market.on_tick(instrument_key, ts, ltp)

    def resume(self, order: m.Order) -> None:
        """Re-queue an unfilled order from before a restart."""
        if order.order_id not in self.market.pending:
            self.market.submit(order)


# --- Upstox ----------------------------------------------------------------------------------------
UPSTOX_ORDER_BASE_URL = "https://api-hft.upstox.com"   # the SDK's order host (place/modify/cancel)
_DONE = {"complete": "filled", "rejected": "rejected", "cancelled": "cancelled"}
_UPSTOX_KEY = re.compile(r"^[A-Z_]+\|\d+$")


def upstox_key_or_raise(instrument_key: str) -> str:
    """Default instrument resolver: an Upstox key (``NSE_FO|43885``) is sent as it is; an index
    cannot be traded; anything else needs the instruments master (``scripts/execution.py`` passes
    a resolver built on :mod:`data_handling.upstox_instruments`). Raises ``ValueError``."""
    if instrument_key.split("|", 1)[0].endswith("_INDEX"):
        raise ValueError(f"{instrument_key} is an index and cannot be traded; trade its future or "
                         f"options (a strategy on the contract's instrument key)")
    if _UPSTOX_KEY.match(instrument_key):
        return instrument_key
    raise ValueError(f"no Upstox instrument key known for {instrument_key}")


class UpstoxExecutionClient(ExecutionClient):
    """Live orders through the Upstox SDK (``upstox-python-sdk``): ``OrderApiV3.place_order`` /
    ``cancel_order`` (``POST /v3/order/place``, ``DELETE /v3/order/cancel`` on the order host) and
    ``OrderApi.get_order_status`` (``GET /v2/order/details`` on the API host) to learn fills.
    Source: https://upstox.com/developer/api-documentation/v3/place-order and .../get-order-details.

    ``access_token``: the user's daily token (never logged). ``base_url`` (UPSTOX_BASE_URL) and
    ``order_base_url`` (UPSTOX_ORDER_BASE_URL) are configurable so tests use a local fake
    (``tests/fake_upstox_orders.py``). ``resolve(instrument_key) -> Upstox key`` raises
    ``ValueError`` for what cannot be traded. Orders are intraday (``product="I"``), ``DAY``
    validity, tagged with our order id. A background thread polls each open order every
    ``poll_interval_s`` until it is complete, rejected or cancelled; :meth:`poll` hands the
    outcomes over. Placing blocks for at most ``timeout_s``.
    """

    name = "upstox"

    def __init__(self, access_token: str, base_url: str = "https://api.upstox.com",
                 order_base_url: str = UPSTOX_ORDER_BASE_URL,
                 resolve: Callable[[str], str] = upstox_key_or_raise, product: str = "I",
                 poll_interval_s: float = 0.5, timeout_s: float = 10.0):
        import upstox_client
        if not access_token:
            raise ValueError("LIVE_TRADING needs an Upstox access token (ACCESS_TOKEN / UPSTOX_ACCESS_TOKEN)")
        self._sdk = upstox_client
        config = upstox_client.Configuration()
        config.access_token = access_token
        config.host = base_url.rstrip("/")
        config.order_host = order_base_url.rstrip("/")
        self._api = upstox_client.ApiClient(config)
        self._orders_v3 = upstox_client.OrderApiV3(self._api)
        self._orders = upstox_client.OrderApi(self._api)
        self.resolve = resolve
        self.product = product
        self.poll_interval_s = poll_interval_s
        self.timeout_s = timeout_s
        self._tracked: dict[str, m.Order] = {}        # broker order id -> our order
        self._lock = threading.Lock()
        self._outcomes: queue.Queue[Outcome] = queue.Queue()
        self._stop = threading.Event()
        self.errors = 0
        self._thread = threading.Thread(target=self._poll_loop, name="upstox-orders", daemon=True)
        self._thread.start()

    # --- calls ------------------------------------------------------------------------------------
    def _why(self, exc: Exception) -> str:
        """One line from an SDK / network error (Upstox's ``errors[].message`` when present)."""
        body = getattr(exc, "body", None)
        status = getattr(exc, "status", None)
        text = ""
        if body:
            try:
                import json
                data = json.loads(body)
                errs = data.get("errors") or []
                text = "; ".join(str(e.get("message") or e.get("errorCode")) for e in errs) or str(data)[:200]
            except (ValueError, AttributeError, TypeError):
                text = (body.decode(errors="replace") if isinstance(body, bytes) else str(body))[:200]
        else:
            text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        return f"HTTP {status}: {text}" if status else text

    def place(self, order: m.Order) -> m.Order:
        """``POST /v3/order/place``: MARKET (entries, stops, exits) or LIMIT (targets)."""
        try:
            token = self.resolve(order.instrument_key)
        except ValueError as exc:
            return msgspec.structs.replace(order, status="rejected", reason=str(exc), client=self.name)
        limit = order.order_type == "LIMIT"
        body = self._sdk.PlaceOrderV3Request(
            quantity=int(order.quantity), product=self.product, validity="DAY",
            price=float(order.price) if limit else 0.0, tag=order.order_id[:40],
            instrument_token=token, order_type="LIMIT" if limit else "MARKET",
            transaction_type=order.side, disclosed_quantity=0, trigger_price=0.0, is_amo=False,
            slice=False)
        try:
            resp = self._orders_v3.place_order(body, _request_timeout=self.timeout_s)
            ids = list(getattr(resp.data, "order_ids", None) or [])
            if not ids:
                raise ValueError(f"no order id in the answer ({getattr(resp, 'status', '?')})")
        except Exception as exc:  # noqa: BLE001 - ApiException, urllib3 errors, a bad answer
            self.errors += 1
            why = self._why(exc)
            log.error("upstox: order %s not placed: %s", order.order_id, why)
            return msgspec.structs.replace(order, status="rejected", reason=f"Upstox: {why}", client=self.name)
        placed = msgspec.structs.replace(order, broker_order_id=str(ids[0]), client=self.name)
        with self._lock:
            self._tracked[placed.broker_order_id] = placed
        log.info("upstox: %s %s %d %s placed as %s", order.order_id, order.side, order.quantity,
                 order.instrument_key, placed.broker_order_id)
        return placed

    def cancel(self, order: m.Order) -> m.Order:
        """``DELETE /v3/order/cancel`` for an order at the broker; an order never sent (a stop or
        target the engine holds) is simply cancelled."""
        if not order.broker_order_id:
            return msgspec.structs.replace(order, status="cancelled")
        try:
            self._orders_v3.cancel_order(order.broker_order_id, _request_timeout=self.timeout_s)
        except Exception as exc:  # noqa: BLE001
            self.errors += 1
            why = self._why(exc)
            log.error("upstox: cancel of %s (%s) failed: %s", order.order_id, order.broker_order_id, why)
            return msgspec.structs.replace(order, reason=f"cancel failed: {why}")
        with self._lock:
            self._tracked.pop(order.broker_order_id, None)
        return msgspec.structs.replace(order, status="cancelled")

    def resume(self, order: m.Order) -> None:
        """Track an order placed before a restart (needs its ``broker_order_id``)."""
        if order.broker_order_id:
            with self._lock:
                self._tracked[order.broker_order_id] = order

    def poll(self) -> list[Outcome]:
        """Fills, rejections and cancellations found since the last call."""
        out = []
        while True:
            try:
                out.append(self._outcomes.get_nowait())
            except queue.Empty:
                return out

    # --- the status poller ---------------------------------------------------------------------------
    def check(self, broker_order_id: str) -> Outcome | None:
        """``GET /v2/order/details`` of one tracked order: its outcome once final, else None."""
        with self._lock:
            order = self._tracked.get(broker_order_id)
        if order is None:
            return None
        resp = self._orders.get_order_status(order_id=broker_order_id, _request_timeout=self.timeout_s)
        data = resp.data
        status = str(getattr(data, "status", "") or "").lower()
        if status not in _DONE:
            return None
        with self._lock:
            self._tracked.pop(broker_order_id, None)
        ts = int(time.time() * 1000)
        if status == "complete":
            price = float(getattr(data, "average_price", 0) or 0)
            qty = int(getattr(data, "filled_quantity", 0) or order.quantity)
            # ts: the order's (market time); the engine stamps the fill with its market clock
            filled = msgspec.structs.replace(order, status="filled", fill_price=price)
            return filled, m.Fill(
                fill_id=f"{order.order_id}-F", order_id=order.order_id, position_id=order.position_id,
                signal_id=order.signal_id, strategy=order.strategy, instrument_key=order.instrument_key,
                side=order.side, quantity=qty, price=price, kind=order.kind, ts=max(ts, order.ts),
                client=self.name)
        reason = str(getattr(data, "status_message", "") or status)
        return msgspec.structs.replace(order, status=_DONE[status], reason=f"Upstox: {reason}"), None

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            with self._lock:
                ids = list(self._tracked)
            for oid in ids:
                try:
                    outcome = self.check(oid)
                except Exception as exc:  # noqa: BLE001 - keep polling; the next round may work
                    self.errors += 1
                    log.warning("upstox: status of order %s unknown: %s", oid, self._why(exc))
                    continue
                if outcome is not None:
                    self._outcomes.put(outcome)

    def close(self) -> None:
        """Stop the poller and close the SDK's connection pool."""
        self._stop.set()
        self._thread.join(timeout=2)
        try:
            self._api.close()
        except Exception:  # noqa: BLE001 - closing a pool that never opened
            pass
