"""Fine-tuning image generation: new UNets from `model_config`, continued pipelines, LoRA on Stable Diffusion,
deterministic evaluation, exact resume and bad data; plus the shipped digits model and its card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import hfpipes
from hfpipes.errors import ConfigError, DataError
from hfpipes.tasks.image_generation import ImageGenerationTask, _lora_config, _training_options, _unet_config
from hfpipes.training import FinetuneConfig, load_recipe
from tests.fixtures.image_generation import digit_records, write_image_folder

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "hfpipes" / "assets" / "ddpm-digits"
TINY_UNET = {
    "sample_size": 16, "in_channels": 1, "out_channels": 1, "layers_per_block": 1, "block_out_channels": [8, 16],
    "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"],
    "norm_num_groups": 4, "num_class_embeds": "auto",
}  # fmt: skip
QUICK = {"log_every": 1, "save_every": 1000, "task_options": {"sample_steps": 3}}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: handing work between threads costs more than the work (30x slower on 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory) -> Path:
    """Three classes named by digits, four 8x8 grayscale images each: `root/<digit>/<i>.png`."""
    return write_image_folder(tmp_path_factory.mktemp("digits"), digit_records(["3", "5", "7"], per_class=4))


def _losses(result) -> list[float]:
    return [entry["train_loss"] for entry in result.history if "train_loss" in entry]


# ------------------------------------------------------------------------------------------ from scratch


def test_class_conditional_unet_from_scratch_learns_and_reloads(digit_folder, tmp_path):
    from diffusers import DDPMPipeline

    out = tmp_path / "digits"
    result = hfpipes.finetune(
        "image-generation", str(digit_folder), eval=str(digit_folder), output_dir=str(out), model_config=TINY_UNET,
        max_steps=40, batch_size=12, learning_rate=3e-3, **QUICK,
    )  # fmt: skip
    losses = _losses(result)
    assert np.mean(losses[-8:]) < 0.6 * np.mean(losses[:8]), losses  # a memorisable set
    assert result.metrics["eval_loss"] < 0.6 and result.metrics["step"] == 40
    for name in ("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                 "scheduler/scheduler_config.json", "class_labels.json", "metrics.json", "README.md",
                 "samples/step-0000040/samples.png"):  # fmt: skip
        assert (out / name).is_file(), name
    assert not list(out.glob("*.bin")) and json.loads((out / "class_labels.json").read_text()) == ["3", "5", "7"]
    with Image.open(out / "samples" / "step-0000040" / "samples.png") as grid:  # one 16x16 image per class, x4
        assert grid.size == (3 * 64, 64) and grid.mode == "L"
    assert "library_name: hfpipes" in (out / "README.md").read_text()

    with hfpipes.load("image-generation", model=str(out), device="cpu") as pipe:
        assert pipe.kind == "class-conditional" and pipe._default_steps == 50  # a DDIMPipeline by default
        results = pipe(["a handwritten seven", "digit 3"], seed=0, num_inference_steps=4)
    assert [r["label"] for r in results] == ["7", "3"]
    assert all(r["image"].size == (16, 16) and r["image"].mode == "L" for r in results)
    plain = DDPMPipeline.from_pretrained(out)
    assert plain.unet.config.num_class_embeds == 3 and type(plain.scheduler).__name__ == "DDIMScheduler"


def test_unconditional_rgb_unet_saved_as_a_ddpm_pipeline(digit_folder, tmp_path):
    out = tmp_path / "unconditional"
    config = {**TINY_UNET, "in_channels": 3, "out_channels": 3, "num_class_embeds": None}
    options = {
        "inference_scheduler": "ddpm",
        "num_train_timesteps": 50,
        "beta_schedule": "squaredcos_cap_v2",
        "sample_steps": 3,
    }
    result = hfpipes.finetune("image-generation", str(digit_folder), eval_split=0.25, output_dir=str(out), model_config=config,
                              max_steps=3, batch_size=4, log_every=1, task_options=options)  # fmt: skip
    assert result.metrics["eval_loss"] > 0
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "DDPMPipeline"
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["num_train_timesteps"] == 50
    assert not (out / "class_labels.json").exists()  # the folder's labels are not used
    with Image.open(out / "samples" / "step-0000003" / "samples.png") as grid:
        assert grid.size == (8 * 64, 64) and grid.mode == "RGB"
    image = hfpipes.run("image-generation", "", model=str(out), device="cpu", seed=1, num_inference_steps=2)["image"]
    assert image.size == (16, 16) and image.mode == "RGB"


def test_resume_from_a_checkpoint_is_bit_identical(digit_folder, tmp_path):
    options = dict(model_config=TINY_UNET, max_steps=6, batch_size=4, learning_rate=1e-3, save_every=3,
                   save_total_limit=None, log_every=1)  # fmt: skip
    hfpipes.finetune("image-generation", str(digit_folder), output_dir=str(tmp_path / "a"), **options)
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-0000003", tmp_path / "b" / "checkpoints" / "step-0000003")
    hfpipes.finetune("image-generation", str(digit_folder), output_dir=str(tmp_path / "b"), resume=True, **options)
    weights = "unet/diffusion_pytorch_model.safetensors"
    a, b = load_file(tmp_path / "a" / weights), load_file(tmp_path / "b" / weights)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------- evaluation


def test_evaluation_loss_is_deterministic_and_independent_of_batching(digit_folder):
    from hfpipes.data import load_records

    config = FinetuneConfig.from_dict({"model_config": TINY_UNET})
    task = ImageGenerationTask.for_finetuning(None, config)
    records = load_records(str(digit_folder), required=("image",), optional=("label",))
    task.prepare_training(records, records, config)
    features = [task.encode_example(r.values, r.where) for r in records]
    unet = task.trainable_model(config)
    unet.eval()
    with torch.no_grad():
        whole = task.training_loss(unet, task.training_collate(features))
        again = task.training_loss(unet, task.training_collate(features))
        one_by_one = [task.training_loss(unet, task.training_collate([f])) for f in features]
        unet.train()
        training = [task.training_loss(unet, task.training_collate(features)) for _ in range(2)]
    assert torch.equal(whole, again)
    assert torch.allclose(whole, torch.stack(one_by_one).mean(), rtol=1e-5)
    assert not torch.equal(training[0], training[1])  # training draws fresh noise and timesteps


# -------------------------------------------------------------------------------------- continued models


def test_continuing_a_class_conditional_pipeline_maps_labels_to_its_classes(tiny_class_ddpm, tmp_path):
    out = tmp_path / "continued"
    records = digit_records(["nought", "seven", "7"], per_class=2)  # an alias, a number word, a name
    hfpipes.finetune("image-generation", records, model=tiny_class_ddpm, output_dir=str(out), max_steps=2, batch_size=3,
                     log_every=1)  # fmt: skip
    assert json.loads((out / "class_labels.json").read_text())[0] == ["0", "nought"]
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "DDPMPipeline"  # kept as it was
    assert (
        hfpipes.run("image-generation", "nought", model=str(out), device="cpu", seed=0, num_inference_steps=2)["label"]
        == "0"
    )
    with pytest.raises(DataError, match=r"record 0: label 'cat' is none of the model's classes \(0, 1, 2"):
        hfpipes.finetune("image-generation", digit_records(["cat"], per_class=1), model=tiny_class_ddpm,
                         output_dir=str(tmp_path / "bad"), max_steps=1)  # fmt: skip


def test_lora_on_stable_diffusion_reloads_and_changes_the_output(tiny_stable_diffusion, tmp_path):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "lora"
    rng = np.random.default_rng(0)
    records = [{"image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "text": text}
               for text in ("a red square", "a blue circle", "a green line", "a red circle")]  # fmt: skip
    peft = {"r": 4, "alpha": 16, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}
    hfpipes.finetune("image-generation", records, eval=records[:2], model=tiny_stable_diffusion, output_dir=str(out),
                     max_steps=3, batch_size=2, learning_rate=5e-2, peft=peft, **QUICK)  # fmt: skip
    assert (out / "pytorch_lora_weights.safetensors").is_file() and not (out / "model_index.json").exists()
    assert (out / "pytorch_lora_weights.safetensors").stat().st_size < 100_000
    assert json.loads((out / "hfpipes_adapter.json").read_text()) == {
        "task": "image-generation", "base_model": tiny_stable_diffusion, "format": "diffusers-lora",
    }  # fmt: skip
    with Image.open(out / "samples" / "step-0000003" / "samples.png") as grid:  # the two evaluation prompts
        assert grid.size == (2 * 32 * 2, 32 * 2)

    options = {"seed": 0, "num_inference_steps": 2}
    with hfpipes.load("text-to-image", model=str(out), device="cpu") as tuned:
        assert tuned.model_name == str(out)
        after = np.asarray(tuned("a red square", **options)["image"], dtype=int)
    before = np.asarray(
        hfpipes.run("text-to-image", "a red square", model=tiny_stable_diffusion, device="cpu", **options)["image"],
        dtype=int,
    )
    assert np.abs(after - before).mean() > 1
    # Without peft, the merged pipeline trains whole and is saved as a full pipeline.
    full = tmp_path / "full"
    hfpipes.finetune("image-generation", records[:2], model=str(out), output_dir=str(full), max_steps=1, batch_size=2)
    assert (full / "model_index.json").is_file() and (full / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    # diffusers itself reads the adapter, with its scale (alpha / r = 4) from the saved metadata.
    plain = StableDiffusionPipeline.from_pretrained(tiny_stable_diffusion)
    plain.load_lora_weights(str(out))
    config = next(iter(plain.unet.peft_config.values()))
    assert (config.r, config.lora_alpha) == (4, 16)


# ------------------------------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("name", ["image-generation.yaml", "image-generation-lora.yaml"])
def test_recipes_are_valid(name):
    recipe = load_recipe(ROOT / "tasks" / name)
    config = FinetuneConfig.from_dict({k: v for k, v in recipe.items() if k not in ("task", "model", "train", "eval")})
    assert recipe["task"] == "image-generation" and _training_options(config.task_options)
    if config.model_config is not None:  # the shipped digits model: ~1M parameters, 16x16 grayscale, ten classes
        assert _unet_config(config.model_config)["num_class_embeds"] == "auto" and config.peft is None
    else:
        assert _lora_config(config.peft).r == 8


def test_lora_recipe_runs_on_a_tiny_stable_diffusion(tiny_stable_diffusion, tmp_path):
    overrides = [f"model={tiny_stable_diffusion}", f"output_dir={tmp_path}", "max_steps=1", "max_train_samples=2",
                 "max_eval_samples=1", "batch_size=2"]  # fmt: skip
    recipe = load_recipe(ROOT / "tasks" / "image-generation-lora.yaml", overrides)
    task, train, evaluation = recipe.pop("task"), recipe.pop("train"), recipe.pop("eval")
    result = hfpipes.finetune(task, train, eval=evaluation, **recipe)
    assert result.metrics["step"] == 1 and (tmp_path / "pytorch_lora_weights.safetensors").is_file()


# -------------------------------------------------------------------------------------- errors in config


@pytest.mark.parametrize(
    "options, message",
    [
        (
            {"task_options": {"num_train_steps": 10}},
            r"unknown key\(s\) 'num_train_steps' \(did you mean 'num_train_timesteps'\?\).*Valid keys: num_train_timesteps",
        ),
        (
            {"task_options": {"beta_schedule": "cosine"}},
            r"task_options.beta_schedule: expected 'linear'.*got str 'cosine'",
        ),
        ({"task_options": {"beta_start": 0.1, "beta_end": 0.01}}, "beta_start .* must be below beta_end"),
        (
            {"model_config": {**TINY_UNET, "sample_sise": 16}},
            r"unknown UNet2DModel argument\(s\) 'sample_sise'. Valid: sample_size",
        ),
        ({"model_config": {"in_channels": 1}}, "sample_size is required"),
        (
            {"model_config": {**TINY_UNET, "num_class_embeds": 5}},
            "num_class_embeds: 5 classes, but the data has 3 labels",
        ),
        ({"model_config": {**TINY_UNET, "block_out_channels": [8, 10]}}, "UNet2DModel refused it"),
        ({"model_config": TINY_UNET, "peft": {"r": 4}}, "peft: LoRA needs a pretrained text-to-image pipeline"),
        ({"model_config": TINY_UNET, "config_overrides": {"dropout": 0.1}}, "config_overrides: not for diffusion pipelines"),
    ],
)
def test_config_errors_say_what_is_valid(digit_folder, tmp_path, options, message):
    with pytest.raises(ConfigError, match=message):
        hfpipes.finetune("image-generation", str(digit_folder), output_dir=str(tmp_path), max_steps=1, **options)


def test_continued_models_refuse_options_that_do_not_apply(tiny_class_ddpm, tiny_stable_diffusion, tmp_path):
    records = digit_records(["1", "2"], per_class=1)
    with pytest.raises(ConfigError, match="model_config were both given"):
        hfpipes.finetune(
            "image-generation", records, model=tiny_class_ddpm, model_config=TINY_UNET, output_dir=str(tmp_path)
        )
    with pytest.raises(ConfigError, match="beta_schedule set the noise schedule of a new UNet"):
        hfpipes.finetune("image-generation", records, model=tiny_class_ddpm, output_dir=str(tmp_path),
                         task_options={"beta_schedule": "linear"})  # fmt: skip
    with pytest.raises(ConfigError, match="peft: LoRA is for text-to-image pipelines"):
        hfpipes.finetune("image-generation", records, model=tiny_class_ddpm, output_dir=str(tmp_path), peft={"r": 2})
    with pytest.raises(ConfigError, match="labels: only for a new class-conditional UNet.*its own classes"):
        hfpipes.finetune(
            "image-generation", records, model=tiny_class_ddpm, output_dir=str(tmp_path), labels=["1", "2"]
        )
    with pytest.raises(DataError, match="record 0: no text; a text-to-image model trains on"):
        hfpipes.finetune("image-generation", records, model=tiny_stable_diffusion, output_dir=str(tmp_path))


# ------------------------------------------------------------------------------------------------ bad data


def test_a_non_image_file_in_the_folder_is_a_data_error_naming_it(tmp_path):
    folder = write_image_folder(tmp_path / "data", digit_records(["1", "2"], per_class=2))
    (folder / "2" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"notes\.txt.*not.*image"):
        hfpipes.finetune(
            "image-generation", str(folder), model_config=TINY_UNET, output_dir=str(tmp_path / "out"), max_steps=1
        )


def test_class_conditional_data_needs_labels_that_name_distinct_classes(tmp_path):
    records = [{"image": r["image"]} for r in digit_records(["1", "2"], per_class=1)]
    with pytest.raises(DataError, match="record 0: no label; a class-conditional model needs a 'label' column"):
        hfpipes.finetune("image-generation", records, model_config=TINY_UNET, output_dir=str(tmp_path), max_steps=1)
    with pytest.raises(DataError, match="labels: the name 'one' is given to two classes"):  # "1" is also "one"
        hfpipes.finetune("image-generation", digit_records(["1", "one"], per_class=1), model_config=TINY_UNET,
                         output_dir=str(tmp_path), max_steps=1)  # fmt: skip


# ------------------------------------------------------------------------------------ the shipped default


@pytest.mark.skipif(not SHIPPED.is_dir(), reason="the digits model is not trained yet")
def test_shipped_digits_model_is_small_and_generates_the_digit_asked_for():
    files = [p for p in SHIPPED.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 6_000_000
    assert not [p for p in files if p.parts[-2] in ("checkpoints", "samples") or p.suffix in (".bin", ".pt")]
    result = hfpipes.run(
        "image-generation", "a handwritten seven", model=str(SHIPPED), device="cpu", seed=0, num_inference_steps=5
    )
    assert result["label"] == "7" and result["image"].size == (16, 16) and result["image"].mode == "L"


def test_digits_model_card_renders_with_valid_metadata():
    from huggingface_hub import ModelCard

    card = ModelCard.load(ROOT / "model_cards" / "ddpm-digits.md")
    assert card.data.license == "apache-2.0" and card.data.library_name == "hfpipes"
    assert card.data.pipeline_tag == "text-to-image" and "sklearn-digits" in str(card.data.datasets)
    assert card.data.eval_results and all(r.metric_value is not None for r in card.data.eval_results)
    for section in ("## Training", "## Evaluation", "## Intended use", "## Limitations", "BSD-3-Clause"):
        assert section in card.text, section
