"""What every benchmark shares: alternating timing, medians and spreads, the machine's description, result files.

A benchmark item (one module per item) builds its inputs and model once, wraps each way of doing the work in a
`Contender`, and hands them to `compare`, which times them in alternation (A B C A B C ...) after an excluded
warm-up run of each, and returns a comparison: a plain dict that `write_results` stores in `results.json` and
renders as the Markdown table of `results.md` (which the README includes between two markers).

Every comparison has one primary contender (`role="ours"`, an hfpipes call); each other contender's row gets the
primary's speed-up over it (`ratio = its median / the primary's median`, so 2.0 means hfpipes took half the time)
and, for peers, the goal from issue #8 and whether it was met. Quality and correctness checks (same labels, same
WER, accuracy within a point) are listed beside the timings.

Example:

```python
>>> from benchmarks.common import Contender, compare
>>> data = list(range(100_000, 0, -1))
>>> result = compare(
...     "demo", "Sorting 100k numbers",
...     [Contender("sorted", lambda: sorted(data), role="ours", work=1e5, unit="numbers"),
...      Contender("list.sort", lambda: list(data).sort(), goal=0.9)],
...     repeats=3,
... )
>>> result["contenders"][1]["ratio"] > 0
True
```
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "SIZES",
    "Contender",
    "check",
    "check_size",
    "compare",
    "log",
    "machine_info",
    "machine_line",
    "quiet_libraries",
    "render_markdown",
    "resolve",
    "update_readme",
    "write_results",
]

SIZES = ("tiny", "full")
# The README includes `results.md` between these two lines (`python -m benchmarks --update-readme README.md`).
README_START = "<!-- benchmarks:start -->"
README_END = "<!-- benchmarks:end -->"


def log(message: str) -> None:
    """Progress on stderr (stdout stays free for whoever pipes the results)."""
    print(f"[benchmarks] {message}", file=sys.stderr, flush=True)


@dataclass
class Contender:
    """One way of doing a benchmark's work.

    Args:
        name (`str`):
            What the table shows, e.g. `"transformers.pipeline (batch 32)"`.
        run (`Callable[[], Any]`):
            Does the whole work once and returns its output (kept from the last run for correctness checks).
        role (`str`, *optional*, defaults to `"peer"`):
            `"ours"` for the comparison's primary hfpipes call (exactly one per comparison), `"peer"` for what a
            user would pick instead, `"variant"` for another setting of hfpipes shown for information.
        goal (`float`, *optional*):
            For a peer: the least speed-up of the primary over it that issue #8 asks for.
        work (`float`, *optional*):
            Units of work per run (texts, images, tokens, samples), for a throughput column.
        unit (`str`, *optional*):
            The unit of `work`, e.g. `"texts"`.
        warmup (`Callable[[], Any]`, *optional*):
            The excluded warm-up run; defaults to `run`. A smaller job is enough where one run is long (training).
    """

    name: str
    run: Callable[[], Any]
    role: str = "peer"
    goal: float | None = None
    work: float | None = None
    unit: str | None = None
    warmup: Callable[[], Any] | None = None
    output: Any = field(default=None, repr=False)


def check(name: str, value: Any, goal: str, met: bool | None) -> dict[str, Any]:
    """A correctness or quality check shown beside the timings (`met=None`: informational, no goal)."""
    return {"name": name, "value": value, "goal": goal, "met": None if met is None else bool(met)}


def _cpu_seconds() -> float:
    children = os.times()  # finished subprocesses; clock ticks, so only for them
    return time.process_time() + children.children_user + children.children_system


def time_alternating(contenders: list[Contender], repeats: int) -> dict[str, list[float]]:
    """Warm each contender up once (not timed), then time `repeats` rounds of A B C ... in that order.

    Alternating spreads slow drifts of the machine (other processes, thermal throttling, caches) over every
    contender instead of charging them to whichever ran last. Each run starts after a garbage collection, so
    one contender's garbage is not collected on another's clock. Returns wall times under each contender's name
    and CPU times under `"<name> (cpu)"` (this process's threads and its finished subprocesses, summed), which
    stay comparable on a machine busy with other work when wall times do not.
    """
    for contender in contenders:
        log(f"  warm-up: {contender.name}")
        (contender.warmup or contender.run)()
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    for round_index in range(repeats):
        for contender in contenders:
            gc.collect()
            cpu, started = _cpu_seconds(), time.perf_counter()
            contender.output = contender.run()
            elapsed, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
            times[contender.name].append(elapsed)
            times.setdefault(f"{contender.name} (cpu)", []).append(cpu)
            log(f"  round {round_index + 1}/{repeats}: {contender.name}: {elapsed:.3f} s ({cpu:.3f} s cpu)")
    return times


def compare(
    item: str,
    title: str,
    contenders: list[Contender],
    *,
    repeats: int,
    settings: dict[str, Any] | None = None,
    checks: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None,
    times: dict[str, list[float]] | None = None,
) -> dict[str, Any]:
    """Time `contenders` in alternation and summarise them as one comparison.

    Args:
        item (`str`):
            The benchmark's name (`"sentiment"`), the key `--only` selects.
        title (`str`):
            What was measured, for the table, e.g. `"2,000 texts of 3-300 tokens"`.
        contenders (`list[Contender]`):
            Exactly one with `role="ours"`.
        repeats (`int`):
            Timed rounds after the warm-up.
        settings (`dict`, *optional*):
            The settings both sides ran with (model, batch size, max length, ...), stored and shown.
        checks (`Callable`, *optional*):
            Called with `{contender name: output of its last run}`; returns `check(...)` entries.
        times (`dict`, *optional*):
            Times already measured (several comparisons sharing one alternating run); skips the timing.
    """
    primary = [c for c in contenders if c.role == "ours"]
    if len(primary) != 1:
        raise ValueError(f"{item}: a comparison needs exactly one contender with role='ours', got {len(primary)}")
    if times is None:
        times = time_alternating(contenders, repeats)
    ours = statistics.median(times[primary[0].name])
    rows = []
    for contender in contenders:
        runs = times[contender.name]
        median = statistics.median(runs)
        row: dict[str, Any] = {
            "name": contender.name,
            "role": contender.role,
            "median_s": median,
            "min_s": min(runs),
            "max_s": max(runs),
            "times_s": runs,
            "cpu_median_s": statistics.median(cpu) if (cpu := times.get(f"{contender.name} (cpu)")) else None,
            "throughput": contender.work / median if contender.work and median > 0 else None,
            "unit": f"{contender.unit}/s" if contender.unit else None,
            "ratio": None,
            "goal": None,
            "goal_met": None,
        }
        if contender.role != "ours":
            row["ratio"] = median / ours if ours > 0 else None
        if contender.role == "peer" and contender.goal is not None:
            row["goal"] = contender.goal
            row["goal_met"] = row["ratio"] is not None and row["ratio"] >= contender.goal
        rows.append(row)
    outputs = {c.name: c.output for c in contenders}
    return {
        "item": item,
        "title": title,
        "settings": settings or {},
        "repeats": repeats,
        "contenders": rows,
        "checks": checks(outputs) if checks else [],
    }


# ------------------------------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _physical_cores() -> int | None:
    with contextlib.suppress(OSError):
        cores = set()
        physical = core = None
        for line in Path("/proc/cpuinfo").read_text().splitlines() + [""]:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key == "physical id":
                physical = value.strip()
            elif key == "core id":
                core = value.strip()
            elif not line.strip() and core is not None:
                cores.add((physical, core))
                physical = core = None
        return len(cores) or None
    return None


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """The CPU, core counts, threads, library versions and the date: what a timing means nothing without."""
    import torch

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": _physical_cores(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {
            name: _version(name)
            for name in ("hfpipes", "torch", "transformers", "diffusers", "accelerate", "datasets", "tokenizers")
        },
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


# -------------------------------------------------------------------------------------------------- output


def write_results(results: dict[str, Any], directory: Path) -> tuple[Path, Path]:
    """Write `results.json` and `results.md` into `directory`; return both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / "results.json", directory / "results.md"
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(results), encoding="utf-8")
    return json_path, md_path


def _seconds(value: float) -> str:
    if value >= 100:
        return f"{value:.0f} s"
    if value >= 1:
        return f"{value:.2f} s"
    return f"{value * 1000:.0f} ms" if value >= 0.01 else f"{value * 1000:.1f} ms"


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _goal_text(row: dict[str, Any]) -> str:
    return "" if row["goal"] is None else f"≥ {row['goal']:g}x"


def _met_text(met: bool | None) -> str:
    return "" if met is None else ("yes" if met else "**no**")


def machine_line(machine: dict[str, Any]) -> str:
    """One line: CPU, cores, threads, library versions, date."""
    versions = machine.get("versions", {})
    libraries = ", ".join(f"{name} {versions[name]}" for name in ("torch", "transformers", "diffusers", "accelerate")
                          if versions.get(name))  # fmt: skip
    cores = f"{machine.get('usable_cores')} cores usable"
    if machine.get("physical_cores"):
        cores += f" ({machine['physical_cores']} physical, {machine.get('logical_cores')} logical)"
    gpu = f", GPU {machine['gpu']}" if machine.get("gpu") else ""
    return (
        f"{machine.get('cpu')}, {cores}, {machine.get('torch_threads')} torch threads{gpu}; Python "
        f"{machine.get('python')}, {libraries}; {machine.get('date')}"
    )


def render_markdown(results: dict[str, Any]) -> str:
    """The benchmark table (one row per contender), the checks, and each comparison's settings."""
    lines = [
        f"Machine: {machine_line(results['machine'])}.",
        "",
        f"Size `{results['size']}`. Each contender ran once to warm up, then in alternation (A B A B ...) for the "
        "rounds listed under the settings; times are medians with the min-max spread. *Speed-up* is how many times "
        "faster the hfpipes call (the first, bold row of each benchmark) was than that row's contender.",
        "",
        "| benchmark | contender | median | min – max | throughput | speed-up | goal | met |",
        "|---|---|---:|---:|---:|---:|---:|:---:|",
    ]
    comparisons = [c for item in results["items"].values() for c in item.get("comparisons", [])]
    for comparison in comparisons:
        for index, row in enumerate(comparison["contenders"]):
            name = f"**{row['name']}**" if row["role"] == "ours" else row["name"]
            if row["role"] == "variant":
                name += " *(variant)*"
            throughput = f"{_number(row['throughput'])} {row['unit']}" if row["throughput"] else ""
            ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}x"
            lines.append(
                f"| {comparison['title'] if index == 0 else ''} | {name} | {_seconds(row['median_s'])} | "
                f"{_seconds(row['min_s'])} – {_seconds(row['max_s'])} | {throughput} | {ratio} | {_goal_text(row)} | "
                f"{_met_text(row['goal_met'])} |"
            )
    failed = {name: item["error"] for name, item in results["items"].items() if item.get("error")}
    checks = [(c["title"], k) for c in comparisons for k in c["checks"]]
    if checks:
        lines += ["", "| benchmark | check | value | goal | met |", "|---|---|---|---|:---:|"]
        for title, entry in checks:
            value = entry["value"]
            value = f"{value:.4g}" if isinstance(value, float) else str(value)
            lines.append(f"| {title} | {entry['name']} | {value} | {entry['goal']} | {_met_text(entry['met'])} |")
    lines += ["", "Settings (the same for every contender of a benchmark unless its name says otherwise):", ""]
    for comparison in comparisons:
        settings = "; ".join(f"{key} {value}" for key, value in comparison["settings"].items())
        lines.append(f"- **{comparison['title']}**: {settings}; {comparison['repeats']} timed rounds.")
    for name, error in failed.items():
        lines.append(f"- **{name}** failed: `{error}`")
    return "\n".join(lines) + "\n"


def update_readme(readme: Path, markdown: str) -> None:
    """Replace what lies between `README_START` and `README_END` in `readme` with `markdown`."""
    text = readme.read_text(encoding="utf-8")
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise SystemExit(f"{readme}: add the lines {README_START!r} and {README_END!r} where the table belongs.")
    before, after = text[: start + len(README_START)], text[end:]
    readme.write_text(f"{before}\n{markdown}{after}", encoding="utf-8")


# ---------------------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence transformers' warnings (newly initialised heads) and its per-file loading and saving bars."""
    from transformers.utils import logging as hf_logging

    from hfpipes.task import quiet_progress_bars

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with quiet_progress_bars():
            yield
    finally:
        hf_logging.set_verbosity(level)


def resolve(spec: str) -> str:
    """A model spec (`embedded:NAME`, a directory) as a local directory that `from_pretrained` loads."""
    from hfpipes.sources import resolve_model

    return resolve_model(spec).path


def check_size(size: str) -> str:
    if size not in SIZES:
        raise ValueError(f"size: expected one of {SIZES}, got {size!r}")
    return size
