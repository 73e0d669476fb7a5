"""Side-by-side speed of hfpipes against what a user would pick instead (issue #8).

`python -m benchmarks` (or `make bench`) runs every item; `benchmarks/results.md` is the table the README includes.
One module per item, each with `run(size, repeats, workdir, model) -> list of comparisons`:

| module | hfpipes vs |
|---|---|
| `sentiment` | `transformers.pipeline("text-classification")`, a hand-written length-sorted loop |
| `image_classification` | `transformers.pipeline("image-classification")` |
| `speech_recognition` | `transformers.pipeline("automatic-speech-recognition")` |
| `text_generation` | `model.generate` |
| `image_generation` | a plain diffusers pipeline call (and the plain sampling loop of a class-conditional UNet) |
| `finetune` | `transformers.Trainer` |
| `startup` | `python -c "from transformers import pipeline"` |
"""

from __future__ import annotations

ITEMS = (
    "sentiment",
    "image_classification",
    "speech_recognition",
    "text_generation",
    "image_generation",
    "finetune",
    "startup",
)
