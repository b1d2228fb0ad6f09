"""Validate a strategies file: ``python3 scripts/validate_strategies.py [PATH]``.

PATH defaults to ``configs/strategies.json`` of this checkout. Checks the file against
``configs/strategies.schema.json``, each entry's ``params`` against its class's params schema,
and compiles every expression of the rule strategies (the same checks the strategy manager runs
at start-up). Prints ``ok: N strategies (name, ...)`` and exits 0, or prints every problem on its
own line (``file: strategy 'x': field: why``) to stderr and exits 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from strategy.registry import StrategyConfigError, load_strategies  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or (args and args[0] in ("-h", "--help")):
        print(__doc__.strip(), file=sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 1
    path = args[0] if args else ROOT / "configs" / "strategies.json"
    try:
        configs = load_strategies(path)
    except StrategyConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 1
    names = ", ".join(c.name + ("" if c.enabled else " [disabled]") for c in configs)
    print(f"ok: {len(configs)} strategies ({names})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
