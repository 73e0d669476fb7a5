"""Speech recognition: Whisper (`AutoModelForSpeechSeq2Seq`) and CTC models such as Wav2Vec2 (`AutoModelForCTC`).

Inputs are anything `hfpipes.inputs.load_audio` decodes: a path to a WAV/FLAC/OGG/MP3 file, the file's bytes, a
`{"array", "sampling_rate"}` dict (resampled to the model's rate) or a bare numpy array (taken to be at the model's
rate already); integer PCM is scaled and multi-channel audio averaged to mono. One numpy array, dict, path or bytes
is one input; a list is always a list of inputs, so pass one clip's samples as a numpy array (or a list of lists).

Long audio is cut into windows that overlap by `stride_length_s` on each side, exactly as
`transformers.pipeline("automatic-speech-recognition", chunk_length_s=...)` cuts it, and the windows of every input
of a call are batched together. The pieces are merged with transformers' own code: for CTC models the logits of the
overlaps are dropped (each frame is kept from the one window that saw it with context on both sides) and the frames
are decoded at once; for Whisper the windows' token sequences are aligned on their longest common run of tokens
(`WhisperTokenizer._decode_asr`), so a word at a seam is neither dropped nor written twice.

A file longer than one window is never decoded whole: each window is read from the file when its batch is built
(seeking, then resampling the window with a margin that starts on a file frame falling exactly on a model-rate
sample, which gives the samples a resampling of the whole file gives, to float precision). A two-hour recording
then costs the memory of one batch of windows, not 460 MB of samples. Shorter files, bytes and arrays are decoded
whole.

Defaults: Whisper windows are the model's own 30 s with 5 s strides on each side; CTC windows are 20 s with
3.33 s strides. Both strides are the pipeline's `chunk_length_s / 6`: 10 s of overlap between Whisper windows is
about 25 spoken words, enough for the token alignment to lock on even when Whisper writes a word differently at a
window's edge, at 1.5x the compute of non-overlapping windows; CTC frames need less context (3.33 s is more than
wav2vec2's 2.56 s convolutional position embedding), and 20 s windows keep attention, quadratic in frames, cheap.

Fine-tuning (`hfpipes.finetune`, columns `audio` and `text`): each clip is decoded and resampled once and kept as
samples; a batch's features (Whisper log-mel, CTC `input_values`) are computed when it is collated. Whisper learns
the transcript after its prompt (`<|notimestamps|>`, preceded by `<|lang|> <|transcribe|>` on multilingual models,
which need `task_options: {language: ...}`): the labels of transformers' Whisper fine-tuning guide, but with the
transcript after a space, as Whisper writes its first word (tiny.en's loss on espeak speech is 0.67 so, 1.29 without
the space, which the model would first have to learn); CTC
models learn the transcript's characters (cased like the vocabulary; characters it lacks are dropped with a
warning), with the usual CTC recipe: mean loss, infinite losses zeroed, the convolutional feature encoder frozen.
A clip longer than one window (30 s for Whisper) is a `DataError` naming its row, not truncated: cutting the audio
under a full transcript would teach the model to invent words. Evaluation decodes greedily and reports `wer` and
`cer` (lower is better, `wer` picks the best checkpoint) after `normalize_transcript`: Whisper's English text
normaliser for English (with runs of digits joined, see there), lowercase without punctuation for other languages.
LoRA: `peft: {type: lora, r: 32, target_modules: [q_proj, v_proj]}` on Whisper; the adapter reloads with
`hfpipes.load`.

Example:

```python
>>> import hfpipes
>>> asr = hfpipes.load("speech-recognition", model="openai/whisper-tiny")
>>> asr("meeting.wav")
{'text': 'Good morning everyone, let us start with the budget.'}
>>> asr({"array": samples, "sampling_rate": 44100}, language="german", return_timestamps=True)
{'text': 'Guten Morgen.', 'chunks': [{'text': 'Guten Morgen.', 'timestamp': (0.0, 1.2)}]}
```
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
import numbers
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..batching import pad_sequences
from ..errors import ConfigError, DataError, InvalidInputError, ModelLoadError
from ..inputs import describe, load_audio, load_text
from ..task import Chunks, Task

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import soundfile
    import torch

__all__ = ["SpeechRecognitionTask", "normalize_transcript"]

logger = logging.getLogger("hfpipes")

# Fraction of a window used as stride on each side when only chunk_length_s is given (the pipeline's rule).
_STRIDE_FRACTION = 1 / 6
# Default CTC window; Whisper's is the model's own (30 s).
_CTC_CHUNK_S = 20.0
# Decoder positions taken by Whisper's prompt (<|startoftranscript|> <|lang|> <|transcribe|> <|notimestamps|>).
_WHISPER_PROMPT_TOKENS = 4


# Training options (`task_options`) of this task.
TRAINING_OPTIONS = ("language",)
# Read around a resampled window so that the resampling filter sees the same samples as it does in the whole file
# (soxr's high-quality filter reaches a few milliseconds).
_RESAMPLE_MARGIN_S = 0.1
_DIGIT_RUN = re.compile(r"\b\d+(?: \d+)+\b")


def normalize_transcript(text: str, language: str | None = "en") -> str:
    """The form in which transcripts are compared for WER and CER.

    English (`language="en"`): Whisper's English text normaliser (`EnglishTextNormalizer` from transformers:
    lowercase, no punctuation, spoken numbers as digits, "mister" -> "mr", contractions and fillers unified), without
    its British-to-American spelling table (OpenAI's `english.json`, which ships with the Hub checkpoints, not with
    transformers). That normaliser turns a spoken digit sequence into one number ("five five" -> "55") but leaves a
    written one apart ("5 5"), so runs of digit-only words are then joined in both texts: a digit sequence counts
    as one word however it is spaced. Other languages (or `None`): Whisper's basic normaliser (lowercase, symbols
    and punctuation removed, spaces collapsed).

    Args:
        text (`str`):
            A transcript or reference.
        language (`str`, *optional*, defaults to `"en"`):
            An ISO 639-1 code; `"en"` selects the English normaliser.

    Example:

    ```python
    >>> from hfpipes.tasks.speech_recognition import normalize_transcript
    >>> normalize_transcript("Go forward 10 meters."), normalize_transcript("go forward ten meters")
    ('go forward 10 meters', 'go forward 10 meters')
    >>> normalize_transcript("5, 5"), normalize_transcript("five five")
    ('55', '55')
    ```
    """
    if language == "en":
        return _DIGIT_RUN.sub(lambda run: run.group(0).replace(" ", ""), _english_normalizer()(text))
    return " ".join(_basic_normalizer()(text).split())


@functools.cache
def _english_normalizer() -> Callable[[str], str]:
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer({})


@functools.cache
def _basic_normalizer() -> Callable[[str], str]:
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    return BasicTextNormalizer()


class _AudioFile:
    """A long audio file read one window at a time, as mono float32 samples at the model's rate.

    The file stays open (one handle per input, closed when the call's windows are gone) and each `read` seeks to its
    window; libsndfile seeks exactly in WAV, FLAC, OGG/Opus and MP3. Another rate is resampled per window with
    `_RESAMPLE_MARGIN_S` of context on each side, from a file frame that falls exactly on a model-rate sample, so
    the result equals a resampling of the whole file to float precision. Samples are checked (finite) as they are
    read, so a bad stretch in the middle of a file is reported with its time.
    """

    def __init__(self, handle: soundfile.SoundFile, where: str, sampling_rate: int) -> None:
        self.handle = handle
        self.where = where
        self.file_rate = int(handle.samplerate)
        self.rate = sampling_rate
        self.frames = int(handle.frames)
        divisor = math.gcd(self.file_rate, self.rate)
        self.file_step, self.step = self.file_rate // divisor, self.rate // divisor
        # soxr gives n * rate / file_rate samples for n frames, rounded half up.
        self.length = (2 * self.frames * self.rate + self.file_rate) // (2 * self.file_rate)

    @classmethod
    def open(cls, value: Any, where: str, sampling_rate: int, longer_than: int) -> _AudioFile | None:
        """The reader of a path input whose file is seekable and longer than `longer_than` samples at the model's rate;
        `None` for anything else, which `load_audio` then decodes whole (and reports, when it is not audio)."""
        if not isinstance(value, (str, os.PathLike)):
            return None
        path = Path(os.fspath(value)).expanduser()
        if not path.is_file():
            return None
        import soundfile

        try:
            handle = soundfile.SoundFile(str(path))
        except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError):
            return None
        reader = cls(handle, f"{where} ({str(path)!r})", sampling_rate)
        if not handle.seekable() or reader.length <= longer_than:
            handle.close()
            return None
        return reader

    def read(self, begin: int, end: int) -> np.ndarray:
        """Samples `begin` to `end` (exclusive) at the model's rate."""
        if self.file_rate == self.rate:
            return self._frames(begin, end)
        import soxr

        margin = int(_RESAMPLE_MARGIN_S * self.file_rate)
        block = max(0, (begin * self.file_rate // self.rate - margin) // self.file_step)
        last = min(self.frames, -(-end * self.file_rate // self.rate) + margin)
        samples = soxr.resample(self._frames(block * self.file_step, last), self.file_rate, self.rate, quality="HQ")
        offset = block * self.step
        return samples[begin - offset : end - offset]

    def _frames(self, first: int, last: int) -> np.ndarray:
        import numpy as np
        import soundfile

        span = f"between {first / self.file_rate:.2f} s and {last / self.file_rate:.2f} s"
        try:
            self.handle.seek(first)
            data = self.handle.read(last - first, dtype="float32", always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError, ValueError) as err:
            raise InvalidInputError(f"{self.where}: the audio file cannot be read {span} ({err}).") from None
        if len(data) < last - first:
            raise InvalidInputError(
                f"{self.where}: the audio file is truncated or corrupt: {len(data)} of the {last - first} frames "
                f"{span} could be read."
            )
        # As `load_audio` mixes channels: the mean in float64.
        samples = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float64).astype(np.float32)
        finite = np.isfinite(samples)
        if not finite.all():
            at = (first + int(np.argmin(finite))) / self.file_rate
            raise InvalidInputError(
                f"{self.where}: the audio contains NaN or infinite samples (the first at {at:.2f} s); expected finite "
                "values."
            )
        return samples


class _WhisperGenerateNoiseFilter(logging.Filter):
    """Drops two warnings that every Whisper `generate` call makes transformers log, neither about the caller:

    - "Both `max_new_tokens` and `max_length` seem to have been set": Whisper checkpoints set `max_length` in their
      generation config, so every call with the caller's `max_new_tokens` would log it, once per batch, although
      `max_new_tokens` is exactly what was asked for;
    - "Passing `generation_config` together with generation-related arguments=({'begin_suppress_tokens',
      'suppress_tokens'}) is deprecated": transformers' own `WhisperForConditionalGeneration.generate` passes both
      to `GenerationMixin.generate` (a workaround of its own, transformers 5.x). The same warning for any other
      argument still shows.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith("Both `max_new_tokens`"):
            return False
        arguments = _GENERATION_CONFIG_ARGUMENTS.match(message)
        return not (arguments and set(re.findall(r"'(\w+)'", arguments[1])) <= _WHISPER_OWN_ARGUMENTS)


_GENERATION_CONFIG_ARGUMENTS = re.compile(r"Passing `generation_config` together with generation-related arguments=\(\{(.*?)\}\)")
_WHISPER_OWN_ARGUMENTS = {"begin_suppress_tokens", "suppress_tokens"}


@contextlib.contextmanager
def _quiet_whisper_generate_warnings() -> Iterator[None]:
    generation_logger = logging.getLogger("transformers.generation.utils")
    quiet = _WhisperGenerateNoiseFilter()
    generation_logger.addFilter(quiet)
    try:
        yield
    finally:
        generation_logger.removeFilter(quiet)


class SpeechRecognitionTask(Task):
    """Transcribe speech with a Whisper or a CTC model.

    Call options:
        return_timestamps (`bool` or `str`, *optional*, defaults to `False`):
            Add `"chunks"`: a list of `{"text": str, "timestamp": (start, end)}` in seconds. Whisper gives
            segments (a phrase each); a segment Whisper leaves open ends at the end of the audio. On long audio the
            segments are merged across windows by the same code as the text, which joins the segments that cross
            a stride: expect some long segments around the seams, as with `transformers.pipeline`. CTC models give
            words (`True` or `"word"`) or characters (`"char"`), from the tokenizer's frame offsets.
        language (`str`, *optional*):
            Whisper only: the spoken language, as an ISO code (`"de"`) or a name (`"german"`). Multilingual models
            detect it when it is not given (per window; giving it is faster and avoids switching languages
            mid-file); English-only models accept only English. Whisper always runs with `task="transcribe"`,
            never translation.
        max_new_tokens (`int`, *optional*):
            Whisper only: the most tokens generated per 30 s window. Defaults to the model's generation config.
        num_beams (`int`, *optional*):
            Whisper only: beam search width. Defaults to the model's generation config (usually 1, greedy);
            `transformers.pipeline` uses 5 unless the model says otherwise.
        chunk_length_s (`float`, *optional*):
            Length of the windows long audio is cut into. Defaults to 30 s (Whisper, also the most it accepts) and
            20 s (CTC). Audio no longer than one window is transcribed in one piece.
        stride_length_s (`float` or `(float, float)`, *optional*):
            Context added on the left and right of each window and dropped when merging. Defaults to
            `chunk_length_s / 6` on each side; both strides together must be shorter than the window.

    Results are `{"text": str}` (plus `"chunks"` with timestamps), with surrounding spaces stripped; silence gives
    an empty or near-empty text.
    """

    task = "speech-recognition"
    # A window holds at most this many inputs, so 64 long recordings are not decoded into memory at once.
    window_size = 64

    def _load(self, location: Any, **kwargs: Any) -> None:
        from transformers import AutoConfig, AutoModelForCTC, AutoModelForSpeechSeq2Seq, AutoProcessor
        from transformers.models.auto.modeling_auto import MODEL_FOR_CTC_MAPPING_NAMES

        config = self.from_pretrained(AutoConfig, **kwargs)
        if config.model_type == "whisper":
            self.is_whisper = True
            self.model = self.from_pretrained(AutoModelForSpeechSeq2Seq, **kwargs)
        elif config.model_type in MODEL_FOR_CTC_MAPPING_NAMES:
            self.is_whisper = False
            self.model = self.from_pretrained(AutoModelForCTC, **kwargs)
        else:
            raise ModelLoadError(
                f"The model {location.path!r} ({config.model_type!r}) cannot be used for the 'speech-recognition' "
                "task: expected a Whisper model or a CTC model (Wav2Vec2, HuBERT, WavLM, Data2VecAudio, ...)."
            )
        self.processor = self.from_pretrained(AutoProcessor, **kwargs)
        self.feature_extractor = getattr(self.processor, "feature_extractor", None)
        self.tokenizer = getattr(self.processor, "tokenizer", None)
        if self.feature_extractor is None or self.tokenizer is None:
            raise ModelLoadError(
                f"The model {location.path!r} needs both a feature extractor (preprocessor_config.json) and a "
                f"tokenizer for speech recognition; AutoProcessor gave {type(self.processor).__name__}."
            )
        self.sampling_rate = int(self.feature_extractor.sampling_rate)
        if self.is_whisper:
            self._load_whisper()
        else:
            self._load_ctc()

    def _load_whisper(self) -> None:
        self.window_samples = int(self.feature_extractor.n_samples)
        self.align = 1
        self.min_samples = 1
        # Every window is padded to 30 s, so a batch costs its count of windows, whatever their lengths.
        self.max_batch_size = 16
        self.batch_budget = self.max_batch_size * self.window_samples
        self.time_precision = self.feature_extractor.chunk_length / self.model.config.max_source_positions
        generation_config = self.model.generation_config
        self.lang_to_id = dict(getattr(generation_config, "lang_to_id", None) or {})
        multilingual = getattr(generation_config, "is_multilingual", None)
        if multilingual is None:
            multilingual = len(self.lang_to_id) > 1
        self.multilingual = bool(multilingual) and not str(self.model_name).rstrip("/").endswith(".en")

    def _load_ctc(self) -> None:
        config = self.model.config
        self.window_samples = round(_CTC_CHUNK_S * self.sampling_rate)
        # Audio samples per output frame: chunk edges are aligned to it so that frames fall on the same grid.
        self.align = int(getattr(config, "inputs_to_logits_ratio", 1) or 1)
        # The convolutional front end needs at least its receptive field (400 samples for wav2vec2).
        field, jump = 1, 1
        for kernel, stride in zip(getattr(config, "conv_kernel", ()), getattr(config, "conv_stride", ()), strict=True):
            field, jump = field + (kernel - 1) * jump, jump * stride
        self.min_samples = field
        self.max_batch_size = 32
        self.batch_budget = 8 * self.window_samples  # samples per batch: eight 20 s windows
        self.main_input = self.feature_extractor.model_input_names[0]
        # Tokenizers that can skip the grouping of repeated frames (Wav2Vec2CTCTokenizer) get the frames collapsed.
        self._ctc_collapse = "group_tokens" in inspect.signature(self.tokenizer._decode).parameters

    def _components(self) -> list[Any]:
        return [self.model, self.processor]

    # ---------------------------------------------------------------------------------------------- options

    def _sanitize_parameters(
        self,
        return_timestamps: bool | str | None = None,
        language: str | None = None,
        max_new_tokens: int | None = None,
        num_beams: int | None = None,
        chunk_length_s: float | None = None,
        stride_length_s: float | tuple[float, float] | None = None,
    ):
        preprocess, forward, postprocess = {}, {}, {}
        if chunk_length_s is not None or stride_length_s is not None:
            self._window(chunk_length_s, stride_length_s)  # validates
            preprocess.update(chunk_length_s=chunk_length_s, stride_length_s=stride_length_s)
        if return_timestamps is not None:
            forward["return_timestamps"] = postprocess["return_timestamps"] = self._check_timestamps(return_timestamps)
        for name, value in (("language", language), ("max_new_tokens", max_new_tokens), ("num_beams", num_beams)):
            if value is not None and not self.is_whisper:
                raise InvalidInputError(
                    f"{name}: only Whisper models take this option; {type(self.model).__name__} is a CTC model, "
                    "which transcribes the one language it was trained on in a single forward pass."
                )
        if language is not None:
            forward["language"] = self._language_code(language)
        if max_new_tokens is not None:
            limit = self.model.config.max_target_positions - _WHISPER_PROMPT_TOKENS
            if (
                isinstance(max_new_tokens, bool)
                or not isinstance(max_new_tokens, int)
                or not 1 <= max_new_tokens <= limit
            ):
                raise InvalidInputError(
                    f"max_new_tokens: expected an integer from 1 to {limit} for this model, got {max_new_tokens!r}."
                )
            forward["max_new_tokens"] = max_new_tokens
        if num_beams is not None:
            if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
                raise InvalidInputError(f"num_beams: expected a positive integer, got {num_beams!r}.")
            forward["num_beams"] = num_beams
        return preprocess, forward, postprocess

    def _check_timestamps(self, value: Any) -> bool | str:
        if self.is_whisper:
            if not isinstance(value, bool):
                raise InvalidInputError(
                    f"return_timestamps: Whisper gives segment timestamps with True (or none with False), got {value!r}; "
                    "word-level timestamps are only available for CTC models."
                )
            return value
        if not (isinstance(value, bool) or value in ("word", "char")):
            raise InvalidInputError(f"return_timestamps: expected True, False, 'word' or 'char', got {value!r}.")
        if value and not hasattr(self.tokenizer, "_get_word_offsets"):
            raise InvalidInputError(
                f"return_timestamps: {type(self.tokenizer).__name__} cannot give frame offsets; timestamps need a "
                "CTC tokenizer such as Wav2Vec2CTCTokenizer."
            )
        return "word" if value is True else value

    def _language_code(self, language: Any) -> str | None:
        """The Whisper language code for `language` (`"de"`, `"german"`, `"<|de|>"`), or `None` when the model is
        English-only and `language` is English (such models take no language token)."""
        from transformers.models.whisper.tokenization_whisper import LANGUAGES

        code = _iso_code(language)
        if not self.multilingual:
            if code != "en":
                raise InvalidInputError(
                    f"language: {self.model_name!r} is an English-only Whisper model; it cannot transcribe "
                    f"{LANGUAGES[code]!r}. Use a multilingual checkpoint (one without '.en') for other languages."
                )
            return None
        if f"<|{code}|>" not in self.lang_to_id:
            known = sorted(token[2:-2] for token in self.lang_to_id)
            raise InvalidInputError(
                f"language: this model has no {LANGUAGES[code]!r} ({code!r}) token; it knows {known}."
            )
        return code

    def _window(self, chunk_length_s: Any = None, stride_length_s: Any = None) -> tuple[int, int, int]:
        """`(window, left stride, right stride)` in samples, aligned to the model's frame size."""
        window_s = self.window_samples / self.sampling_rate
        if chunk_length_s is None:
            chunk_length_s = window_s
        elif not _is_real(chunk_length_s) or not 0 < chunk_length_s < math.inf:
            raise InvalidInputError(f"chunk_length_s: expected a positive number of seconds, got {chunk_length_s!r}.")
        elif self.is_whisper and chunk_length_s > window_s:
            raise InvalidInputError(
                f"chunk_length_s: Whisper sees at most {window_s:g} s at once, got {chunk_length_s!r}."
            )
        if stride_length_s is None:
            stride_length_s = chunk_length_s * _STRIDE_FRACTION
        strides = stride_length_s if isinstance(stride_length_s, (tuple, list)) else (stride_length_s, stride_length_s)
        if len(strides) != 2 or not all(_is_real(s) and 0 <= s < math.inf for s in strides):
            raise InvalidInputError(
                f"stride_length_s: expected a number of seconds >= 0 or a (left, right) pair of them, got {stride_length_s!r}."
            )
        chunk, left, right = (
            int(round(s * self.sampling_rate / self.align)) * self.align for s in (chunk_length_s, *strides)
        )
        if chunk - left - right < self.align:
            raise InvalidInputError(
                f"stride_length_s: the strides ({strides[0]!r} s + {strides[1]!r} s) must be shorter than the "
                f"window (chunk_length_s={chunk_length_s!r} s)."
            )
        return chunk, left, right

    # ------------------------------------------------------------------------------------------------ hooks

    def preprocess(
        self, inputs: list[Any], start: int, chunk_length_s: float | None = None, stride_length_s: Any = None
    ) -> list[Chunks]:
        import numpy as np

        chunk, stride_left, stride_right = self._window(chunk_length_s, stride_length_s)
        step = chunk - stride_left - stride_right
        features = []
        for i, value in enumerate(inputs):
            where = f"input {start + i}"
            if isinstance(value, numbers.Number):
                raise InvalidInputError(
                    f"{where}: expected audio (file path, bytes, numpy array or {{'array', 'sampling_rate'}} dict), got "
                    f"{describe(value)}. A list is always a list of inputs: pass one clip's samples as a numpy array."
                )
            # A file longer than one window is read window by window in `_collate`; the rest is decoded now.
            file = _AudioFile.open(value, where, self.sampling_rate, longer_than=chunk)
            if file is None:
                audio = load_audio(value, where, sampling_rate=self.sampling_rate)
                if len(audio) < self.min_samples:
                    audio = np.pad(audio, (0, self.min_samples - len(audio)))
            length = len(audio) if file is None else file.length
            # The same cuts as transformers' `chunk_iter`, without its feature-extractor call per window: the
            # features of a whole batch of windows are computed at once in `_collate`.
            # (Its check that a window is longer than its left stride always holds: the previous window ended
            # inside the audio, so this one reaches past its left stride.)
            pieces = Chunks()
            for begin in range(0, length, step):
                end = min(begin + chunk, length)
                last = end == length
                stride = (end - begin, 0 if begin == 0 else stride_left, 0 if last else stride_right)
                if file is None:
                    pieces.append({"audio": audio[begin:end], "stride": stride})
                else:
                    pieces.append({"file": file, "span": (begin, end), "stride": stride})
                if last:
                    break
            features.append(pieces)
        return features

    def _length(self, feature: dict) -> int:
        return feature["stride"][0]

    def _collate(self, features: list[dict]) -> dict:
        audio = [f["audio"] if "audio" in f else f["file"].read(*f["span"]) for f in features]
        strides = [f["stride"] for f in features]
        if self.is_whisper:
            # Log-mel on the GPU when there is one; the features come back as CPU tensors either way.
            device = str(self.device) if self.device.type == "cuda" else "cpu"
            encoded = self.feature_extractor(
                audio, sampling_rate=self.sampling_rate, return_attention_mask=True, return_tensors="pt", device=device
            )
            # Whisper's encoder ignores the mask; passing it keeps generate() from warning that a batch has none.
            return {
                "input_features": encoded["input_features"],
                "attention_mask": encoded["attention_mask"],
                "strides": strides,
            }
        # The mask is always computed so that each clip is normalized on its own samples, not on the padding;
        # it reaches the model only if the model was trained with one (wav2vec2-base was not: zero padding).
        encoded = self.feature_extractor(
            audio, sampling_rate=self.sampling_rate, padding=True, return_attention_mask=True, return_tensors="pt"
        )
        batch = {self.main_input: encoded[self.main_input], "strides": strides}
        if self.feature_extractor.return_attention_mask:
            batch["attention_mask"] = encoded["attention_mask"]
        return batch

    def _forward(
        self,
        batch: dict,
        return_timestamps: bool | str = False,
        language: str | None = None,
        max_new_tokens: int | None = None,
        num_beams: int | None = None,
    ) -> list[dict]:
        strides = batch.pop("strides")
        if not self.is_whisper:
            return self._forward_ctc(batch, strides)
        options: dict[str, Any] = {"return_timestamps": bool(return_timestamps)}
        if self.multilingual and getattr(self.model.generation_config, "task_to_id", None):
            # Without an explicit task a multilingual checkpoint may translate instead of transcribing.
            options["task"] = "transcribe"
            if language is not None:
                options["language"] = language
        if max_new_tokens is not None:
            options["max_new_tokens"] = max_new_tokens
        if num_beams is not None:
            options["num_beams"] = num_beams
        beams = num_beams if num_beams is not None else (self.model.generation_config.num_beams or 1)
        if beams > 1 and self.device.type == "cpu":
            # On a CPU, transformers' beam search over a batch costs more than the same rows one at a time
            # (measured with whisper-tiny.en: 1.5x at 4 rows, 2x at 10); greedy decoding costs the same either way.
            rows = [
                self._generate({key: value[i : i + 1] for key, value in batch.items()}, options)
                for i in range(len(strides))
            ]
        else:
            rows = self._generate(batch, options).split(1)
        return [{"tokens": tokens, "stride": stride} for tokens, stride in zip(rows, strides, strict=True)]

    def _generate(self, batch: dict, options: dict) -> torch.Tensor:
        with _quiet_whisper_generate_warnings():
            tokens = self.model.generate(**batch, **options)
        return tokens if hasattr(tokens, "shape") else tokens["sequences"]

    def _forward_ctc(self, batch: dict, strides: list[tuple[int, int, int]]) -> list[dict]:
        import torch

        ids = self.model(**batch).logits.argmax(dim=-1)
        lengths = torch.tensor([n for n, _, _ in strides])
        if hasattr(self.model, "_get_feat_extract_output_lengths"):
            valid = self.model._get_feat_extract_output_lengths(lengths).tolist()
        else:
            valid = [ids.shape[1]] * len(strides)
        outputs = []
        for row, ((n, left, right), frames) in enumerate(zip(strides, valid, strict=True)):
            # transformers' `rescale_stride`: the strides in frames, then the frames each window keeps.
            total = int(round(n / self.align))
            first, drop = int(round(left / n * total)), int(round(right / n * total))
            # A copy: a view would keep the whole batch's ids alive until the call ends.
            outputs.append({"ids": ids[row, first : min(total - drop, frames)].clone()})
        return outputs

    def postprocess(self, outputs: list[dict], return_timestamps: bool | str = False) -> dict:
        if self.is_whisper:
            return self._postprocess_whisper(outputs, return_timestamps)
        import torch

        # The windows' kept frames tile the audio, so they decode as one sequence. Special tokens are kept: the
        # CTC blank (<pad>) is what separates a letter from its repeat.
        ids = torch.cat([o["ids"] for o in outputs])
        if not return_timestamps:
            if self._ctc_collapse:
                # CTC's collapse (repeats merged, then blanks dropped) in torch: the tokenizer would do the same on
                # a Python list of every frame, which for an hour of audio costs tens of MB.
                ids = torch.unique_consecutive(ids)
                ids = ids[ids != self.tokenizer.pad_token_id]
                return {"text": self.tokenizer.decode(ids.tolist(), group_tokens=False).strip()}
            return {"text": self.tokenizer.decode(ids.tolist()).strip()}
        ids = ids.tolist()
        level = "word" if return_timestamps == "word" else "char"
        decoded = self.tokenizer.decode(ids, **{f"output_{level}_offsets": True})
        seconds = self.align / self.sampling_rate
        return {
            "text": decoded["text"].strip(),
            "chunks": [
                {
                    "text": item[level],
                    "timestamp": (float(item["start_offset"] * seconds), float(item["end_offset"] * seconds)),
                }
                for item in decoded[f"{level}_offsets"]
            ],
        }

    def _postprocess_whisper(self, outputs: list[dict], return_timestamps: bool) -> dict:
        rate = self.sampling_rate
        windows = [
            {"tokens": o["tokens"], "stride": (o["stride"][0] / rate, o["stride"][1] / rate, o["stride"][2] / rate)}
            for o in outputs
        ]
        text, extra = self.tokenizer._decode_asr(
            windows, return_timestamps=return_timestamps, return_language=False, time_precision=self.time_precision
        )
        result: dict[str, Any] = {"text": text.strip()}
        if return_timestamps:
            # The windows' kept parts tile the audio, so their lengths add up to its duration.
            duration = sum(n - left - right for n, left, right in (o["stride"] for o in outputs)) / rate
            chunks, previous_end = [], 0.0
            for chunk in extra.get("chunks", []):
                start, end = chunk["timestamp"]
                start = previous_end if start is None else float(start)
                end = max(start, duration) if end is None else float(end)
                chunks.append({"text": chunk["text"].strip(), "timestamp": (start, end)})
                previous_end = end
            result["chunks"] = chunks
        return result

    # ------------------------------------------------------------------------------------------- fine-tuning

    train_columns = ("audio", "text")
    main_metric = "wer"
    greater_is_better = False
    # peft's plain LoraModel: Whisper's usual LoRA recipe names its modules, `target_modules: [q_proj, v_proj]`.
    peft_task_type = None

    def prepare_training(self, train: list, eval: list, config: Any) -> None:
        super().prepare_training(train, eval, config)
        self.check_task_options(
            config.task_options, TRAINING_OPTIONS, "the language of the data: Whisper's prompt, and the normaliser of the WER"
        )
        language = config.task_options.get("language")
        try:
            code = None if language is None else _iso_code(language, "task_options.language")
            if self.is_whisper and language is not None:
                self._language_code(language)  # refuses a language the model does not have
        except InvalidInputError as err:
            raise ConfigError(str(err).replace("language:", "task_options.language:", 1)) from None
        if self.is_whisper:
            self._prepare_whisper_training(code, config)
        else:
            self._prepare_ctc_training(code)

    def _prepare_whisper_training(self, code: str | None, config: Any) -> None:
        ids = self.tokenizer.convert_tokens_to_ids
        # The prompt `generate` gives this model at inference (`_forward`), after <|startoftranscript|>.
        if self.multilingual:
            if code is None:
                raise ConfigError(
                    "task_options.language: a multilingual Whisper model learns the language token of its prompt; "
                    "give the language of the data, e.g. task_options: {language: de}."
                )
            prompt = [self.lang_to_id[f"<|{code}|>"], ids("<|transcribe|>")]
        else:
            # English-only checkpoints have no language token, unless their generation config lists languages:
            # `generate` then detects one (English) and puts it in the prompt.
            prompt = [self.lang_to_id["<|en|>"]] if "<|en|>" in self.lang_to_id else []
        # The labels of transformers' fine-tuning guide without its first token, the decoder start
        # (<|startoftranscript|>), which the model puts back when it shifts the labels into decoder inputs.
        self._label_prefix = [*prompt, ids("<|notimestamps|>")]
        self.train_language = code if self.multilingual else "en"
        limit = self.model.config.max_target_positions
        self._max_label_length = min(config.max_target_length or limit, limit)

    def _prepare_ctc_training(self, code: str | None) -> None:
        self.train_language = code
        symbols = {token for token in self.tokenizer.get_vocab() if len(token) == 1}
        letters = [s for s in symbols if s.isalpha()]
        # Vocabularies are usually one case (wav2vec2-base-960h: upper); the transcripts are put in it.
        self._ctc_case = (
            str.upper
            if letters and all(s.isupper() for s in letters)
            else str.lower
            if letters and all(s.islower() for s in letters)
            else None
        )
        self._ctc_symbols = symbols - {getattr(self.tokenizer, "word_delimiter_token", None)}
        self._ctc_dropped: set[str] = set()
        # The usual CTC fine-tuning recipe: a loss that does not grow with the batch and the clip length, no infinite
        # loss on a clip too short for its transcript, and the pretrained convolutional front end left as it is.
        self.model.config.ctc_loss_reduction = "mean"
        self.model.config.ctc_zero_infinity = True
        if hasattr(self.model, "freeze_feature_encoder"):
            self.model.freeze_feature_encoder()

    def encode_example(self, example: dict, where: str) -> dict:
        import numpy as np

        audio = example["audio"]
        if isinstance(audio, dict) and "array" not in audio and "raw" not in audio:
            audio = audio.get("bytes") or audio.get("path")  # `datasets.Audio(decode=False)`
        samples = load_audio(audio, where, sampling_rate=self.sampling_rate)
        text = load_text(example["text"], f"{where}, column 'text'").strip()
        if len(samples) > self.window_samples:
            raise DataError(
                f"{where}: the clip is {len(samples) / self.sampling_rate:.1f} s long; this model is trained on clips "
                f"of at most {self.window_samples / self.sampling_rate:g} s (one window). Split longer recordings: "
                "cutting the audio under the whole transcript would teach the model to invent words."
            )
        if len(samples) < self.min_samples:
            samples = np.pad(samples, (0, self.min_samples - len(samples)))
        labels = self._whisper_labels(text, where) if self.is_whisper else self._ctc_labels(text, len(samples), where)
        return {"audio": samples, "labels": labels}

    def _whisper_labels(self, text: str, where: str) -> list[int]:
        # A leading space, as Whisper writes its first word (" Hello"): the model keeps the tokens it knows.
        tokens = self.tokenizer(" " + text, add_special_tokens=False)["input_ids"]
        labels = [*self._label_prefix, *tokens, self.tokenizer.eos_token_id]
        if len(labels) > self._max_label_length:
            raise DataError(
                f"{where}: the transcript is {len(labels)} tokens with Whisper's prompt and end token; at most "
                f"{self._max_label_length} fit (max_target_length, or the decoder's {self.model.config.max_target_positions} "
                "positions). Split the clip."
            )
        return labels

    def _ctc_labels(self, text: str, num_samples: int, where: str) -> list[int]:
        if self._ctc_case is not None:
            text = self._ctc_case(text)
        words = ["".join(c for c in word if c in self._ctc_symbols) for word in text.split()]
        dropped = set(text) - self._ctc_symbols - {" "} - self._ctc_dropped
        if dropped:
            self._ctc_dropped |= dropped
            logger.warning(
                "hfpipes speech-recognition: characters that are not in the model's vocabulary are dropped from the "
                "transcripts: %s (first seen at %s).", ", ".join(map(repr, sorted(dropped))), where,
            )  # fmt: skip
        kept = " ".join(word for word in words if word)
        if not kept:
            raise DataError(
                f"{where}: none of the characters of the transcript {text!r} are in the model's vocabulary "
                f"({''.join(sorted(self._ctc_symbols))!r})."
            )
        labels = self.tokenizer(kept, add_special_tokens=False)["input_ids"]
        frames = self._ctc_frames(num_samples)
        # CTC needs a frame per label, plus a blank between two equal labels.
        needed = len(labels) + sum(a == b for a, b in zip(labels, labels[1:], strict=False))
        if needed > frames:
            raise DataError(
                f"{where}: the transcript needs at least {needed} output frames but the {num_samples / self.sampling_rate:.2f} s "
                f"clip gives the model only {frames}; is the transcript the right one for this clip?"
            )
        return labels

    def _ctc_frames(self, num_samples: Any) -> Any:
        """Output frames of the CTC model for clips of `num_samples` samples (an int or a tensor)."""
        import torch

        lengths = torch.as_tensor(num_samples)
        if hasattr(self.model, "_get_feat_extract_output_lengths"):
            frames = self.model._get_feat_extract_output_lengths(lengths)
        else:
            frames = lengths // self.align
        return frames.tolist() if isinstance(frames, torch.Tensor) else frames

    def training_collate(self, features: list[dict]) -> dict:
        import torch

        multiple = 8 if self.train_config.mixed_precision != "no" else None  # tensor cores want multiples of 8
        audio = [f["audio"] for f in features]
        labels = pad_sequences(features, {"labels": -100}, pad_to_multiple_of=multiple)["labels"]
        if self.is_whisper:
            encoded = self.feature_extractor(
                audio, sampling_rate=self.sampling_rate, return_attention_mask=True, return_tensors="pt"
            )
            # The encoder ignores the mask (as at inference); `generate` warns about a batch without one.
            return {**{key: encoded[key] for key in ("input_features", "attention_mask")}, "labels": labels}
        encoded = self.feature_extractor(
            audio, sampling_rate=self.sampling_rate, padding=True, return_attention_mask=True, return_tensors="pt"
        )
        batch = {self.main_input: encoded[self.main_input], "labels": labels}
        if self.feature_extractor.return_attention_mask:
            batch["attention_mask"] = encoded["attention_mask"]
        # For evaluation: the frames of each clip, which a model trained without a mask cannot be told.
        batch["audio_lengths"] = torch.tensor([len(a) for a in audio])
        return batch

    def training_loss(self, model: Any, batch: dict) -> torch.Tensor:
        return model(**{key: value for key, value in batch.items() if key != "audio_lengths"}).loss

    def eval_predictions(self, model: Any, batch: dict) -> tuple[list, list]:
        labels = batch["labels"]
        if not self.is_whisper:
            inputs = {key: value for key, value in batch.items() if key not in ("labels", "audio_lengths")}
            ids = model(**inputs).logits.argmax(dim=-1).cpu()
            frames = self._ctc_frames(batch["audio_lengths"].cpu())
            predictions = [self.tokenizer.decode(row[:n].tolist()).strip() for row, n in zip(ids, frames, strict=True)]
            # Labels are characters, not CTC frames: a doubled letter is two labels, not one.
            references = [
                self.tokenizer.decode(row[row != -100].tolist(), group_tokens=False).strip() for row in labels
            ]
            return predictions, references
        references = [
            self.tokenizer.decode(row[row != -100].tolist(), skip_special_tokens=True).strip() for row in labels
        ]
        # Runaway outputs are cut at 1.5 times the longest label (they score no better), within the decoder's room.
        longest = int((labels != -100).sum(dim=1).max())
        room = self.model.config.max_target_positions - _WHISPER_PROMPT_TOKENS
        options: dict[str, Any] = {"max_new_tokens": min(longest + longest // 2 + 4, room)}
        if self.multilingual and getattr(self.model.generation_config, "task_to_id", None):
            options.update(task="transcribe", language=self.train_language)
        with _quiet_whisper_generate_warnings():
            tokens = model.generate(
                input_features=batch["input_features"], attention_mask=batch["attention_mask"], **options
            )
        tokens = tokens if hasattr(tokens, "shape") else tokens["sequences"]
        predictions = [text.strip() for text in self.tokenizer.batch_decode(tokens, skip_special_tokens=True)]
        return predictions, references

    def compute_metrics(self, predictions: list, references: list) -> dict[str, float]:
        from ..metrics import load_metric

        pairs = [
            (normalize_transcript(p, self.train_language), normalize_transcript(r, self.train_language))
            for p, r in zip(predictions, references, strict=True)
        ]
        # A reference that normalises to nothing ("...") has no words to get wrong.
        pairs = [(p, r) for p, r in pairs if r]
        if not pairs:
            return {}
        predictions, references = [p for p, _ in pairs], [r for _, r in pairs]
        return {
            **load_metric("wer").compute(predictions=predictions, references=references),
            **load_metric("cer").compute(predictions=predictions, references=references),
        }

    def save_trained(self, model: Any, directory: Any) -> None:
        super().save_trained(model, directory)
        if hasattr(model, "peft_config"):
            # The base's config beside the adapter: `_load` reads it to choose Whisper or CTC.
            model.get_base_model().config.save_pretrained(directory)


def _iso_code(language: Any, name: str = "language") -> str:
    """The ISO 639-1 code of a language given as a code (`"de"`), an English name (`"german"`) or a Whisper token."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

    if not isinstance(language, str) or not language.strip():
        raise InvalidInputError(
            f"{name}: expected a language code such as 'de' or a name such as 'german', got {describe(language)}."
        )
    key = language.strip().lower()
    if key.startswith("<|") and key.endswith("|>"):
        key = key[2:-2]
    code = key if key in LANGUAGES else TO_LANGUAGE_CODE.get(key)
    if code is None:
        raise InvalidInputError(
            f"{name}: unknown language {language!r}; expected an ISO 639-1 code such as 'de' or an English name "
            "such as 'german'."
        )
    return code


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)
