"""The `Task` base class: one loaded model, called like a function, for every task.

The shape is transformers' `Pipeline`: a task file overrides four hooks (`_sanitize_parameters`,
`preprocess`, `_forward`, `postprocess`) plus `_load`; this class owns everything that is the same for all
tasks: resolving the model source, device and dtype, validating options, length-sorted batching with results
restored to input order, streaming over generators, `torch.no_grad`, moving outputs back to the CPU, progress
bars, out-of-memory back-off, thread safety and freeing memory.

Example:

```python
>>> import hfpipes
>>> with hfpipes.load("sentiment", model="path/to/model") as pipe:
...     pipe("I love it")
...     pipe(["great", "awful"], top_k=None)
{'label': 'positive', 'score': 0.98}
[[{'label': 'positive', 'score': 0.97}, ...], ...]
```
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import itertools
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Iterator

from .batching import plan_batches, windows
from .errors import ConfigError, DataError, InvalidInputError, ModelLoadError, ModelNotFoundError, UnsafeModelError
from .inputs import describe

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .sources import ModelLocation

__all__ = ["Task", "Chunks", "resolve_device", "resolve_dtype"]

logger = logging.getLogger("hfpipes")

# Options every task accepts at call time; the rest are the task's own (`_sanitize_parameters`).
COMMON_CALL_OPTIONS = ("batch_size", "progress", "column")
# Written beside a LoRA adapter: the task, the base model spec and the head's config (labels).
ADAPTER_INFO = "hfpipes_adapter.json"
# Above this many batches in one call a progress bar appears (unless progress=False).
PROGRESS_MIN_BATCHES = 4


def resolve_device(device: Any = "auto") -> "torch.device":
    """Turn `"auto"`, `"cpu"`, `"cuda:1"`, an index or a `torch.device` into a `torch.device`.

    `"auto"` picks CUDA if present, else Apple MPS, else the CPU.

    Example:

    ```python
    >>> from hfpipes.task import resolve_device
    >>> resolve_device("cpu")
    device(type='cpu')
    ```
    """
    import torch

    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if isinstance(device, int):
        return torch.device("cuda", device) if device >= 0 else torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidInputError(f"device: expected 'auto', 'cpu', 'cuda', 'cuda:N', 'mps' or an index, got {device!r}.") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device: {device!r} was asked for but CUDA is not available on this machine.")
    return resolved


def resolve_dtype(dtype: Any, device: "torch.device") -> "torch.dtype":
    """Turn `"auto"`, `"float32"`, `"fp16"`, `"bf16"` or a `torch.dtype` into a `torch.dtype`.

    `"auto"` is float32 on the CPU and MPS (half precision is slow or unsupported there) and bfloat16 on CUDA
    when the GPU supports it, else float16.
    """
    import torch

    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
        "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
        "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    }  # fmt: skip
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in names:
        return names[dtype.lower().removeprefix("torch.")]
    raise InvalidInputError(f"dtype: expected 'auto', 'float32', 'float16' or 'bfloat16', got {dtype!r}.")


class Chunks(list):
    """Returned by `preprocess` in place of one feature when one input becomes several model calls (long
    audio cut into windows). The base class runs every chunk and hands `postprocess` the list of their
    outputs, in order."""


def _to_cpu(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu")
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _to_device(value: Any, device: "torch.device", dtype: "torch.dtype") -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        # Only floating inputs (pixels, audio features) follow the model's dtype; ids and masks stay integers.
        return value.to(device=device, dtype=dtype if value.is_floating_point() else None)
    if isinstance(value, dict):
        return {k: _to_device(v, device, dtype) for k, v in value.items()}
    return value


@contextlib.contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Hide transformers' per-file "Loading weights" / "Writing model shards" bars; hfpipes logs one line instead."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _unbatch(outputs: Any, size: int) -> list[Any]:
    """Split batched outputs into one entry per item: a list stays a list, a dict of tensors is sliced."""
    if isinstance(outputs, (list, tuple)):
        if len(outputs) != size:
            raise RuntimeError(f"_forward returned {len(outputs)} outputs for a batch of {size}")
        return list(outputs)
    if isinstance(outputs, dict):
        return [{k: (v[i] if hasattr(v, "__getitem__") and len(v) == size else v) for k, v in outputs.items()} for i in range(size)]
    raise TypeError(f"_forward must return a list or a dict of batched tensors, got {type(outputs).__name__}")


class Task:
    """Base class of every hfpipes task.

    Subclasses set `task` and override:

    - `_load(location, **kwargs)`: load the model (and tokenizer/processor) from a resolved `ModelLocation`;
    - `_sanitize_parameters(**options) -> (preprocess_kwargs, forward_kwargs, postprocess_kwargs)`: the task's own
      call options, as explicit keyword arguments; only pass on what the caller gave, so defaults live in one
      signature;
    - `preprocess(inputs, start, **kwargs) -> list`: validate and encode a window of raw inputs (all at once, so
      a tokenizer runs once per window), one feature per input (or `Chunks` of features);
    - `_length(feature) -> int`: the feature's size in the unit the task pads in, for length-sorted batching;
    - `_collate(features) -> dict`: pad and stack features into model inputs (CPU tensors);
    - `_forward(batch, **kwargs)`: run the model (already on the device, under `no_grad`), return a list with
      one output per item or a dict of batched tensors;
    - `postprocess(output, **kwargs)`: turn one item's output into plain Python results.

    Args:
        model (`str`, *optional*):
            A Hub id, a local directory, a `package:NAME/path` or an `embedded:NAME` (see `hfpipes.sources`).
            Defaults to the task's offline default model.
        device (`str`, `int` or `torch.device`, *optional*, defaults to `"auto"`):
            Where to run; `"auto"` = CUDA, else MPS, else CPU.
        dtype (`str` or `torch.dtype`, *optional*, defaults to `"auto"`):
            Weights' precision; `"auto"` = float32 on CPU/MPS, bfloat16 (or float16) on CUDA.
        batch_size (`int` or `"auto"`, *optional*, defaults to `"auto"`):
            Items per batch; `"auto"` sizes batches by a token/sample/pixel budget and, on CUDA, halves them
            on out-of-memory errors.
        revision (`str`, *optional*):
            Hub revision (branch, tag or commit) for Hub ids.
        allow_pickle (`bool`, *optional*, defaults to `False`):
            Allow pickle-based weight files (`.bin`, `.pt`), which can run arbitrary code when loaded.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Allow models whose code lives in the model repository. Only for repositories you trust.
        progress (`bool`, *optional*):
            Show a progress bar on long calls. Defaults to showing one when a call has several batches.
    """

    task: ClassVar[str] = ""
    # Padded units (tokens, samples, pixels) per batch when batch_size="auto", and the cap on items.
    batch_budget: ClassVar[int] = 16384
    max_batch_size: ClassVar[int] = 64
    # Inputs read ahead from a generator before a window is sorted and batched.
    window_size: ClassVar[int] = 256

    def __init__(
        self,
        model: str | None = None,
        *,
        device: Any = "auto",
        dtype: Any = "auto",
        batch_size: int | str = "auto",
        revision: str | None = None,
        allow_pickle: bool = False,
        trust_remote_code: bool = False,
        progress: bool | None = None,
        config_overrides: dict[str, Any] | None = None,
        **load_kwargs: Any,
    ) -> None:
        from .sources import resolve_model

        self.config_overrides = dict(config_overrides or {})
        self.batch_size = self._check_batch_size(batch_size)
        self.progress = progress
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.allow_pickle = allow_pickle
        self.trust_remote_code = trust_remote_code
        self.model_name = model if model is not None else self.default_model()
        self.location: ModelLocation = resolve_model(self.model_name, revision=revision, allow_pickle=allow_pickle)
        started = time.perf_counter()
        self._load(self.location, **load_kwargs)
        self._place_model()
        self._lock = threading.RLock()
        logger.info(
            "hfpipes %s: loaded %s from %s on %s (%s) in %.1f s",
            self.task, self.model_name, self.location.origin, self.device, str(self.dtype).removeprefix("torch."),
            time.perf_counter() - started,
        )  # fmt: skip

    # ------------------------------------------------------------------------------------------ loading

    @classmethod
    def default_model(cls) -> str:
        """The model used when none is passed: the registry's offline default for this task."""
        from .registry import get_spec

        spec = get_spec(cls.task)
        if spec.default_model is None:
            raise ModelNotFoundError(
                f"The {cls.task!r} task has no default model: pass model= (a Hub id or a local directory)"
                + (f", for example model={spec.recommended_model!r}." if spec.recommended_model else ".")
            )
        return spec.default_model

    def _load(self, location: "ModelLocation", **kwargs: Any) -> None:
        """Load `self.model` and its tokenizer/processor. Subclasses must override."""
        raise NotImplementedError

    def from_pretrained(self, auto_class: Any, path: str | None = None, **kwargs: Any) -> Any:
        """`auto_class.from_pretrained` with this task's safety settings, dtype and clear errors.

        Task files call this instead of `from_pretrained` so that pickle refusal, `trust_remote_code`, the Hub
        revision and the translation of loading errors into `ModelLoadError` are the same for every task.
        """
        path = path or self.location.path
        options = {**self.location.load_kwargs, "trust_remote_code": self.trust_remote_code, **kwargs}
        is_model = hasattr(auto_class, "from_config") or "Model" in getattr(auto_class, "__name__", "")
        if is_model:
            options.setdefault("dtype", self.dtype)
            # safetensors only, unless the caller opted into pickle (which can run code when unpickled).
            options.setdefault("use_safetensors", None if self.allow_pickle else True)
            if self.config_overrides:
                self._check_config_overrides(path)
                options.update(self.config_overrides)
        try:
            with quiet_progress_bars():
                if is_model and (Path(path) / "adapter_config.json").is_file():
                    return self._load_adapter(auto_class, Path(path), options)
                return auto_class.from_pretrained(path, **options)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, AttributeError) as err:
            raise self._loading_error(err, path, auto_class) from None

    def _check_config_overrides(self, path: str) -> None:
        """Refuse overrides that are not attributes of the model's config (from_pretrained would hand them to the
        model's constructor, which fails with a TypeError from deep inside transformers)."""
        from transformers import AutoConfig

        if (Path(path) / "adapter_config.json").is_file():
            return  # a LoRA fine-tune: the config is its base's (a wrong key then fails as a ModelLoadError)
        try:
            with quiet_progress_bars():
                config = AutoConfig.from_pretrained(path, **self.location.load_kwargs, trust_remote_code=self.trust_remote_code)
        except (OSError, ValueError, KeyError) as err:
            raise ConfigError(f"config_overrides: the model's config could not be read to check them ({err}).") from None
        unknown = sorted(key for key in self.config_overrides if not hasattr(config, key))
        if unknown:
            raise ConfigError(
                f"config_overrides: {unknown} not attribute(s) of the model's {type(config).__name__}; "
                f"it has e.g. {', '.join(sorted(k for k in config.to_dict() if not k.startswith('_'))[:12])}."
            )

    def _load_adapter(self, auto_class: Any, directory: Path, options: dict[str, Any]) -> Any:
        """A LoRA fine-tune saved by `save_trained`: load its base model, apply the adapter, merge it for speed."""
        import json

        from peft import PeftModel

        from .sources import resolve_model

        info_file = directory / ADAPTER_INFO
        info = json.loads(info_file.read_text()) if info_file.is_file() else {}
        base_spec = info.get("base_model") or json.loads((directory / "adapter_config.json").read_text())["base_model_name_or_path"]
        base = resolve_model(base_spec, allow_pickle=self.allow_pickle)
        overrides = dict(info.get("config_overrides", {}))
        if "id2label" in overrides:  # JSON made the ids strings
            overrides["id2label"] = {int(k): v for k, v in overrides["id2label"].items()}
        from transformers.utils import logging as hf_logging

        # The base has no trained head yet (the adapter brings it): transformers' "newly initialized" report
        # would only alarm the user.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model = auto_class.from_pretrained(base.path, **{**base.load_kwargs, **options, **overrides})
        finally:
            hf_logging.set_verbosity(verbosity)
        with _quiet_peft():
            return PeftModel.from_pretrained(model, directory).merge_and_unload()

    def _loading_error(self, err: Exception, path: str, auto_class: Any) -> Exception:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        what = getattr(auto_class, "__name__", str(auto_class))
        lowered = str(err).lower()
        if "trust_remote_code" in lowered or (not self.trust_remote_code and _has_remote_code(path)):
            return UnsafeModelError(
                f"The model {path!r} needs custom code from its repository; pass trust_remote_code=True only if "
                f"you trust it. ({message})"
            )
        if "use_safetensors" in lowered or ("safetensors" in lowered and ".bin" in lowered):
            return UnsafeModelError(
                f"The model {path!r} has no safetensors weights, only pickle files, which can run code when "
                f"loaded; pass allow_pickle=True if you trust them. ({message})"
            )
        if "unrecognized configuration class" in lowered or "unrecognized model" in lowered:
            return ModelLoadError(
                f"The model {path!r} cannot be used for the {self.task!r} task ({what} does not accept it): {message}"
            )
        if isinstance(err, OSError) and not os.path.exists(path) and not self.location.is_local:
            return ModelNotFoundError(f"Could not load {path!r} from the Hugging Face Hub: {message}")
        return ModelLoadError(f"Could not load the {self.task!r} model from {path!r} with {what}: {message}")

    def _place_model(self) -> None:
        model = getattr(self, "model", None)
        if model is not None and hasattr(model, "to"):
            model.to(self.device)
            if hasattr(model, "eval"):
                model.eval()

    def save_pretrained(self, directory: str | os.PathLike) -> str:
        """Save the model and its tokenizer/processor so that `hfpipes.load(task, model=directory)` reloads it.

        The directory is written to a temporary sibling first and renamed into place, so an interrupted save
        never leaves a half-written model where a good one was.

        Example:

        ```python
        >>> pipe = hfpipes.load("sentiment", model="path/to/model")
        >>> pipe.save_pretrained("my-copy")
        'my-copy'
        ```
        """
        from ._io import atomic_directory

        with atomic_directory(directory) as tmp, quiet_progress_bars():
            for component in self._components():
                component.save_pretrained(tmp)
        return os.fspath(directory)

    def _components(self) -> list[Any]:
        """What `save_pretrained` saves: the model and its preprocessors."""
        return [c for c in (getattr(self, "model", None), getattr(self, "processor", None), getattr(self, "tokenizer", None)) if c is not None]

    # ------------------------------------------------------------------------------------- task hooks

    def _sanitize_parameters(self, **options: Any) -> tuple[dict, dict, dict]:
        """Split the task's call options into preprocess, forward and postprocess kwargs."""
        return {}, {}, {}

    def preprocess(self, inputs: list[Any], start: int, **kwargs: Any) -> list[Any]:
        raise NotImplementedError

    def _length(self, feature: Any) -> int:
        return len(feature["input_ids"])

    def _collate(self, features: list[Any]) -> Any:
        raise NotImplementedError

    def _forward(self, batch: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def postprocess(self, output: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def _is_single(self, inputs: Any) -> bool:
        """Whether `inputs` is one input rather than a collection of them. Tasks whose single inputs are
        lists (chat messages) override this."""
        if isinstance(inputs, (list, tuple)) or inspect.isgenerator(inputs) or isinstance(inputs, Iterator):
            return False
        return not _is_dataset(inputs)

    # ------------------------------------------------------------------------------------------ calling

    def __call__(self, inputs: Any, **options: Any) -> Any:
        """Run the task on one input (-> one result), a list (-> a list in the same order) or any other
        iterable, including a `datasets.Dataset` with `column=` (-> a generator streaming results in order).

        Example:

        ```python
        >>> pipe = hfpipes.load("sentiment")
        >>> pipe("I love it")["label"]
        'positive'
        >>> [r["label"] for r in pipe(["great", "awful"])]
        ['positive', 'negative']
        ```
        """
        batch_size = self._check_batch_size(options.pop("batch_size", self.batch_size))
        progress = options.pop("progress", self.progress)
        column = options.pop("column", None)
        kwargs = self._check_options(options)
        if column is not None and not _is_dataset(inputs):
            raise InvalidInputError("column: only meaningful with a datasets.Dataset input.")
        if _is_dataset(inputs):
            inputs = self._dataset_column(inputs, column)
        elif self._is_single(inputs):
            return self._run_all([inputs], batch_size, False, kwargs)[0]
        if isinstance(inputs, (list, tuple)):
            return self._run_all(list(inputs), batch_size, progress, kwargs)
        if not isinstance(inputs, Iterable):
            raise InvalidInputError(f"inputs: expected one input, a list or an iterable, got {describe(inputs)}.")
        return self._stream(inputs, batch_size, progress, kwargs)

    def _dataset_column(self, dataset: Any, column: str | None) -> Iterable[Any]:
        names = list(getattr(dataset, "column_names", []) or [])
        if column is None:
            if len(names) != 1:
                raise InvalidInputError(f"column: a datasets.Dataset input needs column= (one of {names}).")
            column = names[0]
        if column not in names:
            raise InvalidInputError(f"column: {column!r} is not a column of the dataset; its columns are {names}.")
        # Row by row keeps memory flat for large (or memory-mapped) datasets.
        return (row[column] for row in dataset)

    def _check_batch_size(self, batch_size: Any) -> int | None:
        if batch_size is None or batch_size == "auto":
            return None
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInputError(f"batch_size: expected a positive integer or 'auto', got {batch_size!r}.")
        return batch_size

    def _check_options(self, options: dict[str, Any]) -> tuple[dict, dict, dict]:
        parameters = inspect.signature(self._sanitize_parameters).parameters
        accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        unknown = [k for k in options if k not in parameters and not accepts_any]
        if unknown:
            valid = sorted([*parameters, *COMMON_CALL_OPTIONS])
            raise InvalidInputError(
                f"Unknown option(s) {', '.join(map(repr, unknown))} for the {self.task!r} task. Valid options: {', '.join(valid)}."
            )
        return self._sanitize_parameters(**options)

    def _run_all(self, inputs: list[Any], batch_size: int | None, progress: bool | None, kwargs: tuple) -> list[Any]:
        if not inputs:
            return []
        with self._lock:
            return self._process(inputs, 0, batch_size, progress, kwargs)

    def _stream(self, inputs: Iterable[Any], batch_size: int | None, progress: bool | None, kwargs: tuple) -> Iterator[Any]:
        size = max(self.window_size, 4 * (batch_size or self.max_batch_size))
        bar = self._progress_bar(progress, total=None, unit="input")
        try:
            for start, window in windows(inputs, size):
                # The lock covers one window, not the generator's whole life, so other threads interleave.
                with self._lock:
                    results = self._process(window, start, batch_size, False, kwargs)
                if bar is not None:
                    bar.update(len(window))
                yield from results
        finally:
            if bar is not None:
                bar.close()

    def _progress_bar(self, progress: bool | None, total: int | None, unit: str) -> Any:
        if progress is False or (progress is None and total is not None and total < PROGRESS_MIN_BATCHES):
            return None
        if progress is None and total is None:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, unit=unit, desc=f"hfpipes {self.task}", leave=False)

    def _process(self, inputs: list[Any], start: int, batch_size: int | None, progress: bool | None, kwargs: tuple) -> list[Any]:
        """Preprocess a window, run it in length-sorted batches, postprocess in input order."""
        import torch

        preprocess_kwargs, forward_kwargs, postprocess_kwargs = kwargs
        features = self.preprocess(inputs, start, **preprocess_kwargs)
        # Flatten Chunks so that chunks of one long input batch with other inputs' chunks.
        owners: list[int] = []
        flat: list[Any] = []
        for index, feature in enumerate(features):
            parts = feature if isinstance(feature, Chunks) else [feature]
            owners.extend([index] * len(parts))
            flat.extend(parts)
        outputs: list[Any] = [None] * len(flat)
        lengths = [self._length(f) for f in flat]
        budget = self.batch_budget
        pending = plan_batches(lengths, batch_size=batch_size, budget=budget, max_batch_size=self.max_batch_size)
        bar = self._progress_bar(progress, total=len(pending), unit="batch")
        while pending:
            batch_indices = pending.pop(0)
            try:
                batch = _to_device(self._collate([flat[i] for i in batch_indices]), self.device, self.dtype)
                with torch.no_grad():
                    result = _unbatch(_to_cpu(self._forward(batch, **forward_kwargs)), len(batch_indices))
            except torch.cuda.OutOfMemoryError:
                if batch_size is not None or len(batch_indices) == 1:
                    raise
                # Auto batch size: halve the budget, re-plan this batch's items, and keep going.
                torch.cuda.empty_cache()
                budget = max(1, budget // 2)
                self.batch_budget = budget
                logger.warning("hfpipes %s: out of GPU memory; batch budget halved to %d", self.task, budget)
                half = len(batch_indices) // 2
                pending[:0] = [batch_indices[:half], batch_indices[half:]]
                continue
            for i, out in zip(batch_indices, result):
                outputs[i] = out
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        results = []
        for index, group in itertools.groupby(range(len(flat)), key=owners.__getitem__):
            group_outputs = [outputs[i] for i in group]
            chunked = isinstance(features[index], Chunks)
            results.append(self.postprocess(group_outputs if chunked else group_outputs[0], **postprocess_kwargs))
        return results

    # ------------------------------------------------------------------- fine-tuning hooks (hfpipes.training)
    # The training loop (`hfpipes.training`) knows no task; it calls these. A task that can be fine-tuned
    # overrides at least `encode_example` and `training_collate`.

    # Logical data columns a training record must have / may have (recipes map their own names onto them).
    train_columns: ClassVar[tuple[str, ...]] = ()
    optional_train_columns: ClassVar[tuple[str, ...]] = ()
    # The metric that picks "better" for early stopping, and its direction.
    main_metric: ClassVar[str] = "eval_loss"
    greater_is_better: ClassVar[bool] = False
    # peft's task type for LoRA (`"SEQ_CLS"`, `"CAUSAL_LM"`, ...), which also decides what peft keeps trainable.
    peft_task_type: ClassVar[str | None] = None

    @classmethod
    def for_finetuning(cls, model: str | None, config: Any) -> "Task":
        """Load the model to fine-tune, on the CPU in float32 (Accelerate moves it and handles precision)."""
        if config.model_config is not None:
            raise ConfigError(f"model_config: the {cls.task!r} task starts from a pretrained model; remove model_config.")
        return cls(
            model, device="cpu", dtype="float32", allow_pickle=config.allow_pickle, config_overrides=config.config_overrides
        )

    def prepare_training(self, train: list, eval: list, config: Any) -> None:
        """Called once with the validated records before encoding: build label sets, resize heads, ..."""
        self.train_config = config

    def check_task_options(self, options: dict, allowed: tuple[str, ...], purpose: str) -> None:
        """Refuse `task_options` keys outside `allowed`, naming the valid ones and what they are for."""
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ConfigError(
                f"task_options: unknown key(s) {unknown}; the {self.task} task takes {', '.join(allowed)} ({purpose})."
            )

    def encode_records(self, records: list) -> list:
        """Validated records -> training examples: one per record by default (a task may pack several into one).

        A value the input loaders refuse (`InvalidInputError`, e.g. an unreadable image) is bad data here: it is
        re-raised as a `DataError`, so `encode_example` can call `load_text`/`load_image`/`load_audio` directly.
        """
        try:
            return [self.encode_example(record.values, record.where) for record in records]
        except InvalidInputError as err:
            raise DataError(str(err)) from None

    def encode_example(self, example: dict, where: str) -> Any:
        """Validate and encode one training record (raise `DataError`, or the loaders' `InvalidInputError`,
        naming `where`)."""
        raise ConfigError(f"The {self.task!r} task does not support fine-tuning.")

    def training_collate(self, features: list) -> dict:
        """Pad and stack encoded examples into a batch of CPU tensors, `labels` included."""
        raise NotImplementedError

    def training_loss(self, model: Any, batch: dict) -> "torch.Tensor":
        """The loss of one batch (the model may be wrapped by Accelerate/DDP)."""
        return model(**batch).loss

    def batch_length(self, batch: dict) -> int:
        """How many examples a collated batch holds."""
        return len(next(v for v in batch.values() if hasattr(v, "__len__")))

    def eval_predictions(self, model: Any, batch: dict) -> tuple[list, list] | None:
        """Per-example predictions and references of one evaluation batch, for `compute_metrics`."""
        return None

    def compute_metrics(self, predictions: list, references: list) -> dict[str, float]:
        """Metrics over the whole (gathered) evaluation set."""
        return {}

    def save_eval_samples(self, model: Any, directory: Path) -> None:
        """Write examples of the model's output after an evaluation (main process only), e.g. generated images.
        `directory` is `<output_dir>/samples/step-NNNNNNN/`; nothing is written by default."""

    def trainable_model(self, config: Any) -> Any:
        """The module the loop trains: the model, wrapped with LoRA adapters when `config.peft` asks for them."""
        model = self.model
        if config.peft:
            model = _apply_peft(model, config.peft, self.peft_task_type)
        model.train()
        return model

    def save_trained(self, model: Any, directory: Any) -> None:
        """Write the trained model and its preprocessors (adapters only, for a LoRA fine-tune)."""
        import json

        # peft saves with the base's local path, where it reads the base's config.json to see whether the
        # vocabulary was resized (with a spec such as "embedded:NAME" it would ask the Hub, and warn offline).
        model.save_pretrained(directory)
        for component in self._components()[1:]:
            component.save_pretrained(directory)
        if hasattr(model, "peft_config"):
            for name in model.peft_config:
                # The spec the base was loaded from (a Hub id, "embedded:NAME"), not the path it resolved to here.
                config_file = Path(directory, *([] if name == "default" else [name]), "adapter_config.json")
                adapter_config = json.loads(config_file.read_text())
                adapter_config["base_model_name_or_path"] = self.model_name
                config_file.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
            # Without config.json the directory is a pure adapter; these are what the base needs to take it.
            info = {"task": self.task, "base_model": self.model_name, "config_overrides": _head_config(model.get_base_model())}
            (Path(directory) / ADAPTER_INFO).write_text(json.dumps(info, indent=2) + "\n")

    # ----------------------------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Free the model's memory (also on the GPU). The object cannot be called afterwards."""
        for name in ("model", "tokenizer", "processor"):
            if hasattr(self, name):
                setattr(self, name, None)
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __enter__(self) -> "Task":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model_name!r}, device={str(self.device)!r}, dtype={str(self.dtype).removeprefix('torch.')!r})"


def _is_dataset(value: Any) -> bool:
    # Checked by name so that a plain call never imports `datasets`.
    return type(value).__module__.startswith("datasets.") and hasattr(value, "column_names")


def _has_remote_code(path: str) -> bool:
    """Whether a local model directory's config points at code in the repository (`auto_map`)."""
    import json

    config = Path(path) / "config.json"
    try:
        return "auto_map" in json.loads(config.read_text())
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft calls a transformers method that transformers 5 deprecates; the warning is not the user's to act on."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _head_config(model: Any) -> dict[str, Any]:
    """The parts of a config that a fine-tune changes and a base model needs to take a trained head."""
    if "Classification" not in type(model).__name__:
        return {}  # every config has default labels; only a classifier's matter
    config = model.config
    keys = ("num_labels", "id2label", "label2id", "problem_type")
    return {k: getattr(config, k) for k in keys if getattr(config, k, None) is not None}


def _apply_peft(model: Any, options: dict[str, Any], task_type: str | None) -> Any:
    """Wrap `model` with LoRA adapters from a recipe's `peft:` mapping."""
    from peft import LoraConfig, get_peft_model

    options = dict(options)
    kind = str(options.pop("type", "lora")).lower()
    if kind != "lora":
        raise ConfigError(f"peft.type: only 'lora' is supported, got {kind!r}.")
    names = {"r": "r", "alpha": "lora_alpha", "lora_alpha": "lora_alpha", "dropout": "lora_dropout",
             "lora_dropout": "lora_dropout", "target_modules": "target_modules", "modules_to_save": "modules_to_save",
             "bias": "bias"}  # fmt: skip
    unknown = [k for k in options if k not in names]
    if unknown:
        raise ConfigError(f"peft: unknown key(s) {unknown}; valid: type, {', '.join(sorted(set(names)))}.")
    kwargs = {names[k]: v for k, v in options.items()}
    kwargs.setdefault("r", 8)
    kwargs.setdefault("lora_alpha", 2 * kwargs["r"])
    try:
        with _quiet_peft():
            return get_peft_model(model, LoraConfig(task_type=task_type, **kwargs))
    except ValueError as err:
        raise ConfigError(f"peft: {err}") from None
