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
