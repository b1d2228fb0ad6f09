"""Safe expressions over candles, indicators and profile fields, for rule strategies in JSON.

An expression is one Python *expression* (never a statement), e.g.::

    close > profile.vah and ema(close, 20) > ema(close, 50)
    crosses_above(ema(close, 9), ema(close, 21)) and time >= "09:30"
    close - 2 * atr(14)

It is checked when the strategies file is loaded (:func:`compile_expression`), then evaluated once
per candle by ``asteval`` (a sandboxed interpreter: no imports, no statements, no attribute
access to Python internals) with a time limit per evaluation.

What an expression may use
--------------------------
- the current 1-minute candle: ``open``, ``high``, ``low``, ``close`` (rupees), ``volume``,
  ``oi`` (units), ``ts`` (bar open, epoch ms UTC), ``time`` (its IST open time ``"HH:MM"``),
  ``date`` (IST ``"YYYY-MM-DD"``);
- ``profile.<field>``: today's Market Profile, see :data:`PROFILE_FIELDS`;
- indicators (:data:`INDICATORS`), whose first argument is any expression (a *series*, evaluated
  on every candle) and whose other arguments are number literals: ``sma(x, n)``, ``ema(x, n)``,
  ``wma(x, n)``, ``rsi(x, n)``, ``stdev(x, n)``, ``roc(x, n)``, ``bb_upper(x, n, k)``,
  ``bb_mid(x, n, k)``, ``bb_lower(x, n, k)``, ``macd(x, fast, slow, signal)``,
  ``macd_signal(...)``, ``macd_hist(...)`` (all incremental, from ``talipp``), ``atr(n)`` (of
  the candles), ``highest(x, n)``, ``lowest(x, n)`` (over the last n candles), ``prev(x, n)``
  (x, n candles ago), ``crosses_above(a, b)`` / ``crosses_below(a, b)`` (a crossed b on this
  candle);
- ``abs``, ``min``, ``max``, ``round``, ``known(x)`` (x is not NaN); numbers, strings, ``True``,
  ``False``; ``+ - * / // %``, ``**`` with a literal exponent up to 10, comparisons, ``and``,
  ``or``, ``not``, ``x if c else y``.

A value not known yet (an indicator still warming up, a profile level before the first print, no
prior day) is NaN, and every comparison with NaN is false, so a condition over unknown values does
not fire. A division by zero makes the whole expression NaN for that candle. Any other error
(e.g. comparing a string with a number) raises :class:`ExpressionError`.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import math
import time
from typing import Any, Callable

from asteval import Interpreter
from talipp.indicators import BB, EMA, MACD, ROC, RSI, SMA, WMA, ATR, StdDev
from talipp.ohlcv import OHLCV

NAN = float("nan")

#: Names of the current candle (and its IST time/date) an expression may read.
CANDLE_NAMES = ("open", "high", "low", "close", "volume", "oi", "ts", "time", "date")

#: ``profile.<field>``: today's Market Profile (``trading_core.profile_model.AuctionProfile``) and
#: the prior trading day's references. Numbers in rupees (NaN while unknown), strings ``""`` while
#: unknown, flags False. ``vah``/``val``/``poc`` are row prices (a row is ``[p, p + row_size)``);
#: ``ext_up``/``ext_down`` are the range extension beyond the IB in IB multiples.
PROFILE_FIELDS: dict[str, str] = {
    "open": "num", "high": "num", "low": "num", "last": "num", "poc": "num", "vah": "num",
    "val": "num", "volume_poc": "num", "volume_vah": "num", "volume_val": "num",
    "ib_high": "num", "ib_low": "num", "ib_range": "num", "ext_up": "num", "ext_down": "num",
    "row_size": "num", "ib_complete": "flag", "poor_high": "flag", "poor_low": "flag",
    "excess_high": "flag", "excess_low": "flag", "open_type": "str", "open_type_final": "flag",
    "day_type": "str", "period": "str", "session": "str", "open_vs_prior_value": "str",
    "open_vs_prior_range": "str", "value_relation": "str", "balance": "str",
    "prior_high": "num", "prior_low": "num", "prior_close": "num", "prior_poc": "num",
    "prior_vah": "num", "prior_val": "num",
}

# name -> (number of series inputs, literal parameters as (name, kind, default or None), talipp?)
_P = collections.namedtuple("_P", "name kind default lo hi")
INDICATORS: dict[str, tuple[int, tuple[_P, ...]]] = {
    "sma": (1, (_P("n", int, None, 1, 1000),)),
    "ema": (1, (_P("n", int, None, 1, 1000),)),
    "wma": (1, (_P("n", int, None, 1, 1000),)),
    "rsi": (1, (_P("n", int, None, 2, 1000),)),
    "stdev": (1, (_P("n", int, None, 2, 1000),)),
    "roc": (1, (_P("n", int, None, 1, 1000),)),
    "bb_upper": (1, (_P("n", int, None, 2, 1000), _P("k", float, 2.0, 0.1, 10))),
    "bb_mid": (1, (_P("n", int, None, 2, 1000), _P("k", float, 2.0, 0.1, 10))),
    "bb_lower": (1, (_P("n", int, None, 2, 1000), _P("k", float, 2.0, 0.1, 10))),
    "macd": (1, (_P("fast", int, 12, 1, 1000), _P("slow", int, 26, 2, 1000), _P("signal", int, 9, 1, 1000))),
    "macd_signal": (1, (_P("fast", int, 12, 1, 1000), _P("slow", int, 26, 2, 1000), _P("signal", int, 9, 1, 1000))),
    "macd_hist": (1, (_P("fast", int, 12, 1, 1000), _P("slow", int, 26, 2, 1000), _P("signal", int, 9, 1, 1000))),
    "atr": (0, (_P("n", int, None, 1, 1000),)),
    "highest": (1, (_P("n", int, None, 1, 1000),)),
    "lowest": (1, (_P("n", int, None, 1, 1000),)),
    "prev": (1, (_P("n", int, 1, 1, 1000),)),
    "crosses_above": (2, ()),
    "crosses_below": (2, ()),
}

#: Plain functions an expression may call.
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs, "min": min, "max": max, "round": round,
    "known": lambda x: not (isinstance(x, float) and math.isnan(x)),
}

_ALLOWED_NODES = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.BinOp, ast.Add, ast.Sub,
                  ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.UnaryOp, ast.Not,
                  ast.USub, ast.UAdd, ast.Compare, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq,
                  ast.NotEq, ast.IfExp, ast.Call, ast.Name, ast.Attribute, ast.Constant, ast.Load)
MAX_LENGTH = 2000
_TALIPP = {"sma": SMA, "ema": EMA, "wma": WMA, "rsi": RSI, "stdev": StdDev, "roc": ROC}


class ExpressionError(ValueError):
    """An expression that does not compile, or fails while evaluated; one line naming it."""


@dataclasses.dataclass(frozen=True)
class SeriesDef:
    """A value computed on every candle: ``kind`` (an :data:`INDICATORS` key), ``args`` (its
    literal parameters), ``inputs`` (source texts of its series inputs, already rewritten to refer
    to earlier series), ``name`` (``s<N>``, how expressions refer to it)."""

    name: str
    kind: str
    args: tuple
    inputs: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Compiled:
    """A compiled expression: ``text`` as written, ``code`` rewritten (indicator calls replaced
    by series names), ``uses_profile``."""

    text: str
    code: str
    uses_profile: bool


class Program:
    """Every expression of one strategy, compiled against one shared list of series.

    ``compile(field, text)`` adds an expression (raising :class:`ExpressionError` naming
    ``field``); identical indicator calls in different expressions share one series.
    """

    def __init__(self) -> None:
        self.series: list[SeriesDef] = []
        self._keys: dict[tuple, str] = {}
        self.expressions: dict[str, Compiled] = {}

    @property
    def uses_profile(self) -> bool:
        return any(c.uses_profile for c in self.expressions.values()) or any(
            "profile." in i for s in self.series for i in s.inputs)

    def compile(self, field: str, text: str) -> Compiled:
        """Check and rewrite ``text``; remember it as ``field``. Raises :class:`ExpressionError`."""
        def fail(why: str, node: ast.AST | None = None) -> ExpressionError:
            col = f" (column {node.col_offset + 1})" if node is not None and hasattr(node, "col_offset") else ""
            return ExpressionError(f"{field}: {why}{col} in {text!r}")

        if not isinstance(text, str) or not text.strip():
            raise ExpressionError(f"{field}: empty expression")
        if len(text) > MAX_LENGTH:
            raise ExpressionError(f"{field}: expression longer than {MAX_LENGTH} characters")
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as exc:
            raise ExpressionError(f"{field}: invalid syntax at column {exc.offset or 0}: "
                                  f"{exc.msg} in {text!r}") from None
        uses_profile = False
        for node in ast.walk(tree):
            if not isinstance(node, _ALLOWED_NODES):
                raise fail(f"{type(node).__name__} is not allowed (only arithmetic, comparisons, "
                           "and/or/not, x if c else y, and the listed functions)", node)
            if isinstance(node, ast.Attribute):
                if not (isinstance(node.value, ast.Name) and node.value.id == "profile"):
                    raise fail("attribute access is only allowed as profile.<field>", node)
                if node.attr not in PROFILE_FIELDS:
                    raise fail(f"unknown field profile.{node.attr} (known: "
                               f"{', '.join(sorted(PROFILE_FIELDS))})", node)
                uses_profile = True
            elif isinstance(node, ast.Name):
                ok = node.id in CANDLE_NAMES or node.id in INDICATORS or node.id in FUNCTIONS \
                    or node.id == "profile"
                if not ok:
                    raise fail(f"unknown name {node.id!r} (known: {', '.join(CANDLE_NAMES)}, "
                               f"profile.<field>, {', '.join(sorted(INDICATORS))}, "
                               f"{', '.join(sorted(FUNCTIONS))})", node)
            elif isinstance(node, ast.Call):
                if not isinstance(node.func, ast.Name) or not (node.func.id in INDICATORS or node.func.id in FUNCTIONS):
                    raise fail("only the listed functions may be called", node)
                if node.keywords:
                    raise fail(f"{node.func.id}() takes positional arguments only", node)
            elif isinstance(node, ast.Constant):
                if isinstance(node.value, str) and len(node.value) > 64:
                    raise fail("string literal longer than 64 characters", node)
                if not isinstance(node.value, (int, float, str, bool)):
                    raise fail(f"literal {node.value!r} is not allowed", node)
            if isinstance(node, ast.BinOp) and any(isinstance(x, ast.Constant) and isinstance(x.value, str)
                                                   for x in (node.left, node.right)):
                raise fail("arithmetic on a string is not allowed (compare strings, e.g. time >= \"10:15\")", node)
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
                exp = node.right
                if not (isinstance(exp, ast.Constant) and isinstance(exp.value, (int, float))
                        and not isinstance(exp.value, bool) and abs(exp.value) <= 10):
                    raise fail("** needs a number literal exponent between -10 and 10", node)
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id == "profile":
                parent_ok = any(isinstance(a, ast.Attribute) and a.value is node for a in ast.walk(tree))
                if not parent_ok:
                    raise fail("use profile.<field>, not profile itself", node)
            if isinstance(node, ast.Name) and (node.id in INDICATORS or node.id in FUNCTIONS):
                called = any(isinstance(c, ast.Call) and c.func is node for c in ast.walk(tree))
                if not called:
                    raise fail(f"{node.id} is a function: call it, e.g. {node.id}(...)", node)
        rewritten = _Rewriter(self, fail).visit(tree)
        ast.fix_missing_locations(rewritten)
        compiled = Compiled(text, ast.unparse(rewritten), uses_profile)
        self.expressions[field] = compiled
        return compiled

    def _series(self, kind: str, args: tuple, inputs: tuple[str, ...]) -> str:
        key = (kind, args, inputs)
        name = self._keys.get(key)
        if name is None:
            name = self._keys[key] = f"s{len(self.series)}"
            self.series.append(SeriesDef(name, kind, args, inputs))
        return name


class _Rewriter(ast.NodeTransformer):
    """Replaces each indicator call (innermost first) by the name of a shared series."""

    def __init__(self, program: Program, fail) -> None:
        self.program = program
        self.fail = fail

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)              # inner calls first: their series come earlier
        name = node.func.id
        if name not in INDICATORS:
            return node
        n_inputs, params = INDICATORS[name]
        args = node.args
        required = n_inputs + sum(p.default is None for p in params)
        if not required <= len(args) <= n_inputs + len(params):
            sig = ", ".join(["x", "y"][:n_inputs] + [p.name if p.default is None else f"{p.name}={p.default:g}"
                                                     for p in params])
            raise self.fail(f"{name}() takes ({sig}), got {len(args)} argument(s)", node)
        inputs = tuple(ast.unparse(a) for a in args[:n_inputs])
        values: list[Any] = []
        for p, a in zip(params, list(args[n_inputs:]) + [None] * len(params)):
            if a is None:
                values.append(p.default)
                continue
            neg = isinstance(a, ast.UnaryOp) and isinstance(a.op, ast.USub)
            lit = a.operand if neg else a
            if not (isinstance(lit, ast.Constant) and isinstance(lit.value, (int, float))
                    and not isinstance(lit.value, bool)):
                raise self.fail(f"{name}(): {p.name} must be a number literal", a)
            v = -lit.value if neg else lit.value
            if p.kind is int and (not isinstance(v, int)):
                raise self.fail(f"{name}(): {p.name} must be a whole number, not {v!r}", a)
            if not p.lo <= v <= p.hi:
                raise self.fail(f"{name}(): {p.name}={v!r} is outside {p.lo}..{p.hi}", a)
            values.append(p.kind(v))
        if name.startswith("macd") and not values[0] < values[1]:
            raise self.fail(f"{name}(): fast ({values[0]}) must be below slow ({values[1]})", node)
        return ast.copy_location(ast.Name(id=self.program._series(name, tuple(values), inputs),
                                          ctx=ast.Load()), node)


class _Timed(Interpreter):
    """asteval's interpreter with a deadline, checked every 16 nodes it evaluates. The clock is the
    thread's CPU time (``time.thread_time``), so a busy machine does not trip the limit; only the
    expression's own work does."""

    deadline: float | None = None
    _nodes_run = 0

    def run(self, node, expr=None, lineno=None, with_raise=True):
        self._nodes_run += 1
        if self._nodes_run & 15 == 0 and self.deadline is not None and time.thread_time() > self.deadline:
            self.deadline = None
            raise TimeoutError("time limit exceeded")
        return super().run(node, expr, lineno, with_raise)


class Evaluator:
    """Evaluates a :class:`Program` on one instrument's candles (one per strategy instrument).

    Per candle: :meth:`update` (feeds every series, in order), then :meth:`value` of any
    expression. ``max_eval_ms``: time limit of one evaluation (an expression or a series input),
    in CPU milliseconds of the evaluating thread; past it :class:`ExpressionError` is raised.
    Pure: no I/O.
    """

    def __init__(self, program: Program, max_eval_ms: float = 50.0) -> None:
        self.program = program
        self.limit_s = max_eval_ms / 1000.0
        self.interp = _Timed(minimal=True, use_numpy=False, builtins_readonly=True,
                             user_symbols=dict(FUNCTIONS))
        self._nodes: dict[str, Any] = {}
        self._state = [_make_state(s) for s in program.series]
        self.arith_errors = 0
        self.last_arith_error = ""

    def _run(self, field: str, code: str) -> Any:
        node = self._nodes.get(code)
        if node is None:
            node = self._nodes[code] = self.interp.parse(code)
        interp = self.interp
        interp.error = []
        interp.deadline = time.thread_time() + self.limit_s
        try:
            return interp.run(node, expr=code)
        except ArithmeticError as exc:
            self.arith_errors += 1
            self.last_arith_error = f"{field}: {type(exc).__name__}"
            return NAN
        except TimeoutError:
            raise ExpressionError(f"{field}: evaluation took longer than "
                                  f"{self.limit_s * 1000:g} ms") from None
        except Exception as exc:
            msg = interp.error[0].get_error()[1].strip().splitlines()[-1] if interp.error else repr(exc)
            raise ExpressionError(f"{field}: {type(exc).__name__} in {code!r}: {msg}") from None
        finally:
            interp.deadline = None

    def update(self, symbols: dict[str, Any], ohlcv: tuple[float, float, float, float, float]) -> None:
        """Set the candle's names (``symbols``) and feed every series. ``ohlcv`` for ``atr``."""
        symtable = self.interp.symtable
        symtable.update(symbols)
        for sdef, state in zip(self.program.series, self._state):
            xs = [symtable[code] if code.isidentifier() else self._run(f"{sdef.kind}() input", code)
                  for code in sdef.inputs]       # a bare name needs no interpreter
            symtable[sdef.name] = state(xs, ohlcv)

    def value(self, field: str) -> Any:
        """The value of the compiled expression ``field`` for the current candle."""
        return self._run(field, self.program.expressions[field].code)


def _num(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return NAN
    return v if math.isfinite(v) else NAN


def _make_state(sdef: SeriesDef) -> Callable[[list, tuple], Any]:
    """The per-candle updater of one series: ``(inputs, ohlcv) -> value``."""
    kind, args = sdef.kind, sdef.args
    if kind in _TALIPP or kind.startswith(("bb_", "macd")) or kind == "atr":
        if kind in _TALIPP:
            ind, pick = _TALIPP[kind](args[0]), (lambda v: v)
        elif kind.startswith("bb_"):
            ind = BB(args[0], args[1])
            attr = {"bb_upper": "ub", "bb_mid": "cb", "bb_lower": "lb"}[kind]
            pick = (lambda v, a=attr: getattr(v, a))
        elif kind.startswith("macd"):
            ind = MACD(args[0], args[1], args[2])
            attr = {"macd": "macd", "macd_signal": "signal", "macd_hist": "histogram"}[kind]
            pick = (lambda v, a=attr: getattr(v, a))
        else:
            ind, pick = ATR(args[0]), (lambda v: v)
        keep = 4 * max(a for a in args if isinstance(a, int)) + 64

        def talipp_update(xs: list, ohlcv: tuple) -> float:
            if kind == "atr":
                ind.add(OHLCV(*ohlcv))
            else:
                x = _num(xs[0])
                if math.isnan(x):                # an unknown input does not move the indicator
                    return _last(ind, pick)
                ind.add(x)
            if len(ind) > 2 * keep:
                ind.purge_oldest(len(ind) - keep)
            return _last(ind, pick)
        return talipp_update

    if kind in ("highest", "lowest", "prev"):
        n = args[0]
        window: collections.deque = collections.deque(maxlen=n + 1 if kind == "prev" else n)

        def window_update(xs: list, ohlcv: tuple) -> Any:
            window.append(xs[0])
            if len(window) < window.maxlen:
                return NAN
            if kind == "prev":
                return window[0]
            vals = [_num(v) for v in window]
            if any(math.isnan(v) for v in vals):
                return NAN
            return max(vals) if kind == "highest" else min(vals)
        return window_update

    prev: list = [NAN, NAN]                      # crosses_above / crosses_below

    def cross_update(xs: list, ohlcv: tuple) -> bool:
        a, b = _num(xs[0]), _num(xs[1])
        pa, pb = prev
        prev[:] = [a, b]
        if any(math.isnan(v) for v in (a, b, pa, pb)):
            return False
        return (a > b and pa <= pb) if kind == "crosses_above" else (a < b and pa >= pb)
    return cross_update


def _last(ind, pick) -> float:
    if not len(ind):
        return NAN
    v = ind[-1]
    return NAN if v is None else _num(pick(v))
