"""Item 7: start-up, `python -c "import hfpipes"` and `hfpipes --help` vs `python -c "from transformers import pipeline"`.

Each command runs in a fresh subprocess of the same interpreter (the wall time of the whole process, as a user
waits for it), in alternation, after one warm-up run of each that fills the disk cache. `import hfpipes` imports
no deep-learning library (torch, transformers and diffusers load when a task is first used), so it should start
much faster than transformers' pipeline import, which is what a user of transformers starts with.

Example:

```python
>>> from benchmarks import startup
>>> [c["title"] for c in startup.run("tiny", repeats=1)]
['start-up: import hfpipes', 'start-up: hfpipes --help']
```
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from .common import Contender, check_size, compare, time_alternating

# Fewer repetitions than this make medians of ~1 s process start-ups meaningless; tiny runs each command once.
MIN_REPEATS = {"tiny": 1, "full": 10}


def hfpipes_command() -> list[str]:
    """The `hfpipes` console script next to this interpreter, else `python -m hfpipes`."""
    script = Path(sys.executable).with_name("hfpipes")
    if script.is_file():
        return [str(script)]
    found = shutil.which("hfpipes")
    return [found] if found else [sys.executable, "-m", "hfpipes"]


def _runner(command: list[str]):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def run() -> int:
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        return 0

    return run


def run(size: str = "full", repeats: int = 3, workdir: Path | None = None, model: str | None = None) -> list[dict]:
    """Run the start-up benchmark; returns two comparisons sharing one alternating run.

    Args:
        size (`str`, *optional*, defaults to `"full"`):
            `"full"` (at least 10 runs of each command) or `"tiny"`.
        repeats (`int`, *optional*, defaults to 3):
            Timed rounds (raised to 10 at `full`).
        workdir, model:
            Unused; accepted like every item's.
    """
    repeats = max(repeats, MIN_REPEATS[check_size(size)])
    cli = hfpipes_command()
    commands = {
        "python -c 'import hfpipes'": [sys.executable, "-c", "import hfpipes"],
        "hfpipes --help": [*cli, "--help"],
        "python -c 'from transformers import pipeline'": [sys.executable, "-c", "from transformers import pipeline"],
    }
    contenders = {name: Contender(name, _runner(command)) for name, command in commands.items()}
    times = time_alternating(list(contenders.values()), repeats)
    peer_name = "python -c 'from transformers import pipeline'"
    results = []
    for ours, title in (("python -c 'import hfpipes'", "import hfpipes"), ("hfpipes --help", "hfpipes --help")):
        primary = Contender(ours, contenders[ours].run, role="ours")
        peer = Contender(peer_name, contenders[peer_name].run, goal=1.0)
        settings = {"each": "a fresh process of the same interpreter", "runs": repeats}
        results.append(compare("startup", f"start-up: {title}", [primary, peer], repeats=repeats, settings=settings,
                               times=times))  # fmt: skip
    return results
