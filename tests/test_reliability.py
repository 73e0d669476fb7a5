"""Reliability: a corpus of bad inputs per modality (through `hfpipes.run` and the CLI), safe loading, nothing
lost on a crash or a SIGKILL, thread safety and flat memory while streaming.

Every bad input must give an `HfpipesError` whose message names the input (its index, file or row) and says what
was expected; "converted, not an error" cases must give a normal result. The corpus is generated here, never
downloaded.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import hfpipes
from hfpipes.cli import main as cli
from hfpipes.errors import HfpipesError, InvalidInputError, ModelLoadError, ModelNotFoundError, UnsafeModelError
from tests import tiny_models

# ------------------------------------------------------------------------------------------- the bad inputs

# (kind, value, expected message fragment); every one is run as input 1 of a list whose input 0 is fine.
BAD_TEXTS = [
    ("None", None, "expected a text"),
    ("integer", 42, "expected a text (str), got int"),
    ("float", 3.5, "expected a text (str), got float"),
    ("empty string", "", "expected a non-empty text"),
    ("whitespace only", " \t\n ", "expected a non-empty text"),
    ("control characters only", "\x00\x01\x02\x1b", "expected a non-empty text"),
    ("nested list", ["a", "b"], "nested lists are not accepted"),
    ("dict", {"text": "hello"}, "expected a text (str), got dict"),
    ("invalid UTF-8 bytes", b"caf\xe9 \xff", "not valid UTF-8"),
    ("object", object(), "expected a text (str), got object"),
]
# Accepted: converted or truncated, with a normal result.
ODD_BUT_FINE_TEXTS = [
    ("1 MB of text", "word " * 200_000),
    ("control characters inside text", "good\x00 movie\x1b"),
    ("UTF-8 bytes", "très bien".encode()),
]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def _bad_images(directory: Path) -> list[tuple[str, object, str]]:
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    files = {
        "text.jpg": b"this is a text file, not a JPEG",
        "truncated.png": _png(photo)[:200],
        "truncated.jpg": _jpeg(photo)[:300],
        "empty.png": b"",
        "zip.jpg": b"PK\x03\x04" + b"\x00" * 100,
    }
    for name, data in files.items():
        (directory / name).write_bytes(data)
    (directory / "a-folder.png").mkdir()
    # A 1-bit PNG of 20000 x 20000 pixels: a few kB on disk, 400 million pixels once decoded.
    (directory / "bomb.png").write_bytes(_png(Image.new("1", (20000, 20000))))
    return [
        ("missing path", str(directory / "missing.jpg"), "image file not found"),
        ("text file named .jpg", str(directory / "text.jpg"), "not an image"),
        ("truncated PNG", str(directory / "truncated.png"), "corrupt or truncated"),
        ("truncated JPEG", str(directory / "truncated.jpg"), "corrupt or truncated"),
        ("zero-byte file", str(directory / "empty.png"), "0 bytes"),
        ("zip file named .jpg", str(directory / "zip.jpg"), "not an image"),
        ("1x1 image", Image.new("RGB", (1, 1)), "1x1 pixels"),
        ("decompression bomb", str(directory / "bomb.png"), "decompression bomb"),
        ("http URL while offline", "http://example.com/cat.jpg", "offline"),
        ("directory", str(directory / "a-folder.png"), "got a directory"),
        ("4-D array", np.zeros((2, 8, 8, 3), np.uint8), "expected an image array of shape"),
        ("NaN array", np.full((16, 16, 3), np.nan, np.float32), "NaN"),
        ("None", None, "expected an image"),
    ]


def _odd_but_fine_images() -> list[tuple[str, Image.Image]]:
    rgb = np.random.default_rng(1).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    return [
        ("16-bit grayscale", Image.fromarray((rgb[..., 0].astype(np.uint16) * 257))),
        ("CMYK", Image.fromarray(rgb).convert("CMYK")),
        ("palette with transparency", Image.fromarray(rgb).convert("P")),
        ("RGBA", Image.fromarray(rgb).convert("RGBA")),
    ]


def _names_input_1(err: HfpipesError) -> bool:
    return "input 1" in str(err)


# ----------------------------------------------------------------------------------------------- text


@pytest.fixture(scope="module")
def sentiment(tiny_text_classifier):
    with hfpipes.load("sentiment", model=tiny_text_classifier, device="cpu") as pipe:
        yield pipe


@pytest.mark.parametrize("kind, value, message", BAD_TEXTS, ids=[k for k, _, _ in BAD_TEXTS])
def test_bad_text_gives_a_clear_error_naming_the_input(sentiment, kind, value, message):
    with pytest.raises(InvalidInputError) as info:
        sentiment(["a fine text", value])
    assert _names_input_1(info.value) and message in str(info.value), str(info.value)


@pytest.mark.parametrize("kind, value", ODD_BUT_FINE_TEXTS, ids=[k for k, _ in ODD_BUT_FINE_TEXTS])
def test_odd_text_is_accepted(sentiment, kind, value):
    result = sentiment(value)
    assert result["label"] in {"negative", "positive"}


def test_bad_text_through_the_cli(tiny_text_classifier, tmp_path, capsys):
    expressible = [(k, v, m) for k, v, m in BAD_TEXTS if isinstance(v, (type(None), int, float, str, list, dict))]
    for kind, value, message in expressible:
        source = tmp_path / "in.jsonl"
        source.write_text(json.dumps("fine") + "\n" + json.dumps(value) + "\n")
        assert cli(["-q", "run", "sentiment", "-m", tiny_text_classifier, "-i", str(source)]) == 2, kind
        err = capsys.readouterr().err
        assert err.startswith("error: input 1") and message in err and "Traceback" not in err, (kind, err)


# --------------------------------------------------------------------------------------------- images


@pytest.fixture(scope="module")
def classify(tiny_image_classifier):
    with hfpipes.load("image-classification", model=tiny_image_classifier, device="cpu") as pipe:
        yield pipe


def test_bad_images_give_clear_errors_naming_the_input(classify, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fine = np.zeros((32, 32, 3), np.uint8)
    failures = []
    corpus = _bad_images(tmp_path)
    for kind, value, message in corpus:
        try:
            classify([fine, value])
            failures.append(f"{kind}: no error")
        except HfpipesError as err:
            if not (_names_input_1(err) and message in str(err)):
                failures.append(f"{kind}: {err}")
    assert not failures, failures
    assert len(corpus) >= 10


@pytest.mark.parametrize("kind, image", _odd_but_fine_images(), ids=[k for k, _ in _odd_but_fine_images()])
def test_odd_images_are_converted(classify, kind, image):
    assert len(classify(image)) == 3


def test_bad_images_through_the_cli(tiny_image_classifier, tmp_path, capsys):
    for kind, value, message in _bad_images(tmp_path):
        if not isinstance(value, str) or value.startswith("http"):
            continue
        assert cli(["-q", "run", "image-classification", "-m", tiny_image_classifier, value]) == 2, kind
        err = capsys.readouterr().err
        assert err.startswith("error: input 0") and message in err and "Traceback" not in err, (kind, err)


# --------------------------------------------------------------------------------------------- models


def test_bad_models_give_clear_errors(tiny_text_classifier, tiny_image_classifier, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        hfpipes.load("sentiment", model=str(tmp_path / "nowhere"))
    with pytest.raises(ModelNotFoundError, match="offline.*embedded:|local"):
        hfpipes.load("sentiment", model="someone/some-model-that-is-not-cached")
    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_text_classifier, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no weights"):
        hfpipes.load("sentiment", model=str(no_weights))
    mismatched = tmp_path / "mismatched"
    shutil.copytree(tiny_text_classifier, mismatched)
    config = json.loads((mismatched / "config.json").read_text())
    config["hidden_size"] = 64
    (mismatched / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="mismatched"):
        hfpipes.load("sentiment", model=str(mismatched))
    with pytest.raises(ModelLoadError, match="cannot be used for the 'image-classification' task"):
        hfpipes.load("image-classification", model=tiny_text_classifier)
    with pytest.raises(ModelLoadError, match="cannot be used for the 'sentiment' task"):
        hfpipes.load("sentiment", model=tiny_image_classifier)


# ------------------------------------------------------------------------------------------ safe loading


def test_pickle_weights_are_refused_unless_allowed(tiny_text_classifier, tmp_path):
    import torch
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    import shutil

    shutil.copytree(tiny_text_classifier, pickled)
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(UnsafeModelError, match="allow_pickle=True"):
        hfpipes.load("sentiment", model=str(pickled))
    with hfpipes.load("sentiment", model=str(pickled), allow_pickle=True, device="cpu") as pipe:
        assert pipe("fine")["label"] in {"negative", "positive"}


def test_remote_code_is_never_trusted_by_default(tiny_text_classifier, tmp_path):
    import shutil

    remote = tmp_path / "remote"
    shutil.copytree(tiny_text_classifier, remote)
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_evil.EvilModel"}
    config["model_type"] = "evil-model"
    (remote / "config.json").write_text(json.dumps(config))
    (remote / "modeling_evil.py").write_text("raise SystemExit('this code must never run')\n")
    with pytest.raises(UnsafeModelError, match="trust_remote_code=True"):
        hfpipes.load("sentiment", model=str(remote))


# -------------------------------------------------------------------------------------------- nothing lost


def test_a_crash_while_saving_keeps_the_previous_model(tiny_text_classifier, tmp_path, monkeypatch):
    train = [{"text": s, "label": "pos" if i % 2 else "neg"} for i, s in enumerate(tiny_models.SENTENCES)]
    out = tmp_path / "model"
    hfpipes.finetune("sentiment", train, model=tiny_text_classifier, output_dir=str(out), max_steps=2, save_every=1000)
    before = (out / "model.safetensors").read_bytes()
    from hfpipes.tasks.sentiment import SentimentTask

    def crash(self, model, directory):
        (Path(directory) / "model.safetensors").write_bytes(b"half written")
        raise RuntimeError("disk full")

    monkeypatch.setattr(SentimentTask, "save_trained", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        hfpipes.finetune("sentiment", train, model=tiny_text_classifier, output_dir=str(out), max_steps=2, save_every=1000)
    assert (out / "model.safetensors").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def _recipe(tmp_path: Path, model: str, output: Path) -> Path:
    data = tmp_path / "train.jsonl"
    rows = [{"text": s, "label": "pos" if i % 2 else "neg"} for i, s in enumerate(tiny_models.SENTENCES)] * 4
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / f"{output.name}.yaml"
    recipe.write_text(
        f"task: sentiment\nmodel: {model}\ntrain: {data}\noutput_dir: {output}\nmax_steps: 60\nbatch_size: 4\n"
        "learning_rate: 0.001\nsave_every: 5\nsave_total_limit: 2\nlog_every: 1\n"
    )
    return recipe


def _finetune(recipe: Path, *extra: str, wait: bool = True) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "hfpipes", "-q", "finetune", str(recipe), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    if wait:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    return proc


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tiny_text_classifier, tmp_path):
    """A real process, killed with SIGKILL after a checkpoint and in the middle of an epoch (12 batches per
    epoch, checkpoints every 5 steps), resumed with resume=true, ends with the same weights as a run that was
    never interrupted."""
    import torch
    from safetensors.torch import load_file

    _finetune(_recipe(tmp_path, tiny_text_classifier, tmp_path / "straight"))
    interrupted = tmp_path / "interrupted"
    proc = _finetune(_recipe(tmp_path, tiny_text_classifier, interrupted), wait=False)
    log = interrupted / "checkpoints" / "training_log.jsonl"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        steps = [json.loads(line)["step"] for line in log.read_text().splitlines()] if log.is_file() else []
        # Past the checkpoint at step 15 but not yet at the next one, which is not an epoch boundary either.
        if steps and 16 <= steps[-1] < 19:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (interrupted / "model.safetensors").exists()  # no half-written model
    _finetune(_recipe(tmp_path, tiny_text_classifier, interrupted), "--set", "resume=true")
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(interrupted / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------ threads and memory


def test_eight_threads_fifty_calls_each_match_a_sequential_loop(tiny_text_classifier):
    pipe = hfpipes.load("sentiment", model=tiny_text_classifier, device="cpu")
    texts = [" ".join(tiny_models.SENTENCES[i % 12].split()[: 2 + i % 7]) for i in range(50)]
    expected = [pipe(t) for t in texts]
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            results[n] = [pipe(t) for t in texts]
        except BaseException as err:  # re-raised below in the main thread
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert all(results[n] == expected for n in range(8))


STREAM_SCRIPT = """
import sys, hfpipes
pipe = hfpipes.load("sentiment", model=sys.argv[1], device="cpu")
n = int(sys.argv[2])
count = 0
for result in pipe(f"review number {i} was {'good' if i % 2 else 'bad'}" for i in range(n)):
    count += 1
assert count == n
# VmHWM (this process's peak), not ru_maxrss, which a child started from a big process inherits.
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


@pytest.mark.slow
def test_streaming_a_large_generator_keeps_memory_flat(tiny_text_classifier):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def peak_kib(n: int) -> int:
        out = subprocess.run([sys.executable, "-c", STREAM_SCRIPT, tiny_text_classifier, str(n)], env=env,
                             capture_output=True, text=True, timeout=900)  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        return int(out.stdout.strip().splitlines()[-1])

    small, large = peak_kib(10_000), peak_kib(100_000)
    print(f"peak RSS: 10k inputs {small / 1024:.0f} MiB, 100k inputs {large / 1024:.0f} MiB")
    assert large - small < 64 * 1024  # ten times the inputs, (almost) no more memory
