import io

import numpy as np
import pytest
from PIL import Image

import hfpipes
from hfpipes.errors import InvalidInputError
from tests.fixtures.image_classification import random_images


@pytest.fixture(scope="module")
def pipe(tiny_image_classifier):
    with hfpipes.load("image-classification", model=tiny_image_classifier, device="cpu") as loaded:
        yield loaded


@pytest.fixture(scope="module")
def peer(tiny_image_classifier):
    from transformers import pipeline

    return pipeline("image-classification", model=tiny_image_classifier, device="cpu")


def test_same_labels_and_scores_as_transformers_pipeline(pipe, peer):
    images = [Image.fromarray(a) for a in random_images(5)]
    for ours, theirs in zip(pipe(images), peer(images)):
        assert [r["label"] for r in ours] == [r["label"] for r in theirs]
        assert [r["score"] for r in ours] == pytest.approx([r["score"] for r in theirs], abs=1e-5)


def test_top_k(pipe):
    image = random_images(1)[0]
    assert len(pipe(image)) == 3  # default 5, capped by the 3 labels
    assert len(pipe(image, top_k=1)) == 1
    assert len(pipe(image, top_k=None)) == 3


def test_every_input_form_gives_the_same_result(pipe, tmp_path):
    array = random_images(1, seed=3)[0]
    image = Image.fromarray(array)
    path = tmp_path / "x.png"
    image.save(path)
    expected = pipe(image)
    for form in (str(path), path, path.read_bytes(), array, array.astype(np.float32) / 255.0, np.moveaxis(array, -1, 0)):
        result = pipe(form)
        assert [r["label"] for r in result] == [r["label"] for r in expected]
        assert [r["score"] for r in result] == pytest.approx([r["score"] for r in expected], abs=1e-4)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "1", "LA"])
def test_other_modes_are_converted_to_rgb(pipe, mode):
    image = Image.fromarray(random_images(1)[0]).convert(mode) if mode != "I;16" else Image.fromarray(
        (np.random.default_rng(0).integers(0, 65535, (40, 40))).astype(np.uint16)
    )
    result = pipe(image)
    assert len(result) == 3 and all(0.0 <= r["score"] <= 1.0 for r in result)


def test_sixteen_bit_images_are_rescaled_not_clipped():
    from hfpipes.inputs import load_image

    data = np.full((20, 20), 32768, dtype=np.uint16)
    rgb = np.asarray(load_image(Image.fromarray(data), "input 0"))
    assert rgb.shape == (20, 20, 3) and 120 <= rgb.mean() <= 135


def _truncated_png():
    buffer = io.BytesIO()
    Image.fromarray(random_images(1)[0]).save(buffer, format="PNG")
    return buffer.getvalue()[:100]


@pytest.mark.parametrize(
    "make_bad, message",
    [
        (lambda d: str(d / "missing.png"), "input 1: image file not found"),
        (lambda d: str(d), "input 1: expected an image file, got a directory"),
        (lambda d: (d / "notes.jpg").write_text("not an image") and str(d / "notes.jpg"), "not an image"),
        (lambda d: (d / "empty.png").write_bytes(b"") or str(d / "empty.png"), "0 bytes"),
        (lambda d: _truncated_png(), "corrupt or truncated"),
        (lambda d: Image.new("RGB", (1, 1)), "1x1 pixels"),
        (lambda d: 12, "expected an image"),
        (lambda d: None, "expected an image"),
    ],
)
def test_bad_images_name_the_input(pipe, tmp_path, make_bad, message):
    with pytest.raises(InvalidInputError, match=message):
        pipe([random_images(1)[0], make_bad(tmp_path)])


def test_a_text_model_is_refused_for_image_classification(tiny_text_classifier):
    with pytest.raises(hfpipes.errors.ModelLoadError, match="image-classification"):
        hfpipes.load("image-classification", model=tiny_text_classifier)


def test_auto_batches_stay_small_on_the_cpu_and_an_explicit_batch_size_wins(pipe, monkeypatch):
    from hfpipes.tasks.image_classification import CPU_MAX_BATCH_SIZE

    sizes = []
    forward = pipe._forward

    def spy(batch, **kwargs):
        sizes.append(len(batch["pixel_values"]))
        return forward(batch, **kwargs)

    monkeypatch.setattr(pipe, "_forward", spy)
    images = [Image.fromarray(a) for a in random_images(5)]
    auto = pipe(images)
    assert max(sizes) <= CPU_MAX_BATCH_SIZE and sum(sizes) == 5
    sizes.clear()
    explicit = pipe(images, batch_size=5)
    assert sizes == [5]
    assert [[r["label"] for r in image] for image in explicit] == [[r["label"] for r in image] for image in auto]
