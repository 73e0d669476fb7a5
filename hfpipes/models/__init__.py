"""Model architectures that transformers does not ship, made loadable through its Auto classes.

Importing this package registers them (`register_auto_classes`), after which `AutoConfig`, `AutoModel`,
`AutoModelForImageClassification` and `pipeline(...)` load their checkpoints like any built-in model. Registering
needs the classes, so importing this package imports torch and transformers; that is why `import hfpipes` does not
import it, and the code that loads a model does.

Example:

```python
>>> import hfpipes.models  # registers the architectures
>>> from transformers import AutoConfig
>>> AutoConfig.for_model("efficientnet_lite").model_type
'efficientnet_lite'
```
"""

from __future__ import annotations

__all__ = ["register_auto_classes"]

_registered = False


def register_auto_classes() -> None:
    """
    Register hfpipes' architectures with transformers' Auto classes. Safe to call any number of times.

    Registered: `efficientnet_lite` (`EfficientNetLiteConfig`) for `AutoConfig`, `AutoModel` and
    `AutoModelForImageClassification`.

    Example:

    ```python
    >>> from hfpipes.models import register_auto_classes
    >>> register_auto_classes()
    >>> register_auto_classes()  # a second call does nothing
    ```
    """
    global _registered
    if _registered:
        return
    from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

    from .efficientnet_lite import (
        EfficientNetLiteConfig,
        EfficientNetLiteForImageClassification,
        EfficientNetLiteModel,
    )

    # `exist_ok=True` keeps a second registration harmless even if this module was reloaded (tests, notebooks).
    AutoConfig.register(EfficientNetLiteConfig.model_type, EfficientNetLiteConfig, exist_ok=True)
    AutoModel.register(EfficientNetLiteConfig, EfficientNetLiteModel, exist_ok=True)
    AutoModelForImageClassification.register(
        EfficientNetLiteConfig, EfficientNetLiteForImageClassification, exist_ok=True
    )
    _registered = True


register_auto_classes()
