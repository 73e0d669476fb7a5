"""Several processes for real: `accelerate launch --multi_gpu --num_processes 2` (torchrun + gloo on a CPU machine).

`accelerate launch --cpu --num_processes 2` would start ONE process, so these tests check that two ran.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import hfpipes
from tests import tiny_models

pytestmark = pytest.mark.multiprocess

TRAIN = [{"text": s, "label": "positive" if i % 2 == 0 else "negative"} for i, s in enumerate(tiny_models.SENTENCES)] * 4


def _launch(*args: str, cwd) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "hfpipes", *args]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.fixture(scope="module")
def no_dropout_classifier(tmp_path_factory):
    # Without dropout, two processes with half the batch each and one process with the whole batch see the same
    # examples per step and compute the same update, up to float rounding.
    return str(tiny_models.build_text_classifier(tmp_path_factory.mktemp("bert-nodrop"), dropout=0.0))


def test_two_process_finetune_matches_one_process_with_the_same_global_batch(no_dropout_classifier, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in TRAIN))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"task: sentiment\nmodel: {no_dropout_classifier}\ntrain: {data}\neval: {data}\nmax_steps: 6\n"
        "learning_rate: 0.002\nsave_every: 1000\nlog_every: 1\n"
    )
    proc = _launch("finetune", str(recipe), "--set", "batch_size=4", "--set", f"output_dir={tmp_path / 'two'}", cwd=tmp_path)
    assert "2 process(es) (MULTI_CPU)" in proc.stderr
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["num_processes"] == 2
    # Written once, by the main process: no leftover temporary directories, one log line per step.
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".tmp-", ".old-"))]
    steps = [json.loads(line)["step"] for line in (tmp_path / "two" / "training_log.jsonl").read_text().splitlines()]
    assert steps.count(1) == 1
    one = hfpipes.finetune("sentiment", str(data), eval=str(data), model=no_dropout_classifier, output_dir=str(tmp_path / "one"),
                           max_steps=6, batch_size=8, learning_rate=0.002, save_every=1000, log_every=1)  # fmt: skip
    assert one.num_processes == 1
    assert two["eval_loss"] == pytest.approx(one.metrics["eval_loss"], abs=1e-4)
    assert two["train_loss"] == pytest.approx(one.metrics["train_loss"], abs=1e-4)


def test_two_process_load_best_model_at_end_matches_one_process(no_dropout_classifier, tmp_path):
    # Evaluated with the labels swapped, the loss rises as the model learns (at a learning rate high enough to move
    # the tiny model in 6 steps): the best evaluation is not the last.
    data, swapped = tmp_path / "train.jsonl", tmp_path / "swapped.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in TRAIN))
    flip = {"positive": "negative", "negative": "positive"}
    swapped.write_text("".join(json.dumps({**r, "label": flip[r["label"]]}) + "\n" for r in TRAIN))
    options = dict(max_steps=6, eval_every=2, learning_rate=0.02, save_every=1000, log_every=1, metric_for_best="eval_loss",
                   load_best_model_at_end=True)  # fmt: skip
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"task: sentiment\nmodel: {no_dropout_classifier}\ntrain: {data}\neval: {swapped}\n"
                      + "".join(f"{k}: {json.dumps(v)}\n" for k, v in options.items()))  # fmt: skip
    _launch("finetune", str(recipe), "--set", "batch_size=4", "--set", f"output_dir={tmp_path / 'two'}", cwd=tmp_path)
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    one = hfpipes.finetune("sentiment", str(data), eval=str(swapped), model=no_dropout_classifier,
                           output_dir=str(tmp_path / "one"), batch_size=8, **options)  # fmt: skip
    assert two["num_processes"] == 2 and two["best_step"] == one.metrics["best_step"] < 6
    assert two["eval_loss"] == pytest.approx(one.metrics["eval_loss"], abs=1e-4)
    with hfpipes.load("sentiment", model=str(tmp_path / "two"), device="cpu") as a, hfpipes.load(
        "sentiment", model=str(tmp_path / "one"), device="cpu"
    ) as b:
        assert a("good", top_k=None)[0]["score"] == pytest.approx(b("good", top_k=None)[0]["score"], abs=1e-4)


def test_two_process_run_writes_the_same_file_as_one_process(tiny_text_classifier, tmp_path):
    inputs = tmp_path / "in.txt"
    inputs.write_text("\n".join(f"{s} {i}" for i, s in enumerate(tiny_models.SENTENCES * 3)) + "\n")
    _launch("run", "sentiment", "-m", tiny_text_classifier, "-i", str(inputs), "-o", str(tmp_path / "two.jsonl"), cwd=tmp_path)
    one = subprocess.run([sys.executable, "-m", "hfpipes", "-q", "run", "sentiment", "-m", tiny_text_classifier, "-i", str(inputs),
                          "-o", str(tmp_path / "one.jsonl"), "--device", "cpu"], capture_output=True, text=True)  # fmt: skip
    assert one.returncode == 0, one.stderr
    assert (tmp_path / "two.jsonl").read_bytes() == (tmp_path / "one.jsonl").read_bytes()
    assert len((tmp_path / "one.jsonl").read_text().splitlines()) == 36
