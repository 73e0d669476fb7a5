"""Import a Whisper checkpoint stored in CTranslate2 format (as used by faster-whisper) into transformers.

CTranslate2 keeps a Whisper model as `model.bin` (one binary file with every tensor, fused attention projections
and its own names), a `config.json` with the decoding rules (`suppress_ids`, `suppress_ids_begin`,
`alignment_heads`, `lang_ids`) and the original `tokenizer.json`. `convert_ctranslate2_whisper` reads that and
writes a plain transformers directory: `WhisperForConditionalGeneration` weights in safetensors, a
`WhisperProcessor` (feature extractor + tokenizer) and a `generation_config.json`, so that
`pipeline("automatic-speech-recognition", model=out_dir)` and `model.generate` work with no further setup.

Precision: the weights are written in the dtype they have in `model.bin` (float16 for the usual faster-whisper
conversions; quantized int8/int16 weights are dequantized to float32), which is lossless and half the size of a
float32 copy, while `config.json` says `dtype: float32`, so the default `dtype="auto"` loads the model in
float32: half-precision matrix products are slow on most CPUs.

Example:

```python
>>> from hfpipes.convert.ctranslate2_whisper import convert_ctranslate2_whisper
>>> convert_ctranslate2_whisper("faster-whisper-tiny.en", "whisper-tiny.en-hf")  # doctest: +SKIP
PosixPath('whisper-tiny.en-hf')
>>> from transformers import pipeline
>>> asr = pipeline("automatic-speech-recognition", model="whisper-tiny.en-hf")  # doctest: +SKIP
```
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..errors import ModelLoadError

if TYPE_CHECKING:
    import torch

__all__ = ["convert_ctranslate2_whisper", "is_ctranslate2_whisper_dir", "read_ctranslate2_model"]

# `model.bin` dtype codes (ctranslate2/include/ctranslate2/types.h), as torch dtype names: torch is imported only
# when a model is read, so that format detection (`is_ctranslate2_whisper_dir`) stays cheap.
_DTYPES = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}
# CTranslate2's activation enum; Whisper always uses exact GELU.
_GELU = 3
# OpenAI's rule (`whisper/model.py`): the multilingual tokenizer adds one token, so its vocabulary is larger.
_MULTILINGUAL_MIN_VOCAB = 51865
# Seconds per timestamp token, and how many there are (0.00 ... 30.00) in OpenAI's tokenizer.
_TIME_PRECISION = 0.02
_NUM_TIMESTAMP_TOKENS = 1501


class _ChainedReader:
    """Reads several files as one stream, so a `model.bin` shipped in parts is never joined on disk."""

    def __init__(self, paths: Iterable[Path]):
        self._paths = list(paths)
        self._file: BinaryIO | None = None

    def __enter__(self) -> _ChainedReader:
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()

    def read(self, size: int) -> bytes:
        chunks = []
        while size > 0:
            if self._file is None:
                if not self._paths:
                    break
                self._file = open(self._paths.pop(0), "rb")
            chunk = self._file.read(size)
            if not chunk:
                self._file.close()
                self._file = None
                continue
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)


def _read_exact(stream: _ChainedReader, size: int, what: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise ModelLoadError(f"CTranslate2 model.bin is truncated: expected {size} bytes for {what}, got {len(data)}.")
    return data


def _read_struct(stream: _ChainedReader, fmt: str, what: str) -> tuple:
    return struct.unpack("<" + fmt, _read_exact(stream, struct.calcsize("<" + fmt), what))


def _read_string(stream: _ChainedReader, what: str) -> str:
    (length,) = _read_struct(stream, "H", what)
    # Strings are stored with their terminating NUL counted in the length.
    return _read_exact(stream, length, what).decode("utf-8").rstrip("\0")


def read_ctranslate2_model(model_bin: str | Path | list[str | Path]) -> tuple[str, dict[str, torch.Tensor]]:
    """
    Read every variable of a CTranslate2 `model.bin` (format version 6 and later).

    Aliases (CTranslate2's way of storing a tied weight once) are resolved, so both names map to the same tensor.

    Args:
        model_bin (`str`, `Path` or `list` of them):
            The `model.bin` file, or its parts in order when it was split into several files.

    Returns:
        `tuple[str, dict[str, torch.Tensor]]`: the model spec name (e.g. `"WhisperSpec"`) and the variables by name
        (e.g. `"encoder/layer_0/self_attention/linear_0/weight"`), with the dtype they are stored in.

    Example:

    ```python
    >>> spec, variables = read_ctranslate2_model("faster-whisper-tiny.en/model.bin")  # doctest: +SKIP
    >>> spec, variables["decoder/embeddings/weight"].shape  # doctest: +SKIP
    ('WhisperSpec', torch.Size([51864, 384]))
    ```
    """
    import torch

    paths = [Path(p) for p in (model_bin if isinstance(model_bin, list) else [model_bin])]
    with _ChainedReader(paths) as stream:
        (version,) = _read_struct(stream, "I", "the format version")
        if version < 6:
            raise ModelLoadError(
                f"{paths[0]} uses CTranslate2 format version {version}; only version 6 and later can be imported. "
                "Re-convert the model with a recent ctranslate2."
            )
        spec = _read_string(stream, "the spec name")
        _read_struct(stream, "I", "the spec revision")
        (num_variables,) = _read_struct(stream, "I", "the variable count")
        variables: dict[str, torch.Tensor] = {}
        for _ in range(num_variables):
            name = _read_string(stream, "a variable name")
            (rank,) = _read_struct(stream, "B", name)
            shape = _read_struct(stream, "I" * rank, name)
            (dtype_code,) = _read_struct(stream, "B", name)
            (num_bytes,) = _read_struct(stream, "I", name)
            if dtype_code not in _DTYPES:
                raise ModelLoadError(f"Variable {name!r} in {paths[0]} has unknown CTranslate2 dtype {dtype_code}.")
            data = bytearray(_read_exact(stream, num_bytes, name))
            variables[name] = torch.frombuffer(data, dtype=getattr(torch, _DTYPES[dtype_code])).reshape(shape)
        (num_aliases,) = _read_struct(stream, "I", "the alias count")
        for _ in range(num_aliases):
            alias = _read_string(stream, "an alias")
            variables[alias] = variables[_read_string(stream, "an alias target")]
    return spec, variables


def is_ctranslate2_whisper_dir(path: str | Path) -> bool:
    """
    Whether `path` is a CTranslate2 Whisper directory: a `config.json` with CTranslate2's decoding rules
    (`suppress_ids`) and no transformers `model_type`. `model.bin` may be missing when it ships in parts.

    Example:

    ```python
    >>> is_ctranslate2_whisper_dir("faster-whisper-tiny.en")  # doctest: +SKIP
    True
    ```
    """
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return False
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "suppress_ids" in config and "model_type" not in config


def _dequantize(variables: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    tensor = variables[name]
    if tensor.is_floating_point():
        return tensor
    # Integer weights come with one scale per output row: w_quantized = round(w * scale).
    scale = variables.get(name + "_scale")
    if scale is None:
        raise ModelLoadError(f"Quantized variable {name!r} has no {name + '_scale'!r} in model.bin.")
    return tensor.float() / scale.float().reshape(-1, *([1] * (tensor.dim() - 1)))


def _count_layers(variables: dict[str, torch.Tensor], stack: str) -> int:
    pattern = re.compile(rf"^{stack}/layer_(\d+)/")
    return len({int(m.group(1)) for name in variables if (m := pattern.match(name))})


def _to_state_dict(variables: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map CTranslate2 names onto `WhisperForConditionalGeneration`'s, splitting the fused projections."""
    get = lambda name: _dequantize(variables, name)  # noqa: E731
    state: dict[str, torch.Tensor] = {}

    def linear(src: str, dst: str) -> None:
        state[f"{dst}.weight"] = get(f"{src}/weight")
        state[f"{dst}.bias"] = get(f"{src}/bias")

    def layer_norm(src: str, dst: str) -> None:
        state[f"{dst}.weight"] = get(f"{src}/gamma")
        state[f"{dst}.bias"] = get(f"{src}/beta")

    def fused_attention(src: str, dst: str, projections: tuple[str, ...]) -> None:
        weights = get(f"{src}/weight").chunk(len(projections), dim=0)
        biases = get(f"{src}/bias").chunk(len(projections), dim=0)
        for projection, weight, bias in zip(projections, weights, biases, strict=True):
            state[f"{dst}.{projection}.weight"] = weight
            # Whisper's key projection has no bias; CTranslate2 stores zeros there to fuse the three.
            if projection != "k_proj":
                state[f"{dst}.{projection}.bias"] = bias

    for stack in ("encoder", "decoder"):
        prefix = f"model.{stack}"
        state[f"{prefix}.embed_positions.weight"] = get(f"{stack}/position_encodings/encodings")
        layer_norm(f"{stack}/layer_norm", f"{prefix}.layer_norm")
        for i in range(_count_layers(variables, stack)):
            src, dst = f"{stack}/layer_{i}", f"{prefix}.layers.{i}"
            fused_attention(f"{src}/self_attention/linear_0", f"{dst}.self_attn", ("q_proj", "k_proj", "v_proj"))
            linear(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")
            layer_norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
            if stack == "decoder":
                linear(f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj")
                fused_attention(f"{src}/attention/linear_1", f"{dst}.encoder_attn", ("k_proj", "v_proj"))
                linear(f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj")
                layer_norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
            linear(f"{src}/ffn/linear_0", f"{dst}.fc1")
            linear(f"{src}/ffn/linear_1", f"{dst}.fc2")
            layer_norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
    for conv in ("conv1", "conv2"):
        linear(f"encoder/{conv}", f"model.encoder.{conv}")
    state["model.decoder.embed_tokens.weight"] = get("decoder/embeddings/weight")
    return state


def _check_supported(spec: str, variables: dict[str, torch.Tensor], source: Path) -> None:
    if spec != "WhisperSpec":
        raise ModelLoadError(f"{source} holds a CTranslate2 {spec!r} model, not a Whisper model (WhisperSpec).")
    activation = variables.get("decoder/activation")
    if activation is not None and int(activation) != _GELU:
        raise ModelLoadError(f"{source}: unexpected decoder activation code {int(activation)} (Whisper uses GELU).")
    projection = variables.get("decoder/projection/weight")
    # transformers' Whisper always ties the output projection to the token embeddings (CTranslate2 stores it as an
    # alias of them, so it is usually the very same tensor).
    if projection is not None and not projection.equal(variables["decoder/embeddings/weight"]):
        raise ModelLoadError(f"{source}: the output projection is not tied to the token embeddings.")


def _build_tokenizer(tokenizer_file: Path, vocab_size: int):
    from tokenizers import AddedToken
    from transformers import WhisperTokenizerFast

    raw = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    special = [t["content"] for t in sorted(raw.get("added_tokens", []), key=lambda t: t["id"]) if t["special"]]
    # Listing the special tokens in id order keeps `<|notimestamps|>` last, which `_decode_with_timestamps`
    # relies on to find the first timestamp id.
    tokenizer = WhisperTokenizerFast(
        tokenizer_file=str(tokenizer_file),
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=[t for t in special if t != "<|endoftext|>"],
    )
    # faster-whisper's tokenizer.json stops at `<|notimestamps|>`; the model's remaining ids are the timestamp
    # tokens <|0.00|> ... <|30.00|>, added the way OpenAI's conversion script does so ids and vocabulary agree.
    missing = vocab_size - len(tokenizer)
    if missing > 0:
        timestamps = [f"<|{i * _TIME_PRECISION:.2f}|>" for i in range(min(missing, _NUM_TIMESTAMP_TOKENS))]
        tokenizer.add_tokens([AddedToken(t, lstrip=False, rstrip=False) for t in timestamps])
    return tokenizer


def _token_id(tokenizer, token: str, source: Path) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
        raise ModelLoadError(f"{source}: tokenizer.json has no {token!r} token, which Whisper needs.")
    return token_id


def convert_ctranslate2_whisper(
    src_dir: str | Path,
    out_dir: str | Path,
    *,
    model_bin_parts: list[Path] | None = None,
) -> Path:
    """
    Convert a CTranslate2 Whisper directory into a transformers `WhisperForConditionalGeneration` directory.

    The output holds `model.safetensors` + `config.json`, the `WhisperProcessor` files (feature extractor with the
    model's number of mel bins, tokenizer with `<|endoftext|>` as bos/eos/pad and the timestamp tokens) and a
    `generation_config.json` carrying CTranslate2's decoding rules (suppressed tokens, alignment heads for word
    timestamps, the language and task tokens of multilingual models, `task="transcribe"` so that a multilingual
    model detects the language and transcribes instead of looping).

    Args:
        src_dir (`str` or `Path`):
            Directory with CTranslate2's `config.json` and `tokenizer.json` (and `model.bin` unless
            `model_bin_parts` is given).
        out_dir (`str` or `Path`):
            Directory to write; created if missing, existing files with the same names are overwritten.
        model_bin_parts (`list[Path]`, *optional*):
            The pieces of a `model.bin` that was split into several files, in order. They are read as one stream.

    Returns:
        `Path`: `out_dir`.

    Raises:
        `ModelLoadError`: the files are not a CTranslate2 Whisper model, or are truncated.

    Example:

    ```python
    >>> from transformers import pipeline
    >>> out = convert_ctranslate2_whisper("faster-whisper-tiny.en", "/tmp/whisper-tiny.en")  # doctest: +SKIP
    >>> pipeline("automatic-speech-recognition", model=out)("clip.wav")["text"]  # doctest: +SKIP
    ' Go forward ten meters.'
    ```
    """
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    src_dir, out_dir = Path(src_dir), Path(out_dir)
    model_bin = [Path(p) for p in model_bin_parts] if model_bin_parts else [src_dir / "model.bin"]
    for required in [*model_bin, src_dir / "config.json", src_dir / "tokenizer.json"]:
        if not required.is_file():
            raise ModelLoadError(f"{src_dir} is not a complete CTranslate2 Whisper model: {required.name} is missing.")
    ct2_config = json.loads((src_dir / "config.json").read_text(encoding="utf-8"))

    spec, variables = read_ctranslate2_model(model_bin)
    _check_supported(spec, variables, src_dir)
    state = _to_state_dict(variables)
    embeddings = state["model.decoder.embed_tokens.weight"]
    vocab_size, d_model = embeddings.shape

    tokenizer = _build_tokenizer(src_dir / "tokenizer.json", vocab_size)
    end_of_text = _token_id(tokenizer, "<|endoftext|>", src_dir)
    start_of_transcript = _token_id(tokenizer, "<|startoftranscript|>", src_dir)

    config = WhisperConfig(
        vocab_size=vocab_size,
        d_model=d_model,
        num_mel_bins=state["model.encoder.conv1.weight"].shape[1],
        encoder_layers=_count_layers(variables, "encoder"),
        decoder_layers=_count_layers(variables, "decoder"),
        encoder_attention_heads=int(variables["encoder/num_heads"]),
        decoder_attention_heads=int(variables["decoder/num_heads"]),
        encoder_ffn_dim=state["model.encoder.layers.0.fc1.weight"].shape[0],
        decoder_ffn_dim=state["model.decoder.layers.0.fc1.weight"].shape[0],
        max_source_positions=state["model.encoder.embed_positions.weight"].shape[0],
        max_target_positions=state["model.decoder.embed_positions.weight"].shape[0],
        pad_token_id=end_of_text,
        bos_token_id=end_of_text,
        eos_token_id=end_of_text,
        decoder_start_token_id=start_of_transcript,
        begin_suppress_tokens=None,
        tie_word_embeddings=True,
    )
    # Keep the source precision when every tensor shares it; dequantized tensors are float32, and so is the copy.
    storage_dtype = embeddings.dtype if all(t.dtype == embeddings.dtype for t in state.values()) else torch.float32
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    model.load_state_dict({k: v.to(storage_dtype) for k, v in state.items()}, strict=False, assign=True)
    model.tie_weights()
    missing = [name for name, p in model.named_parameters() if p.is_meta]
    if missing:
        raise ModelLoadError(f"{src_dir}: model.bin has no weights for {missing[:5]}.")

    is_multilingual = vocab_size >= _MULTILINGUAL_MIN_VOCAB
    generation = GenerationConfig(
        decoder_start_token_id=start_of_transcript,
        bos_token_id=end_of_text,
        eos_token_id=end_of_text,
        pad_token_id=end_of_text,
        max_length=config.max_target_positions,
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [])),
        alignment_heads=[list(pair) for pair in ct2_config.get("alignment_heads", [])],
        no_timestamps_token_id=_token_id(tokenizer, "<|notimestamps|>", src_dir),
        prev_sot_token_id=_token_id(tokenizer, "<|startofprev|>", src_dir),
        # OpenAI's decoding starts with a timestamp of at most 1 s (50 x 0.02 s).
        max_initial_timestamp_index=50,
        is_multilingual=is_multilingual,
        return_timestamps=False,
    )
    if is_multilingual:
        generation.lang_to_id = {tokenizer.convert_ids_to_tokens(i): i for i in ct2_config.get("lang_ids", [])}
        generation.task_to_id = {
            task: _token_id(tokenizer, f"<|{task}|>", src_dir) for task in ("transcribe", "translate")
        }
        # Without a task token a multilingual Whisper starts free-running after the language token and loops.
        generation.task = "transcribe"
    model.generation_config = generation

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    # `save_pretrained` records the storage dtype; ask `dtype="auto"` loaders for float32 compute instead.
    config.dtype = torch.float32
    config.save_pretrained(out_dir)
    processor = WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=config.num_mel_bins), tokenizer=tokenizer
    )
    processor.save_pretrained(out_dir)
    return out_dir
