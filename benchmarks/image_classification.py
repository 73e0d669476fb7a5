"""Item 2: image classification of photos of assorted sizes, hfpipes vs `transformers.pipeline`.

The images are crops of real photos (the demo's `chelsea`, `coffee` and `rocket`, plus scikit-learn's `china` and
`flower` when scikit-learn is installed), cut at random places and scaled so that their longer side is between 48
and 1,024 pixels (log-uniform), saved as JPEG files: both contenders read and decode the same files. The model is
EfficientNet-Lite0 (`embedded:efficientnet-lite0`, a custom architecture that `hfpipes.models` registers with the
Auto classes, after which `transformers.pipeline` loads it too); both run the same model and image-processor
objects with `top_k=5`:

- **hfpipes**: `pipe(paths)` with the default `batch_size="auto"` (up to 32 images of 224x224 per batch), and a
  `batch_size=1` variant: their ratio is the gain from batching;
- **transformers.pipeline**: `pipeline("image-classification", model, image_processor)(paths, batch_size=...)` with
  its default (unbatched) and with `batch_size=32`.

Example:

```python
>>> from benchmarks import image_classification
>>> image_classification.run("tiny", repeats=1)[0]["title"]
'image classification, 12 images'
```
"""

from __future__ import annotations

import math
import random
import tempfile
from pathlib import Path
from typing import Any

from .common import Contender, check, check_size, compare

DEFAULT_MODEL = "embedded:efficientnet-lite0"
SIZES = {"tiny": 12, "full": 500}
BATCH_SIZE = 32
SIDE_RANGE = (48, 1024)
SEED = 0


def source_photos() -> list[Any]:
    """The real photos crops are cut from, as RGB `PIL.Image`s."""
    from PIL import Image

    import hfpipes

    examples = Path(hfpipes.__file__).parent / "assets" / "examples"
    photos = [Image.open(path).convert("RGB") for path in sorted(examples.glob("*.jpg"))]
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:  # scikit-learn is an optional extra
        return photos
    return photos + [Image.fromarray(array) for array in load_sample_images().images]


def write_images(directory: Path, count: int, seed: int = SEED) -> list[str]:
    """`count` JPEG crops of the source photos at assorted sizes in `directory`; returns their paths."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    photos = source_photos()
    rng = random.Random(seed)
    paths = []
    for i in range(count):
        photo = photos[i % len(photos)]
        width, height = photo.size
        crop_w, crop_h = int(width * rng.uniform(0.3, 1.0)), int(height * rng.uniform(0.3, 1.0))
        left, top = rng.randrange(width - crop_w + 1), rng.randrange(height - crop_h + 1)
        crop = photo.crop((left, top, left + crop_w, top + crop_h))
        side = math.exp(rng.uniform(*map(math.log, SIDE_RANGE)))
        scale = side / max(crop.size)
        crop = crop.resize((max(1, round(crop_w * scale)), max(1, round(crop_h * scale))), Image.Resampling.BICUBIC)
        path = directory / f"image-{i:04d}.jpg"
        crop.save(path, quality=90)
        paths.append(str(path))
    return paths


def _size(path: str) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def _checks(outputs: dict[str, Any], ours: str, peer: str) -> list[dict]:
    same = sum(a[0]["label"] == b[0]["label"] for a, b in zip(outputs[ours], outputs[peer], strict=True))
    worst = max(
        abs(x["score"] - y["score"])
        for a, b in zip(outputs[ours], outputs[peer], strict=True)
        for x, y in zip(a, b, strict=True)
    )
    return [
        check("same top-1 label as transformers.pipeline", f"{same / len(outputs[ours]):.1%}", "100%", same == len(outputs[ours])),
        check("largest top-5 score difference", worst, "< 1e-4", worst < 1e-4),
    ]  # fmt: skip


def run(size: str = "full", repeats: int = 3, workdir: Path | None = None, model: str | None = None) -> list[dict]:
    """Run the image-classification benchmark; returns one comparison.

    Args:
        size (`str`, *optional*, defaults to `"full"`):
            `"full"` (500 images) or `"tiny"` (12).
        repeats (`int`, *optional*, defaults to 3):
            Timed rounds.
        workdir (`Path`, *optional*):
            Where the images are written; a temporary directory by default.
        model (`str`, *optional*):
            An image classifier; defaults to EfficientNet-Lite0 (`embedded:efficientnet-lite0`).
    """
    import torch
    import transformers

    import hfpipes

    count = SIZES[check_size(size)]
    with tempfile.TemporaryDirectory(prefix="hfpipes-bench-images-", dir=workdir) as tmp:
        paths = write_images(Path(tmp), count)
        pipe = hfpipes.load("image-classification", model=model or DEFAULT_MODEL, device="cpu", progress=False)
        peer = transformers.pipeline(
            "image-classification", model=pipe.model, image_processor=pipe.processor, device="cpu"
        )
        names = ("hfpipes (batch auto)", f"transformers.pipeline (batch {BATCH_SIZE})")
        contenders = [
            Contender(names[0], lambda: pipe(paths, top_k=5), role="ours", work=count, unit="images"),
            Contender(names[1], lambda: peer(paths, batch_size=BATCH_SIZE, top_k=5), goal=1.0, work=count, unit="images"),
            Contender("transformers.pipeline (batch 1, its default)", lambda: peer(paths, top_k=5), goal=1.0, work=count,
                      unit="images"),
            Contender("hfpipes (batch 1)", lambda: pipe(paths, batch_size=1, top_k=5), role="variant", work=count,
                      unit="images"),
        ]  # fmt: skip
        sizes = sorted((_size(path) for path in paths), key=lambda wh: wh[0] * wh[1])
        settings = {
            "model": model or DEFAULT_MODEL,
            "images": f"{count:,} JPEG crops of real photos, from {sizes[0][0]}x{sizes[0][1]} to {sizes[-1][0]}x{sizes[-1][1]} px",
            "inputs": "file paths (decoding included)",
            "top_k": 5,
            "dtype": str(pipe.dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(),
        }
        result = compare(
            "image_classification", f"image classification, {count:,} images", contenders, repeats=repeats,
            settings=settings, checks=lambda outputs: _checks(outputs, *names),
        )  # fmt: skip
        rows = {row["name"]: row for row in result["contenders"]}
        batch_gain = rows["hfpipes (batch 1)"]["median_s"] / rows[names[0]]["median_s"]
        peer_gain = rows["transformers.pipeline (batch 1, its default)"]["median_s"] / rows[names[1]]["median_s"]
        result["checks"].append(
            check("gain from batching, hfpipes (batch 1 / batch auto)", batch_gain, "reported", None)
        )
        result["checks"].append(check("gain from batching, pipeline (batch 1 / batch 32)", peer_gain, "reported", None))
        pipe.close()
    return [result]
