"""Item 5: image generation wall time, hfpipes vs a plain diffusers call (goal: at most 2% overhead).

Two comparisons, each on one pipeline object shared by both sides, with the same prompts, steps and seeds:

- **text-to-image**: a small Stable Diffusion pipeline (random weights, built here from small configs: a UNet of
  (32, 64) channels on 32x32 latents, i.e. 64x64 images, at `full` size; diffusers' own test-sized components at
  `tiny`) with a byte-level CLIP tokenizer; `pipe(prompts, num_inference_steps=S, seed=0)` vs
  `pipeline(prompt=prompts, num_inference_steps=S, generator=[torch.Generator().manual_seed(0), ...])`, four
  prompts in one batch, images checked pixel for pixel;
- **class-conditional digits** (when `hfpipes/assets/ddpm-digits` exists, or the model passed): hfpipes vs the
  plain diffusers sampling loop a user writes for a class-conditional `UNet2DModel` (diffusers' `DDPMPipeline`
  cannot pass class labels): `scheduler.set_timesteps`, `randn_tensor` from per-image generators, then
  `unet(sample, t, class_labels)` and `scheduler.step(..., generator=)` per step, one image per class.

Example:

```python
>>> from benchmarks import image_generation
>>> image_generation.run("tiny", repeats=1)[0]["title"]
'text-to-image, 4 images'
```
"""

from __future__ import annotations

import inspect
import tempfile
from pathlib import Path
from typing import Any

from .common import Contender, check, check_size, compare, log

DIGITS_MODEL = Path(__file__).resolve().parents[1] / "hfpipes" / "assets" / "ddpm-digits"
PROMPTS = ["a lighthouse at dusk", "a bowl of fruit on a table", "a red bicycle", "mountains under snow"]
# (UNet/VAE channels, latent size, text width, steps); steps of the digits model at `full`: its own default.
SIZES = {
    "tiny": {"channels": (4, 8), "latent": 16, "text_width": 32, "steps": 2, "digits_steps": 2},
    "full": {"channels": (32, 64), "latent": 32, "text_width": 64, "steps": 20, "digits_steps": None},
}
SEED = 0
GOAL = 0.98  # at most 2% overhead


def _byte_level_alphabet() -> list[str]:
    """GPT-2/CLIP's printable stand-ins for the 256 byte values."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def build_stable_diffusion(directory: Path, channels: tuple[int, int], latent: int, text_width: int) -> Path:
    """A Stable Diffusion pipeline with random weights and a CLIP tokenizer of one token per byte, saved."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from .common import quiet_libraries

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for char in _byte_level_alphabet():
            vocab[char + suffix] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    torch.manual_seed(SEED)
    groups = min(channels[0], 32)
    unet = UNet2DConditionModel(
        block_out_channels=channels, layers_per_block=1 if channels[0] < 32 else 2, sample_size=latent, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=text_width, norm_num_groups=groups // 2,
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=channels, in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=groups // 2,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    )  # fmt: skip
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=text_width, intermediate_size=2 * text_width,
        num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tokenizer), max_position_embeddings=77,
    ))  # fmt: skip
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1,
    )  # fmt: skip
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    with quiet_libraries():
        pipeline.save_pretrained(directory)
    return directory


def build_class_ddpm(directory: Path, classes: int = 10) -> Path:
    """A tiny class-conditional 16x16 grayscale DDPM (random weights) in hfpipes' class-conditional layout."""
    import json

    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(SEED)
    unet = UNet2DModel(
        sample_size=16, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
        num_class_embeds=classes,
    )  # fmt: skip
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=100)).save_pretrained(directory)
    (directory / "class_labels.json").write_text(json.dumps([str(i) for i in range(classes)]), encoding="utf-8")
    return directory


def plain_class_loop(pipeline: Any, labels: list[int], steps: int, seed: int) -> list[Any]:
    """The sampling loop of a class-conditional UNet2DModel written with diffusers alone; PIL images out."""
    import torch
    from diffusers.utils import numpy_to_pil
    from diffusers.utils.torch_utils import randn_tensor

    unet, scheduler = pipeline.unet, pipeline.scheduler
    generators = [torch.Generator().manual_seed(seed) for _ in labels]
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    sample = randn_tensor((len(labels), unet.config.in_channels, *size), generator=generators, dtype=unet.dtype)
    scheduler.set_timesteps(steps)
    sample = sample * scheduler.init_noise_sigma
    class_labels = torch.tensor(labels)
    step_options = {"generator": generators} if "generator" in inspect.signature(scheduler.step).parameters else {}
    with torch.inference_mode():
        for t in scheduler.timesteps:
            output = unet(scheduler.scale_model_input(sample, t), t, class_labels=class_labels).sample
            sample = scheduler.step(output, t, sample, **step_options).prev_sample
    images = (sample / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().numpy()
    return numpy_to_pil(images)


def _images_check(ours: list[dict], theirs: list[Any]) -> dict:
    import numpy as np

    worst = max(
        int(np.abs(np.asarray(a["image"], dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())
        for a, b in zip(ours, theirs, strict=True)
    )
    return check("largest pixel difference (0-255)", worst, "≤ 1", worst <= 1)


def _text_to_image(size: str, repeats: int, directory: Path) -> dict:
    import torch

    import hfpipes

    config = SIZES[size]
    build_stable_diffusion(directory, config["channels"], config["latent"], config["text_width"])
    pipe = hfpipes.load("image-generation", model=str(directory), device="cpu", progress=False)
    diffusers_pipeline = pipe.model  # the very pipeline object hfpipes loaded
    diffusers_pipeline.set_progress_bar_config(disable=True)
    steps = config["steps"]

    def plain() -> list[Any]:
        generators = [torch.Generator().manual_seed(SEED) for _ in PROMPTS]
        return diffusers_pipeline(prompt=PROMPTS, num_inference_steps=steps, generator=generators).images

    names = ("hfpipes", "diffusers StableDiffusionPipeline call")
    contenders = [
        Contender(names[0], lambda: pipe(PROMPTS, num_inference_steps=steps, seed=SEED, progress=False), role="ours",
                  work=len(PROMPTS), unit="images"),
        Contender(names[1], plain, goal=GOAL, work=len(PROMPTS), unit="images"),
    ]  # fmt: skip
    height, width = pipe.default_size
    settings = {
        "model": f"Stable Diffusion, random weights (UNet and VAE channels {config['channels']}), {height}x{width}",
        "prompts": f"{len(PROMPTS)} in one batch",
        "num_inference_steps": steps,
        "guidance_scale": "the pipeline's default (7.5)",
        "seed": f"{SEED} for every prompt",
        "dtype": str(pipe.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
    }
    result = compare(
        "image_generation", f"text-to-image, {len(PROMPTS)} images", contenders, repeats=repeats, settings=settings,
        checks=lambda outputs: [_images_check(outputs[names[0]], outputs[names[1]])],
    )  # fmt: skip
    pipe.close()
    return result


def _display(model: str) -> str:
    """A model folder inside the repository as a relative path (the table must not show this machine's paths)."""
    root = DIGITS_MODEL.parents[2]
    path = Path(model).resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else model


def _digits(size: str, repeats: int, model: str) -> dict:
    import torch

    import hfpipes

    pipe = hfpipes.load("image-generation", model=model, device="cpu", progress=False)
    diffusers_pipeline = pipe.model
    names_of_classes = pipe.class_labels.names
    labels = list(range(len(names_of_classes)))
    default_steps = inspect.signature(type(diffusers_pipeline).__call__).parameters["num_inference_steps"].default
    steps = SIZES[size]["digits_steps"] or default_steps
    names = ("hfpipes", "plain diffusers loop (UNet2DModel + scheduler)")
    contenders = [
        Contender(names[0], lambda: pipe(names_of_classes, num_inference_steps=steps, seed=SEED, progress=False),
                  role="ours", work=len(labels), unit="images"),
        Contender(names[1], lambda: plain_class_loop(diffusers_pipeline, labels, steps, SEED), goal=GOAL,
                  work=len(labels), unit="images"),
    ]  # fmt: skip
    unet = diffusers_pipeline.unet
    settings = {
        "model": f"{_display(model)} ({type(diffusers_pipeline.scheduler).__name__}, {unet.config.sample_size}px, "
        f"{sum(p.numel() for p in unet.parameters()):,} UNet parameters)",
        "images": f"one per class ({len(labels)}), one batch",
        "num_inference_steps": steps,
        "seed": f"{SEED} for every image",
        "dtype": str(pipe.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
    }
    result = compare(
        "image_generation", f"class-conditional digits, {len(labels)} images", contenders, repeats=repeats,
        settings=settings, checks=lambda outputs: [_images_check(outputs[names[0]], outputs[names[1]])],
    )  # fmt: skip
    pipe.close()
    return result


def run(size: str = "full", repeats: int = 3, workdir: Path | None = None, model: str | None = None) -> list[dict]:
    """Run the image-generation benchmark; returns one or two comparisons.

    Args:
        size (`str`, *optional*, defaults to `"full"`):
            `"full"` (64x64 Stable Diffusion, 20 steps; the digits model at its default steps) or `"tiny"`.
        repeats (`int`, *optional*, defaults to 3):
            Timed rounds.
        workdir (`Path`, *optional*):
            Where the pipelines are built; a temporary directory by default.
        model (`str`, *optional*):
            A class-conditional pipeline for the second comparison. Defaults to `hfpipes/assets/ddpm-digits` when
            it exists; at `tiny` size without one, a tiny random one is built so that the code path still runs.
    """
    check_size(size)
    results = []
    with tempfile.TemporaryDirectory(prefix="hfpipes-bench-imagegen-", dir=workdir) as tmp:
        results.append(_text_to_image(size, repeats, Path(tmp) / "stable-diffusion"))
        digits = model or (str(DIGITS_MODEL) if DIGITS_MODEL.is_dir() else None)
        if digits is None and size == "tiny":
            digits = str(build_class_ddpm(Path(tmp) / "class-ddpm"))
        if digits is None:
            log(f"image_generation: {DIGITS_MODEL} does not exist; the class-conditional comparison is skipped")
        else:
            results.append(_digits(size, repeats, digits))
    return results
