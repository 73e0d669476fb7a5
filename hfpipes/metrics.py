"""Evaluation metrics as `evaluate.Metric` modules that work offline.

`evaluate.load("accuracy")` fetches the metric's script from the Hub, which fails without a network; these
are the same metrics as local `evaluate.Metric` subclasses (so `add_batch`/`compute` work as usual), computed
with the maintained libraries behind the Hub versions: sacrebleu for BLEU/chrF, jiwer for WER/CER.

Example:

```python
>>> from hfpipes.metrics import load_metric
>>> load_metric("accuracy").compute(predictions=[0, 1, 1], references=[0, 1, 0])
{'accuracy': 0.6666666666666666}
>>> load_metric("wer").compute(predictions=["go forward"], references=["go forward ten meters"])
{'wer': 0.5}
```
"""

from __future__ import annotations

from typing import Any

import datasets
import evaluate

__all__ = ["load_metric", "classification_metrics", "METRICS"]

_CLASS_FEATURES = datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")})
_TEXT_FEATURES = datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")})


def _info(description: str, features: datasets.Features) -> evaluate.MetricInfo:
    return evaluate.MetricInfo(description=description, citation="", inputs_description="", features=features)


class Accuracy(evaluate.Metric):
    """Fraction of predictions equal to the references."""

    def _info(self) -> evaluate.MetricInfo:
        return _info("Accuracy: fraction of correct predictions.", _CLASS_FEATURES)

    def _compute(self, predictions: list[int], references: list[int]) -> dict[str, float]:
        return {"accuracy": sum(p == r for p, r in zip(predictions, references)) / max(len(references), 1)}


class F1(evaluate.Metric):
    """Macro-averaged F1 over the classes present in predictions or references."""

    def _info(self) -> evaluate.MetricInfo:
        return _info("Macro F1: the unweighted mean of per-class F1 scores.", _CLASS_FEATURES)

    def _compute(self, predictions: list[int], references: list[int]) -> dict[str, float]:
        scores = []
        for label in set(predictions) | set(references):
            tp = sum(p == label and r == label for p, r in zip(predictions, references))
            fp = sum(p == label and r != label for p, r in zip(predictions, references))
            fn = sum(p != label and r == label for p, r in zip(predictions, references))
            scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
        return {"f1": sum(scores) / len(scores) if scores else 0.0}


class Bleu(evaluate.Metric):
    """Corpus BLEU (sacrebleu, default tokenizer 13a), 0-100."""

    def _info(self) -> evaluate.MetricInfo:
        return _info("SacreBLEU corpus BLEU.", _TEXT_FEATURES)

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        import sacrebleu

        return {"bleu": sacrebleu.corpus_bleu(predictions, [references]).score}


class ChrF(evaluate.Metric):
    """Corpus chrF (sacrebleu, character 6-grams, beta 2), 0-100."""

    def _info(self) -> evaluate.MetricInfo:
        return _info("SacreBLEU corpus chrF.", _TEXT_FEATURES)

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        import sacrebleu

        return {"chrf": sacrebleu.corpus_chrf(predictions, [references]).score}


class WordErrorRate(evaluate.Metric):
    """Word error rate (jiwer) over the corpus: total edits / total reference words."""

    def _info(self) -> evaluate.MetricInfo:
        return _info("Word error rate.", _TEXT_FEATURES)

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        import jiwer

        return {"wer": jiwer.wer(references, predictions)}


class CharacterErrorRate(evaluate.Metric):
    """Character error rate (jiwer) over the corpus."""

    def _info(self) -> evaluate.MetricInfo:
        return _info("Character error rate.", _TEXT_FEATURES)

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        import jiwer

        return {"cer": jiwer.cer(references, predictions)}


METRICS: dict[str, type[evaluate.Metric]] = {
    "accuracy": Accuracy,
    "f1": F1,
    "bleu": Bleu,
    "chrf": ChrF,
    "wer": WordErrorRate,
    "cer": CharacterErrorRate,
}


def load_metric(name: str, **kwargs: Any) -> evaluate.Metric:
    """An offline `evaluate.Metric` by name (`accuracy`, `f1`, `bleu`, `chrf`, `wer`, `cer`).

    Example:

    ```python
    >>> load_metric("chrf").compute(predictions=["Guten Morgen"], references=["Guten Morgen"])
    {'chrf': 100.0}
    ```
    """
    if name not in METRICS:
        raise KeyError(f"Unknown metric {name!r}; available: {', '.join(METRICS)}")
    return METRICS[name](**kwargs)


def classification_metrics(predictions: list[int], references: list[int]) -> dict[str, float]:
    """Accuracy and macro-F1, the metrics of the classification tasks."""
    return {
        **load_metric("accuracy").compute(predictions=predictions, references=references),
        **load_metric("f1").compute(predictions=predictions, references=references),
    }
