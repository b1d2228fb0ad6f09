"""Encode/decode cost per tick: the bus's wire format (msgspec JSON) against stdlib json, orjson and
msgspec MessagePack, on real ticks of 2022-11-18.

    python3 benchmarks/bench_codec.py            # about 15 s; prints a markdown section
    python3 benchmarks/bench_codec.py --append   # ... and appends it to benchmarks/RESULTS.md
    python3 benchmarks/bench_codec.py --quick    # about 5 s: 50,000 ticks, best of 3 (run_all.py)
    python3 benchmarks/bench_codec.py --smoke    # about a second (tests/test_benchmarks.py)

Ticks: ``data_handling.replay.ReplaySource`` of ``nse-fo-ticks/2022-11-18`` limited to the 9
futures and the 20 busiest options (``common.tick_subset``), the first 200,000 (50,000 with
``--quick``, 5,000 with ``--smoke``). Per tick, best of 5 passes (3 with ``--quick``, 2 with
``--smoke``) over the whole list (one process, one core):

1. the project's path: ``messages.encode(messages.tick_topic(key), tick)`` (a typed
   ``msgspec.Struct`` to ``topic\\x00json``, as the ingestor publishes) and
   ``messages.decode(frame)`` (split and a typed, validated decode into the ``AnyMessage`` union,
   as every subscriber does);
2. contrast, the same frame layout: stdlib ``json.dumps``/``json.loads`` and ``orjson`` of the
   tick as a dict (decoded to a dict: no type check, no Struct), and msgspec MessagePack of the
   same Struct decoded into the same union (a possible wire format, not the project's).

Check: every codec round-trips every tick to the same fields.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

import msgspec  # noqa: E402
import orjson  # noqa: E402

from trading_core import messages as m  # noqa: E402


def codecs() -> dict[str, tuple]:
    """Name -> (encode(topic, tick_struct, tick_dict) -> frame, decode(frame) -> object, kind)."""
    sep = m.SEPARATOR
    mp_enc = msgspec.msgpack.Encoder().encode
    mp_dec = msgspec.msgpack.Decoder(m.AnyMessage).decode
    dumps, loads = json.dumps, json.loads
    o_dumps, o_loads = orjson.dumps, orjson.loads

    def mp_decode(frame: bytes):
        topic, _, payload = frame.partition(sep)
        return topic.decode(), mp_dec(payload)

    def dict_decoder(load):
        def decode(frame: bytes):
            topic, _, payload = frame.partition(sep)
            return topic.decode(), load(payload)
        return decode

    return {
        "msgspec JSON Struct (the project's messages.encode/decode)":
            (lambda topic, t, d: m.encode(topic, t), m.decode, "struct"),
        "stdlib json, dict": (lambda topic, t, d: topic.encode() + sep + dumps(d).encode(),
                              dict_decoder(loads), "dict"),
        "orjson, dict": (lambda topic, t, d: topic.encode() + sep + o_dumps(d), dict_decoder(o_loads), "dict"),
        "msgspec MessagePack Struct": (lambda topic, t, d: topic.encode() + sep + mp_enc(t), mp_decode, "struct"),
    }


def main() -> int:
    args = common.parser(__doc__, quick=True).parse_args()
    mode = common.mode_of(args)
    n = {"smoke": 5_000, "quick": 50_000}.get(mode, 200_000)
    repeat = {"smoke": 2, "quick": 3}.get(mode, 5)
    bench = common.Bench("codec", "Encode/decode cost per tick", ["msgspec", "orjson"], mode,
                         note=f"best of {repeat} passes, one process")
    ticks = common.real_ticks(n, smoke=args.smoke)
    topics = [m.tick_topic(t.instrument_key) for t in ticks]
    dicts = [msgspec.to_builtins(t) for t in ticks]
    n = len(ticks)
    bench.data["ticks"] = n
    fields = ("instrument_key", "ts", "ltp", "ltq", "oi", "seq", "source")
    results = {}
    for name, (encode, decode, kind) in codecs().items():
        frames: list[bytes] = []

        def enc():
            frames.clear()
            frames.extend(encode(topic, t, d) for topic, t, d in zip(topics, ticks, dicts))

        def dec():
            for f in frames:
                decode(f)

        t_enc = common.best_of(enc, repeat)
        t_dec = common.best_of(dec, repeat)
        size = sum(len(f) for f in frames) / n
        bad = 0
        for f, t in zip(frames, ticks):
            topic, back = decode(f)
            got = tuple(getattr(back, k) for k in fields) if kind == "struct" else tuple(back[k] for k in fields)
            if topic != m.tick_topic(t.instrument_key) or got != tuple(getattr(t, k) for k in fields):
                bad += 1
        bench.check(f"{name} round trip", bad == 0, f"{n - bad:,} of {n:,} ticks identical after decode")
        enc_us, dec_us = t_enc / n * 1e6, t_dec / n * 1e6
        results[name] = {"encode_us": enc_us, "decode_us": dec_us, "bytes": size}
        bench.row(name, f"encode {enc_us:.2f} us + decode {dec_us:.2f} us = **{enc_us + dec_us:.2f} us/tick**; "
                        f"{size:.0f} bytes/frame")
    bench.data["codecs"] = results
    proj = results["msgspec JSON Struct (the project's messages.encode/decode)"]
    total = proj["encode_us"] + proj["decode_us"]
    bench.headline("tick encode+decode, project (msgspec JSON)", total, "us/tick", f"{total:.2f} us/tick")
    for name, label in (("stdlib json, dict", "stdlib json"), ("orjson, dict", "orjson"),
                        ("msgspec MessagePack Struct", "msgspec msgpack")):
        r = results[name]
        bench.headline(f"tick encode+decode, {label} (contrast)", r["encode_us"] + r["decode_us"], "us/tick",
                       f"{r['encode_us'] + r['decode_us']:.2f} us/tick")
    bench.footer = [
        f"{n:,} real ticks (futures and the 20 busiest options of 2022-11-18, in replay order). The "
        "project's decode is typed (validated into the `AnyMessage` union: a Struct with its tag "
        "checked); the json/orjson contrasts decode to a plain dict with no checks, so they flatter "
        "those libraries. At the full F&O day's peak rates (tens of thousands of ticks a second) the "
        "project's codec costs well under a tenth of a core."]
    return bench.finish(args)


if __name__ == "__main__":
    sys.exit(main())
