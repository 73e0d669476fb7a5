"""Item 4: text generation tokens/s, hfpipes vs raw `model.generate`, batch 1 and batch 8.

Both sides run the same model object (`embedded:smollm2-135m-instruct`) on the same eight chat prompts, rendered
with the tokenizer's chat template, with greedy decoding (`do_sample=False`) and the same `max_new_tokens`:

- **batch 1**: `pipe(prompt, ...)` for each prompt in turn vs `model.generate` on each prompt's ids;
- **batch 8**: `pipe(prompts, batch_size=8, ...)` (one call) vs one `model.generate` on the eight prompts padded on
  the left (`padding_side="left"`, the attention mask marking the padding), as transformers documents it.

The raw side does what a user must: render the template, tokenize, generate, decode the new tokens. Tokens/s counts
the new tokens of each sequence up to its end-of-sequence token, taken from the raw side's output; the check
"identical texts" says whether hfpipes generated the same text (it must, under greedy decoding), which makes the
count exact for both.

Example:

```python
>>> from benchmarks import text_generation
>>> [c["title"] for c in text_generation.run("tiny", repeats=1)]
['text generation, batch 1', 'text generation, batch 8']
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import Contender, check, check_size, compare, time_alternating

DEFAULT_MODEL = "embedded:smollm2-135m-instruct"
PROMPTS = [
    "Write a story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a bicycle gear system works.",
    "Describe a walk through a busy market in the morning.",
    "Write a letter to a friend about your new garden.",
    "Explain why the sky is blue.",
    "Tell me about the history of paper.",
    "Give advice to someone learning to cook for the first time.",
    "Describe the plot of an adventure film set in the mountains.",
]
# New tokens per prompt: the prompts ask for long answers, so most sequences run to the limit.
SIZES = {"tiny": 8, "full": 64}


def raw_generate(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int) -> list[dict]:
    """What a user writes with transformers alone: chat template, left-padded batch, `generate`, decode."""
    import torch

    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    batch = tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        sequences = model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    new = sequences[:, batch["input_ids"].shape[1] :]
    return [
        {"generated_text": tokenizer.decode(ids, skip_special_tokens=True), "tokens": _count(ids.tolist(), model)}
        for ids in new
    ]


def _count(ids: list[int], model: Any) -> int:
    """New tokens up to and including the first end-of-sequence token (the rest is padding)."""
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, (list, tuple)) else [eos])
    for position, token in enumerate(ids):
        if token in eos:
            return position + 1
    return len(ids)


def _checks(outputs: dict[str, Any], names: tuple[str, str], prompts: list[str]) -> list[dict]:
    ours, raw = outputs[names[0]], outputs[names[1]]
    same = sum(a["generated_text"] == b["generated_text"] for a, b in zip(ours, raw, strict=True))
    tokens = sum(r["tokens"] for r in raw)
    return [
        check("identical texts", f"{same}/{len(prompts)}", "all", same == len(prompts)),
        check("new tokens per run", tokens, "informational", None),
    ]


def _set_work(contenders: list[Contender], tokens: int) -> None:
    for contender in contenders:
        contender.work = tokens


def run(size: str = "full", repeats: int = 3, workdir: Path | None = None, model: str | None = None) -> list[dict]:
    """Run the text-generation benchmark; returns two comparisons (batch 1 and batch 8).

    Args:
        size (`str`, *optional*, defaults to `"full"`):
            `"full"` (64 new tokens per prompt) or `"tiny"` (8).
        repeats (`int`, *optional*, defaults to 3):
            Timed rounds.
        workdir (`Path`, *optional*):
            Unused; accepted like every item's.
        model (`str`, *optional*):
            A causal LM with a chat template; defaults to SmolLM2-135M-Instruct (`embedded:smollm2-135m-instruct`).
    """
    import torch
    from transformers import AutoTokenizer

    import hfpipes

    max_new_tokens = SIZES[check_size(size)]
    pipe = hfpipes.load("text-generation", model=model or DEFAULT_MODEL, device="cpu", progress=False)
    # A tokenizer of its own for the raw side (same files): padding on the left changes its state.
    tokenizer = AutoTokenizer.from_pretrained(pipe.location.path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    options = {"max_new_tokens": max_new_tokens, "do_sample": False}
    settings = {
        "model": model or DEFAULT_MODEL,
        "prompts": f"{len(PROMPTS)} chat prompts (chat template applied)",
        "max_new_tokens": max_new_tokens,
        "decoding": "greedy",
        "dtype": str(pipe.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
    }
    results = []
    for batch in (1, 8):
        names = (f"hfpipes (batch {batch})", f"model.generate (batch {batch})")
        groups = [PROMPTS[i : i + batch] for i in range(0, len(PROMPTS), batch)]

        def ours(batch: int = batch) -> list[dict]:
            # Batch 1 is one call per prompt, as an interactive user makes them.
            return [pipe(p, **options) for p in PROMPTS] if batch == 1 else pipe(PROMPTS, batch_size=batch, **options)

        def raw(groups: list[list[str]] = groups) -> list[dict]:
            return [r for group in groups for r in raw_generate(pipe.model, tokenizer, group, max_new_tokens)]

        contenders = [
            Contender(names[0], ours, role="ours", unit="tokens"),
            Contender(names[1], raw, goal=0.95, unit="tokens"),
        ]
        times = time_alternating(contenders, repeats)
        # The token count is known once the raw side has run: tokens/s for both sides from the same count.
        _set_work(contenders, sum(r["tokens"] for r in contenders[1].output))
        results.append(
            compare(
                "text_generation",
                f"text generation, batch {batch}",
                contenders,
                repeats=repeats,
                settings={**settings, "batch": batch},
                times=times,
                checks=lambda outputs, names=names: _checks(outputs, names, PROMPTS),
            )  # fmt: skip
        )
    pipe.close()
    return results
