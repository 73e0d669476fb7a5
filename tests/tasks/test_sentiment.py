import logging
import random

import pytest

import hfpipes
from hfpipes.errors import InvalidInputError


@pytest.fixture(scope="module")
def pipe(tiny_text_classifier):
    with hfpipes.load("sentiment", model=tiny_text_classifier, device="cpu") as loaded:
        yield loaded


@pytest.fixture(scope="module")
def peer(tiny_text_classifier):
    from transformers import pipeline

    return pipeline("text-classification", model=tiny_text_classifier, device="cpu")


TEXTS = [
    "I love it",
    "This film was awful and boring",
    "What a wonderful day in the park, the weather is nice today and everyone smiled",
    "meh",
    "The food was cold and the service terrible, I hate waiting in long lines",
]


def test_same_labels_and_scores_as_transformers_pipeline(pipe, peer):
    ours = pipe(TEXTS)
    theirs = peer(TEXTS)
    for a, b in zip(ours, theirs):
        assert a["label"] == b["label"]
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_top_k_none_returns_all_labels_sorted_like_the_pipeline(pipe, peer):
    ours = pipe(TEXTS[0], top_k=None)
    theirs = peer(TEXTS[0], top_k=None)
    assert [r["label"] for r in ours] == [r["label"] for r in theirs]
    assert [r["score"] for r in ours] == pytest.approx([r["score"] for r in theirs], abs=1e-5)
    assert ours[0]["score"] >= ours[1]["score"]
    assert {r["label"] for r in ours} == {"negative", "positive"}


def test_top_k_two_returns_a_list(pipe):
    assert len(pipe("fine", top_k=2)) == 2
    with pytest.raises(InvalidInputError, match="top_k"):
        pipe("fine", top_k=0)


def test_shuffled_mixed_lengths_match_one_by_one_in_input_order(pipe):
    texts = [" ".join(random.Random(i).choices(TEXTS, k=i % 7 + 1)) for i in range(60)]
    random.Random(0).shuffle(texts)
    batched = pipe(texts, batch_size=8)
    single = [pipe(t) for t in texts]
    for a, b in zip(batched, single):
        assert a["label"] == b["label"] and a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_long_text_is_truncated_with_a_warning_not_an_error(pipe, caplog):
    with caplog.at_level(logging.WARNING, logger="hfpipes"):
        result = pipe(["short", "word " * 5000])
    assert len(result) == 2
    assert "truncated" in caplog.text and "input 1" in caplog.text


def test_generator_streams_before_the_input_is_exhausted(pipe):
    consumed = []

    def texts():
        for i in range(10_000):
            consumed.append(i)
            yield f"text number {i}"

    first = next(iter(pipe(texts())))
    assert first["label"] in {"negative", "positive"}
    assert len(consumed) < 10_000


def test_datasets_column(pipe):
    from datasets import Dataset

    dataset = Dataset.from_dict({"text": TEXTS, "id": list(range(len(TEXTS)))})
    results = list(pipe(dataset, column="text"))
    assert [r["label"] for r in results] == [r["label"] for r in pipe(TEXTS)]
    with pytest.raises(InvalidInputError, match="column"):
        list(pipe(dataset))
    with pytest.raises(InvalidInputError, match="'nope' is not a column"):
        list(pipe(dataset, column="nope"))


@pytest.mark.parametrize(
    "bad, message",
    [
        (None, "input 1: expected a text"),
        (3, "input 1: expected a text"),
        ("", "input 1: expected a non-empty text"),
        ("   \n", "input 1: expected a non-empty text"),
        (["nested"], "nested lists are not accepted"),
        (b"\xff\xfe bad", "not valid UTF-8"),
    ],
)
def test_bad_text_inputs_name_the_input(pipe, bad, message):
    with pytest.raises(InvalidInputError, match=message):
        pipe(["fine", bad])


# ------------------------------------------------------------------------------------- fine-tuning: class weights


def _prepared(model, records, **config):
    """A sentiment task ready to train on `records`, as `finetune` prepares it."""
    from hfpipes.data import Record
    from hfpipes.tasks.sentiment import SentimentTask
    from hfpipes.training import FinetuneConfig

    config = FinetuneConfig(**config)
    task = SentimentTask.for_finetuning(model, config)
    train = [Record(values=r, where=f"row {i}") for i, r in enumerate(records)]
    task.prepare_training(train, [], config)
    return task, train


# Three negatives to one positive: the imbalance that class weights are for.
IMBALANCED = [{"text": t, "label": "negative"} for t in TEXTS[:3]] + [{"text": TEXTS[3], "label": "positive"}]


def test_balanced_class_weights_are_scikit_learns(tiny_text_classifier):
    import numpy as np
    from sklearn.utils.class_weight import compute_class_weight

    task, _ = _prepared(tiny_text_classifier, IMBALANCED, task_options={"class_weights": "balanced"})
    labels = [r["label"] for r in IMBALANCED]
    expected = compute_class_weight("balanced", classes=np.array(["negative", "positive"]), y=np.array(labels))
    assert task._class_weights == pytest.approx(expected.tolist())  # negative 2/3, positive 2


def test_weighted_loss_is_torchs_weighted_cross_entropy(tiny_text_classifier):
    import torch

    weights = {"negative": 1.0, "positive": 3.0}
    task, train = _prepared(tiny_text_classifier, IMBALANCED, task_options={"class_weights": weights})
    batch = task.training_collate(task.encode_records(train))
    task.model.eval()
    with torch.no_grad():
        logits = task.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        expected = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, 3.0]))(logits, batch["labels"])
        unweighted = task.model(**batch).loss
        assert task.training_loss(task.model, batch).item() == pytest.approx(expected.item(), rel=1e-6)
    assert expected.item() != pytest.approx(unweighted.item())  # the weights did change the loss


def test_without_class_weights_the_loss_is_the_models(tiny_text_classifier):
    import torch

    task, train = _prepared(tiny_text_classifier, IMBALANCED)
    batch = task.training_collate(task.encode_records(train))
    task.model.eval()
    with torch.no_grad():
        assert task.training_loss(task.model, batch).item() == task.model(**batch).loss.item()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"class_weights": "inverse"}, r"class_weights: expected 'balanced' or a mapping"),
        ({"class_weights": {"postive": 2}}, r"unknown label\(s\) \['postive'\]; the labels are \['negative', 'positive'\]"),
        ({"class_weights": {"positive": -1}}, r"class_weights: expected"),
        ({"class_weight": "balanced"}, r"unknown key\(s\) \['class_weight'\].*takes class_weights"),
    ],
)
def test_bad_class_weights_are_config_errors(tiny_text_classifier, tmp_path, options, message):
    from tests.fixtures.common import assert_finetune_refused

    assert_finetune_refused("sentiment", IMBALANCED, message, tmp_path / "out", model=tiny_text_classifier, max_steps=1,
                            task_options=options)  # fmt: skip


def test_a_class_weighted_fine_tune_reloads_as_a_single_label_classifier(tiny_text_classifier, tmp_path):
    out = tmp_path / "out"
    hfpipes.finetune("sentiment", IMBALANCED, model=tiny_text_classifier, output_dir=str(out), max_steps=2,
                     batch_size=4, task_options={"class_weights": "balanced"})  # fmt: skip
    with hfpipes.load("sentiment", model=str(out), device="cpu") as pipe:
        assert pipe.model.config.problem_type == "single_label_classification"
        scores = pipe("I love it", top_k=None)
    assert {s["label"] for s in scores} == {"negative", "positive"}
    assert sum(s["score"] for s in scores) == pytest.approx(1.0)  # softmax, as a single-label classifier
