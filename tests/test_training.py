"""The training loop on tiny models: config validation, learning, outputs, resume, precision, LoRA."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import hfpipes
from hfpipes.errors import ConfigError
from hfpipes.training import FinetuneConfig, load_recipe
from tests import tiny_models
from tests.fixtures.common import assert_finetune_refused

TRAIN = [{"text": s, "label": "positive" if i % 2 == 0 else "negative"} for i, s in enumerate(tiny_models.SENTENCES)]
FAST = dict(batch_size=4, learning_rate=2e-3, log_every=1, save_every=1000)


def test_unknown_options_are_errors_with_a_suggestion():
    with pytest.raises(ConfigError, match="'epoch' \\(did you mean 'epochs'\\?\\).*Valid options"):
        FinetuneConfig.from_dict({"epoch": 3})


@pytest.mark.parametrize(
    "options, message",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"learning_rate": -1}, "learning_rate"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"lr_scheduler": "zigzag"}, "lr_scheduler"),
        ({"eval_split": 1.5}, "eval_split"),
    ],
)
def test_bad_values_are_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        FinetuneConfig.from_dict(options)


def test_fp16_without_a_gpu_is_a_clear_error(tiny_text_classifier, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="fp16.*bf16"):
        hfpipes.finetune("sentiment", TRAIN, model=tiny_text_classifier, output_dir=str(tmp_path), mixed_precision="fp16")


def test_loss_goes_down_and_the_output_reloads(tiny_text_classifier, tmp_path):
    out = tmp_path / "out"
    result = hfpipes.finetune("sentiment", TRAIN, eval=TRAIN, model=tiny_text_classifier, output_dir=str(out), epochs=25, **FAST)
    losses = [e["train_loss"] for e in result.history if "train_loss" in e]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 * 0.8
    assert result.metrics["accuracy"] >= 0.9  # a memorisable set
    for name in ("model.safetensors", "config.json", "tokenizer.json", "metrics.json", "finetune_config.json", "README.md",
                 "training_log.jsonl", "training_curves.png"):  # fmt: skip
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text())["accuracy"] == result.metrics["accuracy"]
    card = (out / "README.md").read_text()
    assert "library_name: hfpipes" in card and "| accuracy |" in card and "learning_rate" in card
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    with hfpipes.load("sentiment", model=str(out), device="cpu") as pipe:
        predictions = [r["label"] for r in pipe([r["text"] for r in TRAIN])]
    assert predictions == [r["label"] for r in TRAIN]
    from transformers import AutoModelForSequenceClassification

    assert AutoModelForSequenceClassification.from_pretrained(out).config.id2label == {0: "negative", 1: "positive"}


def test_resume_from_a_mid_epoch_checkpoint_is_bit_identical(tiny_text_classifier, tmp_path):
    data = TRAIN * 3  # 9 batches per epoch: the checkpoint at step 6 is mid-epoch
    options = dict(model=tiny_text_classifier, max_steps=8, batch_size=4, learning_rate=1e-3, save_every=3,
                   save_total_limit=None, log_every=1)  # fmt: skip
    hfpipes.finetune("sentiment", data, output_dir=str(tmp_path / "a"), **options)
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-0000006", tmp_path / "b" / "checkpoints" / "step-0000006")
    resumed = hfpipes.finetune("sentiment", data, output_dir=str(tmp_path / "b"), resume=True, **options)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [e["step"] for e in resumed.history] == list(range(1, 9))  # history up to the checkpoint came back


def test_gradient_accumulation_and_eval_split(tiny_text_classifier, tmp_path):
    result = hfpipes.finetune("sentiment", TRAIN * 2, model=tiny_text_classifier, output_dir=str(tmp_path),
                              max_steps=3, gradient_accumulation_steps=2, eval_split=0.25, **FAST)  # fmt: skip
    assert result.metrics["step"] == 3 and "accuracy" in result.metrics


def test_bf16_mixed_precision_on_cpu_trains_with_a_finite_loss(tiny_text_classifier, tmp_path):
    result = hfpipes.finetune("sentiment", TRAIN, model=tiny_text_classifier, output_dir=str(tmp_path),
                              max_steps=3, mixed_precision="bf16", **FAST)  # fmt: skip
    losses = [e["train_loss"] for e in result.history if "train_loss" in e]
    assert losses and all(torch.isfinite(torch.tensor(loss)) for loss in losses)


def test_lora_saves_an_adapter_that_hfpipes_load_applies(tiny_text_classifier, tmp_path):
    out = tmp_path / "lora"
    peft = {"type": "lora", "r": 4, "alpha": 8, "target_modules": ["query", "value"]}
    hfpipes.finetune("sentiment", TRAIN, model=tiny_text_classifier, output_dir=str(out), epochs=10, peft=peft, **FAST)
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists()
    assert (out / "adapter_model.safetensors").stat().st_size < 200_000
    with hfpipes.load("sentiment", model=str(out), device="cpu") as pipe:
        results = pipe([r["text"] for r in TRAIN], top_k=None)
    assert {r["label"] for r in results[0]} == {"negative", "positive"}
    # The adapter changed the model: the base with a fresh head would not give these scores.
    with hfpipes.load("sentiment", model=tiny_text_classifier, device="cpu") as base:
        assert pipe is not base and [r[0]["score"] for r in results] != [r["score"] for r in base([r["text"] for r in TRAIN])]


def test_lora_on_a_packaged_base_names_the_spec_and_saves_without_asking_the_hub(tiny_text_classifier, tmp_path, monkeypatch):
    import warnings

    from tests.test_sources import make_package

    folder = make_package(tmp_path / "site", "fake_sentiment_weights", "1.0.0", {})
    shutil.copytree(tiny_text_classifier, folder / "model")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    spec, out = "package:fake-sentiment-weights/model", tmp_path / "lora"
    peft = {"type": "lora", "r": 4, "target_modules": ["query", "value"]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hfpipes.finetune("sentiment", TRAIN, model=spec, output_dir=str(out), max_steps=2, peft=peft, **FAST)
    # peft checks the base's config.json for a resized vocabulary: at the local path, not on the Hub.
    assert not [w for w in caught if "Could not find a config file" in str(w.message)]
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == spec
    with hfpipes.load("sentiment", model=str(out), device="cpu") as pipe:
        assert pipe("good")["label"] in {"negative", "positive"}


def test_early_stopping(tiny_text_classifier, tmp_path):
    result = hfpipes.finetune("sentiment", TRAIN, eval=TRAIN, model=tiny_text_classifier, output_dir=str(tmp_path),
                              epochs=50, learning_rate=1e-9, eval_every=1, early_stopping_patience=2,
                              metric_for_best="eval_loss", batch_size=12, save_every=1000)  # fmt: skip
    assert any(e.get("early_stop") for e in result.history)
    assert result.metrics["step"] < 50


def test_load_recipe_with_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: sentiment\ntrain: data.csv\nepochs: 3\npeft:\n  r: 8\n")
    loaded = load_recipe(recipe, ["epochs=1", "peft.r=4", "columns.text=review"])
    assert loaded == {"task": "sentiment", "train": "data.csv", "epochs": 1, "peft": {"r": 4}, "columns": {"text": "review"}}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_recipe(recipe, ["epochs"])


# ----------------------------------------------------------------------------------------- load_best_model_at_end


def test_load_best_model_at_end_saves_the_best_evaluations_weights(tiny_text_classifier, tmp_path):
    # Evaluated on the training texts with the labels swapped, the loss can only rise as the model learns: the
    # best evaluation is the first, not the last.
    swapped = [{**r, "label": "negative" if r["label"] == "positive" else "positive"} for r in TRAIN]
    out = tmp_path / "out"
    result = hfpipes.finetune("sentiment", TRAIN, eval=swapped, model=tiny_text_classifier, output_dir=str(out),
                              max_steps=6, eval_every=2, metric_for_best="eval_loss", load_best_model_at_end=True,
                              save_total_limit=None, **{**FAST, "save_every": 2})  # fmt: skip
    evals = [e for e in result.history if "eval_loss" in e]
    best = min(evals, key=lambda e: e["eval_loss"])
    assert best["step"] != evals[-1]["step"]  # the case this option is for
    assert result.metrics["best_step"] == best["step"] and result.metrics["eval_loss"] == pytest.approx(best["eval_loss"])
    assert json.loads((out / "metrics.json").read_text())["best_step"] == best["step"]
    # The saved model is the checkpoint of that step, tensor for tensor.
    saved = load_file(out / "model.safetensors")
    at_best = load_file(out / "checkpoints" / f"step-{best['step']:07d}" / "model.safetensors")
    assert saved.keys() == at_best.keys() and all(torch.equal(saved[k], at_best[k]) for k in saved)
    with hfpipes.load("sentiment", model=str(out), device="cpu") as pipe:
        assert pipe("good")["label"] in {"negative", "positive"}


def test_load_best_model_at_end_without_evaluation_data_is_a_config_error(tiny_text_classifier, tmp_path):
    assert_finetune_refused("sentiment", TRAIN, "load_best_model_at_end: needs evaluation data", tmp_path / "out",
                            model=tiny_text_classifier, max_steps=1, load_best_model_at_end=True)  # fmt: skip


# ---------------------------------------------------------------------------------------------- config_overrides


def test_config_overrides_change_the_model_before_its_modules_are_built(tiny_text_classifier, tmp_path):
    out = tmp_path / "out"
    hfpipes.finetune("sentiment", TRAIN, model=tiny_text_classifier, output_dir=str(out), max_steps=1,
                     config_overrides={"hidden_dropout_prob": 0.37}, **FAST)  # fmt: skip
    assert json.loads((out / "config.json").read_text())["hidden_dropout_prob"] == 0.37
    with hfpipes.load("sentiment", model=str(out), device="cpu") as pipe:
        # The new head's dropout (built after the override, in prepare_training) too.
        assert pipe.model.dropout.p == 0.37


def test_batch_norm_momentum_override_reaches_efficientnet_lite(tmp_path):
    # EfficientNet-Lite keeps TensorFlow's slow BatchNorm momentum (0.01): a short fine-tune on new images leaves
    # the running statistics mostly ImageNet's. The recipe in tasks/ raises it through config_overrides.
    from hfpipes.convert.efficientnet_lite import image_processor_for_lite
    from hfpipes.models.efficientnet_lite import EfficientNetLiteForImageClassification
    from tests.fixtures.image_classification import random_images
    from tests.models.test_efficientnet_lite import tiny_config

    base, out = tmp_path / "lite", tmp_path / "out"
    EfficientNetLiteForImageClassification(tiny_config()).save_pretrained(base)
    image_processor_for_lite(32).save_pretrained(base)
    train = [{"image": image, "label": ["cat", "dog"][i % 2]} for i, image in enumerate(random_images(4))]
    hfpipes.finetune("image-classification", train, model=str(base), output_dir=str(out), max_steps=1,
                     config_overrides={"batch_norm_momentum": 0.1}, **FAST)  # fmt: skip
    with hfpipes.load("image-classification", model=str(out), device="cpu") as pipe:
        assert {m.momentum for m in pipe.model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.1}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"hiden_dropout_prob": 0.2}, r"config_overrides: \['hiden_dropout_prob'\] not attribute\(s\) of the model's BertConfig"),
        ("dropout=0.2", r"config_overrides: expected a mapping"),
    ],
)
def test_bad_config_overrides_are_config_errors(tiny_text_classifier, tmp_path, overrides, message):
    assert_finetune_refused("sentiment", TRAIN, message, tmp_path / "out", model=tiny_text_classifier, max_steps=1,
                            config_overrides=overrides)  # fmt: skip
