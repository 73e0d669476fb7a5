"""Decode every accepted input form (text, image, audio) and refuse the rest with one clear error.

Each loader takes the raw input and a `where` string naming it for error messages ("input 3", "row 12 of
train.csv"). The errors are `InvalidInputError`s that say what was expected and what was received, so that no
raw traceback from PIL or soundfile reaches the user.

Example:

```python
>>> from hfpipes.inputs import load_text, load_image, load_audio
>>> load_text("  I love it  ", "input 0")
'  I love it  '
>>> load_image("cat.jpg", "input 1").size          # any path, PIL image, numpy array or bytes
(451, 300)
>>> load_audio("clip.wav", "input 2", sampling_rate=16000).shape   # mono float32 at 16 kHz
(52800,)
```
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InvalidInputError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL import Image

__all__ = ["load_text", "load_image", "load_audio", "describe", "MIN_IMAGE_SIDE", "AUDIO_EXTENSIONS"]

# Smaller images carry no spatial information for a classifier; 8 keeps scikit-learn's 8x8 digits valid.
MIN_IMAGE_SIDE = 8
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au")
# C0/C1 control characters except tab, newline and carriage return: tokenizers treat them inconsistently.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def describe(value: Any, limit: int = 60) -> str:
    """A short, safe description of a received value for error messages (type and a truncated repr)."""
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(value).__name__} {text}"


# ---------------------------------------------------------------------------------------------------- text


def load_text(value: Any, where: str) -> str:
    """Validate one text input and return it as `str`.

    Accepts `str` and UTF-8 `bytes`. Control characters (other than tab and newlines) are removed because
    tokenizers drop or mangle them differently; what remains must contain a visible character.

    Args:
        value (`Any`):
            The input as the caller gave it.
        where (`str`):
            How to name this input in an error, e.g. `"input 3"`.

    Raises:
        `InvalidInputError`: `None`, a non-text value, bytes that are not UTF-8, or an empty/blank text.
    """
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as err:
            raise InvalidInputError(
                f"{where}: expected UTF-8 text, got bytes that are not valid UTF-8 (byte {err.start}: "
                f"{bytes(value)[err.start:err.start + 4]!r}). Decode them yourself with the right encoding."
            ) from None
    if not isinstance(value, str):
        hint = " (nested lists are not accepted: pass a flat list of strings)" if isinstance(value, (list, tuple)) else ""
        raise InvalidInputError(f"{where}: expected a text (str), got {describe(value)}{hint}.")
    if _CONTROL_CHARS.search(value):
        value = _CONTROL_CHARS.sub("", value)
    if not value.strip():
        raise InvalidInputError(f"{where}: expected a non-empty text, got {describe(value)} (empty or whitespace only).")
    return value


# --------------------------------------------------------------------------------------------------- images


def _read_url(url: str, where: str) -> bytes:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or os.environ.get("HFPIPES_OFFLINE"):
        raise InvalidInputError(
            f"{where}: cannot download {url!r}: offline mode is on (HF_HUB_OFFLINE). Download the file and pass "
            "its local path instead."
        )
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=20) as response:  # noqa: S310 - http(s) only, checked by caller
            return response.read()
    except OSError as err:
        raise InvalidInputError(
            f"{where}: cannot download {url!r} ({err}). Are you offline? Download the file and pass its local path."
        ) from None


def _open_image_bytes(data: bytes, where: str) -> "Image.Image":
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InvalidInputError(f"{where}: expected an image, got an empty file or empty bytes (0 bytes).")
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that; refuse both, a bomb is a bomb.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()  # decode now, so truncated files fail here and not inside the processor
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise InvalidInputError(
            f"{where}: refused a decompression bomb ({err}). Images above {Image.MAX_IMAGE_PIXELS} pixels are "
            "refused; raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file."
        ) from None
    except UnidentifiedImageError:
        raise InvalidInputError(
            f"{where}: expected an image file (PNG, JPEG, WebP, ...), got {len(data)} bytes that are not an image."
        ) from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt data
        raise InvalidInputError(f"{where}: the image is corrupt or truncated ({err}).") from None
    return image


def _array_to_image(array: "np.ndarray", where: str) -> "Image.Image":
    import numpy as np
    from PIL import Image

    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # CHW (torch layout) -> HWC
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise InvalidInputError(
            f"{where}: expected an image array of shape (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}."
        )
    if array.dtype == np.uint8:
        pass
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InvalidInputError(f"{where}: the image array contains NaN or infinite values.")
        # Floats are taken as [0, 1] (the usual convention); anything above 1 is assumed to be [0, 255].
        scale = 255.0 if array.max(initial=0.0) <= 1.0 else 1.0
        array = np.clip(array * scale, 0, 255).round().astype(np.uint8)
    elif np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
        top = 65535 if array.max(initial=0) > 255 else 255
        array = (array.astype(np.float64) * (255.0 / top)).round().astype(np.uint8)
    else:
        raise InvalidInputError(f"{where}: expected a numeric image array, got dtype {array.dtype}.")
    return Image.fromarray(array)


def _to_rgb(image: "Image.Image") -> "Image.Image":
    import numpy as np
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # PIL's own convert("RGB") clips 16-bit values at 255 (an almost white image); rescale instead.
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min(initial=0.0)), float(array.max(initial=0.0))
        top = 65535.0 if image.mode.startswith("I;16") or high > 255 else 255.0
        array = np.clip(array if low >= 0 else array - low, 0, top) * (255.0 / top)
        return Image.fromarray(array.round().astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite transparent pixels on white rather than on the black that convert() would give.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def load_image(value: Any, where: str, *, min_side: int = MIN_IMAGE_SIDE) -> "Image.Image":
    """Load one image input as an RGB `PIL.Image.Image`.

    Accepts a file path (`str` or `Path`), an `http(s)://` URL (downloaded unless offline), raw encoded bytes,
    a `PIL.Image.Image`, or a numpy array (HWC or CHW; `uint8`, 16-bit integers, or floats in [0, 1]).
    Grayscale, palette, 16-bit, CMYK and transparent images are converted to RGB.

    Args:
        value (`Any`):
            The input as the caller gave it.
        where (`str`):
            How to name this input in an error, e.g. `"input 3"`.
        min_side (`int`, *optional*, defaults to `MIN_IMAGE_SIDE`):
            Smallest accepted width and height.

    Raises:
        `InvalidInputError`: a missing path, a directory, a file that is not an image, a truncated image, a
        decompression bomb, an image smaller than `min_side`, or an unsupported type.
    """
    import numpy as np
    from PIL import Image

    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, np.ndarray):
        image = _array_to_image(value, where)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        image = _open_image_bytes(bytes(value), where)
    elif isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        if text.startswith(("http://", "https://")):
            image = _open_image_bytes(_read_url(text, where), where)
        else:
            path = Path(text).expanduser()
            if path.is_dir():
                raise InvalidInputError(f"{where}: expected an image file, got a directory: {str(path)!r}.")
            if not path.is_file():
                raise InvalidInputError(f"{where}: image file not found: {str(path)!r}; expected a path to an image file.")
            image = _open_image_bytes(path.read_bytes(), f"{where} ({str(path)!r})")
    elif value is not None and type(value).__module__.startswith("torch"):
        image = _array_to_image(value.detach().cpu().numpy(), where)
    else:
        raise InvalidInputError(
            f"{where}: expected an image (file path, URL, bytes, PIL.Image or numpy array), got {describe(value)}."
        )
    if min(image.size) < min_side:
        raise InvalidInputError(
            f"{where}: the image is {image.size[0]}x{image.size[1]} pixels; expected at least {min_side}x{min_side}."
        )
    return _to_rgb(image)


# ---------------------------------------------------------------------------------------------------- audio


def _to_mono_float(array: "np.ndarray", where: str) -> "np.ndarray":
    import numpy as np

    array = np.asarray(array)
    if array.dtype.kind not in "iuf":
        raise InvalidInputError(f"{where}: expected numeric audio samples, got an array of dtype {array.dtype}.")
    if array.ndim == 2:
        # The channel axis is the short one: soundfile gives (frames, channels), torchaudio (channels, frames).
        channel_axis = 0 if array.shape[0] < array.shape[1] else 1
        if array.shape[channel_axis] > 16:
            raise InvalidInputError(
                f"{where}: expected mono (N,) or multi-channel (N, C) audio, got an array of shape {array.shape}."
            )
        array = array.mean(axis=channel_axis, dtype=np.float64)
    elif array.ndim != 1:
        raise InvalidInputError(f"{where}: expected a 1-D (mono) or 2-D (multi-channel) audio array, got shape {array.shape}.")
    if array.dtype.kind in "iu":
        # Integer PCM: scale by the type's range (int16 -> /32768) into [-1, 1].
        info = np.iinfo(array.dtype)
        array = (array.astype(np.float64) - (info.max + 1 if info.min == 0 else 0)) / float(info.max + 1)
    array = array.astype(np.float32, copy=False)
    if array.size == 0:
        raise InvalidInputError(f"{where}: the audio is empty (0 samples); expected at least one sample.")
    if not np.isfinite(array).all():
        raise InvalidInputError(f"{where}: the audio contains NaN or infinite samples; expected finite values.")
    return array


def _decode_audio_bytes(data: bytes, where: str) -> tuple["np.ndarray", int]:
    import soundfile

    if not data:
        raise InvalidInputError(f"{where}: expected an audio file, got an empty file or empty bytes (0 bytes).")
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=False)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise InvalidInputError(
            f"{where}: expected an audio file (WAV, FLAC, OGG, MP3, ...), got {len(data)} bytes that cannot be "
            f"decoded ({err})."
        ) from None
    return samples, rate


def load_audio(value: Any, where: str, *, sampling_rate: int) -> "np.ndarray":
    """Load one audio input as a mono float32 array at `sampling_rate`.

    Accepted forms:
    - a path to an audio file (WAV, FLAC, OGG/Opus, MP3 and the rest of what libsndfile decodes);
    - the file's bytes;
    - a dict `{"array": samples, "sampling_rate": rate}` (`"raw"` works as well as `"array"`, like transformers);
    - a bare numpy array or list of samples, which is taken to be already at `sampling_rate` (the model's rate):
      pass a dict when it is not.
    Integer samples (int16, int32, uint8) are scaled to [-1, 1]; multi-channel audio is averaged to mono;
    other rates are resampled with soxr (high quality).

    Args:
        value (`Any`):
            The input as the caller gave it.
        where (`str`):
            How to name this input in an error, e.g. `"input 3"`.
        sampling_rate (`int`):
            The rate the model expects.

    Raises:
        `InvalidInputError`: a missing file, a file that is not audio, empty audio, NaN/inf samples, a bad rate.
    """
    import numpy as np

    rate: Any = sampling_rate
    if isinstance(value, dict):
        array = value.get("array", value.get("raw"))
        rate = value.get("sampling_rate")
        if array is None or rate is None:
            raise InvalidInputError(
                f"{where}: an audio dict needs 'array' (or 'raw') and 'sampling_rate' keys, got keys {sorted(value)}."
            )
    elif isinstance(value, (bytes, bytearray, memoryview)):
        array, rate = _decode_audio_bytes(bytes(value), where)
    elif isinstance(value, (str, os.PathLike)):
        path = Path(os.fspath(value)).expanduser()
        if path.is_dir():
            raise InvalidInputError(f"{where}: expected an audio file, got a directory: {str(path)!r}.")
        if not path.is_file():
            raise InvalidInputError(f"{where}: audio file not found: {str(path)!r}; expected a path to an audio file.")
        array, rate = _decode_audio_bytes(path.read_bytes(), f"{where} ({str(path)!r})")
    elif isinstance(value, (np.ndarray, list, tuple)):
        array = value
    elif value is not None and type(value).__module__.startswith("torch"):
        array = value.detach().cpu().numpy()
    else:
        raise InvalidInputError(
            f"{where}: expected audio (file path, bytes, numpy array or {{'array', 'sampling_rate'}} dict), "
            f"got {describe(value)}."
        )
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise InvalidInputError(f"{where}: expected a positive integer sampling_rate, got {rate!r}.")
    samples = _to_mono_float(array, where)
    if int(rate) != sampling_rate:
        import soxr

        samples = soxr.resample(samples, int(rate), sampling_rate, quality="HQ").astype(np.float32, copy=False)
        if samples.size == 0:
            raise InvalidInputError(f"{where}: the audio is too short to resample to {sampling_rate} Hz.")
    return samples

