"""Text generation: continue a prompt or answer a chat with any `AutoModelForCausalLM` and its tokenizer.

A prompt is a string, or chat messages (`[{"role": "user", "content": "..."}]`) rendered with the tokenizer's chat
template. A plain prompt given to a chat model (one whose tokenizer has a chat template) is sent as one user
message, so instruct models answer it instead of continuing it; `apply_chat_template=False` turns that off.
Batches are padded on the left (decoder-only models continue from the last position), with the attention mask
telling `generate` where each prompt starts, so a batched greedy result equals the one-by-one result.
`stream=True` yields the text of one prompt piece by piece while it is generated. Models shipped as GGUF files
load through the same path: `hfpipes.sources` turns a `.gguf` file into a cached safetensors directory first.

Fine-tuning (`hfpipes.finetune("text-generation", ...)`) trains the causal LM on three kinds of records, mixed
freely: plain text (`text`, e.g. a `.txt` file), packed into blocks of `max_length` tokens with every token
learned; conversations (`messages`) and instructions (`prompt` + `completion`), rendered with the chat template
(a base model reads `prompt` then `completion` and eos) with only the answers learned. The metric is the
perplexity per learned token of the evaluation data; LoRA adapters (`peft`) reload through `hfpipes.load`.

Example:

```python
>>> import hfpipes
>>> chat = hfpipes.load("text-generation", model="HuggingFaceTB/SmolLM2-135M-Instruct")
>>> chat("What is the capital of France?", max_new_tokens=20)
{'generated_text': 'The capital of France is Paris.'}
>>> chat([{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Capital of Italy?"}])
{'generated_text': 'Rome'}
>>> for piece in chat("Tell me a story.", stream=True, do_sample=True, seed=0):
...     print(piece, end="")
Once upon a time...
>>> chat(["Name a color.", "Name a fruit."], stop=".", max_new_tokens=10)
[{'generated_text': 'Blue'}, {'generated_text': 'An apple'}]
>>> result = hfpipes.finetune("text-generation", "notes.txt", eval_split=0.1, peft={"r": 16}, output_dir="out")
>>> result.metrics["perplexity"]
12.4
>>> chats = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}] * 20
>>> _ = hfpipes.finetune("text-generation", chats, output_dir="out-chat", epochs=5)
>>> hfpipes.run("text-generation", "Hi", model="out-chat")
{'generated_text': 'Hello!'}
```
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import queue
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from ..batching import pad_sequences
from ..errors import DataError, InvalidInputError
from ..inputs import describe, load_text
from ..task import Task

logger = logging.getLogger("hfpipes")

# New tokens when neither the caller nor the model's generation config says (transformers' pipeline uses 256 too).
DEFAULT_MAX_NEW_TOKENS = 256
# Tokenizers report 1e30 for "no limit"; then the model's position embeddings set the limit.
_NO_LIMIT = 100_000
# Stop-string sets whose (costly) `StopStringCriteria` a loaded model keeps.
_STOP_CRITERIA_CACHE_SIZE = 8
# What a byte-level tokenizer decodes an incomplete UTF-8 character to; the next token may complete it.
_REPLACEMENT_CHAR = "\ufffd"
# Fine-tuning: tokens per training example (packed block) unless `max_length` or the model's context says less.
DEFAULT_TRAIN_LENGTH = 512
# The label of a token that is read but not learned (prompts, padding): PyTorch's cross-entropy skips it.
IGNORE_INDEX = -100
# Chat roles a training conversation may use; only the assistant's messages are learned.
TRAIN_ROLES = ("system", "user", "assistant", "tool")
# The record key under which `prepare_training` hands a packed block of plain-text tokens to `encode_example`.
_PACKED = "packed_input_ids"


class TextGenerationTask(Task):
    """Generate text with a causal language model.

    Each result is `{"generated_text": str}`: the new text only, unless `return_full_text=True`. Sampling options
    left out follow the model's `generation_config.json`, as `model.generate` does (greedy decoding when it sets
    nothing).

    Call options:
        max_new_tokens (`int`, *optional*):
            The most tokens to generate. Defaults to the model's generation config, else 256. Generation stops
            earlier at the end-of-sequence token, at a `stop` string, or at the model's context length (with a
            warning).
        do_sample (`bool`, *optional*):
            Sample the next token (`True`) or pick the most likely one (`False`, greedy). Defaults to `True` when
            `temperature` (> 0), `top_p` or `top_k` is given, else to the model's generation config, else greedy.
        temperature (`float`, *optional*):
            Sampling temperature, > 0 when sampling; lower is more conservative. `0` means greedy decoding.
        top_p (`float`, *optional*):
            Nucleus sampling: sample among the most likely tokens whose probabilities add up to `top_p`, in (0, 1].
        top_k (`int`, *optional*):
            Sample among the `top_k` most likely tokens; `0` turns this filter off.
        repetition_penalty (`float`, *optional*):
            > 1 makes tokens already in the text less likely, < 1 more likely; 1 changes nothing.
        seed (`int`, *optional*):
            Makes sampling reproducible: the same seed, inputs and `batch_size` give the same texts. Batch `k` of a
            call samples with `seed + k`, so a prompt repeated across batches gets different samples. The global
            torch random state is left as it was.
        stop (`str` or `list[str]`, *optional*):
            Stop generating at the first occurrence of any of these strings, which is cut from the result.
        return_full_text (`bool`, *optional*, defaults to `False`):
            Return the prompt followed by the new text. For chat messages (and templated plain prompts) the prompt
            is the text the chat template rendered.
        apply_chat_template (`bool`, *optional*):
            Whether plain prompts are sent through the chat template as one user message. Defaults to `True` when
            the tokenizer has a chat template (instruct models) and `False` otherwise; `True` on a model without a
            template is an error. Chat messages always use the template.
        stream (`bool`, *optional*, defaults to `False`):
            Return an iterator of text pieces, yielded while they are generated, for one prompt (or one chat).
            Joined, the pieces equal the non-streamed `generated_text` for the same options and seed.
    """

    task = "text-generation"
    batch_budget = 16384  # prompt tokens per batch
    max_batch_size = 32
    window_size = 256

    def _load(self, location: Any, **kwargs: Any) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = self.from_pretrained(AutoTokenizer, **kwargs)
        self.model = self.from_pretrained(AutoModelForCausalLM, **kwargs)
        generation = self.model.generation_config
        eos = generation.eos_token_id
        eos = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
        # Many causal LMs (GPT-2, Llama) ship without a pad token; padding with eos is the usual choice, and the
        # attention mask keeps the padding out of the computation anyway. The tokenizer is left as it was.
        candidates = (self.tokenizer.pad_token_id, generation.pad_token_id, self.tokenizer.eos_token_id, eos)
        self.pad_token_id = next((c for c in candidates if isinstance(c, int)), 0)
        self.default_max_new_tokens = generation.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
        limits = (self.tokenizer.model_max_length, getattr(self.model.config, "max_position_embeddings", None))
        self.max_length = min(
            (limit for limit in limits if isinstance(limit, int) and 0 < limit < _NO_LIMIT), default=None
        )
        self.has_chat_template = bool(getattr(self.tokenizer, "chat_template", None))
        self._stop_criteria: dict[tuple[str, ...], Any] = {}

    # ------------------------------------------------------------------------------------------- options

    def _sanitize_parameters(
        self,
        max_new_tokens: int | None = None,
        do_sample: bool | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        stop: str | list[str] | None = None,
        return_full_text: bool = False,
        apply_chat_template: bool | None = None,
        stream: bool = False,
    ) -> tuple[dict, dict, dict]:
        preprocess: dict[str, Any] = {}
        forward: dict[str, Any] = {}
        postprocess: dict[str, Any] = {}
        if not isinstance(stream, bool):
            raise InvalidInputError(f"stream: expected True or False, got {describe(stream)}.")
        if max_new_tokens is not None:
            if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
                raise InvalidInputError(f"max_new_tokens: expected a positive integer, got {describe(max_new_tokens)}.")
            forward["max_new_tokens"] = max_new_tokens
        if do_sample is not None:
            if not isinstance(do_sample, bool):
                raise InvalidInputError(f"do_sample: expected True or False, got {describe(do_sample)}.")
            forward["do_sample"] = do_sample
        if temperature is not None:
            _check_number("temperature", temperature, "a number >= 0", lambda t: t >= 0)
            if temperature == 0 and do_sample:
                raise InvalidInputError(
                    "temperature: expected a number > 0 when sampling (do_sample=True), got 0. Pass do_sample=False "
                    "for greedy decoding."
                )
            if temperature == 0:
                # 0 means "always the most likely token" (the OpenAI convention): greedy decoding.
                forward["do_sample"] = False
            else:
                forward["temperature"] = float(temperature)
        if top_p is not None:
            _check_number("top_p", top_p, "a number in (0, 1]", lambda p: 0 < p <= 1)
            forward["top_p"] = float(top_p)
        if top_k is not None:
            if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
                raise InvalidInputError(
                    f"top_k: expected an integer >= 0 (0 = no top-k filter), got {describe(top_k)}."
                )
            forward["top_k"] = top_k
        if forward.keys() & {"temperature", "top_p", "top_k"}:
            # Whoever sets a temperature or a sampling filter wants sampling; `generate` would ignore them.
            forward.setdefault("do_sample", True)
        if repetition_penalty is not None:
            _check_number("repetition_penalty", repetition_penalty, "a number > 0", lambda r: r > 0)
            forward["repetition_penalty"] = float(repetition_penalty)
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
                raise InvalidInputError(f"seed: expected a non-negative integer, got {describe(seed)}.")
            # One object per call, so the batches of one call draw from seed, seed + 1, ...
            forward["seeds"] = _Seeds(seed)
        stops = _check_stop(stop)
        if stops:
            forward["stop"] = postprocess["stop"] = stops
        if not isinstance(return_full_text, bool):
            raise InvalidInputError(f"return_full_text: expected True or False, got {describe(return_full_text)}.")
        if return_full_text:
            postprocess["return_full_text"] = True
        if apply_chat_template is not None:
            if not isinstance(apply_chat_template, bool):
                raise InvalidInputError(
                    f"apply_chat_template: expected True, False or None, got {describe(apply_chat_template)}."
                )
            if apply_chat_template and not self.has_chat_template:
                raise InvalidInputError(
                    f"apply_chat_template: the tokenizer of {self.model_name!r} has no chat template (is it a base "
                    "model rather than an instruct model?); leave apply_chat_template out to send prompts as they are."
                )
            preprocess["apply_chat_template"] = apply_chat_template
        return preprocess, forward, postprocess

    # ----------------------------------------------------------------------------------------- inputs

    def _is_single(self, inputs: Any) -> bool:
        # One chat is a list of message dicts; a list of chats or of strings is a batch.
        if isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], Mapping):
            return True
        return super()._is_single(inputs)

    def preprocess(self, inputs: list[Any], start: int, apply_chat_template: bool | None = None) -> list[dict]:
        template_prompts = self.has_chat_template if apply_chat_template is None else apply_chat_template
        prompts: list[str] = []
        templated: list[bool] = []
        for i, value in enumerate(inputs):
            where = f"input {start + i}"
            if isinstance(value, (list, tuple)):
                if apply_chat_template is False:
                    raise InvalidInputError(
                        f"{where}: chat messages are always rendered with the chat template; apply_chat_template=False "
                        "only applies to text prompts."
                    )
                prompts.append(self._render_chat(_check_messages(value, where), where))
                templated.append(True)
            elif isinstance(value, (str, bytes, bytearray)):
                text = load_text(value, where)
                if template_prompts:
                    text = self._render_chat([{"role": "user", "content": text}], where)
                prompts.append(text)
                templated.append(template_prompts)
            else:
                raise InvalidInputError(
                    f"{where}: expected a prompt (str) or chat messages (a list of {{'role': ..., 'content': ...}} "
                    f"dicts), got {describe(value)}."
                )
        # Rendered templates carry their own special tokens (BOS included), so they are tokenized without adding
        # any, as `apply_chat_template` does; plain prompts get the tokenizer's usual ones, as in `pipeline`.
        encoded: list[Any] = [None] * len(prompts)
        for flag in (True, False):
            indices = [i for i, t in enumerate(templated) if t is flag]
            if indices:
                batch = self.tokenizer([prompts[i] for i in indices], add_special_tokens=not flag)["input_ids"]
                for i, ids in zip(indices, batch, strict=True):
                    encoded[i] = ids
        features = []
        for i, ids in enumerate(encoded):
            if not ids:
                raise InvalidInputError(f"input {start + i}: the prompt encodes to no tokens at all.")
            if self.max_length is not None and len(ids) >= self.max_length:
                raise InvalidInputError(
                    f"input {start + i}: the prompt is {len(ids)} tokens long, but {self.model_name!r} reads at most "
                    f"{self.max_length} tokens (prompt and generated text together). Shorten the prompt."
                )
            features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "prompt": prompts[i]})
        return features

    def _render_chat(self, messages: list[dict], where: str) -> str:
        if not self.has_chat_template:
            raise InvalidInputError(
                f"{where}: chat messages need a chat template, but the tokenizer of {self.model_name!r} has none (a "
                "base model?). Pass the conversation as a text prompt instead."
            )
        from jinja2.exceptions import TemplateError

        # A chat ending with an assistant message is a prefill: the model continues that message, as in `pipeline`.
        prefill = messages[-1]["role"] == "assistant"
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=not prefill, continue_final_message=prefill
            )
        except (TemplateError, ValueError, TypeError, KeyError) as err:
            raise InvalidInputError(f"{where}: the model's chat template refused these messages: {err}") from None

    def _collate(self, features: list[dict]) -> dict:
        batch = pad_sequences(features, {"input_ids": self.pad_token_id, "attention_mask": 0}, padding_side="left")
        batch["prompts"] = [f["prompt"] for f in features]
        return batch

    # ----------------------------------------------------------------------------------------- running

    def _forward(self, batch: dict, **generate_kwargs: Any) -> list[dict]:
        sequences = self._generate(batch, **generate_kwargs)
        new_tokens = sequences[:, batch["input_ids"].shape[1] :]
        return [
            {"tokens": tokens, "prompt": prompt} for tokens, prompt in zip(new_tokens, batch["prompts"], strict=True)
        ]

    def _generate(
        self,
        batch: dict,
        max_new_tokens: int | None = None,
        seeds: _Seeds | None = None,
        stop: list[str] | None = None,
        cancelled: threading.Event | None = None,
        **generate_kwargs: Any,
    ) -> Any:
        import torch
        from transformers import StoppingCriteriaList

        input_ids = batch["input_ids"]
        max_new_tokens = max_new_tokens or self.default_max_new_tokens
        if self.max_length is not None and input_ids.shape[1] + max_new_tokens > self.max_length:
            # Past its context length a model with learned positions fails and one with rotary positions degrades.
            room = self.max_length - input_ids.shape[1]
            logger.warning(
                "hfpipes text-generation: %d prompt tokens + max_new_tokens=%d exceed the model's %d-token context; "
                "generating at most %d tokens.", input_ids.shape[1], max_new_tokens, self.max_length, room,
            )  # fmt: skip
            max_new_tokens = room
        criteria = StoppingCriteriaList()
        if stop:
            criteria.append(_StopInNewText(self._stop_string_criteria(stop), input_ids.shape[1]))
        if cancelled is not None:
            criteria.append(_Cancelled(cancelled))
        forked: Any = contextlib.nullcontext()
        if seeds is not None:
            forked = torch.random.fork_rng(
                devices=[self.device.index or 0] if self.device.type == "cuda" else [], device_type="cuda"
            )
        with forked:
            if seeds is not None:
                torch.manual_seed(seeds.next())
            return self.model.generate(
                input_ids=input_ids,
                attention_mask=batch["attention_mask"],
                max_new_tokens=max_new_tokens,
                pad_token_id=self.pad_token_id,
                stopping_criteria=criteria,
                # Only needed when the model's generation config lists stop strings of its own.
                tokenizer=self.tokenizer,
                **generate_kwargs,
            )

    def _stop_string_criteria(self, stop: list[str]) -> Any:
        """transformers' `StopStringCriteria` for these stop strings, built once: building one reads and hashes the
        whole vocabulary (about 0.1 s for 50k tokens), which would otherwise be paid by every call."""
        from transformers import StopStringCriteria

        key = tuple(stop)
        criteria = self._stop_criteria.pop(key, None) or StopStringCriteria(self.tokenizer, stop)
        self._stop_criteria[key] = criteria  # most recently used last
        if len(self._stop_criteria) > _STOP_CRITERIA_CACHE_SIZE:
            del self._stop_criteria[next(iter(self._stop_criteria))]
        return criteria

    def postprocess(self, output: dict, stop: list[str] | None = None, return_full_text: bool = False) -> dict:
        text = self.tokenizer.decode(output["tokens"].tolist(), skip_special_tokens=True)
        if stop:
            text = text[: _find_stop(text, stop)]
        return {"generated_text": output["prompt"] + text if return_full_text else text}

    # --------------------------------------------------------------------------------------- streaming

    def __call__(self, inputs: Any, **options: Any) -> Any:
        """Generate for one prompt, a chat, a list of them or an iterable (see `Task.__call__`); with
        `stream=True`, return an iterator of text pieces for one prompt or chat.

        Example:

        ```python
        >>> pipe = hfpipes.load("text-generation", model="path/to/model")
        >>> pipe("Once upon a time", max_new_tokens=5)["generated_text"]
        ' there was a king'
        >>> "".join(pipe("Once upon a time", max_new_tokens=5, stream=True))
        ' there was a king'
        ```
        """
        if options.get("stream") is not True:
            return super().__call__(inputs, **options)
        self._check_batch_size(options.pop("batch_size", None))
        options.pop("progress", None)
        if options.pop("column", None) is not None:
            raise InvalidInputError(
                "column: only meaningful with a datasets.Dataset input, which stream=True does not take."
            )
        preprocess_kwargs, forward_kwargs, postprocess_kwargs = self._check_options(options)
        if not self._is_single(inputs):
            what = f"a list of {len(inputs)} inputs" if isinstance(inputs, (list, tuple)) else describe(inputs)
            raise InvalidInputError(
                f"inputs: stream=True takes one prompt or one chat, got {what}. Stream them one at a time, or leave "
                "stream out to get all the results at once."
            )
        # Validate and encode now, so that a bad prompt fails at the call rather than at the first `next()`.
        batch = self._collate(self.preprocess([inputs], 0, **preprocess_kwargs))
        batch = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in batch.items()}
        return self._stream_pieces(batch, forward_kwargs, **postprocess_kwargs)

    def _stream_pieces(
        self, batch: dict, forward_kwargs: dict, stop: list[str] | None = None, return_full_text: bool = False
    ) -> Iterator[str]:
        tokens = _TokenQueue()
        cancelled = threading.Event()
        failure: list[BaseException] = []

        def generate() -> None:
            try:
                # The lock is taken here, in the thread that releases it, so an abandoned iterator cannot hold it.
                with self._lock:
                    self._generate(batch, streamer=tokens, cancelled=cancelled, **forward_kwargs)
            except BaseException as err:  # re-raised in the caller's thread
                failure.append(err)
            finally:
                tokens.end()

        worker = threading.Thread(target=generate, name="hfpipes-text-generation", daemon=True)
        if return_full_text:
            yield batch["prompts"][0]
        worker.start()
        try:
            ids: list[int] = []
            sent = 0
            for new in tokens:
                ids.extend(new)
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                # An incomplete UTF-8 character may still change into the right one; wait for the next token.
                ready = len(text.rstrip(_REPLACEMENT_CHAR))
                if stop:
                    cut = _find_stop(text, stop)
                    if cut < len(text):
                        if cut > sent:
                            yield text[sent:cut]
                        return
                    # Hold back a tail that may be the start of a stop string.
                    ready = min(ready, len(text) - _stop_prefix_length(text, stop))
                if ready > sent:
                    yield text[sent:ready]
                    sent = ready
            if failure:
                raise failure[0]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            if len(text) > sent:
                yield text[sent:]
        finally:
            cancelled.set()
            worker.join()

    # ------------------------------------------------------------------------------------- fine-tuning

    # A record is plain text (`text`), a conversation (`messages`) or an instruction (`prompt` + `completion`).
    optional_train_columns = ("text", "messages", "prompt", "completion")
    main_metric = "perplexity"
    greater_is_better = False
    peft_task_type = "CAUSAL_LM"

    def prepare_training(self, train: list, eval: list, config: Any) -> None:
        super().prepare_training(train, eval, config)
        limit = config.max_length or DEFAULT_TRAIN_LENGTH
        self.train_max_length = min(limit, self.max_length) if self.max_length else limit

    def encode_records(self, records: list) -> list:
        """Pack the plain-text records into blocks of `max_length` tokens, then encode every example.

        Each text is tokenized and closed with the eos token, the texts are concatenated and cut into blocks (the
        last one may be shorter): packing needs every text at once. Chat and instruction records stay as they
        are; `encode_example` encodes each into one example.
        """
        return super().encode_records(self._pack_texts(records))

    def _pack_texts(self, records: list) -> list:
        from ..data import Record

        texts, others = [], []
        for record in records:
            if _record_kind(record.values, record.where) == "text":
                texts.append((_check_train_text(record.values, "text", record.where), record.where))
            else:
                others.append(record)
        if not texts:
            return others
        stream: list[int] = []
        starts: list[int] = []  # where each record's tokens begin in the stream, to name a block's records
        for ids in self._document_ids([text for text, _ in texts]):
            starts.append(len(stream))
            stream.extend(ids)
        size = self.train_max_length
        blocks = []
        for k, begin in enumerate(range(0, len(stream), size)):
            end = min(begin + size, len(stream))
            if end - begin < 2:  # a last token alone has nothing to be predicted from
                break
            first = _last_start_at_or_before(starts, begin)
            last = _last_start_at_or_before(starts, end - 1)
            names = texts[first][1] if first == last else f"{texts[first][1]} to {texts[last][1]}"
            blocks.append(Record({_PACKED: stream[begin:end]}, f"packed block {k} ({names})"))
        return [*blocks, *others]

    def encode_example(self, example: dict, where: str) -> dict:
        """One training example, at most `max_length` tokens: a packed block of plain text (every token
        learned), or a conversation or instruction rendered with the chat template, where only the assistant's
        answers are learned and the rest is labelled -100. A text record that was not packed is one example."""
        if _PACKED in example:
            ids = list(example[_PACKED])
            return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ids}
        kind = _record_kind(example, where)
        if kind == "text":  # a text record that `prepare_training` did not pack: one example on its own
            ids = self._document_ids([_check_train_text(example, "text", where)])[0][: self.train_max_length]
            return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ids}
        if kind == "messages":
            segments = self._chat_segments(_check_train_messages(example["messages"], where), where)
        else:
            prompt, completion = (_check_train_text(example, name, where) for name in ("prompt", "completion"))
            if self.has_chat_template:
                messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
                segments = self._chat_segments(messages, where)
            else:
                segments = [(prompt, False), (completion, True)]
        ids: list[int] = []
        labels: list[int] = []
        # Each piece is tokenized on its own, as at generation time, where the prompt is tokenized alone and the
        # answer's tokens are the model's. Rendered templates carry their own special tokens; a plain prompt
        # gets the tokenizer's usual ones and its answer the eos token, so the model learns to stop.
        for index, (text, learned) in enumerate(segments):
            special = index == 0 and not self.has_chat_template
            piece = self.tokenizer(text, add_special_tokens=special)["input_ids"] if text else []
            if learned and not self.has_chat_template and self.tokenizer.eos_token_id is not None:
                piece = [*piece, self.tokenizer.eos_token_id]
            ids.extend(piece)
            labels.extend(piece if learned else [IGNORE_INDEX] * len(piece))
        ids, labels = ids[: self.train_max_length], labels[: self.train_max_length]
        if all(label == IGNORE_INDEX for label in labels[1:]):
            raise DataError(
                f"{where}: nothing left to learn: the prompt alone takes {self.train_max_length} tokens or more "
                f"(max_length={self.train_max_length}), so the answer is cut off. Raise max_length or shorten the "
                "prompt."
            )
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}

    def _document_ids(self, texts: list[str]) -> list[list[int]]:
        """Plain texts tokenized with the tokenizer's usual special tokens, each closed by the eos token, which
        marks where a document ends so that the model learns to end one."""
        eos = self.tokenizer.eos_token_id
        encoded = self.tokenizer(texts)["input_ids"]
        return [ids + [eos] if eos is not None and (not ids or ids[-1] != eos) else ids for ids in encoded]

    def _chat_segments(self, messages: list[dict], where: str) -> list[tuple[str, bool]]:
        """The rendered conversation cut into `(text, learned)` pieces: each assistant answer (up to its end
        token) is learned, the rest (system prompt, user turns, role headers) is read only.

        An answer is what rendering the conversation up to it adds to the prompt that asks for it
        (`add_generation_prompt=True`), so the pieces fit any template that renders a conversation turn by turn.
        """
        full = self._render_for_training(messages, where, add_generation_prompt=False)
        segments: list[tuple[str, bool]] = []
        done = 0
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self._render_for_training(messages[:k], where, add_generation_prompt=True)
            upto = self._render_for_training(messages[: k + 1], where, add_generation_prompt=False)
            # The newline a template puts after the end token belongs to the next turn, not to the answer.
            end = len(upto.rstrip())
            if not (full.startswith(upto) and upto.startswith(prompt) and done <= len(prompt) < end):
                raise DataError(
                    f"{where}: the chat template of {self.model_name!r} does not render this conversation turn by "
                    f"turn (rendering it up to message {k} is not a prefix of the whole), so assistant message {k} "
                    "cannot be told apart from its prompt."
                )
            segments += [(full[done : len(prompt)], False), (full[len(prompt) : end], True)]
            done = end
        segments.append((full[done:], False))
        return [(text, learned) for text, learned in segments if text]

    def _render_for_training(self, messages: list[dict], where: str, add_generation_prompt: bool) -> str:
        if not self.has_chat_template:
            raise DataError(
                f"{where}: 'messages' need a chat template, but the tokenizer of {self.model_name!r} has none (a base "
                "model?). Give 'prompt' and 'completion' columns, or plain 'text', instead."
            )
        from jinja2.exceptions import TemplateError

        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except (TemplateError, ValueError, TypeError, KeyError) as err:
            raise DataError(f"{where}: the model's chat template refused these messages: {err}") from None

    def training_collate(self, features: list[dict]) -> dict:
        multiple = 8 if self.train_config.mixed_precision != "no" else None  # tensor cores want multiples of 8
        pad_values = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        return pad_sequences(features, pad_values, pad_to_multiple_of=multiple)

    def training_loss(self, model: Any, batch: dict) -> Any:
        # No key/value cache: nothing is generated, and keeping one would only cost memory.
        return model(**batch, use_cache=False).loss

    def eval_predictions(self, model: Any, batch: dict) -> tuple[list, list]:
        """Per example: the summed negative log-likelihood of its learned tokens, and how many there are, so
        that `compute_metrics` weighs every token alike, whatever the batching and number of processes."""
        import torch

        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        sums, counts = [], []
        # One row at a time keeps the float32 log-probabilities to one sequence (vocabularies reach 250k).
        for row_logits, row_labels in zip(logits, batch["labels"], strict=True):
            targets = row_labels[1:]
            learned = targets != IGNORE_INDEX
            nll = torch.nn.functional.cross_entropy(row_logits[:-1][learned].float(), targets[learned], reduction="sum")
            sums.append(float(nll))
            counts.append(int(learned.sum()))
        return sums, counts

    def compute_metrics(self, predictions: list, references: list) -> dict[str, float]:
        tokens = sum(references)
        loss = sum(predictions) / max(tokens, 1)
        # Perplexity per token: how many choices the model is, on average, as unsure between as a fair die.
        return {"perplexity": math.exp(min(loss, 700.0)), "eval_token_loss": loss, "eval_tokens": float(tokens)}


# --------------------------------------------------------------------------------------------------- helpers


class _Seeds:
    """The seeds of one call: batch k samples with `seed + k`."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.batches = 0

    def next(self) -> int:
        self.batches += 1
        return self.seed + self.batches - 1


class _TokenQueue:
    """A `generate` streamer that hands new token ids to the consuming thread, which decodes them.

    Unlike `TextIteratorStreamer`, decoding happens off the generating thread, and always from the first new
    token, so the joined pieces equal the non-streamed text by construction (whatever the tokenizer does with
    spaces and partial characters) and the consumer can hold back a tail that may begin a stop string.
    """

    def __init__(self) -> None:
        self.queue: queue.Queue[list[int] | None] = queue.Queue()
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # `generate` first puts the prompt
            self.prompt_seen = True
            return
        self.queue.put(value.reshape(-1).tolist())

    def end(self) -> None:
        self.queue.put(None)

    def __iter__(self) -> Iterator[list[int]]:
        while (item := self.queue.get()) is not None:
            yield item


class _StopInNewText:
    """transformers' `StopStringCriteria` shown only the generated tokens: a stop string that starts in the prompt
    (a prompt ending in a newline, `stop="\\n\\n"`) must not end generation before it has begun."""

    def __init__(self, criteria: Any, prompt_length: int) -> None:
        self.criteria = criteria
        self.prompt_length = prompt_length

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        return self.criteria(input_ids[:, self.prompt_length :], scores, **kwargs)


class _Cancelled:
    """Stops generation once the streaming iterator is closed or abandoned."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def _check_number(name: str, value: Any, expected: str, valid: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not valid(value):
        raise InvalidInputError(f"{name}: expected {expected}, got {describe(value)}.")


def _check_stop(stop: Any) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, (list, tuple)) or not all(isinstance(s, str) and s for s in stops):
        raise InvalidInputError(
            f"stop: expected a non-empty string or a list of non-empty strings, got {describe(stop)}."
        )
    return list(dict.fromkeys(stops))


def _check_messages(messages: list | tuple, where: str) -> list[dict]:
    if not messages:
        raise InvalidInputError(f"{where}: expected chat messages, got an empty list.")
    for j, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidInputError(
                f"{where}: message {j}: expected a dict with 'role' and 'content' keys, got {describe(message)}."
            )
        missing = [key for key in ("role", "content") if key not in message]
        if missing:
            raise InvalidInputError(
                f"{where}: message {j} has no {' or '.join(map(repr, missing))} key; each message needs 'role' and "
                f"'content', got keys {sorted(message)}."
            )
        if not isinstance(message["role"], str) or not message["role"]:
            raise InvalidInputError(
                f"{where}: message {j}: 'role' must be a non-empty string, got {describe(message['role'])}."
            )
        if not isinstance(message["content"], (str, list)):
            raise InvalidInputError(
                f"{where}: message {j}: 'content' must be a string (or a list of content parts), got "
                f"{describe(message['content'])}."
            )
    return [dict(message) for message in messages]


def _record_kind(values: dict, where: str) -> str:
    """Which kind of training record this is: `"text"`, `"messages"` or `"prompt"` (with a completion)."""
    present = {
        name
        for name, value in values.items()
        if value is not None and not (isinstance(value, str) and not value.strip())
    }
    kinds = [
        kind
        for kind, needs in (("text", {"text"}), ("messages", {"messages"}), ("prompt", {"prompt", "completion"}))
        if needs <= present
    ]
    if len(kinds) == 1:
        return kinds[0]
    if kinds:
        raise DataError(
            f"{where}: the record has {' and '.join(repr(k) for k in kinds)}; give one of them per record (plain "
            "text, a conversation, or a prompt with its completion)."
        )
    if present & {"prompt", "completion"}:
        missing = ({"prompt", "completion"} - present).pop()
        raise DataError(
            f"{where}: the record has no {missing!r} (or an empty one); 'prompt' and 'completion' go together."
        )
    raise DataError(
        f"{where}: expected a 'text' column (plain text), a 'messages' column (a conversation) or 'prompt' and "
        "'completion' columns, found none with a value. Map yours with columns={'text': 'your_column'}."
    )


def _check_train_text(example: dict, name: str, where: str) -> str:
    try:
        return load_text(example[name], f"{where}: {name!r}")
    except InvalidInputError as err:
        raise DataError(str(err)) from None


def _check_train_messages(messages: Any, where: str) -> list[dict]:
    """A training conversation: a list (or its JSON text, as a CSV cell holds it) of messages with a known role
    and text content, at least one of them an assistant answer."""
    if isinstance(messages, str):
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{where}: 'messages' is a string but not JSON ({err.msg}); expected a list of messages."
            ) from None
    if not isinstance(messages, (list, tuple)):
        raise DataError(
            f"{where}: 'messages' must be a list of {{'role': ..., 'content': ...}} dicts, got {describe(messages)}."
        )
    try:
        messages = _check_messages(messages, f"{where}: 'messages'")
    except InvalidInputError as err:
        raise DataError(str(err)) from None
    for j, message in enumerate(messages):
        if message["role"] not in TRAIN_ROLES:
            raise DataError(
                f"{where}: 'messages': message {j} has role {message['role']!r}; expected one of {', '.join(TRAIN_ROLES)}."
            )
        if not isinstance(message["content"], str):
            raise DataError(
                f"{where}: 'messages': message {j}: 'content' must be a string for fine-tuning, got {describe(message['content'])}."
            )
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise DataError(f"{where}: 'messages' has no assistant message with content: there is no answer to learn.")
    return messages


def _last_start_at_or_before(starts: list[int], position: int) -> int:
    """The index of the record whose tokens hold `position` of the packed stream."""
    import bisect

    return bisect.bisect_right(starts, position) - 1


def _find_stop(text: str, stops: list[str]) -> int:
    """Where the first stop string starts in `text`, or `len(text)` when none occurs."""
    found = [index for index in (text.find(s) for s in stops) if index >= 0]
    return min(found, default=len(text))


def _stop_prefix_length(text: str, stops: list[str]) -> int:
    """The length of the longest end of `text` that begins a stop string (and so may become one)."""
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
