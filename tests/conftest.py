"""Shared test set-up: offline mode, and fixtures collected from `tests/fixtures/*.py`.

Each task has a fixtures module there that builds its tiny models (once per session) and a `<task>_case`
fixture (a `TaskCase`) that the generic, parametrized tests in `tests/test_tasks_generic.py` use.
"""

from __future__ import annotations

import os
from pathlib import Path

# Before anything imports huggingface_hub: no test may reach the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny test models gain nothing from intra-op threads, and on a busy 2-core machine spinning threads make them
# several times slower (measured: translation tests 21 s CPU with 1 thread, 58 s with 2).
os.environ.setdefault("OMP_NUM_THREADS", "1")

pytest_plugins = sorted(
    f"tests.fixtures.{path.stem}" for path in (Path(__file__).parent / "fixtures").glob("*.py") if path.stem != "__init__"
)
