"""Real quality: the embedded default (EfficientNet-Lite0, ImageNet-1k) on real photos from scikit-image."""

from __future__ import annotations

import pytest

import hfpipes

pytestmark = pytest.mark.quality

CATS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}


@pytest.fixture(scope="module")
def classify():
    with hfpipes.load("image-classification", device="cpu") as pipe:
        yield pipe


def test_the_default_model_is_the_embedded_efficientnet(classify):
    assert classify.model_name == "embedded:efficientnet-lite0"
    assert classify.model.config.num_labels == 1000


def test_top1_on_photos(classify):
    from skimage import data

    cat, coffee = classify([data.chelsea(), data.coffee()], top_k=1)
    print("chelsea:", cat, "coffee:", coffee)
    assert cat[0]["label"] in CATS
    assert coffee[0]["label"] == "espresso" and coffee[0]["score"] > 0.8


def test_top3_on_more_photos(classify):
    from skimage import data

    expected = {"rocket": {"missile", "projectile", "space shuttle"}, "camera": {"tripod", "reflex camera"}}
    for name, labels in expected.items():
        top3 = [r["label"] for r in classify(getattr(data, name)(), top_k=3)]
        print(name, top3)
        assert labels & set(top3), (name, top3)
