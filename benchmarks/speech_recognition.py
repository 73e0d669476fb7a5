"""Item 3: speech recognition of 20 real clips of 2-60 s, hfpipes vs `transformers.pipeline`.

The clips are made of the real recordings of `pocketsphinx-speech` (11 utterances of 1-7 s: LibriVox readings and
spoken cards): clip `i` joins whole utterances (never a cut word), 0.3 s of silence between them, until it reaches
its target length; the targets are spaced geometrically from 2 s to 60 s, so half the clips fit in one 30 s
Whisper window and half need two or three. The reference of a clip is its utterances' transcripts joined. Both
contenders get the same decoded 16 kHz samples (no file reading on either side) and run the same Whisper model
object (`embedded:whisper-tiny.en`) with the same windows (`chunk_length_s` = the model's 30 s, strides of
`chunk_length_s / 6`, the pipeline's default), greedy decoding (`num_beams=1`) and up to 16 windows per batch:

- **hfpipes**: `pipe(clips, chunk_length_s=30, num_beams=1)`: the windows of all clips are batched together;
- **transformers.pipeline**: `pipeline("automatic-speech-recognition", model, tokenizer, feature_extractor,
  chunk_length_s=30, batch_size=16)(clips, generate_kwargs={"num_beams": 1})`.

Both transcripts are scored with the same normaliser (`normalize_transcript`) and jiwer: the WER must be the same.

Example:

```python
>>> from benchmarks import speech_recognition
>>> speech_recognition.run("tiny", repeats=1)[0]["checks"][0]["name"]
'WER, hfpipes'
```
"""

from __future__ import annotations

import copy
import csv
import math
import random
from pathlib import Path
from typing import Any

from .common import Contender, check, check_size, compare

DEFAULT_MODEL = "embedded:whisper-tiny.en"
# (number of clips, shortest target, longest target in seconds); tiny keeps one clip longer than a window.
SIZES = {"tiny": (2, 2.0, 12.0), "full": (20, 2.0, 60.0)}
BATCH_SIZE = 16
SILENCE_S = 0.3
# A clip is closed by the utterance that best fills the last seconds of its target.
CLOSING_S = 8.0
SEED = 0


def recordings() -> list[tuple[Any, str]]:
    """The pocketsphinx-speech utterances as (16 kHz float32 samples, transcript)."""
    import soundfile as sf

    from hfpipes.corpora import corpus_path

    folder = corpus_path("pocketsphinx-speech", "test")
    with open(folder / "metadata.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [(sf.read(folder / row["file_name"], dtype="float32")[0], row["text"]) for row in rows]


def make_clips(
    count: int, shortest: float, longest: float, rate: int = 16_000, seed: int = SEED
) -> list[tuple[Any, str]]:
    """`count` clips of whole utterances, their target lengths spaced geometrically from `shortest` to `longest`.

    Each clip draws utterances at random among those that fit what is left of its target, until less than
    `CLOSING_S` is left: then the utterance whose length is closest to that ends the clip. An utterance comes back
    in a clip only after every other one has been used in it.
    """
    import numpy as np

    pool = recordings()
    rng = random.Random(seed)
    silence = np.zeros(int(SILENCE_S * rate), dtype=np.float32)
    clips = []
    for i in range(count):
        target = shortest * (longest / shortest) ** (i / max(count - 1, 1))
        parts, texts, unused = [], [], []
        remaining = target
        while remaining > 0:
            unused = unused or list(range(len(pool)))
            gap = SILENCE_S if parts else 0.0
            length = {k: len(pool[k][0]) / rate + gap for k in unused}
            fits = [k for k in unused if length[k] <= remaining]
            if remaining < CLOSING_S or not fits:
                pick = min(unused, key=lambda k: abs(length[k] - remaining))
                remaining = 0
            else:
                pick = rng.choice(fits)
                remaining -= length[pick]
            unused.remove(pick)
            samples, text = pool[pick]
            parts += [silence, samples] if parts else [samples]
            texts.append(text)
        clips.append((np.concatenate(parts), " ".join(texts)))
    rng.shuffle(clips)
    return clips


def word_error_rate(hypotheses: list[str], references: list[str]) -> float:
    """Corpus WER after hfpipes' transcript normaliser (Whisper's English normaliser, digit runs joined)."""
    import jiwer

    from hfpipes.tasks.speech_recognition import normalize_transcript

    return jiwer.wer([normalize_transcript(r) for r in references], [normalize_transcript(h) for h in hypotheses])


def _checks(outputs: dict[str, Any], names: tuple[str, str], references: list[str]) -> list[dict]:
    ours = word_error_rate([r["text"] for r in outputs[names[0]]], references)
    peer = word_error_rate([r["text"] for r in outputs[names[1]]], references)
    same = sum(
        a["text"].strip() == b["text"].strip() for a, b in zip(outputs[names[0]], outputs[names[1]], strict=True)
    )
    return [
        check("WER, hfpipes", f"{ours:.2%}", "reported", None),
        check("WER, transformers.pipeline", f"{peer:.2%}", "reported", None),
        check("WER difference (points)", round(100 * (ours - peer), 2), "0 (same WER)", math.isclose(ours, peer, abs_tol=1e-9)),
        check("identical transcripts", f"{same}/{len(references)}", "informational", None),
    ]  # fmt: skip


def run(size: str = "full", repeats: int = 3, workdir: Path | None = None, model: str | None = None) -> list[dict]:
    """Run the speech-recognition benchmark; returns one comparison.

    Args:
        size (`str`, *optional*, defaults to `"full"`):
            `"full"` (20 clips of 2-60 s) or `"tiny"` (2 clips of 2 and 12 s).
        repeats (`int`, *optional*, defaults to 3):
            Timed rounds.
        workdir (`Path`, *optional*):
            Unused (the clips stay in memory); accepted like every item's.
        model (`str`, *optional*):
            A Whisper model; defaults to Whisper tiny.en (`embedded:whisper-tiny.en`).
    """
    import torch
    import transformers

    import hfpipes

    count, shortest, longest = SIZES[check_size(size)]
    pipe = hfpipes.load("speech-recognition", model=model or DEFAULT_MODEL, device="cpu", progress=False)
    clips = make_clips(count, shortest, longest, rate=pipe.sampling_rate)
    audio = [samples for samples, _ in clips]
    references = [text for _, text in clips]
    seconds = [len(samples) / pipe.sampling_rate for samples in audio]
    chunk_length_s = pipe.window_samples / pipe.sampling_rate
    tokenizer = pipe.tokenizer
    if tokenizer.pad_token is None:
        # The pipeline refuses to batch without a pad token; a copy gets one, hfpipes' tokenizer is left as it is.
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.pad_token = tokenizer.eos_token
    peer = transformers.pipeline(
        "automatic-speech-recognition", model=pipe.model, tokenizer=tokenizer,
        feature_extractor=pipe.feature_extractor, chunk_length_s=chunk_length_s, batch_size=BATCH_SIZE, device="cpu",
    )  # fmt: skip
    names = ("hfpipes", f"transformers.pipeline (batch {BATCH_SIZE})")
    total = sum(seconds)
    contenders = [
        Contender(names[0], lambda: pipe(audio, chunk_length_s=chunk_length_s, num_beams=1), role="ours", work=total,
                  unit="audio s"),
        # The pipeline consumes the dicts it is given; a fresh list of arrays each run.
        Contender(names[1], lambda: peer(list(audio), generate_kwargs={"num_beams": 1}), goal=1.2, work=total,
                  unit="audio s"),
    ]  # fmt: skip
    settings = {
        "model": model or DEFAULT_MODEL,
        "clips": f"{count} of {min(seconds):.1f}-{max(seconds):.1f} s ({total:.0f} s in all), 16 kHz arrays",
        "chunk_length_s": f"{chunk_length_s:g}",
        "stride_length_s": f"{chunk_length_s / 6:.2f} on each side",
        "num_beams": 1,
        "windows per batch": BATCH_SIZE,
        "dtype": str(pipe.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
    }
    result = compare(
        "speech_recognition", f"speech recognition, {count} clips", contenders, repeats=repeats, settings=settings,
        checks=lambda outputs: _checks(outputs, names, references),
    )  # fmt: skip
    pipe.close()
    return [result]
