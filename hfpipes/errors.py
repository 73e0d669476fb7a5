"""The project's exceptions.

Every error a user can cause is an `HfpipesError`. Each subclass also derives from the built-in exception a
Python user would expect (`ValueError`, `KeyError`, `ImportError`, ...), so `except ValueError` keeps
working. Messages say which input (index, file, row) was wrong, what was expected and what was received.

Example:

```python
>>> import hfpipes
>>> try:
...     hfpipes.run("sentimnet", "hi")
... except hfpipes.errors.UnknownTaskError as err:
...     print(err)
Unknown task 'sentimnet'. Did you mean 'sentiment'? Known tasks: ...
```
"""

from __future__ import annotations

__all__ = [
    "HfpipesError",
    "UnknownTaskError",
    "DuplicateTaskError",
    "InvalidInputError",
    "ModelNotFoundError",
    "ModelLoadError",
    "UnsafeModelError",
    "MissingDependencyError",
    "ConfigError",
    "DataError",
]


class HfpipesError(Exception):
    """Base class of every error raised on purpose by hfpipes."""


class UnknownTaskError(HfpipesError, KeyError):
    """A task name that is neither a registered task nor one of its aliases."""

    def __str__(self) -> str:  # KeyError would otherwise print the message in quotes
        return str(self.args[0]) if self.args else ""


class DuplicateTaskError(HfpipesError, ValueError):
    """`register_task` was given a name or alias that is already taken (pass `override=True`)."""


class InvalidInputError(HfpipesError, ValueError):
    """An input to `run` (text, image, audio, prompt, option) that cannot be used as given."""


class ModelNotFoundError(HfpipesError, FileNotFoundError):
    """The model path does not exist, or the Hub id cannot be reached (for example offline)."""


class ModelLoadError(HfpipesError, ValueError):
    """The model exists but cannot be loaded for this task (missing weights, wrong architecture, ...)."""


class UnsafeModelError(ModelLoadError):
    """Loading would run untrusted code (pickle weights, `trust_remote_code`) and the caller did not opt in."""


class MissingDependencyError(HfpipesError, ImportError):
    """An optional package (or an embedded-weights package) that this feature needs is not installed."""


class ConfigError(HfpipesError, ValueError):
    """A fine-tuning config or recipe with an unknown key or an invalid value."""


class DataError(HfpipesError, ValueError):
    """Fine-tuning data that cannot be used (missing column, empty file, unknown label, unreadable file)."""
