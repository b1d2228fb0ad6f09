"""A local fake of Upstox's order endpoints, for the live execution client's tests.

Serves, on 127.0.0.1 and a free port, what :class:`trading_core.execution_client.UpstoxExecutionClient`
calls through the SDK (shapes from https://upstox.com/developer/api-documentation/v3/place-order,
.../cancel-order and .../get-order-details):

``POST /v3/order/place``     JSON ``PlaceOrderV3Request`` -> ``{"status":"success","data":{"order_ids":[id]},
                             "metadata":{"latency":n}}``; 401 without ``Authorization: Bearer <token>``;
                             400 ``{"status":"error","errors":[{"errorCode","message"}]}`` for a missing
                             field or an instrument in ``reject_instruments``.
``GET /v2/order/details``    ``?order_id=`` -> ``{"status":"success","data":{...order..., "status",
                             "average_price","filled_quantity"}}``: ``open`` for the first
                             ``polls_before_fill`` polls, then ``complete`` at ``fill_price(order)``
                             (default: the limit price, else ``market_price``).
``DELETE /v3/order/cancel``  ``?order_id=`` -> the order ``cancelled``.

Every request is kept in ``requests`` (method, path, headers, JSON body) for the assertions.
"""

from __future__ import annotations

import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

REQUIRED = ("quantity", "product", "validity", "price", "instrument_token", "order_type",
            "transaction_type", "disclosed_quantity", "trigger_price", "is_amo")


class FakeUpstoxOrders:
    """Start with :meth:`start` (returns the base URL), stop with :meth:`stop`."""

    def __init__(self, token: str, market_price: float = 100.0, polls_before_fill: int = 1,
                 reject_instruments: tuple[str, ...] = (),
                 fill_price: Callable[[dict[str, Any]], float] | None = None):
        self.token = token
        self.market_price = market_price
        self.polls_before_fill = polls_before_fill
        self.reject_instruments = set(reject_instruments)
        self.fill_price = fill_price
        self.orders: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self._ids = itertools.count(250_101_000_000_001)
        self._lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):            # quiet
                pass

            def _reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                with fake._lock:
                    fake.requests.append({"method": method, "path": url.path, "query": parse_qs(url.query),
                                          "headers": dict(self.headers), "body": body})
                code, answer = fake.route(method, url.path, parse_qs(url.query), self.headers, body)
                self._reply(code, answer)

            def do_POST(self):
                self._handle("POST")

            def do_GET(self):
                self._handle("GET")

            def do_DELETE(self):
                self._handle("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, name="fake-upstox-orders", daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    # --- the endpoints -------------------------------------------------------------------------------
    @staticmethod
    def _error(code: str, message: str) -> dict:
        return {"status": "error", "errors": [{"errorCode": code, "message": message, "propertyPath": None,
                                               "invalidValue": None, "error_code": code}]}

    def route(self, method: str, path: str, query: dict, headers, body) -> tuple[int, dict]:
        if headers.get("Authorization") != f"Bearer {self.token}":
            return 401, self._error("UDAPI100050", "Invalid token used to access API")
        with self._lock:
            if method == "POST" and path == "/v3/order/place":
                missing = [f for f in REQUIRED if not isinstance(body, dict) or body.get(f) is None]
                if missing:
                    return 400, self._error("UDAPI1000", f"{missing[0]} is required")
                if body["instrument_token"] in self.reject_instruments:
                    return 400, self._error("UDAPI1026", "Instrument key is invalid")
                oid = str(next(self._ids))
                self.orders[oid] = {**body, "order_id": oid, "status": "open", "polls": 0,
                                    "filled_quantity": 0, "average_price": 0.0}
                return 200, {"status": "success", "data": {"order_ids": [oid]}, "metadata": {"latency": 7}}
            oid = (query.get("order_id") or [""])[0]
            order = self.orders.get(oid)
            if order is None:
                return 400, self._error("UDAPI100010", f"Order not found for order id {oid}")
            if method == "GET" and path == "/v2/order/details":
                if order["status"] == "open":
                    order["polls"] += 1
                    if order["polls"] > self.polls_before_fill:
                        price = self.fill_price(order) if self.fill_price else (
                            order["price"] if order["order_type"] == "LIMIT" else self.market_price)
                        order.update(status="complete", average_price=float(price),
                                     filled_quantity=order["quantity"])
                data = {k: order.get(k) for k in ("quantity", "product", "validity", "price", "tag",
                                                  "instrument_token", "order_type", "transaction_type",
                                                  "trigger_price", "disclosed_quantity", "is_amo",
                                                  "status", "average_price", "filled_quantity", "order_id")}
                data.update(exchange="NSE", pending_quantity=order["quantity"] - order["filled_quantity"],
                            status_message=None, order_timestamp="2022-06-09 10:22:00", variety="SIMPLE")
                return 200, {"status": "success", "data": data}
            if method == "DELETE" and path == "/v3/order/cancel":
                if order["status"] != "open":
                    return 400, self._error("UDAPI100040", "Order is not open")
                order["status"] = "cancelled"
                return 200, {"status": "success", "data": {"order_id": oid}, "metadata": {"latency": 5}}
        return 404, self._error("UDAPI100060", f"no route {method} {path}")

    def placed(self) -> list[dict[str, Any]]:
        """Bodies of the accepted and refused place requests, in order."""
        return [r["body"] for r in self.requests if r["path"] == "/v3/order/place"]
