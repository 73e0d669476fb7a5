"""Model cards, written with `huggingface_hub.ModelCard` / `ModelCardData` from the templates in `model_cards/`.

Rendering is offline: nothing here calls the Hub.

Example:

```python
>>> from hfpipes.cards import finetuned_model_card
>>> card = finetuned_model_card(task, config, metrics, train="train.csv", eval="dev.csv", num_train=900, num_eval=100)
>>> card.save("out/README.md")
```
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path
from typing import Any

__all__ = ["finetuned_model_card", "TEMPLATES"]

TEMPLATES = Path(__file__).resolve().parent.parent / "model_cards" / "templates"

# The Hub's pipeline tag of each task, for the card's metadata.
PIPELINE_TAGS = {
    "sentiment": "text-classification",
    "image-classification": "image-classification",
    "translation": "translation",
    "speech-recognition": "automatic-speech-recognition",
    "text-generation": "text-generation",
    "image-generation": "text-to-image",
}
USAGE = {
    "sentiment": 'pipe("I love it")',
    "image-classification": 'pipe("photo.jpg")',
    "translation": 'pipe("Good morning", tgt_lang="de")',
    "speech-recognition": 'pipe("clip.wav")',
    "text-generation": 'pipe("Once upon a time", max_new_tokens=40)',
    "image-generation": 'pipe("7", seed=0)["image"]',
}


def _describe_data(source: Any) -> str:
    if source is None:
        return "none"
    if isinstance(source, (str, os.PathLike)):
        return f"`{os.fspath(source)}`"
    if isinstance(source, list):
        return "a list of records" if not source or isinstance(source[0], dict) else ", ".join(f"`{s}`" for s in source)
    return f"a `{type(source).__module__}.{type(source).__name__}`"


def _versions() -> dict[str, str]:
    versions = {}
    for name in ("hfpipes", "transformers", "diffusers", "accelerate", "peft", "torch", "datasets"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def finetuned_model_card(
    task: Any,
    config: Any,
    metrics: dict[str, Any],
    *,
    train: Any,
    eval: Any,
    num_train: int,
    num_eval: int,
    limitations: str | None = None,
) -> Any:
    """The model card (`huggingface_hub.ModelCard`) of a model fine-tuned by `hfpipes.finetune`.

    Args:
        task (`hfpipes.Task`):
            The task object that was trained (gives the task name, base model and labels).
        config (`FinetuneConfig`):
            The resolved fine-tuning config (hyperparameters table).
        metrics (`dict`):
            Final metrics (results table and `model-index`).
        train, eval:
            The data sources, described in the card.
        num_train (`int`), num_eval (`int`):
            How many examples were used.
        limitations (`str`, *optional*):
            Intended use and limitations; a generic, honest paragraph by default.
    """
    from huggingface_hub import ModelCard, ModelCardData

    from . import __version__

    labels = list(getattr(getattr(getattr(task, "model", None), "config", None), "id2label", {}).values())
    numeric = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items() if isinstance(v, (int, float))}
    base_model = str(task.model_name)
    data = ModelCardData(
        library_name="hfpipes",
        pipeline_tag=PIPELINE_TAGS.get(task.task),
        base_model=base_model if "/" in base_model and not os.path.exists(base_model) and ":" not in base_model else None,
        tags=["hfpipes", task.task, *(["lora"] if config.peft else [])],
        model_name=Path(config.output_dir).name,
    )
    hyperparameters = {
        key: value for key, value in {
            "epochs": config.epochs if not config.max_steps else None, "max_steps": config.max_steps,
            "batch_size (per device)": config.batch_size, "gradient_accumulation_steps": config.gradient_accumulation_steps,
            "processes": metrics.get("num_processes"), "learning_rate": config.learning_rate,
            "lr_scheduler": config.lr_scheduler, "warmup_steps": config.warmup_steps or None,
            "warmup_ratio": config.warmup_ratio or None, "weight_decay": config.weight_decay,
            "max_grad_norm": config.max_grad_norm, "mixed_precision": config.mixed_precision, "seed": config.seed,
            "peft": config.peft, "max_length": config.max_length,
        }.items() if value is not None
    }  # fmt: skip
    return ModelCard.from_template(
        data,
        template_path=str(TEMPLATES / "finetuned.md"),
        model_name=Path(config.output_dir).name,
        base_model=base_model,
        task=task.task,
        hfpipes_version=__version__,
        load_path=config.output_dir,
        usage_example=USAGE.get(task.task, "pipe(inputs)"),
        is_adapter=bool(config.peft),
        train_data=_describe_data(train),
        eval_data=_describe_data(eval) if eval is not None else (f"{config.eval_split:.0%} of the training data held out" if config.eval_split else "none"),
        num_train=num_train,
        num_eval=num_eval,
        labels=labels if task.task in ("sentiment", "image-classification") else [],
        hyperparameters=hyperparameters,
        results=numeric,
        limitations=limitations
        or (
            "Fine-tuned on the data above only: expect it to work on similar inputs and to be less reliable "
            "elsewhere. Check the evaluation numbers on your own data before relying on it; it inherits the "
            "biases and limitations of its base model and of its training data."
        ),
        versions=_versions(),
    )
