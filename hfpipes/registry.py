"""The task registry: task names and aliases -> task classes, imported only when first used.

Task classes are recorded as dotted strings (`"hfpipes.tasks.sentiment.SentimentTask"`), the way transformers v5
records `SUPPORTED_TASKS`, so that `import hfpipes` and `hfpipes --help` never import torch or transformers.
User tasks join through `register_task`, usable as a decorator (timm's `@register_model`).

Example:

```python
>>> import hfpipes
>>> hfpipes.list_tasks()
['image-classification', 'image-generation', 'sentiment', 'speech-recognition', 'text-generation', 'translation']
>>> hfpipes.registry.get_spec("asr").name
'speech-recognition'
```
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any

from .errors import DuplicateTaskError, UnknownTaskError

__all__ = ["TaskSpec", "register_task", "list_tasks", "get_spec", "get_task_class", "task_specs"]


@dataclass(frozen=True)
class TaskSpec:
    """What the registry knows about a task without importing it."""

    # Canonical, kebab-case name (`"speech-recognition"`).
    name: str
    # Either a `"package.module.ClassName"` string (imported lazily) or the class itself (user tasks).
    task_class: str | type
    # Other names that resolve to this task, usually the Hub's pipeline tags.
    aliases: tuple[str, ...] = ()
    # One line for `hfpipes tasks`.
    description: str = ""
    # The model used when `model=None`: available offline (an `embedded:` name, a `package:` path or a
    # directory). `None` means the caller must pass `model=`.
    default_model: str | None = None
    # The Hub model we recommend to users who have a network.
    recommended_model: str | None = None
    # Extra facts shown by `hfpipes tasks` (e.g. the input kind).
    extra: dict[str, Any] = field(default_factory=dict)


_TASKS: dict[str, TaskSpec] = {}
_ALIASES: dict[str, str] = {}


def _normalize(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def register_task(
    name: str,
    task_class: str | type | None = None,
    *,
    aliases: tuple[str, ...] | list[str] = (),
    description: str = "",
    default_model: str | None = None,
    recommended_model: str | None = None,
    override: bool = False,
    **extra: Any,
) -> Any:
    """Register a task class under `name` (and `aliases`).

    Args:
        name (`str`):
            The task name users pass to `hfpipes.run`, kebab-case.
        task_class (`str` or `type`, *optional*):
            The `hfpipes.Task` subclass, or its dotted import path. Leave it out to use `register_task` as a
            class decorator.
        aliases (`tuple[str]`, *optional*, defaults to `()`):
            Other names for the same task.
        description (`str`, *optional*, defaults to `""`):
            One line shown by `hfpipes tasks`.
        default_model (`str`, *optional*):
            Model used when the caller passes none.
        recommended_model (`str`, *optional*):
            Hub id recommended for users with a network.
        override (`bool`, *optional*, defaults to `False`):
            Replace an existing task of the same name or alias instead of raising `DuplicateTaskError`.

    Returns:
        The class (so it works as a decorator), or the decorator when `task_class` is omitted.

    Example:

    ```python
    >>> import hfpipes
    >>> @hfpipes.register_task("shout", aliases=("loud",))
    ... class ShoutTask(hfpipes.Task):
    ...     ...
    ```
    """
    if task_class is None:

        def decorator(cls: type) -> type:
            register_task(
                name,
                cls,
                aliases=aliases,
                description=description,
                default_model=default_model,
                recommended_model=recommended_model,
                override=override,
                **extra,
            )
            return cls

        return decorator

    canonical = _normalize(name)
    alias_names = tuple(dict.fromkeys(_normalize(a) for a in aliases if _normalize(a) != canonical))
    if not override:
        for candidate in (canonical, *alias_names):
            if candidate in _TASKS or candidate in _ALIASES:
                owner = _ALIASES.get(candidate, candidate)
                raise DuplicateTaskError(
                    f"Cannot register task {name!r}: the name {candidate!r} is already used by task {owner!r}. "
                    "Pass override=True to replace it."
                )
    else:
        # An override replaces the old task completely, including the aliases that pointed to it.
        old = _TASKS.pop(canonical, None)
        if old is not None:
            for alias in old.aliases:
                _ALIASES.pop(alias, None)
        for alias in alias_names:
            _TASKS.pop(alias, None)

    _TASKS[canonical] = TaskSpec(
        name=canonical,
        task_class=task_class,
        aliases=alias_names,
        description=description,
        default_model=default_model,
        recommended_model=recommended_model,
        extra=dict(extra),
    )
    for alias in alias_names:
        _ALIASES[alias] = canonical
    return task_class


def list_tasks() -> list[str]:
    """The canonical names of all registered tasks, sorted.

    Example:

    ```python
    >>> import hfpipes
    >>> "sentiment" in hfpipes.list_tasks()
    True
    ```
    """
    return sorted(_TASKS)


def task_specs() -> list[TaskSpec]:
    """All registered `TaskSpec`s, sorted by name (for `hfpipes tasks`)."""
    return [_TASKS[name] for name in list_tasks()]


def get_spec(task: str) -> TaskSpec:
    """Resolve a task name or alias to its `TaskSpec`.

    Raises:
        `UnknownTaskError`: the name is not registered; the message lists the known tasks and the closest match.

    Example:

    ```python
    >>> from hfpipes.registry import get_spec
    >>> get_spec("sentiment-analysis").name
    'sentiment'
    ```
    """
    if not isinstance(task, str):
        raise UnknownTaskError(f"The task must be a name (str), got {type(task).__name__}: {task!r}.")
    key = _normalize(task)
    key = _ALIASES.get(key, key)
    if key in _TASKS:
        return _TASKS[key]
    names = list(_TASKS) + list(_ALIASES)
    close = difflib.get_close_matches(_normalize(task), names, n=1, cutoff=0.5)
    hint = f" Did you mean {_ALIASES.get(close[0], close[0])!r}?" if close else ""
    raise UnknownTaskError(f"Unknown task {task!r}.{hint} Known tasks: {', '.join(list_tasks())}.")


def get_task_class(task: str) -> type:
    """Import (once) and return the task class registered under `task` or one of its aliases."""
    spec = get_spec(task)
    if not isinstance(spec.task_class, str):
        return spec.task_class
    module_name, _, class_name = spec.task_class.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    # Cache the class so the next lookup skips importlib.
    _TASKS[spec.name] = TaskSpec(**{**spec.__dict__, "task_class": cls})
    return cls


def _builtin(name: str, class_path: str, **kwargs: Any) -> None:
    register_task(name, f"hfpipes.tasks.{class_path}", **kwargs)


# The built-in tasks. Aliases are the Hub's pipeline tags. Default models are offline: see `hfpipes models list`.
_builtin(
    "sentiment",
    "sentiment.SentimentTask",
    aliases=("sentiment-analysis", "text-classification"),
    description="Label the sentiment of a text (any sequence-classification model).",
    default_model="package:hfpipes/assets/sentiment-minilm",
    recommended_model="distilbert/distilbert-base-uncased-finetuned-sst-2-english",
)
_builtin(
    "image-classification",
    "image_classification.ImageClassificationTask",
    aliases=("image-classifier", "vision"),
    description="Name what an image shows (any image-classification model).",
    default_model="embedded:efficientnet-lite0",
    recommended_model="google/vit-base-patch16-224",
)
_builtin(
    "translation",
    "translation.TranslationTask",
    aliases=("translate", "text2text-generation"),
    description="Translate text (seq2seq models like Marian/T5/NLLB, or a causal LM prompted to translate).",
    default_model="embedded:gemma-3-270m",
    recommended_model="Helsinki-NLP/opus-mt-en-de",
)
_builtin(
    "speech-recognition",
    "speech_recognition.SpeechRecognitionTask",
    aliases=("automatic-speech-recognition", "asr", "speech-to-text", "transcription"),
    description="Transcribe speech (Whisper-style seq2seq or CTC models), long audio chunked.",
    default_model="embedded:whisper-tiny.en",
    recommended_model="openai/whisper-small",
)
_builtin(
    "text-generation",
    "text_generation.TextGenerationTask",
    aliases=("chat", "causal-lm", "text-generator"),
    description="Continue a prompt or answer chat messages (any causal LM; GGUF too).",
    default_model="embedded:smollm2-135m-instruct",
    recommended_model="HuggingFaceTB/SmolLM2-1.7B-Instruct",
)
_builtin(
    "image-generation",
    "image_generation.ImageGenerationTask",
    aliases=("text-to-image", "unconditional-image-generation", "diffusion"),
    description="Generate images with diffusion (text-to-image, class-conditional or unconditional pipelines).",
    default_model="package:hfpipes/assets/ddpm-digits",
    recommended_model="stabilityai/sd-turbo",
)
