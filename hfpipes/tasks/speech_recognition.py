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

Defaults: Whisper windows are the model's own 30 s with 5 s strides on each side; CTC windows are 20 s with
3.33 s strides. Both strides are the pipeline's `chunk_length_s / 6`: 10 s of overlap between Whisper windows is
about 25 spoken words, enough for the token alignment to lock on even when Whisper writes a word differently at a
window's edge, at 1.5x the compute of non-overlapping windows; CTC frames need less context (3.33 s is more than
wav2vec2's 2.56 s convolutional position embedding), and 20 s windows keep attention, quadratic in frames, cheap.

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
import logging
import math
import numbers
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInputError, ModelLoadError
from ..inputs import describe, load_audio
from ..task import Chunks, Task

if TYPE_CHECKING:  # pragma: no cover
    import torch

# Fraction of a window used as stride on each side when only chunk_length_s is given (the pipeline's rule).
_STRIDE_FRACTION = 1 / 6
# Default CTC window; Whisper's is the model's own (30 s).
_CTC_CHUNK_S = 20.0
# Decoder positions taken by Whisper's prompt (<|startoftranscript|> <|lang|> <|transcribe|> <|notimestamps|>).
_WHISPER_PROMPT_TOKENS = 4


class _MaxLengthWarningFilter(logging.Filter):
    """Drops transformers' "Both `max_new_tokens` and `max_length` seem to have been set" warning.

    Whisper checkpoints set `max_length` in their generation config, so every `generate` call with the caller's
    `max_new_tokens` would log it, once per batch, although `max_new_tokens` is exactly what was asked for.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Both `max_new_tokens`")


@contextlib.contextmanager
def _quiet_max_length_warning() -> Iterator[None]:
    generation_logger = logging.getLogger("transformers.generation.utils")
    quiet = _MaxLengthWarningFilter()
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
        from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

        if not isinstance(language, str) or not language.strip():
            raise InvalidInputError(
                f"language: expected a language code such as 'de' or a name such as 'german', got {describe(language)}."
            )
        key = language.strip().lower()
        if key.startswith("<|") and key.endswith("|>"):
            key = key[2:-2]
        code = key if key in LANGUAGES else TO_LANGUAGE_CODE.get(key)
        if code is None:
            raise InvalidInputError(
                f"language: unknown language {language!r}; expected an ISO 639-1 code such as 'de' or an English name "
                "such as 'german'."
            )
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
            audio = load_audio(value, where, sampling_rate=self.sampling_rate)
            if len(audio) < self.min_samples:
                audio = np.pad(audio, (0, self.min_samples - len(audio)))
            # The same cuts as transformers' `chunk_iter`, without its feature-extractor call per window: the
            # features of a whole batch of windows are computed at once in `_collate`.
            # (Its check that a window is longer than its left stride always holds: the previous window ended
            # inside the audio, so this one reaches past its left stride.)
            pieces = Chunks()
            for begin in range(0, len(audio), step):
                end = begin + chunk
                last = end >= len(audio)
                left, right = (0 if begin == 0 else stride_left), (0 if last else stride_right)
                pieces.append({"audio": audio[begin:end], "stride": (min(end, len(audio)) - begin, left, right)})
                if last:
                    break
            features.append(pieces)
        return features

    def _length(self, feature: dict) -> int:
        return len(feature["audio"])

    def _collate(self, features: list[dict]) -> dict:
        audio = [f["audio"] for f in features]
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
        with _quiet_max_length_warning():
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
            outputs.append({"ids": ids[row, first : min(total - drop, frames)]})
        return outputs

    def postprocess(self, outputs: list[dict], return_timestamps: bool | str = False) -> dict:
        if self.is_whisper:
            return self._postprocess_whisper(outputs, return_timestamps)
        import torch

        # The windows' kept frames tile the audio, so they decode as one sequence. Special tokens are kept: the
        # CTC blank (<pad>) is what separates a letter from its repeat.
        ids = torch.cat([o["ids"] for o in outputs]).tolist()
        if not return_timestamps:
            return {"text": self.tokenizer.decode(ids).strip()}
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


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)
