"""Reliability for audio: a corpus of bad and odd audio inputs, each through `hfpipes.run` and through the CLI, long
files read window by window (the same transcript as decoding them whole), and a two-hour file transcribed with
bounded memory.

Every bad input must give an `HfpipesError` whose message names the input and says what was expected (the CLI: exit
status 2 and one line, `error: input 1 ...`, no traceback); every odd-but-fine input must give the transcript of the
clean audio. The inputs are generated here; the hand-wired letter model (`tests/fixtures/speech_recognition.py`)
makes transcripts exact, so "resampled correctly" means "the same text".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

import hfpipes
from hfpipes.cli import main as cli
from hfpipes.errors import HfpipesError
from tests.fixtures.speech_recognition import SAMPLING_RATE, letter_signal, tone

TEXT = "the quick brown fox"
FINE = letter_signal("ok")


def _wav(path: Path, samples: np.ndarray, rate: int = SAMPLING_RATE, subtype: str = "PCM_16") -> str:
    soundfile.write(path, samples, rate, subtype=subtype)
    return str(path)


def _bad_audio(directory: Path) -> list[tuple[str, object, object, str]]:
    """(kind, value for `hfpipes.run`, the same input for the CLI (a path, or a JSON value), expected message)."""
    text_file = directory / "notes.wav"
    text_file.write_text("this is a text file, not a wave file")
    (directory / "empty.wav").write_bytes(b"")
    (directory / "folder.wav").mkdir()
    header = Path(_wav(directory / "full.wav", letter_signal(TEXT))).read_bytes()
    (directory / "header-only.wav").write_bytes(header[:30])
    no_frames = _wav(directory / "no-frames.wav", np.zeros(0, np.float32))
    nan_file = np.full(SAMPLING_RATE, 0.1, np.float32)
    nan_file[100] = np.nan
    nan_wav = _wav(directory / "nan.wav", nan_file, subtype="FLOAT")
    # Longer than one window (20 s for CTC), so read window by window: the bad sample is found in its window.
    nan_late = np.tile(letter_signal(TEXT), 40)  # 30.4 s
    nan_late[-1600] = np.inf  # at 30.3 s
    nan_late_wav = _wav(directory / "nan-late.wav", nan_late, subtype="FLOAT")
    missing = str(directory / "missing.wav")
    nan, inf = np.array([0.1, np.nan, 0.2], np.float32), np.array([0.1, np.inf, 0.2], np.float32)
    return [
        ("missing path", missing, missing, "audio file not found"),
        ("directory", str(directory / "folder.wav"), str(directory / "folder.wav"), "expected an audio file, got a directory"),
        ("text file named .wav", str(text_file), str(text_file), "expected an audio file (WAV, FLAC, OGG, MP3, ...), got 36 bytes that cannot be decoded"),
        ("zero-byte file", str(directory / "empty.wav"), str(directory / "empty.wav"), "expected an audio file, got an empty file or empty bytes (0 bytes)"),
        ("WAV with no samples", no_frames, no_frames, "the audio is empty (0 samples); expected at least one sample"),
        ("truncated WAV header", str(directory / "header-only.wav"), str(directory / "header-only.wav"), "got 30 bytes that cannot be decoded"),
        ("empty array", np.zeros(0, np.float32), [], "the audio is empty (0 samples); expected at least one sample"),
        ("NaN samples", nan, [0.1, float("nan"), 0.2], "the audio contains NaN or infinite samples; expected finite values"),
        ("infinite samples", inf, [0.1, float("inf"), 0.2], "the audio contains NaN or infinite samples; expected finite values"),
        ("NaN in a float WAV", nan_wav, nan_wav, "the audio contains NaN or infinite samples; expected finite values"),
        ("inf late in a long WAV", nan_late_wav, nan_late_wav, "the audio contains NaN or infinite samples (the first at 30.30 s); expected finite values"),
        ("dict without a rate", {"array": FINE}, {"array": FINE.tolist()}, "an audio dict needs 'array' (or 'raw') and 'sampling_rate' keys"),
        ("zero sampling rate", {"array": FINE, "sampling_rate": 0}, {"array": FINE.tolist(), "sampling_rate": 0}, "expected a positive integer sampling_rate, got 0"),
        ("text samples", np.array(["a", "b"]), ["a", "b"], "expected numeric audio samples, got an array of dtype <U1"),
        ("3-D array", np.zeros((2, 2, 2), np.float32), np.zeros((2, 2, 2)).tolist(), "expected a 1-D (mono) or 2-D (multi-channel) audio array, got shape (2, 2, 2)"),
        ("a number", 0.5, 0.5, "expected audio (file path, bytes, numpy array or {'array', 'sampling_rate'} dict), got float 0.5"),
        ("None", None, None, "expected audio (file path, bytes, numpy array or {'array', 'sampling_rate'} dict), got NoneType"),
    ]  # fmt: skip


def _odd_but_fine_audio(directory: Path) -> list[tuple[str, object, object, str]]:
    """(kind, value for `hfpipes.run`, the same input for the CLI, expected transcript)."""
    stereo = letter_signal(TEXT, 44100)
    long = letter_signal(" ".join([TEXT] * 30), 44100)  # 45 s: longer than one window
    eight_khz = letter_signal(TEXT, 8000)
    clean = letter_signal(TEXT)
    cut = Path(_wav(directory / "cut-source.wav", np.tile(clean, 3))).read_bytes()
    (directory / "cut.wav").write_bytes(cut[: 44 + 2 * len(clean)])  # the header still claims three times as much
    silence = np.zeros(3 * SAMPLING_RATE, np.float32)
    cases = [
        ("8 kHz file", _wav(directory / "8k.wav", eight_khz, 8000), None, TEXT),
        ("8 kHz dict", {"array": eight_khz, "sampling_rate": 8000}, {"array": eight_khz.tolist(), "sampling_rate": 8000}, TEXT),
        ("44.1 kHz stereo file", _wav(directory / "stereo.wav", np.stack([stereo, stereo], axis=1), 44100), None, TEXT),
        ("int16 samples", np.round(clean * 32767).astype(np.int16), _wav(directory / "int16.wav", clean), TEXT),
        ("silence", silence, _wav(directory / "silence.wav", silence), ""),
        ("10 samples", np.full(10, 0.09, np.float32), [0.09] * 10, ""),
        ("WAV cut short (header claims more)", str(directory / "cut.wav"), None, TEXT),
        ("45 s at 44.1 kHz stereo (read window by window)",
         _wav(directory / "long-stereo.wav", np.stack([long, long], axis=1), 44100), None,
         " ".join([TEXT] * 30)),
    ]  # fmt: skip
    return [(kind, value, value if cli_form is None else cli_form, text) for kind, value, cli_form, text in cases]


@pytest.fixture(scope="module")
def letters(letter_ctc):
    with hfpipes.load("speech-recognition", model=letter_ctc, device="cpu") as pipe:
        yield pipe


def test_the_corpus_has_at_least_ten_kinds_of_each(tmp_path):
    assert len(_bad_audio(tmp_path)) >= 10 and len(_odd_but_fine_audio(tmp_path)) >= 5


# ---------------------------------------------------------------------------------------------- hfpipes.run


def test_bad_audio_through_run_names_the_input_and_what_was_expected(letter_ctc, tmp_path):
    failures = []
    for kind, value, _, message in _bad_audio(tmp_path):
        try:
            hfpipes.run("speech-recognition", [FINE, value], model=letter_ctc, device="cpu")
            failures.append(f"{kind}: no error")
        except HfpipesError as err:
            if not (str(err).startswith("input 1") and message in str(err)):
                failures.append(f"{kind}: {err}")
    assert not failures, failures


def test_odd_audio_through_run_is_converted(letter_ctc, tmp_path):
    cases = _odd_but_fine_audio(tmp_path)
    results = hfpipes.run("speech-recognition", [value for _, value, _, _ in cases], model=letter_ctc, device="cpu")
    assert [(kind, r["text"]) for (kind, *_), r in zip(cases, results, strict=True)] == [
        (kind, text) for kind, _, _, text in cases
    ]


# ------------------------------------------------------------------------------------------------- the CLI


def _cli_input(value: object, directory: Path, name: str) -> list[str]:
    """The CLI arguments for one input after the fine one: a path as it is, anything else as a line of JSON."""
    fine = _wav(directory / "fine.wav", FINE)
    if isinstance(value, str):
        return [fine, value]
    source = directory / f"{name}.jsonl"
    source.write_text(json.dumps(FINE.tolist()) + "\n" + json.dumps(value) + "\n")
    return ["-i", str(source)]


def test_bad_audio_through_the_cli_is_one_error_line_naming_the_input(letter_ctc, tmp_path, capsys):
    for i, (kind, _, value, message) in enumerate(_bad_audio(tmp_path)):
        code = cli(["-q", "run", "speech-recognition", "-m", letter_ctc, *_cli_input(value, tmp_path, f"bad-{i}")])
        out, err = capsys.readouterr()
        assert code == 2, (kind, code, out, err)
        assert err.startswith("error: input 1") and message in err, (kind, err)
        assert err.count("\n") == 1 and "Traceback" not in err and not out, (kind, err)


def test_odd_audio_through_the_cli_is_transcribed(letter_ctc, tmp_path, capsys):
    for i, (kind, _, value, text) in enumerate(_odd_but_fine_audio(tmp_path)):
        code = cli(["-q", "run", "speech-recognition", "-m", letter_ctc, *_cli_input(value, tmp_path, f"odd-{i}")])
        out, err = capsys.readouterr()
        assert code == 0, (kind, err)
        assert [json.loads(line) for line in out.splitlines()] == [{"text": "ok"}, {"text": text}], kind


# -------------------------------------------------------------------------------------- long files streamed


@pytest.mark.parametrize("rate, channels", [(16000, 1), (44100, 2), (8000, 1), (22050, 1)])
def test_a_long_file_read_window_by_window_gives_the_whole_files_transcript(letters, tmp_path, rate, channels):
    text = " ".join([TEXT] * 30)  # 45 s: three 20 s windows
    samples = letter_signal(text, rate)
    if channels == 2:
        samples = np.stack([samples, samples * 0.5], axis=1)  # mixed to mono: 0.75 of each level, still nearest
        text = letters({"array": samples, "sampling_rate": rate})["text"]
    path = Path(_wav(tmp_path / "long.wav", samples, rate, subtype="FLOAT"))
    streamed = letters(str(path))
    assert streamed == letters(path.read_bytes()) == letters({"array": samples, "sampling_rate": rate})  # decoded whole
    assert streamed["text"] == text and len(text) > 100


def test_whisper_reads_long_files_window_by_window_with_the_same_result(tiny_whisper, tmp_path):
    clip = tone(25.0, 300, seed=3)  # the tiny Whisper's window is 10 s: three windows
    path = _wav(tmp_path / "long.wav", clip, subtype="FLOAT")
    with hfpipes.load("speech-recognition", model=tiny_whisper, device="cpu") as whisper:
        assert whisper(path, max_new_tokens=8) == whisper(clip, max_new_tokens=8)
        assert whisper(path, max_new_tokens=8)["text"]


# ------------------------------------------------------------------------------------------ a two-hour file

SENTENCE = "the quick brown fox jumps over the lazy dog "  # 1.76 s for the letter model

# The peak resident memory of this process: VmHWM, because `ru_maxrss` survives `exec`, so a child forked from a
# pytest process that already holds models would report at least the parent's size.
PEAK_SCRIPT = """
import resource, sys

def peak_kib():
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

mode, model, path, expected = sys.argv[1:5]
if mode == "run":
    import hfpipes
    text = hfpipes.run("speech-recognition", path, model=model, device="cpu")["text"]
else:
    from hfpipes.cli import main
    assert main(["-q", "run", "speech-recognition", "-m", model, path, "--output", path + ".jsonl"]) == 0
    import json
    text = json.loads(open(path + ".jsonl").read())["text"]
assert text == open(expected).read(), (len(text), text[:200])
print(peak_kib())
"""


def _long_wav(path: Path, seconds: float) -> tuple[str, str]:
    """A 16 kHz 16-bit WAV of `SENTENCE` repeated for about `seconds`, written block by block (never whole in
    memory), and a file holding its transcript."""
    block = letter_signal(SENTENCE)
    repeats = int(seconds * SAMPLING_RATE // len(block))
    with soundfile.SoundFile(path, "w", SAMPLING_RATE, 1, subtype="PCM_16") as handle:
        for _ in range(repeats):
            handle.write(block)
    expected = path.with_suffix(".txt")
    expected.write_text((SENTENCE * repeats).strip())
    return str(path), str(expected)


def _peak_mib(mode: str, model: str, path: str, expected: str) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, mode, model, path, expected], env=env,
                         capture_output=True, text=True, timeout=900)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return int(out.stdout.strip().splitlines()[-1]) / 1024


@pytest.mark.slow
def test_a_two_hour_file_is_transcribed_with_bounded_memory(letter_ctc, tmp_path):
    """2 hours of 16 kHz audio are 460 MB as float32 samples; read window by window, the peak resident memory of
    the process stays within 150 MB of a 10-minute file's, through `hfpipes.run` and through the CLI, and the
    180,000-character transcript is exact across the 540 windows."""
    ten_minutes = _long_wav(tmp_path / "ten-minutes.wav", 600)
    two_hours = _long_wav(tmp_path / "two-hours.wav", 7200)
    assert Path(two_hours[0]).stat().st_size > 230_000_000
    small = _peak_mib("run", letter_ctc, *ten_minutes)
    large = _peak_mib("run", letter_ctc, *two_hours)
    large_cli = _peak_mib("cli", letter_ctc, *two_hours)
    print(f"peak RSS: 10 min {small:.0f} MiB, 2 h {large:.0f} MiB (hfpipes.run), 2 h {large_cli:.0f} MiB (CLI)")
    assert large - small < 150 and large_cli - small < 150
