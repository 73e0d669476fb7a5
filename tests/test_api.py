import threading

import pytest

import hfpipes
from hfpipes.errors import InvalidInputError, ModelNotFoundError


def test_missing_model_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ModelNotFoundError, match="nope"):
        hfpipes.load("sentiment", model=str(missing))


def test_load_is_a_context_manager_that_frees_the_model(tiny_text_classifier):
    with hfpipes.load("sentiment", model=tiny_text_classifier, device="cpu") as pipe:
        assert pipe("good")["label"] in {"negative", "positive"}
    assert pipe.model is None


def test_run_keeps_input_order_and_types(tiny_text_classifier):
    texts = ["a", "b c d e f g", "h i"]
    results = hfpipes.run("sentiment", texts, model=tiny_text_classifier, device="cpu")
    assert isinstance(results, list) and len(results) == 3
    assert all(isinstance(r["label"], str) and isinstance(r["score"], float) for r in results)
    assert hfpipes.run("sentiment", (t for t in texts), model=tiny_text_classifier, device="cpu").__next__() == results[0]


def test_bad_device_dtype_and_batch_size(tiny_text_classifier):
    with pytest.raises(InvalidInputError, match="device"):
        hfpipes.load("sentiment", model=tiny_text_classifier, device="tpu:9")
    with pytest.raises(InvalidInputError, match="dtype"):
        hfpipes.load("sentiment", model=tiny_text_classifier, dtype="float13")
    with pytest.raises(InvalidInputError, match="batch_size"):
        hfpipes.run("sentiment", ["x"], model=tiny_text_classifier, device="cpu", batch_size=0)


def test_bfloat16_on_request(tiny_text_classifier):
    import torch

    with hfpipes.load("sentiment", model=tiny_text_classifier, device="cpu", dtype="bf16") as pipe:
        assert pipe.model.dtype == torch.bfloat16
        assert isinstance(pipe("good")["score"], float)


def test_threads_share_one_model(tiny_text_classifier):
    pipe = hfpipes.load("sentiment", model=tiny_text_classifier, device="cpu")
    texts = [f"text {i} " + "word " * (i % 9) for i in range(20)]
    expected = pipe(texts)
    results, errors = {}, []

    def worker(n):
        try:
            results[n] = [pipe(t) for t in texts]
        except Exception as err:  # surfaced by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for n in range(8):
        assert [r["label"] for r in results[n]] == [r["label"] for r in expected]
