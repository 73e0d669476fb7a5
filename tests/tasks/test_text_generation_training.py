"""Fine-tuning text generation: packing plain text, answer-only labels for chats and instructions, perplexity,
full and LoRA fine-tunes that reload through `hfpipes.load`, and data errors that name the row."""

from __future__ import annotations

import json
import math

import pytest

import hfpipes
from hfpipes.data import Record
from hfpipes.errors import DataError
from hfpipes.tasks.text_generation import TextGenerationTask
from hfpipes.training import FinetuneConfig, load_recipe
from tests.fixtures.text_generation import CONVERSATION, TRAINING_RECORDS

# Short enough for a 32-wide model to learn by heart in a few dozen steps.
MEMO = "The train leaves at nine in the morning"
FAST = dict(learning_rate=1e-2, log_every=1, save_every=1000, warmup_steps=0)
GREEDY = {"max_new_tokens": 12, "do_sample": False}


@pytest.fixture(scope="module")
def chat_task(tiny_chat_llama):
    task = TextGenerationTask.for_finetuning(tiny_chat_llama, FinetuneConfig())
    task.prepare_training([], [], FinetuneConfig())
    return task


@pytest.fixture(scope="module")
def base_task(tiny_gpt2):
    task = TextGenerationTask.for_finetuning(tiny_gpt2, FinetuneConfig())
    task.prepare_training([], [], FinetuneConfig())
    return task


def ids(task, text, special=False):
    return task.tokenizer(text, add_special_tokens=special)["input_ids"]


# ------------------------------------------------------------------------------------------------- packing


@pytest.mark.parametrize("size", [20, 16])
def test_plain_texts_are_packed_into_blocks_closed_by_eos(tiny_chat_llama, size):
    task = TextGenerationTask.for_finetuning(tiny_chat_llama, FinetuneConfig())
    texts = ["I love this movie, it is great", "The weather is nice today", "What a wonderful day in the park"]
    train = [Record({"text": t}, f"train.txt, line {2 * i + 1}") for i, t in enumerate(texts)]
    chat = Record({"prompt": "Hi", "completion": "yes"}, "chat.jsonl, line 1")
    evaluation = [Record({"text": texts[0]}, "eval.txt, line 1")]
    task.prepare_training([*train, chat], evaluation, FinetuneConfig(max_length=size))
    packed = task._pack_texts([*train, chat])
    stream = [t for text in texts for t in [*ids(task, text, special=True), task.tokenizer.eos_token_id]]
    assert stream[0] == task.tokenizer.bos_token_id and len(stream) == 33
    blocks = [stream[i : i + size] for i in range(0, len(stream), size)]
    # A short remainder is kept (and padded in batches); a last token alone has nothing to learn and is dropped.
    expected = blocks if size == 20 else blocks[:-1]
    assert [len(b) for b in expected] == ([20, 13] if size == 20 else [16, 16])
    features = [task.encode_example(r.values, r.where) for r in packed[:-1]]
    assert [f["input_ids"] for f in features] == expected
    assert all(f["labels"] == f["input_ids"] and f["attention_mask"] == [1] * len(f["input_ids"]) for f in features)
    assert packed[0].where == "packed block 0 (train.txt, line 1 to train.txt, line 3)"
    assert packed[-1] is chat and packed[-2].where == "packed block 1 (train.txt, line 3 to train.txt, line 5)"
    packed_eval = task._pack_texts(evaluation)
    assert len(packed_eval) == 1 and packed_eval[0].where == "packed block 0 (eval.txt, line 1)"


def test_blocks_default_to_512_tokens_or_the_model_context(tiny_gpt2):
    task = TextGenerationTask.for_finetuning(tiny_gpt2, FinetuneConfig())
    train = [Record({"text": " ".join(["the train leaves at nine"] * 40)}, "record 0")]
    task.prepare_training(train, [], FinetuneConfig())
    assert task.train_max_length == 64  # GPT-2's n_positions, below the default 512
    lengths = [len(f["input_ids"]) for f in task.encode_records(train)]
    assert len(lengths) >= 3 and lengths[:-1] == [64] * (len(lengths) - 1) and lengths[-1] <= 64


def test_batches_pad_labels_with_minus_100_and_to_multiples_of_8_under_mixed_precision(chat_task, tiny_chat_llama):
    features = [
        chat_task.encode_example({"prompt": p, "completion": " yes"}, "x") for p in ("Hi", "What a wonderful day")
    ]
    batch = chat_task.training_collate(features)
    short = len(features[0]["input_ids"])
    assert batch["labels"][0, short:].eq(-100).all() and batch["attention_mask"][0, short:].eq(0).all()
    task = TextGenerationTask.for_finetuning(tiny_chat_llama, FinetuneConfig())
    task.prepare_training([], [], FinetuneConfig(mixed_precision="bf16"))
    assert task.training_collate(features)["input_ids"].shape[1] % 8 == 0


# ------------------------------------------------------------------------------------ answer-only labels


def test_a_conversation_learns_exactly_the_assistant_answers(chat_task):
    encoded = chat_task.encode_example({"messages": CONVERSATION}, "record 0")
    # ChatML written out by hand: the labels cover each answer and its end token, nothing else.
    pieces = [
        ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhen does the train leave?<|im_end|>\n"
         "<|im_start|>assistant\n", False),
        ("At nine in the morning<|im_end|>", True),
        ("\n<|im_start|>user\nAnd the weather?<|im_end|>\n<|im_start|>assistant\n", False),
        ("The weather is nice today<|im_end|>", True),
        ("\n", False),
    ]  # fmt: skip
    expected_ids = [t for text, _ in pieces for t in ids(chat_task, text)]
    expected_labels = [t if learned else -100 for text, learned in pieces for t in ids(chat_task, text)]
    assert encoded["input_ids"] == expected_ids
    assert encoded["labels"] == expected_labels
    learned = [t for t in encoded["labels"] if t != -100]
    assert chat_task.tokenizer.decode(learned) == "At nine in the morning<|im_end|>The weather is nice today<|im_end|>"
    # What the model reads is exactly what generation sends it: the rendered conversation.
    assert chat_task.tokenizer.decode(encoded["input_ids"]) == chat_task.tokenizer.apply_chat_template(
        CONVERSATION, tokenize=False
    )


def test_an_instruction_on_a_chat_model_is_one_user_turn_and_its_answer(chat_task):
    encoded = chat_task.encode_example({"prompt": "What a wonderful", "completion": "day in the park"}, "record 0")
    prompt = ids(chat_task, "<|im_start|>user\nWhat a wonderful<|im_end|>\n<|im_start|>assistant\n")
    answer = ids(chat_task, "day in the park<|im_end|>")
    assert encoded["input_ids"] == [*prompt, *answer, *ids(chat_task, "\n")]
    assert encoded["labels"] == [*[-100] * len(prompt), *answer, -100]


def test_an_instruction_on_a_base_model_is_prompt_then_completion_and_eos(base_task):
    encoded = base_task.encode_example({"prompt": "What a wonderful", "completion": " day in the park"}, "record 0")
    prompt = ids(base_task, "What a wonderful", special=True)  # the tokenizer's usual bos, as at generation time
    answer = [*ids(base_task, " day in the park"), base_task.tokenizer.eos_token_id]
    assert encoded["input_ids"] == [*prompt, *answer]
    assert encoded["labels"] == [*[-100] * len(prompt), *answer]


def test_messages_as_json_text_in_a_csv_cell_are_read(chat_task):
    as_list = chat_task.encode_example({"messages": CONVERSATION}, "record 0")
    assert chat_task.encode_example({"messages": json.dumps(CONVERSATION)}, "data.csv, row 2") == as_list


def test_an_answer_cut_off_by_max_length_is_an_error(tiny_chat_llama):
    task = TextGenerationTask.for_finetuning(tiny_chat_llama, FinetuneConfig())
    task.prepare_training([], [], FinetuneConfig(max_length=8))
    with pytest.raises(DataError, match="record 4: nothing left to learn.*max_length=8"):
        task.encode_example({"messages": CONVERSATION}, "record 4")


# ------------------------------------------------------------------------------------------- perplexity


def test_perplexity_is_per_token_and_ignores_padding_and_prompts(chat_task):
    import torch

    features = [chat_task.encode_example(r, f"record {i}") for i, r in enumerate(TRAINING_RECORDS[1:])]
    features.append({"input_ids": ids(chat_task, MEMO, True), "labels": ids(chat_task, MEMO, True),
                     "attention_mask": [1] * len(ids(chat_task, MEMO, True))})  # fmt: skip
    model = chat_task.model.eval()
    with torch.no_grad():
        sums, counts = chat_task.eval_predictions(model, chat_task.training_collate(features))
        # One by one, without padding, transformers' own loss is the mean over the learned tokens.
        for feature, total, count in zip(features, sums, counts, strict=True):
            single = chat_task.training_collate([feature])
            assert count == sum(label != -100 for label in feature["labels"][1:])
            assert total / count == pytest.approx(float(chat_task.training_loss(model, single)), rel=1e-5)
    metrics = chat_task.compute_metrics(sums, counts)
    assert metrics["perplexity"] == pytest.approx(math.exp(sum(sums) / sum(counts)))
    assert metrics["eval_tokens"] == sum(counts)


# ------------------------------------------------------------------------------------------ fine-tunes


def test_full_fine_tune_learns_a_text_and_reloads_through_hfpipes_load(tiny_chat_llama, tmp_path):
    out = tmp_path / "full"
    train = [{"text": MEMO}] * 8
    result = hfpipes.finetune("text-generation", train, eval=[{"text": MEMO}], model=tiny_chat_llama,
                              output_dir=str(out), max_steps=40, batch_size=2, max_length=32, **FAST)  # fmt: skip
    losses = [e["train_loss"] for e in result.history if "train_loss" in e]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 * 0.2
    assert result.metrics["perplexity"] < 1.5  # learned by heart
    assert json.loads((out / "metrics.json").read_text())["perplexity"] == result.metrics["perplexity"]
    assert "| perplexity |" in (out / "README.md").read_text()
    with hfpipes.load("text-generation", model=str(out), device="cpu") as pipe:
        assert pipe.has_chat_template  # the tokenizer was saved with its template
        continued = pipe("The train", apply_chat_template=False, **GREEDY)["generated_text"]
    assert continued.startswith(" leaves at nine in the morning")


def test_chat_fine_tune_with_lora_saves_an_adapter_that_reloads_and_answers(tiny_chat_llama, tmp_path):
    out = tmp_path / "lora"
    question = [{"role": "user", "content": "When does the train leave?"}]
    train = [{"messages": [*question, {"role": "assistant", "content": "At nine in the morning"}]}] * 4
    with hfpipes.load("text-generation", model=tiny_chat_llama, device="cpu") as base:
        before = base(question, **GREEDY)["generated_text"]
    # A random tiny model's output layer is too small to be confident about anything, whatever adapters change
    # before it (a real model's is not), so it is trained along with them.
    peft = {"r": 8, "alpha": 16, "modules_to_save": ["lm_head"]}
    result = hfpipes.finetune("text-generation", train, eval=train[:1], model=tiny_chat_llama, output_dir=str(out),
                              max_steps=30, batch_size=4, peft=peft, **FAST)  # fmt: skip
    assert result.metrics["perplexity"] < 2.0
    for name in ("adapter_config.json", "adapter_model.safetensors", "hfpipes_adapter.json", "tokenizer.json"):
        assert (out / name).is_file(), name
    assert not (out / "model.safetensors").exists()
    assert json.loads((out / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    with hfpipes.load("text-generation", model=str(out), device="cpu") as pipe:
        assert pipe.has_chat_template
        after = pipe(question, **GREEDY)["generated_text"]
    assert before != "At nine in the morning"
    assert after == "At nine in the morning"  # stops at the learned end token


def test_texts_chats_and_instructions_train_together(text_generation_case, chat_task, tmp_path):
    result = hfpipes.finetune("text-generation", text_generation_case.train, eval=TRAINING_RECORDS,
                              model=text_generation_case.model, output_dir=str(tmp_path), max_steps=2, batch_size=4,
                              **FAST)  # fmt: skip
    assert result.metrics["step"] == 2 and math.isfinite(result.metrics["train_loss"])
    # Evaluated: every token of the text after the first, and the answers of the conversation and the instruction.
    encoded = [chat_task.encode_example(r, f"record {i}") for i, r in enumerate(TRAINING_RECORDS)]
    assert result.metrics["eval_tokens"] == sum(sum(label != -100 for label in e["labels"][1:]) for e in encoded)
    assert math.isfinite(result.metrics["perplexity"])


def test_recipe_is_valid_and_names_the_default_model():
    recipe = load_recipe("tasks/text-generation.yaml", ["max_steps=2"])
    assert recipe["task"] == "text-generation" and recipe["model"] == "embedded:smollm2-135m-instruct"
    assert recipe["train"] == "corpus:licenses-text/train" and recipe["eval"] == "corpus:licenses-text/validation"
    config = FinetuneConfig.from_dict({k: v for k, v in recipe.items() if k not in ("task", "model", "train", "eval")})
    assert config.max_steps == 2 and config.peft


# ------------------------------------------------------------------------------------------- bad data


@pytest.mark.parametrize(
    "record, message",
    [
        ({"messages": [{"role": "user", "content": "Hi"}, {"role": "robot", "content": "Hello"}]},
         "record 1: 'messages': message 1 has role 'robot'; expected one of system, user, assistant, tool"),
        ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant"}]},
         "record 1: 'messages': message 1 has no 'content' key"),
        ({"messages": [{"role": "user", "content": "Hi"}]}, "record 1: 'messages' has no assistant message"),
        ({"messages": "[{'role': 'user'"}, "record 1: 'messages' is a string but not JSON"),
        ({"prompt": "Hi"}, "record 1: the record has no 'completion'"),
        ({"text": "Hi", "messages": CONVERSATION}, "record 1: the record has 'text' and 'messages'"),
        ({"content": "Hi"}, "record 1: expected a 'text' column .* found none"),
        ({"text": 3}, "record 1: 'text': expected a text \\(str\\), got int"),
    ],
)  # fmt: skip
def test_bad_records_are_data_errors_naming_the_row(tiny_chat_llama, tmp_path, record, message):
    with pytest.raises(DataError, match=message):
        hfpipes.finetune("text-generation", [TRAINING_RECORDS[0], record], model=tiny_chat_llama,
                         output_dir=str(tmp_path), max_steps=1)  # fmt: skip
    assert not any(tmp_path.iterdir())  # refused before training


def test_a_bad_row_in_a_jsonl_file_names_its_line(tiny_chat_llama, tmp_path):
    data = tmp_path / "chats.jsonl"
    bad = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None}]}
    data.write_text("\n".join(json.dumps(r) for r in [*TRAINING_RECORDS, bad]) + "\n")
    with pytest.raises(DataError, match=r"chats\.jsonl, line 4: 'messages': message 1: 'content' must be a string"):
        hfpipes.finetune("text-generation", str(data), model=tiny_chat_llama, output_dir=str(tmp_path / "out"))


def test_messages_on_a_model_without_chat_template_are_an_error(tiny_gpt2, tmp_path):
    with pytest.raises(DataError, match="record 0: 'messages' need a chat template.*'prompt' and 'completion'"):
        hfpipes.finetune("text-generation", [{"messages": CONVERSATION}], model=tiny_gpt2, output_dir=str(tmp_path))
