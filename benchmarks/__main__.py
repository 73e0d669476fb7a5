"""`python -m benchmarks` (`make bench`): run the benchmark items and write `results.json` and `results.md`.

```
python -m benchmarks                                   # every item, full size, 3 rounds
python -m benchmarks --only sentiment,startup --repeats 5
python -m benchmarks --size tiny --output /tmp/bench    # seconds per item: checks that the scripts run
python -m benchmarks --update-readme README.md          # also put the table between the README's markers
```

Items run one after another in this process (each one's contenders alternate inside it). With `--only`, the
results of the other items already in `<output>/results.json` are kept when they were measured on the same
machine at the same size, so the table can be refreshed one item at a time.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

from . import ITEMS
from .common import SIZES, log, machine_info, render_markdown, update_readme, write_results

DEFAULT_OUTPUT = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help=f"comma-separated items (default: all): {', '.join(ITEMS)}")
    parser.add_argument("--size", choices=SIZES, default="full", help="full (the published table) or tiny (smoke)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per contender (default 3)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where results.json/.md go")
    parser.add_argument("--workdir", type=Path, help="where models and data are built (default: a temporary dir)")
    parser.add_argument("--update-readme", type=Path, metavar="README", help="replace the table between the markers")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first item that fails")
    args = parser.parse_args(argv)
    args.items = ITEMS if not args.only else tuple(item.strip().replace("-", "_") for item in args.only.split(","))
    unknown = [item for item in args.items if item not in ITEMS]
    if unknown:
        parser.error(f"unknown item(s) {', '.join(unknown)}; known: {', '.join(ITEMS)}")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def _previous(path: Path, machine: dict, size: str) -> dict:
    """Items of an earlier run worth keeping: same CPU, same core count, same size."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    same = all(old.get("machine", {}).get(key) == machine.get(key) for key in ("cpu", "usable_cores", "torch_threads"))
    return old.get("items", {}) if same and old.get("size") == size else {}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    machine = machine_info()
    log(f"machine: {machine['cpu']}, {machine['usable_cores']} cores, {machine['torch_threads']} torch threads")
    items = _previous(args.output / "results.json", machine, args.size) if args.only else {}
    failed = []
    for name in args.items:
        log(f"{name} ({args.size}, {args.repeats} rounds)")
        started = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            comparisons = module.run(args.size, args.repeats, args.workdir)
            items[name] = {"comparisons": comparisons, "seconds": round(time.perf_counter() - started, 1)}
        except Exception as err:  # one broken item must not cost the others' results
            if args.fail_fast:
                raise
            traceback.print_exc()
            items[name] = {"comparisons": [], "error": f"{type(err).__name__}: {err}"}
            failed.append(name)
        gc.collect()
    ordered = {name: items[name] for name in ITEMS if name in items}
    results = {"machine": machine, "size": args.size, "repeats": args.repeats, "items": ordered}
    json_path, md_path = write_results(results, args.output)
    log(f"wrote {json_path} and {md_path}")
    if args.update_readme:
        update_readme(args.update_readme, render_markdown(results))
        log(f"updated {args.update_readme}")
    if failed:
        log(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
