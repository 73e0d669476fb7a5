"""Sentiment analysis (text classification): any `AutoModelForSequenceClassification` and its tokenizer.

A window of texts is tokenized in one call, without padding; the base class sorts the encodings by length
and pads each batch only to its own longest member. Texts longer than the model's maximum length are
truncated with a warning (never an index error).

Fine-tuning (`hfpipes.finetune`, columns `text` and `label`): a new head for the data's label set (the encoder keeps
its weights), cross-entropy loss, accuracy and macro F1 on the evaluation data. On imbalanced data,
`task_options: {class_weights: balanced}` weights each class by `n_examples / (n_classes * n_of_class)` (scikit-learn's
`class_weight="balanced"`), so all the data can be used without the model leaning to the majority class; a mapping
such as `{class_weights: {negative: 1, positive: 2.5}}` sets the weights by hand.

Example:

```python
>>> import hfpipes
>>> hfpipes.run("sentiment", "I love it")
{'label': 'positive', 'score': 0.98}
>>> hfpipes.run("sentiment", "It was fine", top_k=None)
[{'label': 'neutral', 'score': 0.71}, {'label': 'positive', 'score': 0.2}, {'label': 'negative', 'score': 0.09}]
```
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..batching import pad_sequences
from ..data import label_id, label_set
from ..errors import ConfigError, InvalidInputError
from ..inputs import load_text
from ..task import Task

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("hfpipes")

# Tokenizers report 1e30 for "no limit"; then the model's position embeddings set the limit.
_NO_LIMIT = 100_000
# Training options (`task_options`) of this task.
TRAINING_OPTIONS = ("class_weights",)


class SentimentTask(Task):
    """Label texts with a sequence-classification model.

    Call options:
        top_k (`int` or `None`, *optional*, defaults to 1):
            With 1, each result is one `{"label", "score"}` dict; with `k > 1` a list of the `k` best; with `None`,
            all labels sorted by score.
        function_to_apply (`str`, *optional*):
            `"softmax"`, `"sigmoid"` or `"none"`. Defaults to what the model's config implies (softmax for
            single-label models, sigmoid for multi-label or one-logit models, none for regression), as
            `transformers.pipeline("text-classification")` does.
        max_length (`int`, *optional*):
            Truncate inputs to this many tokens; defaults to the model's maximum.
    """

    task = "sentiment"
    batch_budget = 8192  # tokens per batch
    max_batch_size = 64
    window_size = 2048

    def _load(self, location: Any, **kwargs: Any) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        # The model first: a model of another task is then reported as such, not as a missing tokenizer.
        self.model = self.from_pretrained(AutoModelForSequenceClassification, **kwargs)
        self.tokenizer = self.from_pretrained(AutoTokenizer, **kwargs)
        limits = (self.tokenizer.model_max_length, getattr(self.model.config, "max_position_embeddings", None))
        self.max_length = min((limit for limit in limits if limit and limit < _NO_LIMIT), default=512)
        self._pad_values = {"input_ids": self.tokenizer.pad_token_id or 0, "attention_mask": 0}
        if "token_type_ids" in self.tokenizer.model_input_names:
            self._pad_values["token_type_ids"] = 0

    def _sanitize_parameters(self, top_k: int | None | str = "", function_to_apply: str | None = None, max_length: int | None = None):
        preprocess, postprocess = {}, {}
        if max_length is not None:
            if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
                raise InvalidInputError(f"max_length: expected an integer >= 2, got {max_length!r}.")
            preprocess["max_length"] = min(max_length, self.max_length)
        if top_k != "":
            if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
                raise InvalidInputError(f"top_k: expected a positive integer or None (all labels), got {top_k!r}.")
            postprocess["top_k"] = top_k
        if function_to_apply is not None:
            if str(function_to_apply).lower() not in ("softmax", "sigmoid", "none"):
                raise InvalidInputError(f"function_to_apply: expected 'softmax', 'sigmoid' or 'none', got {function_to_apply!r}.")
            postprocess["function_to_apply"] = str(function_to_apply).lower()
        return preprocess, {}, postprocess

    def preprocess(self, inputs: list[Any], start: int, max_length: int | None = None) -> list[dict]:
        texts = [load_text(text, f"input {start + i}") for i, text in enumerate(inputs)]
        limit = max_length or self.max_length
        encoded = self.tokenizer(texts, truncation=True, max_length=limit)
        truncated = [start + i for i, enc in enumerate(encoded.encodings or []) if enc.overflowing]
        if truncated:
            logger.warning(
                "hfpipes sentiment: %d input(s) longer than %d tokens were truncated (first: input %d).",
                len(truncated), limit, truncated[0],
            )  # fmt: skip
        keys = list(self._pad_values)
        return [{key: encoded[key][i] for key in keys} for i in range(len(texts))]

    def _collate(self, features: list[dict]) -> dict:
        return pad_sequences(features, self._pad_values)

    def _forward(self, batch: dict) -> dict:
        return {"logits": self.model(**batch).logits.float()}

    def postprocess(self, output: dict, top_k: int | None = 1, function_to_apply: str | None = None) -> Any:
        import torch

        logits = output["logits"]
        config = self.model.config
        if function_to_apply is None:
            if config.problem_type == "regression":
                function_to_apply = "none"
            elif config.problem_type == "multi_label_classification" or config.num_labels == 1:
                function_to_apply = "sigmoid"
            else:
                function_to_apply = "softmax"
        if function_to_apply == "softmax":
            scores = torch.softmax(logits, dim=-1)
        elif function_to_apply == "sigmoid":
            scores = torch.sigmoid(logits)
        else:
            scores = logits
        ranked = [
            {"label": config.id2label.get(i, f"LABEL_{i}"), "score": float(scores[i])}
            for i in torch.argsort(scores, descending=True, stable=True).tolist()
        ]
        if top_k == 1:
            return ranked[0]
        return ranked if top_k is None else ranked[:top_k]

    # ------------------------------------------------------------------------------------- fine-tuning

    train_columns = ("text", "label")
    main_metric = "accuracy"
    greater_is_better = True
    peft_task_type = "SEQ_CLS"

    def prepare_training(self, train: list, eval: list, config: Any) -> None:
        super().prepare_training(train, eval, config)
        self.check_task_options(config.task_options, TRAINING_OPTIONS, "weights of the classes in the loss")
        labels = label_set(train, eval, config.labels)
        if [self.model.config.id2label.get(i) for i in range(self.model.config.num_labels)] != labels:
            from transformers import AutoModelForSequenceClassification

            # A new head for this label set (the encoder keeps its weights; the old head's shape may differ).
            self.model = self.from_pretrained(
                AutoModelForSequenceClassification, num_labels=len(labels),
                id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
                ignore_mismatched_sizes=True,
            )  # fmt: skip
        self.train_max_length = min(config.max_length or self.max_length, self.max_length)
        self._label2id = {label: i for i, label in enumerate(labels)}
        self._class_weights = _class_weights(config.task_options.get("class_weights"), train, labels)
        if self._class_weights is not None:
            # What the model's own loss records on its first labelled forward pass, which the weighted loss skips.
            self.model.config.problem_type = "single_label_classification"
            logger.info("hfpipes sentiment: class weights in the loss: %s", dict(zip(labels, self._class_weights, strict=True)))

    def encode_example(self, example: dict, where: str) -> dict:
        text = load_text(example["text"], where)
        encoded = self.tokenizer(text, truncation=True, max_length=self.train_max_length)
        return {**{key: encoded[key] for key in self._pad_values}, "labels": label_id(self._label2id, example["label"], where)}

    def training_collate(self, features: list[dict]) -> dict:
        import torch

        multiple = 8 if self.train_config.mixed_precision != "no" else None  # tensor cores want multiples of 8
        batch = pad_sequences(features, self._pad_values, pad_to_multiple_of=multiple)
        batch["labels"] = torch.tensor([f["labels"] for f in features])
        return batch

    def training_loss(self, model: Any, batch: dict) -> "torch.Tensor":
        if self._class_weights is None:
            return model(**batch).loss
        import torch

        # The same cross-entropy the model computes, with each example weighted by its class (as
        # `torch.nn.CrossEntropyLoss(weight=...)` does: the mean is taken over the weights).
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        weight = torch.tensor(self._class_weights, device=logits.device)  # float32, like the logits below
        return torch.nn.functional.cross_entropy(logits.float(), batch["labels"], weight=weight)

    def eval_predictions(self, model: Any, batch: dict) -> tuple[list, list]:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        return logits.argmax(-1).tolist(), batch["labels"].tolist()

    def compute_metrics(self, predictions: list, references: list) -> dict[str, float]:
        from ..metrics import classification_metrics

        return classification_metrics(predictions, references)


def _class_weights(value: Any, train: list, labels: list[str]) -> list[float] | None:
    """The loss weight of each label in `labels` order, from `task_options.class_weights` (None: unweighted)."""
    from collections import Counter

    if value is None:
        return None
    if value == "balanced":
        counts = Counter(str(record.values["label"]).strip() for record in train)
        return [len(train) / (len(labels) * counts[label]) if counts[label] else 0.0 for label in labels]
    if isinstance(value, dict):
        unknown = sorted(set(map(str, value)) - set(labels))
        if unknown:
            raise ConfigError(f"task_options.class_weights: unknown label(s) {unknown}; the labels are {labels}.")
        weights = [value.get(label, 1.0) for label in labels]
        if all(isinstance(w, int | float) and not isinstance(w, bool) and w >= 0 for w in weights) and any(weights):
            return [float(w) for w in weights]
    raise ConfigError(
        f"task_options.class_weights: expected 'balanced' or a mapping label -> non-negative weight, got {value!r}."
    )
