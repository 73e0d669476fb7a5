"""Real quality: the embedded default (Whisper tiny.en, greedy decoding) on real English recordings, the Debian
`pocketsphinx-testdata` set (five LibriVox sentences, five card names, "go forward ten meters"), one by one and
as a 70 s recording transcribed in overlapping windows.

Transcripts and references are compared after `normalize_transcript` (Whisper's English text normaliser, runs of
digits joined): the references spell numbers out ("ten of clubs") where Whisper writes digits ("10 of clubs").
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import soundfile

import hfpipes
from hfpipes.corpora import corpus_path
from hfpipes.tasks.speech_recognition import normalize_transcript

pytestmark = pytest.mark.quality

MAX_WER = 0.06
MAX_LONG_WER = 0.10


def _rows(split: str) -> list[dict]:
    root = corpus_path("pocketsphinx-speech", split)
    with open(root / "metadata.csv", newline="", encoding="utf-8") as handle:
        return [{"path": str(root / row["file_name"]), "text": row["text"]} for row in csv.DictReader(handle)]


def _words(text: str) -> list[str]:
    return normalize_transcript(text).split()


def _wer(references: list[str], hypotheses: list[str]) -> float:
    import jiwer

    return jiwer.wer([normalize_transcript(t) for t in references], [normalize_transcript(t) for t in hypotheses])


@pytest.fixture(scope="module")
def asr():
    with hfpipes.load("speech-recognition", device="cpu") as pipe:
        yield pipe


def test_the_default_model_is_the_embedded_english_whisper_tiny(asr):
    assert asr.model_name == "embedded:whisper-tiny.en"
    assert asr.is_whisper and not asr.multilingual
    assert (asr.model.generation_config.num_beams or 1) == 1  # the defaults below are greedy decoding


def test_wer_on_the_pocketsphinx_recordings(asr):
    rows = _rows("test")
    assert len(rows) == 11
    results = asr([row["path"] for row in rows])
    for row, result in zip(rows, results, strict=True):
        print(f"{row['path'].rsplit('/', 1)[-1]:>60}: {result['text']!r}  (reference: {row['text']!r})")
    wer = _wer([row["text"] for row in rows], [r["text"] for r in results])
    print(f"WER on {sum(len(_words(row['text'])) for row in rows)} words: {wer:.2%}")
    assert wer <= MAX_WER


def test_70_s_of_recordings_in_windows_lose_and_repeat_no_words(asr, tmp_path):
    """The `long` split (the 11 recordings joined with 0.3 s of silence, 40 s), then the recordings again until
    past 70 s: three 30 s windows with 5 s strides. The file is read window by window. A word run dropped or
    written twice at a seam would show as a run of deleted or inserted words in the alignment."""
    import jiwer

    long = _rows("long")[0]
    samples, rate = soundfile.read(long["path"], dtype="float32")
    parts, texts = [samples], [long["text"]]
    silence = np.zeros(int(0.3 * rate), np.float32)
    for row in _rows("test"):
        if sum(len(p) for p in parts) >= 70 * rate:
            break
        parts += [silence, soundfile.read(row["path"], dtype="float32")[0]]
        texts.append(row["text"])
    audio = np.concatenate(parts)
    path = tmp_path / "long.wav"
    soundfile.write(path, audio, rate, subtype="PCM_16")
    reference = " ".join(texts)
    result = asr(str(path))
    print(f"{len(audio) / rate:.1f} s: {result['text']!r}")
    wer = _wer([reference], [result["text"]])
    hypothesis, truth = _words(result["text"]), _words(reference)
    print(f"long-audio WER {wer:.2%}; {len(hypothesis)} words written, {len(truth)} in the reference")
    assert 70 <= len(audio) / rate <= 80
    assert wer <= MAX_LONG_WER
    assert abs(len(hypothesis) - len(truth)) <= 3
    alignment = jiwer.process_words(" ".join(truth), " ".join(hypothesis))
    runs = [
        (
            chunk.type,
            truth[chunk.ref_start_idx : chunk.ref_end_idx],
            hypothesis[chunk.hyp_start_idx : chunk.hyp_end_idx],
        )
        for chunk in alignment.alignments[0]
        if chunk.type in ("insert", "delete")
        and max(chunk.ref_end_idx - chunk.ref_start_idx, chunk.hyp_end_idx - chunk.hyp_start_idx) >= 3
    ]
    assert not runs, runs
