import subprocess
import sys

import pytest

import hfpipes
from hfpipes.errors import DuplicateTaskError, UnknownTaskError
from hfpipes.registry import get_spec, get_task_class


def test_builtin_tasks_and_hub_aliases():
    assert {"sentiment", "image-classification"} <= set(hfpipes.list_tasks())
    assert get_spec("sentiment-analysis").name == "sentiment"
    assert get_spec("text-classification").name == "sentiment"
    assert get_spec("Image_Classification").name == "image-classification"


def test_unknown_task_lists_the_tasks_and_the_closest_match():
    with pytest.raises(UnknownTaskError) as info:
        get_spec("sentimnet")
    message = str(info.value)
    assert "Did you mean 'sentiment'?" in message
    for task in hfpipes.list_tasks():
        assert task in message
    with pytest.raises(KeyError):  # also a KeyError, as users of dict-like registries expect
        hfpipes.run("no-such-task", "x")


def test_register_task_as_decorator_duplicate_and_override():
    @hfpipes.register_task("test-shout", aliases=("test-loud",), description="shout")
    class ShoutTask(hfpipes.Task):
        task = "test-shout"

    try:
        assert get_task_class("test-loud") is ShoutTask
        with pytest.raises(DuplicateTaskError, match="override=True"):
            hfpipes.register_task("test-other", ShoutTask, aliases=("test-loud",))

        class Louder(ShoutTask):
            pass

        hfpipes.register_task("test-shout", Louder, override=True)
        assert get_task_class("test-shout") is Louder
        with pytest.raises(UnknownTaskError):  # the old alias went with the old task
            get_spec("test-loud")
    finally:
        from hfpipes import registry

        registry._TASKS.pop("test-shout", None)
        registry._ALIASES.pop("test-loud", None)


def test_task_classes_are_imported_lazily():
    code = (
        "import sys, hfpipes; hfpipes.list_tasks(); hfpipes.registry.get_spec('sentiment-analysis');"
        "heavy = [m for m in ('torch', 'transformers', 'diffusers', 'datasets', 'gradio', 'accelerate') if m in sys.modules];"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_registered_classes_resolve():
    for task in hfpipes.list_tasks():
        cls = get_task_class(task)
        assert issubclass(cls, hfpipes.Task) and cls.task == task
