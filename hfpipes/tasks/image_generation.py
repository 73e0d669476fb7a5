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

Example:

```python
>>> import hfpipes
>>> pipe = hfpipes.load("text-to-image", model="stabilityai/sd-turbo")
>>> pipe("a lighthouse at dusk", num_inference_steps=1, guidance_scale=0.0, seed=42)
{'image': <PIL.Image.Image image mode=RGB size=512x512>, 'seed': 42}
>>> digits = hfpipes.load("image-generation", model="path/to/digits-ddpm")
>>> [r["seed"] for r in digits("a handwritten seven", num_images=3, seed=0, save_to="out/")]
[0, 1, 2]
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

from ..errors import InvalidInputError, ModelLoadError
from ..inputs import describe, load_text
from ..task import Chunks, Task

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

    def _load(self, location: Any, **kwargs: Any) -> None:
        from diffusers import AutoPipelineForText2Image, DiffusionPipeline, UNet2DModel

        with _no_diffusers_progress_bars():
            pipeline = self.from_pretrained(DiffusionPipeline, **kwargs)
        parameters = inspect.signature(pipeline.__call__).parameters
        if "prompt" in parameters and ("image" in parameters or "mask_image" in parameters):
            try:
                pipeline = AutoPipelineForText2Image.from_pipe(pipeline)
            except ValueError as err:
                raise ModelLoadError(
                    f"{self.model_name!r} is a {type(pipeline).__name__}, which needs an input image and has no "
                    f"text-to-image counterpart ({err})."
                ) from None
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
            self.class_labels = self._read_class_labels(location, unet.config.num_class_embeds)
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
        sample = randn_tensor(shape, generator=generators, device=self.device, dtype=unet.dtype)
        scheduler.set_timesteps(steps)
        sample = sample * scheduler.init_noise_sigma
        class_labels = None if labels[0] is None else torch.tensor(labels, device=self.device)
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
