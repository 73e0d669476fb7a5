"""EfficientNet-Lite as a transformers model: forward/backward, Auto classes, save/load, a new head."""

from __future__ import annotations

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from hfpipes.models import register_auto_classes
from hfpipes.models.efficientnet_lite import (
    EfficientNetLiteConfig,
    EfficientNetLiteForImageClassification,
    EfficientNetLiteModel,
)


def tiny_config(**overrides) -> EfficientNetLiteConfig:
    options = dict(
        stem_channels=8, block_out_channels=[8, 12, 16], block_repeats=[1, 2, 2], kernel_sizes=[3, 3, 5],
        strides=[1, 2, 2], expand_ratios=[1, 4, 4], head_channels=32, image_size=32, num_labels=4,
        id2label={0: "cat", 1: "dog", 2: "bird", 3: "fish"}, label2id={"cat": 0, "dog": 1, "bird": 2, "fish": 3},
    )  # fmt: skip
    return EfficientNetLiteConfig(**{**options, **overrides})


@pytest.fixture
def tiny_model() -> EfficientNetLiteForImageClassification:
    torch.manual_seed(0)
    return EfficientNetLiteForImageClassification(tiny_config()).eval()


def test_forward_backward_and_loss(tiny_model):
    tiny_model.train()
    pixels = torch.randn(3, 3, 32, 32)
    out = tiny_model(pixel_values=pixels, labels=torch.tensor([0, 3, 1]))

    assert out.logits.shape == (3, 4)
    expected = torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 3, 1]))
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in tiny_model.parameters())
    assert tiny_model(pixel_values=pixels).loss is None


def test_tuple_outputs_and_hidden_states(tiny_model):
    loss, logits, hidden = tiny_model(
        torch.randn(2, 3, 32, 32), labels=torch.tensor([1, 2]), output_hidden_states=True, return_dict=False
    )
    assert loss.dim() == 0 and logits.shape == (2, 4)
    assert len(hidden) == 1 + sum(tiny_model.config.block_repeats)  # stem, then every block


def test_tensorflow_same_padding_on_odd_sizes():
    model = EfficientNetLiteModel(tiny_config()).eval()
    # Stem stride 2, then stages with strides 1, 2, 2: ceil(33/8) = 5, ceil(47/8) = 6.
    out = model(torch.randn(1, 3, 33, 47))
    assert out.last_hidden_state.shape == (1, 32, 5, 6)
    assert out.pooler_output.shape == (1, 32)


def test_eval_is_deterministic_and_training_drops_paths(tiny_model):
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(tiny_model(pixels).logits, tiny_model(pixels).logits)
    block = tiny_model.efficientnet_lite.blocks[-1]
    assert block.has_residual and 0 < block.drop_rate < tiny_model.config.drop_connect_rate


def test_config_checks_the_stage_lists():
    with pytest.raises(StrictDataclassClassValidationError, match="kernel_sizes"):
        tiny_config(kernel_sizes=[3, 3])


def test_auto_classes_round_trip(tmp_path, tiny_model):
    register_auto_classes()
    register_auto_classes()  # idempotent
    tiny_model.save_pretrained(tmp_path)

    config = AutoConfig.from_pretrained(tmp_path)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    backbone = AutoModel.from_pretrained(tmp_path)

    assert isinstance(config, EfficientNetLiteConfig) and config.id2label[3] == "fish"
    assert isinstance(reloaded, EfficientNetLiteForImageClassification)
    assert isinstance(backbone, EfficientNetLiteModel)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(reloaded(pixels).logits, tiny_model(pixels).logits)
    assert (tmp_path / "model.safetensors").is_file()


def test_new_head_with_ignore_mismatched_sizes(tmp_path, tiny_model):
    register_auto_classes()
    tiny_model.save_pretrained(tmp_path)

    model = AutoModelForImageClassification.from_pretrained(
        tmp_path, num_labels=2, id2label={0: "no", 1: "yes"}, label2id={"no": 0, "yes": 1},
        ignore_mismatched_sizes=True,
    )  # fmt: skip

    assert model.classifier.weight.shape == (2, 32)
    assert model.config.id2label == {0: "no", 1: "yes"}
    old, new = tiny_model.state_dict(), model.state_dict()
    assert all(torch.equal(old[name], new[name]) for name in old if not name.startswith("classifier."))
    out = model(pixel_values=torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 1]))
    out.loss.backward()
    assert model.classifier.weight.grad is not None
