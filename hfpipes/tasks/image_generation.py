"""Image generation with diffusers pipelines: text-to-image, class-conditional and unconditional models.

Any folder (or Hub repository) that `diffusers.DiffusionPipeline.from_pretrained` loads is accepted and sorted into
one of three kinds:

- **text-to-image**: a pipeline whose call takes a `prompt` (Stable Diffusion, SDXL, SD-Turbo, ...). An
  image-to-image or inpainting pipeline is turned into its text-to-image sibling with
  `AutoPipelineForText2Image.from_pipe`. Prompts, `negative_prompt` and `guidance_scale` go to diffusers as they are.
- **class-conditional**: a pixel-space `UNet2DModel` with `num_class_embeds` set, saved as a standard
  `DDPMPipeline` folder (`model_index.json`, `unet/`, `scheduler/`) plus an optional `class_labels.json` naming
  the classes (see `ClassLabels`). The prompt picks the class: `"7"`, `"digit 7"` and `"a handwritten seven"` all
  pick class `"7"`; `class_label=` picks it explicitly. diffusers' `DDPMPipeline` cannot pass class labels, so
  these models are sampled by a short loop of the same shape (`scheduler.set_timesteps`, `unet(..., class_labels=)`,
  `scheduler.step(..., generator=)`). Plain diffusers still loads the folder (`DDPMPipeline.from_pretrained`).
- **unconditional**: any other pipeline called with `batch_size` and `generator` (`DDPMPipeline`, `DDIMPipeline`,
  ...). Its own call runs, so images are pixel-identical to plain diffusers. The prompt is ignored (a warning the
  first time a non-empty one is given); the empty string `""` is the natural input.

Seeds: every image has its own `torch.Generator` (on the CPU, so results do not depend on the device) seeded with
`seed + i` for the `i`-th image of a prompt, and every result records its seed, so any image can be regenerated
alone with `seed=result["seed"]`. Each prompt of a list starts from the same `seed`, so a prompt's images do not
depend on its position in the list. Without `seed`, each prompt draws a base seed from torch's global generator
(so `torch.manual_seed` makes a run repeatable).

Prompts are batched together (several images per model call). The noise is the same as one by one; the
arithmetic of batched kernels may differ in the last bits of a float, which can move a rare pixel by one level
(measured on the CPU: 3 of 61,440 values for a tiny Stable Diffusion, none for pixel UNets).

Half precision: when a float16/bfloat16 run gives NaN/inf values or an all-black image (a well-known diffusers
failure), those images are generated again in float32 with the same seeds, and a warning says so.

Each result is `{"image": PIL.Image.Image, "seed": int}`, plus `"path"` with `save_to=` and `"label"` (the class
name) for class-conditional models; with `num_images > 1` one prompt gives a list of such dicts. One-channel
models give grayscale (`"L"`) images, three-channel ones RGB, with diffusers' own conversion
(`(x / 2 + 0.5).clamp(0, 1)`, then `round(x * 255)`).

Fine-tuning (`hfpipes.finetune("image-generation", ...)`, recipes `tasks/image-generation*.yaml`):

- **a new pixel UNet** from `model_config` (`UNet2DModel` arguments; `num_class_embeds: auto` = one class per label
  in the data, absent = unconditional) with a DDPM noise schedule from `task_options` (`num_train_timesteps`,
  `beta_schedule`, `beta_start`, `beta_end`, `prediction_type`, `clip_sample`); saved as a `DDIMPipeline` (sampled in 50 DDIM steps
  by default; `inference_scheduler: ddpm` saves a `DDPMPipeline`) plus `class_labels.json`;
- **a pipeline continued** (`model=`): a pixel UNet2DModel pipeline keeps its scheduler and classes (the data's
  labels must name them); a Stable Diffusion-style pipeline trains its UNet, all of it or, with `peft:`, LoRA
  adapters on its attention, with the VAE and text encoder frozen. A LoRA is saved in diffusers' format
  (`pytorch_lora_weights.safetensors`) with `hfpipes_adapter.json` naming the base pipeline; loading the folder
  loads the base and merges the LoRA into it.

Data: `image` (an image folder gives `image` and `label`), plus `label` (class-conditional) or `text`
(text-to-image). Images are converted to the model's channels, scaled (bicubic) and centre-cropped to its size and
mapped to [-1, 1]. The loss is DDPM's: the MSE of the predicted noise at a random timestep with random noise from
torch's global generator (so a resumed run draws the same). Evaluation uses the same loss with noise and a
timestep drawn from a generator seeded by each example's position, so every evaluation sees the same noisy inputs
(`eval_loss`, lower is better). After each evaluation `samples/step-N/samples.png` shows one image per class, 8
unconditional images, or the first evaluation prompts.

Example:

```python
>>> import hfpipes
>>> pipe = hfpipes.load("text-to-image", model="stabilityai/sd-turbo")
>>> pipe("a lighthouse at dusk", num_inference_steps=1, guidance_scale=0.0, seed=42)
{'image': <PIL.Image.Image image mode=RGB size=512x512>, 'seed': 42}
>>> digits = hfpipes.load("image-generation", model="path/to/digits-ddpm")
>>> [r["seed"] for r in digits("a handwritten seven", num_images=3, seed=0, save_to="out/")]
[0, 1, 2]
>>> result = hfpipes.finetune(
...     "image-generation", "corpus:sklearn-digits/train", eval="corpus:sklearn-digits/test", output_dir="out/digits",
...     model_config={"sample_size": 16, "in_channels": 1, "out_channels": 1, "num_class_embeds": "auto"},
...     task_options={"beta_schedule": "squaredcos_cap_v2"}, max_steps=2000, batch_size=32, learning_rate=1e-3,
... )
>>> hfpipes.run("image-generation", "digit 3", model="out/digits", seed=0)["label"]
'3'
```
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import itertools
import json
import logging
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data import label_set
from ..errors import ConfigError, DataError, InvalidInputError, ModelLoadError
from ..inputs import describe, load_image, load_text
from ..task import ADAPTER_INFO, Chunks, Task

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

__all__ = ["ImageGenerationTask", "ClassLabels", "CLASS_LABELS_FILE"]

logger = logging.getLogger("hfpipes")

# Beside model_index.json in a class-conditional model's folder; diffusers ignores it.
CLASS_LABELS_FILE = "class_labels.json"
# With progress=None, diffusers' denoising bar shows from this many steps on (SD's default is 50, DDPM's 1000).
PROGRESS_MIN_STEPS = 50
TEXT_TO_IMAGE, CLASS_CONDITIONAL, UNCONDITIONAL = "text-to-image", "class-conditional", "unconditional"

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(name: str) -> list[str]:
    """English words for a class named by a number from 0 to 99 (`"7"` -> `["seven"]`), else `[]`.

    Example:

    ```python
    >>> number_words("21")
    ['twenty-one', 'twenty one']
    ```
    """
    if not (name.isascii() and name.isdigit()) or (len(name) > 1 and name[0] == "0") or int(name) > 99:
        return []
    number = int(name)
    if number < 20:
        return [_ONES[number]]
    tens, ones = divmod(number, 10)
    return [_TENS[tens - 2]] if ones == 0 else [f"{_TENS[tens - 2]}-{_ONES[ones]}", f"{_TENS[tens - 2]} {_ONES[ones]}"]


def _normalize(text: str) -> str:
    return " ".join(text.lower().split())


class ClassLabels:
    """The class names of a class-conditional model, and how prompts name them.

    Stored as `class_labels.json` in the model folder: a JSON list with one entry per class id, each entry a
    name (`"7"`) or a list of names whose first is the class's name and the rest aliases (`["7", "seven"]`).
    Without the file, classes are named `"0"`, `"1"`, ... Classes named by a number from 0 to 99 are also named
    by its English words (`"seven"`, `"twenty-one"`), so `["0", ..., "9"]` is enough for digits.

    A prompt names a class when one of its names appears in it as whole words, ignoring case; where names
    overlap, the longest wins (`"twenty-one"` is 21, not 20 and 1).

    Args:
        entries (`list[str | list[str]]`):
            One entry per class id, as in the file.

    Example:

    ```python
    >>> labels = ClassLabels([str(i) for i in range(10)])
    >>> labels.find("a handwritten Seven"), labels.find("digit 7"), labels.find("7 or 8")
    ([7], [7], [7, 8])
    ```
    """

    def __init__(self, entries: list[str | list[str]]) -> None:
        self.entries = [entry if isinstance(entry, str) else list(entry) for entry in entries]
        self.names = [entry if isinstance(entry, str) else entry[0] for entry in self.entries]
        self._ids: dict[str, int] = {}
        for class_id, entry in enumerate(self.entries):
            names = [entry] if isinstance(entry, str) else entry
            for name in [*names, *number_words(names[0])]:
                key = _normalize(name)
                if self._ids.setdefault(key, class_id) != class_id:
                    raise ValueError(f"the name {name!r} is given to two classes ({self._ids[key]} and {class_id})")
        alternatives = sorted(self._ids, key=len, reverse=True)
        pattern = "|".join(r"\s+".join(map(re.escape, key.split(" "))) for key in alternatives)
        self._pattern = re.compile(rf"(?<!\w)(?:{pattern})(?!\w)", re.IGNORECASE)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, num_classes: int) -> ClassLabels:
        """Read `class_labels.json` from `directory` (default names when it is absent) and check its length."""
        path = Path(directory) / CLASS_LABELS_FILE
        if not path.is_file():
            return cls([str(i) for i in range(num_classes)])
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelLoadError(f"{path}: not a readable JSON file ({err}).") from None
        valid = isinstance(entries, list) and all(
            (isinstance(e, str) and e.strip())
            or (isinstance(e, list) and e and all(isinstance(n, str) and n.strip() for n in e))
            for e in entries
        )
        if not valid:
            raise ModelLoadError(
                f"{path}: expected a list with one name (or list of names) per class, got {describe(entries)}."
            )
        if len(entries) != num_classes:
            raise ModelLoadError(
                f"{path}: names {len(entries)} classes but the UNet has num_class_embeds={num_classes}."
            )
        try:
            return cls(entries)
        except ValueError as err:
            raise ModelLoadError(f"{path}: {err}.") from None

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write `class_labels.json` into `directory`."""
        text = json.dumps(self.entries, ensure_ascii=False, indent=1)
        (Path(directory) / CLASS_LABELS_FILE).write_text(text + "\n", encoding="utf-8")

    def find(self, prompt: str) -> list[int]:
        """The distinct class ids that `prompt` names, in order of appearance."""
        found = (self._ids[_normalize(match.group(0))] for match in self._pattern.finditer(prompt))
        return list(dict.fromkeys(found))

    def lookup(self, name: str) -> int | None:
        """The class id of a name, alias or number word (ignoring case), or `None`."""
        return self._ids.get(_normalize(name))

    def summary(self, limit: int = 20) -> str:
        shown = ", ".join(self.names[:limit])
        return shown + (f", ... ({len(self.names)} classes)" if len(self.names) > limit else "")


@contextlib.contextmanager
def _no_diffusers_progress_bars() -> Iterator[None]:
    """Hide diffusers' "Loading pipeline components" bar; hfpipes logs one line per load instead."""
    from diffusers.utils import logging as diffusers_logging

    enabled = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            diffusers_logging.enable_progress_bar()


def _check_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInputError(f"{name}: expected an integer >= {minimum}, got {describe(value)}.")
    return value


def _to_numpy(images: Any) -> list[np.ndarray]:
    """Pipeline output (NCHW tensor or NHWC array, in [0, 1]) -> one HWC float array per image."""
    import torch

    if isinstance(images, torch.Tensor):
        images = images.cpu().permute(0, 2, 3, 1)
        # numpy has no bfloat16; float16 stays float16 so that rounding matches diffusers' own "pil" output.
        images = (images.float() if images.dtype == torch.bfloat16 else images).numpy()
    return list(images)


def _save_png(image: Any, directory: Path, index: int, seed: int) -> str:
    """Write `<index>-seed<seed>.png` (or `-1`, `-2`, ... when taken) without ever replacing a file."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{index}-seed{seed}"
    for attempt in itertools.count():
        path = directory / (f"{stem}.png" if attempt == 0 else f"{stem}-{attempt}.png")
        try:
            # Exclusive creation: an existing file, or one a concurrent writer just made, is never replaced.
            with open(path, "xb") as handle:
                image.save(handle, format="PNG")
            return str(path)
        except FileExistsError:
            continue


class ImageGenerationTask(Task):
    """Generate images from prompts with a diffusers pipeline.

    Inputs are prompts (`str`). For class-conditional models the prompt names the class (or `class_label=` does,
    and the prompt may be `""`); unconditional models accept any prompt, usually `""`, and ignore it.

    Call options:
        num_inference_steps (`int`, *optional*):
            Denoising steps; defaults to the pipeline's own default (50 for Stable Diffusion, 1000 for DDPM).
        seed (`int`, *optional*):
            Seed of each prompt's first image; image `i` of a prompt uses `seed + i`. Defaults to a random seed per
            prompt, recorded in the results.
        num_images (`int`, *optional*, defaults to 1):
            Images per prompt. With 1 each prompt gives one result dict, with more a list of them.
        height (`int`, *optional*), width (`int`, *optional*):
            Image size in pixels; defaults to the model's. Must be a multiple of 8 (or of the VAE's scale factor)
            for latent models and of the UNet's downsampling factor for pixel UNets. Unconditional pipelines other
            than plain UNet + scheduler ones generate their own size only.
        guidance_scale (`float`, *optional*):
            Classifier-free guidance strength (text-to-image models); defaults to the pipeline's (7.5 for SD).
        negative_prompt (`str`, *optional*):
            What the images should not show (text-to-image models that take one).
        scheduler (`str`, *optional*):
            A diffusers scheduler class name, e.g. `"DDIMScheduler"` or `"EulerDiscreteScheduler"`, built with
            `from_config(pipeline.scheduler.config)` for this call only.
        class_label (`int` or `str`, *optional*):
            The class (id or name) for class-conditional models, for every prompt of the call.
        save_to (`str` or `os.PathLike`, *optional*):
            A directory to write PNG files into, named `<input index>-seed<seed>.png` (`-1`, `-2`, ... appended
            rather than replacing an existing file); each result gets its `"path"`.

    The common `progress` option also controls diffusers' denoising bar: `True` shows it, `False` hides it, and
    the default shows it for runs of 50 steps or more.
    """

    task = "image-generation"
    batch_budget = 4 * 512 * 512  # pixels per batch: four 512x512 images
    max_batch_size = 16
    window_size = 64

    def __init__(self, model: str | None = None, **kwargs: Any) -> None:
        # A LoRA fine-tune (see `save_trained`) is a folder of adapter weights only: load its base pipeline instead,
        # and let `_load` apply the adapter.
        info = _lora_info(model)
        self._lora_dir = Path(model) if info is not None else None
        super().__init__(info["base_model"] if info is not None else model, **kwargs)
        if info is not None:
            self.model_name = os.fspath(model)

    def _load(self, location: Any, **kwargs: Any) -> None:
        from diffusers import DiffusionPipeline

        with _no_diffusers_progress_bars():
            pipeline = self.from_pretrained(DiffusionPipeline, **kwargs)
        if self._lora_dir is not None:
            self._apply_lora(pipeline, self._lora_dir)
        parameters = inspect.signature(pipeline.__call__).parameters
        if "prompt" in parameters and ("image" in parameters or "mask_image" in parameters):
            # Imported only here: diffusers' auto_pipeline module imports every pipeline it maps (about 1 s, and
            # transformers' warnings about image processors that want torchvision).
            from diffusers import AutoPipelineForText2Image

            try:
                pipeline = AutoPipelineForText2Image.from_pipe(pipeline)
            except ValueError as err:
                raise ModelLoadError(
                    f"{self.model_name!r} is a {type(pipeline).__name__}, which needs an input image and has no "
                    f"text-to-image counterpart ({err})."
                ) from None
        self._setup(pipeline)
        if self.kind == CLASS_CONDITIONAL:
            self.class_labels = self._read_class_labels(location, pipeline.unet.config.num_class_embeds)

    def _apply_lora(self, pipeline: Any, directory: Path) -> None:
        """Apply a LoRA saved by `save_trained` and merge it into the UNet (no per-step LoRA overhead)."""
        if not hasattr(pipeline, "load_lora_weights"):
            raise ModelLoadError(
                f"{str(directory)!r} is a LoRA for {self.model_name!r}, a {type(pipeline).__name__}, which takes no LoRA."
            )
        from diffusers.utils import logging as diffusers_logging

        verbosity = diffusers_logging.get_verbosity()
        # diffusers warns that the adapter has no text-encoder part; hfpipes' LoRAs are UNet-only by design.
        diffusers_logging.set_verbosity_error()
        try:
            pipeline.load_lora_weights(str(directory), weight_name=LORA_WEIGHTS)
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise ModelLoadError(
                f"Could not apply the LoRA in {str(directory)!r} to {self.model_name!r}: {err}"
            ) from None
        finally:
            diffusers_logging.set_verbosity(verbosity)
        pipeline.fuse_lora()
        pipeline.unload_lora_weights()  # the fused weights stay; the LoRA layers go
        logger.info("hfpipes %s: applied the LoRA %s to %s", self.task, directory, self.model_name)

    def _setup(self, pipeline: Any) -> None:
        """Sort a loaded (or newly built) pipeline into its kind and read its sizes and default step count."""
        from diffusers import UNet2DModel

        parameters = inspect.signature(pipeline.__call__).parameters
        self.model = pipeline
        self.model.set_progress_bar_config(disable=True)
        self._call_parameters = parameters
        self._call_progress: bool | None = None
        self._warned_about_prompt = False
        self._schedulers: dict[str, Any] = {}
        self.class_labels: ClassLabels | None = None

        unet = getattr(pipeline, "unet", None)
        latent = any(getattr(pipeline, name, None) is not None for name in ("vae", "vqvae"))
        # A plain UNet2DModel + scheduler pipeline in pixel space: hfpipes can sample it with its own loop.
        self._pixel_unet = (
            isinstance(unet, UNet2DModel) and getattr(pipeline, "scheduler", None) is not None and not latent
        )
        if isinstance(unet, UNet2DModel) and unet.config.class_embed_type is not None:
            raise ModelLoadError(
                f"{self.model_name!r}: UNet2DModel class_embed_type={unet.config.class_embed_type!r} is not supported; "
                "class-conditional UNets need num_class_embeds with the default embedding."
            )
        if "prompt" in parameters:
            self.kind = TEXT_TO_IMAGE
        elif self._pixel_unet and unet.config.num_class_embeds:
            self.kind = CLASS_CONDITIONAL
        elif "batch_size" in parameters and "generator" in parameters:
            self.kind = UNCONDITIONAL
        else:
            raise ModelLoadError(
                f"{self.model_name!r} is a {type(pipeline).__name__}, which the {self.task!r} task cannot run: expected "
                "a text-to-image pipeline, an unconditional one (called with batch_size and generator) or a "
                "class-conditional UNet2DModel pipeline."
            )

        if self._pixel_unet:
            sample_size = unet.config.sample_size
            self.size_multiple = 2 ** (len(unet.config.down_block_types) - 1)
        else:
            denoiser = unet if unet is not None else getattr(pipeline, "transformer", None)
            sample_size = getattr(pipeline, "default_sample_size", None) or getattr(
                getattr(denoiser, "config", None), "sample_size", None
            )
            scale = getattr(pipeline, "vae_scale_factor", None) or 8
            # Stable Diffusion-style pipelines refuse sizes that are not multiples of 8, whatever the VAE.
            self.size_multiple = max(8, scale)
            if isinstance(sample_size, int):
                sample_size *= scale
            elif isinstance(sample_size, (tuple, list)):
                sample_size = [side * scale for side in sample_size]
        if isinstance(sample_size, int):
            self.default_size = (sample_size, sample_size)
        elif isinstance(sample_size, (tuple, list)) and len(sample_size) == 2:
            self.default_size = (int(sample_size[0]), int(sample_size[1]))
        else:
            self.default_size = (512, 512)  # only sizes batches; the pipeline picks its own default
        steps = parameters.get("num_inference_steps")
        self._default_steps = steps.default if steps is not None and isinstance(steps.default, int) else 50

    def _read_class_labels(self, location: Any, num_classes: int) -> ClassLabels:
        if location.is_local:
            return ClassLabels.from_pretrained(location.path, num_classes)
        # diffusers downloads only the pipeline's own files; the class names sit beside model_index.json.
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        try:
            path = hf_hub_download(location.path, CLASS_LABELS_FILE, revision=location.load_kwargs.get("revision"))
        except LocalEntryNotFoundError:
            logger.warning(
                "hfpipes %s: %s of %s is not in the local cache (offline?); classes are named by their ids.",
                self.task, CLASS_LABELS_FILE, location.path,
            )  # fmt: skip
            return ClassLabels([str(i) for i in range(num_classes)])
        except EntryNotFoundError:  # the repository names no classes
            return ClassLabels([str(i) for i in range(num_classes)])
        return ClassLabels.from_pretrained(os.path.dirname(path), num_classes)

    def _components(self) -> list[Any]:
        """The whole diffusers pipeline, and `class_labels.json` for class-conditional models."""
        return [c for c in (self.model, self.class_labels) if c is not None]

    def __call__(self, inputs: Any, **options: Any) -> Any:
        # The base class keeps `progress` to itself; the denoising bar needs it too.
        with self._lock:
            self._call_progress = options.get("progress", self.progress)
            return super().__call__(inputs, **options)

    # ----------------------------------------------------------------------------------------- options

    def _sanitize_parameters(
        self,
        num_inference_steps: int | None = None,
        seed: int | None = None,
        num_images: int | None = None,
        height: int | None = None,
        width: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str | None = None,
        scheduler: str | None = None,
        class_label: int | str | None = None,
        save_to: str | os.PathLike | None = None,
    ):
        preprocess: dict[str, Any] = {}
        forward: dict[str, Any] = {}
        postprocess: dict[str, Any] = {}
        if num_inference_steps is not None:
            forward["num_inference_steps"] = _check_int("num_inference_steps", num_inference_steps)
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
                raise InvalidInputError(f"seed: expected an integer from 0 to 2**63 - 1, got {describe(seed)}.")
            preprocess["seed"] = seed
        if num_images is not None:
            preprocess["num_images"] = _check_int("num_images", num_images)
        for name, value in (("height", height), ("width", width)):
            if value is None:
                continue
            if self.kind == UNCONDITIONAL and not self._pixel_unet:
                raise InvalidInputError(
                    f"{name}: this {type(self.model).__name__} generates {self.default_size[0]}x{self.default_size[1]} "
                    f"images only, got {name}={value!r}."
                )
            _check_int(name, value)
            if value % self.size_multiple:
                raise InvalidInputError(
                    f"{name}: this model needs a multiple of {self.size_multiple} pixels, got {value} (try "
                    f"{max(self.size_multiple, value // self.size_multiple * self.size_multiple)})."
                )
            preprocess[name] = forward[name] = value
        if guidance_scale is not None:
            self._check_accepted("guidance_scale")
            is_number = isinstance(guidance_scale, (int, float)) and not isinstance(guidance_scale, bool)
            if not is_number or not math.isfinite(guidance_scale):
                raise InvalidInputError(f"guidance_scale: expected a number, got {describe(guidance_scale)}.")
            forward["guidance_scale"] = float(guidance_scale)
        if negative_prompt is not None:
            self._check_accepted("negative_prompt")
            if not isinstance(negative_prompt, str):
                raise InvalidInputError(f"negative_prompt: expected a text (str), got {describe(negative_prompt)}.")
            forward["negative_prompt"] = negative_prompt
        if scheduler is not None:
            forward["scheduler"] = self._scheduler_class(scheduler)
        if class_label is not None:
            preprocess["class_label"] = self._class_id(class_label)
        if save_to is not None:
            if not isinstance(save_to, (str, os.PathLike)):
                raise InvalidInputError(f"save_to: expected a directory path, got {describe(save_to)}.")
            directory = Path(save_to).expanduser()
            if directory.exists() and not directory.is_dir():
                raise InvalidInputError(f"save_to: {str(directory)!r} exists and is not a directory.")
            postprocess["save_to"] = directory
        return preprocess, forward, postprocess

    def _check_accepted(self, option: str) -> None:
        if self.kind != TEXT_TO_IMAGE or option not in self._call_parameters:
            what = f"{self.kind} model" if self.kind != TEXT_TO_IMAGE else type(self.model).__name__
            raise InvalidInputError(f"{option}: only for text-to-image pipelines that take it; this {what} does not.")

    def _scheduler_class(self, name: Any) -> type:
        import diffusers

        compatible = sorted({c.__name__ for c in getattr(self.model.scheduler, "compatibles", [])})
        found = getattr(diffusers, name, None) if isinstance(name, str) and name.isidentifier() else None
        if isinstance(found, type) and issubclass(found, diffusers.SchedulerMixin):
            return found
        close = difflib.get_close_matches(str(name), compatible, n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise InvalidInputError(
            f"scheduler: expected the name of a diffusers scheduler class, got {describe(name)}.{hint} This model's "
            f"scheduler is compatible with: {', '.join(compatible[:8]) or type(self.model.scheduler).__name__}."
        )

    def _class_id(self, class_label: Any) -> int:
        if self.class_labels is None:
            raise InvalidInputError(f"class_label: only for class-conditional models; this is a {self.kind} model.")
        count = len(self.class_labels.names)
        if isinstance(class_label, int) and not isinstance(class_label, bool) and 0 <= class_label < count:
            return class_label
        if isinstance(class_label, str) and self.class_labels.lookup(class_label) is not None:
            return self.class_labels.lookup(class_label)
        raise InvalidInputError(
            f"class_label: expected a class id from 0 to {count - 1} or a class name, got {describe(class_label)}. "
            f"Classes: {self.class_labels.summary()}."
        )

    # ------------------------------------------------------------------------------------------ hooks

    def preprocess(
        self,
        inputs: list[Any],
        start: int,
        seed: int | None = None,
        num_images: int = 1,
        height: int | None = None,
        width: int | None = None,
        class_label: int | None = None,
    ) -> list[Chunks]:
        import torch

        pixels = (height or self.default_size[0]) * (width or self.default_size[1])
        features = []
        for offset, value in enumerate(inputs):
            index = start + offset
            prompt, label = self._read_prompt(value, f"input {index}", class_label)
            base = seed if seed is not None else int(torch.randint(0, 2**32, ()).item())
            images = (
                {"input": index, "prompt": prompt, "label": label, "seed": base + i, "pixels": pixels}
                for i in range(num_images)
            )
            features.append(Chunks(images))
        return features

    def _read_prompt(self, value: Any, where: str, class_label: int | None) -> tuple[str, int | None]:
        if self.kind == TEXT_TO_IMAGE:
            return load_text(value, where), None
        if isinstance(value, str) and not value.strip():
            prompt = ""
        else:
            if not isinstance(value, (str, bytes, bytearray)):
                raise InvalidInputError(
                    f"{where}: expected a prompt (str, may be empty for this {self.kind} model), got {describe(value)}."
                )
            prompt = load_text(value, where)
        if self.kind == UNCONDITIONAL:
            if prompt and not self._warned_about_prompt:
                self._warned_about_prompt = True
                logger.warning(
                    'hfpipes %s: %s is unconditional, prompts are ignored (pass "").', self.task, self.model_name
                )
            return prompt, None
        if class_label is not None:
            return prompt, class_label
        found = self.class_labels.find(prompt)
        if len(found) == 1:
            return prompt, found[0]
        names = self.class_labels.names
        problem = (
            "names none of the model's classes"
            if not found
            else f"names several classes ({', '.join(names[i] for i in found)})"
        )
        raise InvalidInputError(
            f"{where}: the prompt {prompt!r} {problem}; name exactly one (e.g. {names[-1]!r}"
            + (f" or {number_words(names[-1])[0]!r}" if number_words(names[-1]) else "")
            + f") or pass class_label=. Classes: {self.class_labels.summary()}."
        )

    def _length(self, feature: dict) -> int:
        return feature["pixels"]

    def _collate(self, features: list[dict]) -> dict:
        return {key: [f[key] for f in features] for key in ("input", "prompt", "label", "seed")}

    def _forward(
        self,
        batch: dict,
        num_inference_steps: int | None = None,
        height: int | None = None,
        width: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str | None = None,
        scheduler: type | None = None,
    ) -> list[dict]:
        import numpy as np
        import torch

        steps = num_inference_steps or self._default_steps
        show = self._call_progress if self._call_progress is not None else steps >= PROGRESS_MIN_STEPS
        self.model.set_progress_bar_config(disable=not show)
        options = {"num_inference_steps": num_inference_steps, "height": height, "width": width,
                   "guidance_scale": guidance_scale, "negative_prompt": negative_prompt}  # fmt: skip
        options = {k: v for k, v in options.items() if v is not None}
        with self._scheduler(scheduler):
            images = self._generate(batch, options)
            bad = [i for i, image in enumerate(images) if not np.isfinite(image).all() or not image.any()]
            if bad and self.dtype in (torch.float16, torch.bfloat16):
                logger.warning(
                    "hfpipes %s: %d image(s) came out NaN/inf or all black in %s (first: input %d, seed %d); "
                    "generating them again in float32.",
                    self.task, len(bad), str(self.dtype).removeprefix("torch."), batch["input"][bad[0]], batch["seed"][bad[0]],
                )  # fmt: skip
                self.model.to(dtype=torch.float32)
                try:
                    redone = self._generate({key: [values[i] for i in bad] for key, values in batch.items()}, options)
                finally:
                    self.model.to(dtype=self.dtype, silence_dtype_warnings=True)
                for i, image in zip(bad, redone, strict=True):
                    images[i] = image
        return [
            {"image": image, "seed": seed, "input": index, "label": label}
            for image, seed, index, label in zip(images, batch["seed"], batch["input"], batch["label"], strict=True)
        ]

    @contextlib.contextmanager
    def _scheduler(self, scheduler_class: type | None) -> Iterator[None]:
        """Swap the pipeline's scheduler for this call only."""
        original = self.model.scheduler
        if scheduler_class is None or type(original) is scheduler_class:
            yield
            return
        name = scheduler_class.__name__
        if name not in self._schedulers:
            self._schedulers[name] = scheduler_class.from_config(original.config)
        self.model.scheduler = self._schedulers[name]
        try:
            yield
        finally:
            self.model.scheduler = original

    def _generate(self, batch: dict, options: dict) -> list[np.ndarray]:
        import torch

        generators = [torch.Generator().manual_seed(seed) for seed in batch["seed"]]
        if self.kind == TEXT_TO_IMAGE:
            if "negative_prompt" in options:  # diffusers wants one per prompt when prompts are a list
                options = {**options, "negative_prompt": [options["negative_prompt"]] * len(generators)}
            return _to_numpy(
                self.model(prompt=batch["prompt"], generator=generators, output_type="np", **options).images
            )
        size = (options.get("height", self.default_size[0]), options.get("width", self.default_size[1]))
        if self.kind == UNCONDITIONAL and size == self.default_size:
            steps = {"num_inference_steps": options["num_inference_steps"]} if "num_inference_steps" in options else {}
            return _to_numpy(
                self.model(batch_size=len(generators), generator=generators, output_type="pt", **steps).images
            )
        return _to_numpy(
            self._denoise(generators, batch["label"], options.get("num_inference_steps", self._default_steps), size)
        )

    def _denoise(
        self, generators: list[torch.Generator], labels: list[int | None], steps: int, size: tuple[int, int]
    ) -> torch.Tensor:
        """DDPMPipeline's loop, plus class labels and any scheduler's input scaling (both no-ops for DDPM)."""
        import torch
        from diffusers.utils.torch_utils import randn_tensor

        unet, scheduler = self.model.unet, self.model.scheduler
        shape = (len(generators), unet.config.in_channels, *size)
        # The UNet's device, not self.device: during fine-tuning the loop may have moved it (sample grids).
        sample = randn_tensor(shape, generator=generators, device=unet.device, dtype=unet.dtype)
        scheduler.set_timesteps(steps)
        sample = sample * scheduler.init_noise_sigma
        class_labels = None if labels[0] is None else torch.tensor(labels, device=unet.device)
        step_options = {"generator": generators} if "generator" in inspect.signature(scheduler.step).parameters else {}
        for t in self.model.progress_bar(scheduler.timesteps):
            output = unet(scheduler.scale_model_input(sample, t), t, class_labels=class_labels).sample
            sample = scheduler.step(output, t, sample, **step_options).prev_sample
        return (sample / 2 + 0.5).clamp(0, 1)

    def postprocess(self, outputs: list[dict], save_to: Path | None = None) -> dict | list[dict]:
        from diffusers.utils import numpy_to_pil

        results = []
        for output in outputs:
            image = numpy_to_pil(output["image"][None])[0]
            result: dict[str, Any] = {"image": image, "seed": output["seed"]}
            if output["label"] is not None:
                result["label"] = self.class_labels.names[output["label"]]
            if save_to is not None:
                result["path"] = _save_png(image, save_to, output["input"], output["seed"])
            results.append(result)
        return results[0] if len(results) == 1 else results

    # ------------------------------------------------------------------------------------- fine-tuning

    train_columns = ("image",)
    optional_train_columns = ("label", "text")
    main_metric = "eval_loss"
    greater_is_better = False

    @classmethod
    def for_finetuning(cls, model: str | None, config: Any) -> ImageGenerationTask:
        """Load the pipeline to continue (`model=`), or prepare a new `UNet2DModel` (`model_config`), built by
        `prepare_training` once the data's labels are known."""
        import threading

        import torch

        options = _training_options(config.task_options)
        if config.config_overrides:
            raise ConfigError(
                "config_overrides: not for diffusion pipelines (their components have a config each); give a new "
                "UNet's architecture with model_config."
            )
        if config.model_config is None:
            task = cls(model, device="cpu", dtype="float32", allow_pickle=config.allow_pickle)
            task._check_trainable(options, config)
        else:
            if model is not None:
                raise ConfigError(
                    f"model: {model!r} and model_config were both given; pass model= to continue training a pipeline, "
                    "or model_config to train a new UNet2DModel from scratch."
                )
            unet_config = _unet_config(config.model_config)
            if config.peft:
                raise ConfigError(
                    "peft: LoRA needs a pretrained text-to-image pipeline (model=); a new UNet trains all its weights."
                )
            # What `Task.__init__` sets for a loaded model; a new UNet has no source to resolve.
            task = cls.__new__(cls)
            task.batch_size, task.progress = None, None
            task.device, task.dtype = torch.device("cpu"), torch.float32
            task.allow_pickle, task.trust_remote_code, task.config_overrides = config.allow_pickle, False, {}
            task.model_name, task.location, task._lora_dir = NEW_UNET, None, None
            task._lock = threading.RLock()
            task._unet_config = unet_config
        task.training_options = options
        return task

    def _check_trainable(self, options: dict[str, Any], config: Any) -> None:
        schedule = [key for key in _SCHEDULE_OPTIONS if key in options]
        if schedule:
            raise ConfigError(
                f"task_options: {', '.join(schedule)} set the noise schedule of a new UNet (model_config); "
                f"{self.model_name!r} keeps its scheduler's."
            )
        if self.kind == TEXT_TO_IMAGE:
            parts = {name: getattr(self.model, name, None) for name in ("unet", "vae", "text_encoder", "tokenizer")}
            if None in parts.values() or getattr(self.model, "text_encoder_2", None) is not None:
                raise ConfigError(
                    f"{self.model_name!r} is a {type(self.model).__name__}; fine-tuning supports Stable Diffusion-style "
                    "text-to-image pipelines (a UNet, a VAE, one text encoder and its tokenizer) and pixel UNet2DModel "
                    "pipelines."
                )
            if "inference_scheduler" in options:
                raise ConfigError(
                    "task_options: inference_scheduler is for pixel UNet2DModel pipelines; a text-to-image pipeline keeps its scheduler."
                )
            if config.peft and self._lora_dir is not None:
                raise ConfigError(
                    f"peft: {self.model_name!r} is itself a LoRA; train a new LoRA on its base model "
                    f"({self.location.path!r}), or drop peft to fine-tune the merged UNet."
                )
        elif not self._pixel_unet:
            raise ConfigError(
                f"{self.model_name!r} is a {type(self.model).__name__}, which cannot be fine-tuned: expected a "
                "UNet2DModel pipeline (DDPM/DDIM) or a Stable Diffusion-style text-to-image pipeline."
            )
        elif config.peft:
            raise ConfigError("peft: LoRA is for text-to-image pipelines; a pixel UNet2DModel trains all its weights.")
        if config.labels is not None:
            raise ConfigError(
                f"labels: only for a new class-conditional UNet (model_config); {self.model_name!r} is {self.kind}"
                + (
                    f" with its own classes ({self.class_labels.summary()}), which the data's labels must name."
                    if self.class_labels
                    else "."
                )
            )

    def prepare_training(self, train: list, eval: list, config: Any) -> None:
        from diffusers import DDPMScheduler

        super().prepare_training(train, eval, config)
        options = self.training_options
        class_conditional = (
            self.kind == CLASS_CONDITIONAL if self.location is not None
            else self._unet_config.get("num_class_embeds") not in (None, 0)
        )  # fmt: skip
        if class_conditional:
            for record in (*train, *eval):
                if record.values.get("label") is None:
                    raise DataError(
                        f"{record.where}: no label; a class-conditional model needs a 'label' column (the class of "
                        "each image), e.g. an image folder with one sub-folder per class."
                    )
        if self.location is None:
            labels = label_set(train, eval, config.labels) if class_conditional else []
            try:
                class_labels = ClassLabels(labels) if labels else None
            except ValueError as err:
                raise DataError(f"labels: {err}; rename one of the classes.") from None
            self._setup(self._new_pipeline(labels, options))
            self.class_labels = class_labels
        elif self._pixel_unet and "inference_scheduler" in options:
            labels = self.class_labels
            self._setup(_pixel_pipeline(self.model.unet, self.model.scheduler.config, options["inference_scheduler"]))
            self.class_labels = labels
        if self.kind == TEXT_TO_IMAGE:
            for record in (*train, *eval):
                if record.values.get("text") is None:
                    raise DataError(f"{record.where}: no text; a text-to-image model trains on (image, text) pairs.")
            self._sample_prompts = list(dict.fromkeys(str(r.values["text"]) for r in (eval or train)))[:SAMPLE_PROMPTS]
            self._image_mode = "RGB"
        else:
            channels = self.model.unet.config.in_channels
            if channels not in _IMAGE_MODES:
                raise ConfigError(
                    f"The UNet has {channels} input channels; training images are 1 (grayscale) or 3 (RGB)."
                )
            self._image_mode = _IMAGE_MODES[channels]
        # The training noise: DDPM's forward process with the model's own schedule (any scheduler's config has it).
        self.noise_scheduler = DDPMScheduler.from_config(self.model.scheduler.config)
        # Evaluation draws each example's noise and timestep from a generator seeded by its position, so that every
        # evaluation (any batch size, any number of processes) sees the same noisy inputs.
        self._eval_seeds = {record.where: i for i, record in enumerate(eval)}

    def _new_pipeline(self, labels: list[str], options: dict[str, Any]) -> Any:
        from diffusers import DDPMScheduler, UNet2DModel

        unet_config = dict(self._unet_config)
        if unet_config.get("num_class_embeds") == "auto":
            unet_config["num_class_embeds"] = len(labels)
        elif labels and unet_config["num_class_embeds"] != len(labels):
            raise ConfigError(
                f"model_config.num_class_embeds: {unet_config['num_class_embeds']} classes, but the data has "
                f"{len(labels)} labels ({', '.join(labels[:10])}{', ...' if len(labels) > 10 else ''}); use 'auto'."
            )
        try:
            unet = UNet2DModel(**unet_config)
        except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as err:
            raise ConfigError(f"model_config: UNet2DModel refused it: {err}") from None
        schedule = DDPMScheduler(**{key: options[key] for key in _SCHEDULE_OPTIONS if key in options})
        logger.info(
            "hfpipes %s: new UNet2DModel, %.2fM parameters, %s, %s", self.task,
            sum(p.numel() for p in unet.parameters()) / 1e6, "x".join(map(str, _pair(unet.config.sample_size))),
            f"{len(labels)} classes" if labels else "unconditional",
        )  # fmt: skip
        return _pixel_pipeline(unet, schedule.config, options.get("inference_scheduler", "ddim"))

    def encode_example(self, example: dict, where: str) -> dict:
        image = load_image(example["image"], where)
        # Paths are decoded again in each batch rather than kept decoded: a folder of photos may not fit in memory.
        value = example["image"] if isinstance(example["image"], (str, os.PathLike)) else image
        feature: dict[str, Any] = {"image": value, "seed": self._eval_seeds.get(where, 0)}
        if self.kind == CLASS_CONDITIONAL:
            feature["class_label"] = self._training_class(example["label"], where)
        elif self.kind == TEXT_TO_IMAGE:
            text = load_text(example["text"], where)
            tokenizer = self.model.tokenizer
            feature["input_ids"] = tokenizer(
                text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True
            ).input_ids
        return feature

    def _training_class(self, label: Any, where: str) -> int:
        class_id = self.class_labels.lookup(str(label).strip())
        if class_id is None:
            raise DataError(
                f"{where}: label {str(label).strip()!r} is none of the model's classes ({self.class_labels.summary()})."
            )
        return class_id

    def training_collate(self, features: list[dict]) -> dict:
        import numpy as np
        import torch

        pixels = [
            _pixels(load_image(f["image"], "training image"), self._image_mode, self.default_size) for f in features
        ]
        batch = {
            "pixel_values": torch.from_numpy(np.stack(pixels)),
            "seed": torch.tensor([f["seed"] for f in features]),
        }
        if self.kind == CLASS_CONDITIONAL:
            batch["class_labels"] = torch.tensor([f["class_label"] for f in features])
        elif self.kind == TEXT_TO_IMAGE:
            batch["input_ids"] = torch.tensor([f["input_ids"] for f in features])
        return batch

    def training_loss(self, model: Any, batch: dict) -> torch.Tensor:
        """DDPM's loss: the MSE between the model's prediction (noise, velocity or clean sample, as its
        scheduler's `prediction_type` says) and the truth, at a random timestep with random noise."""
        import torch
        import torch.nn.functional as F

        pixels = batch["pixel_values"]
        conditioning = {}
        if self.kind == TEXT_TO_IMAGE:
            vae, text_encoder = self.model.vae, self.model.text_encoder
            if vae.device != pixels.device:  # Accelerate moved the UNet only
                vae.to(pixels.device)
                text_encoder.to(pixels.device)
            with torch.no_grad():
                posterior = vae.encode(pixels.to(vae.dtype)).latent_dist
                # The posterior's mean at evaluation: deterministic, like the rest of the evaluation noise.
                latents = (posterior.sample() if model.training else posterior.mode()) * vae.config.scaling_factor
                conditioning["encoder_hidden_states"] = text_encoder(batch["input_ids"])[0]
        else:
            latents = pixels
            if "class_labels" in batch:
                conditioning["class_labels"] = batch["class_labels"]
        noise, timesteps = self._noise(latents, batch["seed"], fixed=not model.training)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        prediction_type = self.noise_scheduler.config.prediction_type
        if prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = latents if prediction_type == "sample" else noise
        prediction = model(noisy, timesteps, **conditioning).sample
        return F.mse_loss(prediction.float(), target.float())

    def _noise(self, latents: torch.Tensor, seeds: torch.Tensor, fixed: bool) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        steps = self.noise_scheduler.config.num_train_timesteps
        if not fixed:
            # torch's global generator: Accelerate checkpoints its state, so a resumed run draws the same noise.
            return torch.randn_like(latents), torch.randint(0, steps, (len(latents),), device=latents.device)
        noise, timesteps = [], []
        for seed in seeds.tolist():
            generator = torch.Generator().manual_seed(seed)
            timesteps.append(torch.randint(0, steps, (1,), generator=generator))
            noise.append(torch.randn(latents.shape[1:], generator=generator))
        return torch.stack(noise).to(latents), torch.cat(timesteps).to(latents.device)

    def trainable_model(self, config: Any) -> Any:
        """The UNet: all its weights, or LoRA adapters on its attention (text-to-image with `peft:`); the VAE and
        the text encoder stay frozen."""
        unet = self.model.unet
        if self.kind == TEXT_TO_IMAGE:
            for frozen in (self.model.vae, self.model.text_encoder):
                frozen.requires_grad_(False)
                frozen.eval()
            if config.peft:
                unet.requires_grad_(False)
                try:
                    unet.add_adapter(_lora_config(config.peft))
                except ValueError as err:
                    raise ConfigError(f"peft: {err}") from None
                unet.train()
                return unet
        unet.requires_grad_(True)  # a merged LoRA (see `_apply_lora`) leaves the UNet frozen
        unet.train()
        return unet

    def save_eval_samples(self, model: Any, directory: Path) -> None:
        """`samples.png`: one image per class (class-conditional), 8 (unconditional) or one per evaluation prompt
        (text-to-image, up to 4), from the same seeds at every evaluation so that grids compare."""
        import torch

        steps = self.training_options.get("sample_steps", self._default_steps)
        self.model.unet = model
        training = model.training
        model.eval()
        try:
            with torch.no_grad():
                if self.kind == TEXT_TO_IMAGE:
                    generators = [torch.Generator().manual_seed(i) for i in range(len(self._sample_prompts))]
                    images = self.model(
                        prompt=self._sample_prompts, generator=generators, num_inference_steps=steps, output_type="np"
                    ).images
                else:
                    labels = (
                        list(range(min(len(self.class_labels.names), SAMPLE_CLASSES)))
                        if self.class_labels
                        else [None] * 8
                    )
                    generators = [torch.Generator().manual_seed(i) for i in range(len(labels))]
                    images = self._denoise(generators, labels, steps, self.default_size)
        finally:
            model.train(training)
        _grid(_to_numpy(images), columns=min(len(images), 10)).save(Path(directory) / "samples.png")

    def save_trained(self, model: Any, directory: Any) -> None:
        """A diffusers pipeline folder (plus `class_labels.json`), or for a LoRA the adapter in diffusers' LoRA
        format and `hfpipes_adapter.json` naming the base pipeline."""
        import json

        directory = Path(directory)
        self.model.unet = model
        if getattr(model, "peft_config", None):
            from diffusers.utils import convert_state_dict_to_diffusers
            from peft.utils import get_peft_model_state_dict

            type(self.model).save_lora_weights(
                directory, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(model)),
                weight_name=LORA_WEIGHTS, unet_lora_adapter_metadata=model.peft_config["default"].to_dict(),
            )  # fmt: skip
            base = self.model_name if not os.path.exists(self.model_name) else os.path.abspath(self.model_name)
            info = {"task": self.task, "base_model": base, "format": LORA_FORMAT}
            (directory / ADAPTER_INFO).write_text(json.dumps(info, indent=2) + "\n")
            return
        with _no_diffusers_progress_bars():
            self.model.save_pretrained(directory)
        if self.class_labels is not None:
            self.class_labels.save_pretrained(directory)


# ------------------------------------------------------------------------------------- fine-tuning helpers

# How `finetune` names a UNet built from `model_config` (logs, finetune_config.json, the model card).
NEW_UNET = "new UNet2DModel (model_config)"
# A LoRA fine-tune: diffusers' LoRA weights file, and the `format` recorded in hfpipes_adapter.json.
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
LORA_FORMAT = "diffusers-lora"
# Sample grids: the first classes of a class-conditional model, the first prompts of a text-to-image one.
SAMPLE_CLASSES = 64
SAMPLE_PROMPTS = 4
_IMAGE_MODES = {1: "L", 3: "RGB"}
# task_options that define the noise schedule of a new UNet (DDPMScheduler's arguments, its defaults apply).
_SCHEDULE_OPTIONS = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type", "clip_sample")
_TRAINING_OPTIONS = {
    "num_train_timesteps": "an integer >= 2 (default 1000)",
    "beta_schedule": "'linear' (default), 'scaled_linear', 'squaredcos_cap_v2' or 'sigmoid'",
    "beta_start": "a number in (0, 1) (default 0.0001)",
    "beta_end": "a number in (0, 1) (default 0.02)",
    "prediction_type": "'epsilon' (default), 'v_prediction' or 'sample'",
    "clip_sample": "true (default) or false: clip each sampling step's estimate of the clean image to [-1, 1]",
    "inference_scheduler": "'ddim' (DDIMPipeline, 50 steps by default; the default for new UNets) or 'ddpm' (DDPMPipeline, 1000 steps)",
    "sample_steps": "an integer >= 1 (denoising steps of the sample grids; defaults to the pipeline's)",
}
# The sampler saved with a new UNet: DDIM with "trailing" timesteps, which include the last (noisiest) one.
_DDIM_SETTINGS = {"timestep_spacing": "trailing"}


def _training_options(values: Any) -> dict[str, Any]:
    """Check a fine-tune's `task_options`; only the keys given are returned (the defaults live in diffusers)."""
    if not isinstance(values, dict):
        raise ConfigError(f"task_options: expected a mapping, got {describe(values)}.")
    valid = "; ".join(f"{key}: {meaning}" for key, meaning in _TRAINING_OPTIONS.items())
    unknown = [key for key in values if key not in _TRAINING_OPTIONS]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), _TRAINING_OPTIONS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"task_options: unknown key(s) {', '.join(map(repr, unknown))}{hint} for the image-generation task. "
            f"Valid keys: {valid}."
        )
    choices = {"beta_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"),
               "prediction_type": ("epsilon", "v_prediction", "sample"), "inference_scheduler": ("ddim", "ddpm")}  # fmt: skip
    for key, value in values.items():
        if key in choices:
            ok = value in choices[key]
        elif key == "clip_sample":
            ok = isinstance(value, bool)
        elif key in ("beta_start", "beta_end"):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1
        else:
            ok = (
                isinstance(value, int)
                and not isinstance(value, bool)
                and value >= (2 if key == "num_train_timesteps" else 1)
            )
        if not ok:
            raise ConfigError(f"task_options.{key}: expected {_TRAINING_OPTIONS[key]}, got {describe(value)}.")
    if values.get("beta_start", 0) >= values.get("beta_end", 1):
        raise ConfigError(
            f"task_options: beta_start ({values['beta_start']}) must be below beta_end ({values['beta_end']})."
        )
    return dict(values)


def _unet_config(values: Any) -> dict[str, Any]:
    """Check `model_config` against UNet2DModel's arguments (its own defaults apply to the rest)."""
    from diffusers import UNet2DModel

    example = "e.g. {sample_size: 32, in_channels: 1, out_channels: 1, num_class_embeds: auto}"
    if not isinstance(values, dict):
        raise ConfigError(
            f"model_config: expected a mapping of UNet2DModel arguments ({example}), got {describe(values)}."
        )
    valid = [name for name in inspect.signature(UNet2DModel.__init__).parameters if name != "self"]
    unknown = [key for key in values if key not in valid]
    if unknown:
        raise ConfigError(
            f"model_config: unknown UNet2DModel argument(s) {', '.join(map(repr, unknown))}. Valid: {', '.join(valid)}."
        )
    if "sample_size" not in values:
        raise ConfigError(
            f"model_config: sample_size is required (the image side in pixels, or [height, width]); {example}."
        )
    if values.get("class_embed_type") is not None:
        raise ConfigError(
            "model_config.class_embed_type: class-conditional UNets use num_class_embeds with the default embedding; remove class_embed_type."
        )
    classes = values.get("num_class_embeds")
    if classes not in (None, "auto") and (isinstance(classes, bool) or not isinstance(classes, int) or classes < 0):
        raise ConfigError(
            f"model_config.num_class_embeds: expected 'auto' (one per label in the data), a number of classes or null (unconditional), got {describe(classes)}."
        )
    return dict(values)


def _pixel_pipeline(unet: Any, schedule: Any, sampler: str) -> Any:
    """A UNet2DModel as a DDIMPipeline (sampled in 50 steps by default) or a DDPMPipeline (1000 steps)."""
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler

    if sampler == "ddim":
        return DDIMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(schedule, **_DDIM_SETTINGS))
    return DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_config(schedule))


def _lora_config(options: dict[str, Any]) -> Any:
    """peft's LoraConfig from a recipe's `peft:` mapping; by default on the UNet's attention projections."""
    from peft import LoraConfig

    options = dict(options)
    kind = str(options.pop("type", "lora")).lower()
    if kind != "lora":
        raise ConfigError(f"peft.type: only 'lora' is supported, got {kind!r}.")
    names = {"r": "r", "alpha": "lora_alpha", "lora_alpha": "lora_alpha", "dropout": "lora_dropout",
             "lora_dropout": "lora_dropout", "target_modules": "target_modules"}  # fmt: skip
    unknown = [key for key in options if key not in names]
    if unknown:
        raise ConfigError(f"peft: unknown key(s) {unknown}; valid: type, {', '.join(names)}.")
    kwargs = {names[key]: value for key, value in options.items()}
    kwargs.setdefault("r", 8)
    kwargs.setdefault("lora_alpha", 2 * kwargs["r"])
    kwargs.setdefault("target_modules", ["to_q", "to_k", "to_v", "to_out.0"])
    try:
        # Gaussian A (and zero B) as diffusers' LoRA scripts do: the adapter starts as a no-op.
        return LoraConfig(init_lora_weights="gaussian", **kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"peft: {err}") from None


def _lora_info(model: Any) -> dict[str, Any] | None:
    """The `hfpipes_adapter.json` of a LoRA folder saved by `save_trained`, or `None` for anything else."""
    if not isinstance(model, (str, os.PathLike)) or not (Path(model) / LORA_WEIGHTS).is_file():
        return None
    path = Path(model) / ADAPTER_INFO
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(info, dict) or info.get("format") != LORA_FORMAT or not isinstance(info.get("base_model"), str):
        raise ModelLoadError(
            f"{path}: expected {{'format': {LORA_FORMAT!r}, 'base_model': '<pipeline>'}}, got {describe(info)}."
        )
    return info


def _pair(size: Any) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _pixels(image: Any, mode: str, size: tuple[int, int]) -> np.ndarray:
    """An RGB image as a CHW float32 array in [-1, 1] of `size` (height, width) and `mode` ("L" or "RGB").

    The shorter side is scaled to fit and the rest centre-cropped (no distortion), with bicubic resampling: smooth
    strokes when small images are enlarged (8x8 digits to 16x16), and PIL low-pass filters it when shrinking.
    """
    import numpy as np
    from PIL import Image

    image = image.convert(mode)
    height, width = size
    if image.size != (width, height):
        scale = max(width / image.width, height / image.height)
        resized = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
        image = image.resize(resized, Image.Resampling.BICUBIC)
        left, top = (resized[0] - width) // 2, (resized[1] - height) // 2
        image = image.crop((left, top, left + width, top + height))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _grid(images: list[np.ndarray], columns: int) -> Any:
    """HWC float images in [0, 1] as one PNG-ready grid, small images enlarged (nearest) to at least 64 pixels."""
    import numpy as np
    from diffusers.utils import numpy_to_pil
    from PIL import Image

    tiles = numpy_to_pil(np.stack(images))
    width, height = tiles[0].size
    zoom = max(1, 64 // max(width, height))
    width, height = width * zoom, height * zoom
    rows = math.ceil(len(tiles) / columns)
    grid = Image.new(tiles[0].mode, (min(columns, len(tiles)) * width, rows * height))
    for i, tile in enumerate(tiles):
        grid.paste(
            tile.resize((width, height), Image.Resampling.NEAREST), ((i % columns) * width, (i // columns) * height)
        )
    return grid
