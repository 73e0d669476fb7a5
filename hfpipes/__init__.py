"""hfpipes: pretrained Hugging Face models behind one interface, to run and to fine-tune.

```python
>>> import hfpipes
>>> hfpipes.run("sentiment", "I love it")
{'label': 'positive', 'score': 0.98}
>>> pipe = hfpipes.load("speech-recognition")           # reusable, callable
>>> pipe("clip.wav")["text"]
'Go forward ten meters.'
```

`import hfpipes` is cheap: torch, transformers, diffusers and datasets are imported when a task is first used.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from . import errors
from .registry import list_tasks, register_task
from .task import Task

if TYPE_CHECKING:  # pragma: no cover
    from .training import FinetuneResult

__version__ = "0.1.0"
__all__ = ["run", "load", "finetune", "list_tasks", "register_task", "errors", "Task", "__version__"]

# Options of `run` that choose how the model is loaded (part of the reuse key), not how it is called.
_LOAD_OPTIONS = ("revision", "allow_pickle", "trust_remote_code")
# `run` keeps this many loaded tasks; the least recently used one is closed when a new one is loaded.
_RUN_CACHE_SIZE = 4
_run_cache: "OrderedDict[tuple, Task]" = OrderedDict()
_run_cache_lock = threading.Lock()


def load(task: str, model: str | None = None, **kwargs: Any) -> Task:
    """Load a task's model once and return a reusable, callable task object.

    Args:
        task (`str`):
            A task name or alias (`hfpipes.list_tasks()`), e.g. `"sentiment"`, `"asr"`, `"text-to-image"`.
        model (`str`, *optional*):
            A Hub id, a local directory, `package:NAME/path` or `embedded:NAME`. Defaults to the task's
            offline default model.
        kwargs:
            `device`, `dtype`, `batch_size`, `revision`, `allow_pickle`, `trust_remote_code`, `progress`; see `Task`.

    Returns:
        `Task`: call it like a function; use it as a context manager to free its memory on exit.

    Example:

    ```python
    >>> import hfpipes
    >>> with hfpipes.load("image-classification", device="cpu") as classify:
    ...     classify("cat.jpg", top_k=1)
    [{'label': 'Egyptian cat', 'score': 0.77}]
    ```
    """
    from .registry import get_task_class

    return get_task_class(task)(model, **kwargs)


def run(
    task: str,
    inputs: Any,
    *,
    model: str | None = None,
    device: Any = "auto",
    dtype: Any = "auto",
    batch_size: int | str = "auto",
    **options: Any,
) -> Any:
    """Run a task on one input, a list of inputs or a stream of them.

    The loaded model is kept: calling `run` again with the same task, model, device and dtype reuses it.

    Args:
        task (`str`):
            A task name or alias, e.g. `"sentiment"`, `"translation"`, `"automatic-speech-recognition"`.
        inputs:
            One input (-> one result), a list (-> a list of results in the same order), or any other iterable,
            such as a generator or a `datasets.Dataset` with `column=` (-> a generator of results, in order).
        model (`str`, *optional*):
            A Hub id, a local directory, `package:NAME/path` or `embedded:NAME`; defaults to the task's
            offline default.
        device (`str`, *optional*, defaults to `"auto"`):
            `"auto"` (CUDA, else MPS, else CPU), `"cpu"`, `"cuda:0"`, ...
        dtype (`str`, *optional*, defaults to `"auto"`):
            `"auto"` (float32 on CPU), `"float32"`, `"float16"`, `"bfloat16"`.
        batch_size (`int` or `"auto"`, *optional*, defaults to `"auto"`):
            Items per batch; `"auto"` sizes batches by a token/pixel/sample budget.
        options:
            The task's own options (e.g. `top_k` for classification, `max_new_tokens` for generation), plus
            `progress`, `column`, and the loading options `revision`, `allow_pickle`, `trust_remote_code`.

    Example:

    ```python
    >>> import hfpipes
    >>> hfpipes.run("sentiment", ["I love it", "awful"])
    [{'label': 'positive', 'score': 0.98}, {'label': 'negative', 'score': 0.97}]
    ```
    """
    from .registry import get_spec

    load_options = {k: options.pop(k) for k in _LOAD_OPTIONS if k in options}
    spec = get_spec(task)
    key = (spec.name, model, str(device), str(dtype), tuple(sorted(load_options.items())))
    with _run_cache_lock:
        pipe = _run_cache.get(key)
        if pipe is None:
            pipe = load(spec.name, model, device=device, dtype=dtype, **load_options)
            _run_cache[key] = pipe
            while len(_run_cache) > _RUN_CACHE_SIZE:
                _run_cache.popitem(last=False)[1].close()
        _run_cache.move_to_end(key)
    return pipe(inputs, batch_size=batch_size, **options)


def finetune(task: str, train: Any, **kwargs: Any) -> "FinetuneResult":
    """Fine-tune a task's model on your data with Accelerate (one process, or many under `accelerate launch`).

    See `hfpipes.training.finetune` for the arguments.

    Example:

    ```python
    >>> import hfpipes
    >>> result = hfpipes.finetune("sentiment", train="train.csv", eval="dev.csv", output_dir="out/", epochs=2)
    >>> result.metrics["accuracy"]
    0.93
    ```
    """
    from .training import finetune as _finetune

    return _finetune(task, train, **kwargs)
