"""Image classification: any `AutoModelForImageClassification` and its image processor.

Inputs are file paths, URLs, raw bytes, `PIL.Image`s or numpy arrays (see `hfpipes.inputs.load_image`);
grayscale, palette, transparent, CMYK and 16-bit images are converted to RGB. Each image is decoded and
preprocessed on its own (a window of large photos never sits in memory at once), then batched.

Example:

```python
>>> import hfpipes
>>> hfpipes.run("image-classification", "cat.jpg", top_k=2)
[{'label': 'Egyptian cat', 'score': 0.77}, {'label': 'tabby, tabby cat', 'score': 0.12}]
```
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from ..data import label_id, label_set
from ..errors import InvalidInputError
from ..inputs import load_image
from ..task import Task


# The largest batch `batch_size="auto"` forms on a CPU (see `ImageClassificationTask._load`).
CPU_MAX_BATCH_SIZE = 2


class ImageClassificationTask(Task):
    """Classify images.

    Call options:
        top_k (`int` or `None`, *optional*, defaults to 5):
            How many labels to return per image, best first; `None` returns all of them.
        function_to_apply (`str`, *optional*):
            `"softmax"`, `"sigmoid"` or `"none"`; defaults to sigmoid for multi-label models, else softmax.
    """

    task = "image-classification"
    batch_budget = 32 * 224 * 224  # pixels per batch
    max_batch_size = 32
    window_size = 64

    def _load(self, location: Any, **kwargs: Any) -> None:
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        from ..models import register_auto_classes

        # Our own architectures (EfficientNet-Lite for the offline default) must be known to the Auto classes.
        register_auto_classes()
        # The model first: a model of another task is then reported as such, not as a missing processor file.
        self.model = self.from_pretrained(AutoModelForImageClassification, **kwargs)
        # Without torchvision transformers picks the PIL backend anyway, after a warning on every load.
        backend = {} if importlib.util.find_spec("torchvision") else {"backend": "pil"}
        self.processor = self.from_pretrained(AutoImageProcessor, **backend, **kwargs)
        if self.device.type == "cpu":
            # On a CPU, big batches of images are slower, not faster (the activations outgrow the caches):
            # EfficientNet-Lite0 on 2 cores classified 96 photos in 3.4 s one by one, 3.1 s in pairs, 4.7 s in
            # eights and 6.8 s in 32s. An explicit batch_size= still wins.
            self.max_batch_size = CPU_MAX_BATCH_SIZE

    def _sanitize_parameters(self, top_k: int | None | str = "", function_to_apply: str | None = None):
        postprocess = {}
        if top_k != "":
            if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
                raise InvalidInputError(f"top_k: expected a positive integer or None (all labels), got {top_k!r}.")
            postprocess["top_k"] = top_k
        if function_to_apply is not None:
            if str(function_to_apply).lower() not in ("softmax", "sigmoid", "none"):
                raise InvalidInputError(f"function_to_apply: expected 'softmax', 'sigmoid' or 'none', got {function_to_apply!r}.")
            postprocess["function_to_apply"] = str(function_to_apply).lower()
        return {}, {}, postprocess

    def preprocess(self, inputs: list[Any], start: int) -> list[dict]:
        features = []
        for i, value in enumerate(inputs):
            image = load_image(value, f"input {start + i}")
            features.append({"pixel_values": self.processor(images=image, return_tensors="pt")["pixel_values"][0]})
        return features

    def _length(self, feature: dict) -> int:
        return feature["pixel_values"].shape[-1] * feature["pixel_values"].shape[-2]

    def _collate(self, features: list[dict]) -> dict:
        import torch

        return {"pixel_values": torch.stack([f["pixel_values"] for f in features])}

    def _forward(self, batch: dict) -> dict:
        return {"logits": self.model(**batch).logits.float()}

    def postprocess(self, output: dict, top_k: int | None = 5, function_to_apply: str | None = None) -> list[dict]:
        import torch

        logits = output["logits"]
        config = self.model.config
        if function_to_apply is None:
            multi_label = config.problem_type == "multi_label_classification" or config.num_labels == 1
            function_to_apply = "sigmoid" if multi_label else "softmax"
        if function_to_apply == "softmax":
            scores = torch.softmax(logits, dim=-1)
        elif function_to_apply == "sigmoid":
            scores = torch.sigmoid(logits)
        else:
            scores = logits
        # Only the top_k labels become dicts, read with one `tolist()`: building all 1,000 ImageNet entries (a
        # tensor index and a config attribute lookup each) cost 4 ms per image, 13% of EfficientNet-Lite0 on a CPU.
        order = torch.argsort(scores, descending=True, stable=True)[:top_k]
        id2label = config.id2label
        return [
            {"label": id2label.get(i, f"LABEL_{i}"), "score": score}
            for i, score in zip(order.tolist(), scores[order].tolist(), strict=True)
        ]

    # ------------------------------------------------------------------------------------- fine-tuning

    train_columns = ("image", "label")
    main_metric = "accuracy"
    greater_is_better = True
    peft_task_type = None  # LoRA on vision models: name target_modules and modules_to_save in the recipe

    def prepare_training(self, train: list, eval: list, config: Any) -> None:
        super().prepare_training(train, eval, config)
        labels = label_set(train, eval, config.labels)
        if [self.model.config.id2label.get(i) for i in range(self.model.config.num_labels)] != labels:
            from transformers import AutoModelForImageClassification

            # A new head for this label set (the backbone keeps its weights; the old head's shape may differ).
            self.model = self.from_pretrained(
                AutoModelForImageClassification, num_labels=len(labels), id2label=dict(enumerate(labels)),
                label2id={label: i for i, label in enumerate(labels)}, ignore_mismatched_sizes=True,
            )  # fmt: skip
        self._label2id = {label: i for i, label in enumerate(labels)}

    def encode_example(self, example: dict, where: str) -> dict:
        image = load_image(example["image"], where)
        # Paths are decoded again in each batch rather than kept decoded: a folder of photos may not fit in memory.
        value = example["image"] if isinstance(example["image"], (str, os.PathLike)) else image
        return {"image": value, "labels": label_id(self._label2id, example["label"], where)}

    def training_collate(self, features: list[dict]) -> dict:
        import torch

        images = [load_image(f["image"], "training image") for f in features]
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels, "labels": torch.tensor([f["labels"] for f in features])}

    def eval_predictions(self, model: Any, batch: dict) -> tuple[list, list]:
        logits = model(pixel_values=batch["pixel_values"]).logits
        return logits.argmax(-1).tolist(), batch["labels"].tolist()

    def compute_metrics(self, predictions: list, references: list) -> dict[str, float]:
        from ..metrics import classification_metrics

        return classification_metrics(predictions, references)
