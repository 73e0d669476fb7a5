"""Fine-tuning translation models on tiny offline models: seq2seq labels, causal LM prompts masked out of the loss,
evaluation (BLEU, chrF) that scores what the saved model translates, LoRA adapters, and bad data."""

from __future__ import annotations

import shutil

import pytest
import sacrebleu
import torch

import hfpipes
from hfpipes.errors import ConfigError, DataError
from hfpipes.training import FinetuneConfig, load_recipe
from tests.fixtures.translation import TRAIN_PAIRS

SOURCES = [pair["source"] for pair in TRAIN_PAIRS]
TARGETS = [pair["target"] for pair in TRAIN_PAIRS]
# max_target_length bounds the evaluation's generation (and the labels: long enough not to cut them), so the
# reloaded model can be asked for the same.
FAST = dict(batch_size=4, log_every=1, save_every=1000, max_target_length=24)
GERMAN = {"task_options": {"tgt_lang": "de"}}


def _task(model: str, **config):
    """A loaded translation task, prepared for fine-tuning as `hfpipes.finetune` prepares it."""
    task = hfpipes.load("translation", model=model, device="cpu")
    task.prepare_training([], [], FinetuneConfig.from_dict(config))
    return task


# ------------------------------------------------------------------------------------------- training runs


@pytest.mark.parametrize(
    "name, steps, learning_rate, options",
    [
        ("trainable_marian", 25, 3e-2, {}),
        ("trainable_llama", 15, 1e-2, GERMAN),
        ("trainable_llama_chat", 15, 1e-2, GERMAN),
    ],
)
def test_loss_goes_down_and_the_saved_model_translates_as_evaluated(
    request, tmp_path, name, steps, learning_rate, options
):
    model = request.getfixturevalue(name)
    result = hfpipes.finetune(
        "translation", TRAIN_PAIRS, eval=TRAIN_PAIRS, model=model, output_dir=str(tmp_path / "out"), max_steps=steps,
        learning_rate=learning_rate, eval_every=steps, **FAST, **options,
    )  # fmt: skip
    losses = [e["train_loss"] for e in result.history if "train_loss" in e]
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3
    assert {"eval_loss", "bleu", "chrf"} <= result.metrics.keys()
    with hfpipes.load("translation", model=result.output_dir, device="cpu") as pipe:
        call_options = {"tgt_lang": "de"} if options else {}
        translations = [r["translation_text"] for r in pipe(SOURCES, max_new_tokens=24, **call_options)]
    assert any(translations)
    # The evaluation scored what the saved model writes: nothing it trained was lost on the way to disk.
    assert sacrebleu.corpus_chrf(translations, [TARGETS]).score == pytest.approx(result.metrics["chrf"], abs=1e-6)


def test_lora_saves_an_adapter_that_reloads_with_or_without_its_tokenizer(trainable_llama, tmp_path):
    out = tmp_path / "lora"
    peft = {"type": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    hfpipes.finetune(
        "translation", TRAIN_PAIRS, model=trainable_llama, output_dir=str(out), max_steps=8, learning_rate=2e-2,
        peft=peft, **FAST, **GERMAN,
    )  # fmt: skip
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists()  # the config and the weights are the base model's
    with hfpipes.load("translation", model=str(out), device="cpu") as pipe:
        assert pipe.route == "few-shot"
        tuned = pipe(SOURCES, tgt_lang="de", max_new_tokens=8)
    with hfpipes.load("translation", model=trainable_llama, device="cpu") as base:
        assert tuned != base(SOURCES, tgt_lang="de", max_new_tokens=8)
    # An adapter shipped without the base's (large) tokenizer takes the base's.
    bare = tmp_path / "bare"
    shutil.copytree(out, bare, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json", "checkpoints"))
    with hfpipes.load("translation", model=str(bare), device="cpu") as pipe:
        assert pipe(SOURCES, tgt_lang="de", max_new_tokens=8) == tuned


@pytest.mark.parametrize("name, task_type", [("tiny_marian", "SEQ_2_SEQ_LM"), ("tiny_llama", "CAUSAL_LM")])
def test_peft_task_type_follows_the_route(request, name, task_type):
    with hfpipes.load("translation", model=request.getfixturevalue(name), device="cpu") as pipe:
        assert pipe.peft_task_type == task_type


# ------------------------------------------------------------------------------------------ encoding


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_llama_chat"])
def test_causal_lm_labels_mask_exactly_the_prompt_the_route_builds(request, name):
    task = _task(request.getfixturevalue(name), **GERMAN)
    feature = task.encode_example({"source": "Good morning", "target": "Guten Morgen"}, "record 0")
    prompt = task.preprocess(["Good morning"], 0, tgt_lang="de")[0]["input_ids"]  # what translating it feeds
    n = len(prompt)
    assert feature["input_ids"][:n] == prompt
    assert feature["labels"][:n] == [-100] * n
    assert feature["labels"][n:] == feature["input_ids"][n:] and feature["attention_mask"] == [1] * len(
        feature["labels"]
    )
    # The completion ends where generation stops: the few-shot example's line end, or the chat's end of turn.
    expected = {"tiny_llama": " Guten Morgen\n\n", "tiny_llama_chat": "Guten Morgen</s>"}[name]
    assert task.tokenizer.decode(feature["labels"][n:]) == expected


def test_causal_lm_loss_counts_only_labelled_positions_and_equals_the_models_own(tiny_llama):
    task = _task(tiny_llama, **GERMAN)
    batch = task.training_collate([task.encode_example(pair, f"record {i}") for i, pair in enumerate(TRAIN_PAIRS)])
    assert (batch["labels"] == -100).sum() > batch["labels"].numel() // 2  # the prompts are most of the batch
    with torch.no_grad():
        assert task.training_loss(task.model, batch).item() == pytest.approx(task.model(**batch).loss.item(), rel=1e-5)


@pytest.mark.parametrize(
    "name, prompt",
    [("tiny_marian", "Good morning"), ("tiny_t5", "translate English to German: Good morning")],
)
def test_seq2seq_labels_are_the_target_token_ids(request, name, prompt):
    task = _task(request.getfixturevalue(name), **({} if name == "tiny_marian" else GERMAN))
    feature = task.encode_example({"source": "Good morning", "target": "Guten Morgen"}, "record 0")
    assert feature["input_ids"] == task.tokenizer(prompt)["input_ids"]
    assert feature["labels"] == task.tokenizer(text_target="Guten Morgen")["input_ids"]
    features = [feature, task.encode_example(TRAIN_PAIRS[2], "record 1")]
    batch = task.training_collate(features)
    # Inputs and labels are padded apart (they differ in length); labels with -100, which the loss ignores.
    assert batch["input_ids"].shape[1] == max(len(f["input_ids"]) for f in features)
    assert batch["labels"].shape[1] == max(len(f["labels"]) for f in features)
    assert batch["labels"][0, len(feature["labels"]) :].eq(-100).all()


def test_records_can_name_their_own_target_language(tiny_nllb):
    task = _task(tiny_nllb, max_target_length=12)
    records = [
        {"source": "Good morning", "target": "Guten Morgen", "tgt_lang": "de"},
        {"source": "Thank you", "target": "Merci", "tgt_lang": "fra_Latn"},
    ]
    features = [task.encode_example(record, f"record {i}") for i, record in enumerate(records)]
    assert task.tokenizer.convert_ids_to_tokens(features[0]["input_ids"][0]) == "eng_Latn"
    assert [task.tokenizer.convert_ids_to_tokens(f["labels"][0]) for f in features] == ["deu_Latn", "fra_Latn"]
    # Evaluation generates each row into its own language, as translating it does.
    with torch.no_grad():
        predictions, references = task.eval_predictions(task.model, task.training_collate(features))
    assert references == ["Guten Morgen", "Merci"]
    assert predictions == [
        task(record["source"], tgt_lang=record["tgt_lang"], max_new_tokens=12)["translation_text"] for record in records
    ]


def test_compute_metrics_are_bleu_and_chrf(tiny_marian):
    task = _task(tiny_marian)
    metrics = task.compute_metrics(["Guten Morgen", "Danke"], ["Guten Morgen", "Vielen Dank"])
    assert metrics.keys() == {"bleu", "chrf"} and 0 < metrics["chrf"] < 100
    assert task.main_metric == "chrf" and task.greater_is_better


# ------------------------------------------------------------------------------------------- bad data


@pytest.mark.parametrize(
    "records, options, error, message",
    [
        ([TRAIN_PAIRS[0], {"source": "Hello"}], GERMAN, DataError, r"record 1: missing column 'target'"),
        (
            [TRAIN_PAIRS[0], {"source": "Hello", "target": 3}],
            GERMAN,
            DataError,
            r"record 1, column 'target': expected a text",
        ),
        (
            [{**TRAIN_PAIRS[0], "tgt_lang": "ja"}],
            GERMAN,
            DataError,
            r"record 0: tgt_lang: 'ja' is not supported.*Supported: de",
        ),
        (TRAIN_PAIRS, {}, DataError, r"record 0: no tgt_lang: .*task_options: \{tgt_lang: \.\.\.\}"),
        (
            [{**TRAIN_PAIRS[0], "tgt_lang": "en"}],
            {},
            DataError,
            r"record 0: the source and target languages are both 'en'",
        ),
        (
            TRAIN_PAIRS,
            {"task_options": {"tgt_lang": "xx"}},
            ConfigError,
            r"task_options.tgt_lang: 'xx' is not supported",
        ),
        (TRAIN_PAIRS, {"task_options": {"target": "de"}}, ConfigError, r"task_options: unknown key\(s\) \['target'\]"),
    ],
)
def test_bad_data_is_refused_before_training_naming_the_record(tiny_llama, tmp_path, records, options, error, message):
    with pytest.raises(error, match=message):
        hfpipes.finetune("translation", records, model=tiny_llama, output_dir=str(tmp_path), max_steps=1, **options)
    assert not (tmp_path / "config.json").exists()


def test_a_prompt_longer_than_max_length_is_refused_naming_the_record(tiny_llama):
    task = _task(tiny_llama, max_length=20, **GERMAN)
    with pytest.raises(DataError, match=r"record 3: the prompt is \d+ tokens long.*max_length=20"):
        task.encode_example(TRAIN_PAIRS[0], "record 3")


def test_the_recipe_maps_onto_the_fine_tuning_options():
    recipe = load_recipe("tasks/translation.yaml")
    assert recipe["task"] == "translation" and recipe["model"] == "embedded:gemma-3-270m"
    assert recipe["train"] == "corpus:gettext-en-de/train" and recipe["peft"]["type"] == "lora"
    config = FinetuneConfig.from_dict({k: v for k, v in recipe.items() if k not in ("task", "model", "train", "eval")})
    assert config.task_options == {"src_lang": "en", "tgt_lang": "de"}
