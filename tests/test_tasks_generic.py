"""The same coverage for every registered task (timm style): run, batch, stream, save/load, bad input.

Each task provides a `<task>_case` fixture (tests/fixtures/<task>.py) with a tiny model and inputs; a task
registered without one fails `test_every_task_has_a_case`, so no task can skip this file.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import hfpipes
from hfpipes.cli import main as cli
from hfpipes.errors import InvalidInputError
from tests.fixtures.common import assert_results_equal

TASKS = hfpipes.list_tasks()


def _case(request, task):
    return request.getfixturevalue(f"{task.replace('-', '_')}_case")


@pytest.fixture(scope="module")
def pipes():
    """One loaded pipe per task for this module (loading is the slow part)."""
    loaded = {}
    yield loaded
    for pipe in loaded.values():
        pipe.close()


@pytest.fixture
def task_and_pipe(request, pipes):
    task = request.param
    case = _case(request, task)
    if task not in pipes:
        pipes[task] = hfpipes.load(task, model=case.model, device="cpu")
    return task, case, pipes[task]


def test_every_task_has_a_case(request):
    for task in TASKS:
        assert _case(request, task).inputs, task


@pytest.mark.parametrize("task_and_pipe", TASKS, indirect=True)
class TestEveryTask:
    def test_single_input_gives_one_result_like_a_list_of_one(self, task_and_pipe):
        task, case, pipe = task_and_pipe
        single = pipe(case.inputs[0], **case.options)
        as_list = pipe([case.inputs[0]], **case.options)
        assert isinstance(as_list, list) and len(as_list) == 1
        assert_results_equal(single, as_list[0])

    def test_batched_equals_one_by_one_in_input_order(self, task_and_pipe):
        task, case, pipe = task_and_pipe
        one_by_one = [pipe(x, **case.options) for x in case.inputs]
        for batch_size in (2, len(case.inputs), "auto"):
            assert_results_equal(pipe(case.inputs, batch_size=batch_size, **case.options), one_by_one)

    def test_generator_streams_the_same_results(self, task_and_pipe):
        task, case, pipe = task_and_pipe
        stream = pipe((x for x in case.inputs), **case.options)
        assert not isinstance(stream, list)
        assert_results_equal(list(stream), pipe(case.inputs, **case.options))

    def test_empty_list_gives_empty_list(self, task_and_pipe):
        _, _, pipe = task_and_pipe
        assert pipe([]) == []

    def test_none_is_refused_naming_the_input(self, task_and_pipe):
        task, case, pipe = task_and_pipe
        with pytest.raises(InvalidInputError, match="input 1"):
            pipe([case.inputs[0], None], **case.options)

    def test_unknown_option_lists_the_valid_ones(self, task_and_pipe):
        _, case, pipe = task_and_pipe
        with pytest.raises(InvalidInputError, match="Unknown option.*'no_such_option'.*Valid options"):
            pipe(case.inputs[0], no_such_option=1)

    def test_save_and_reload_gives_the_same_results(self, task_and_pipe, tmp_path):
        task, case, pipe = task_and_pipe
        saved = pipe.save_pretrained(tmp_path / "copy")
        with hfpipes.load(task, model=saved, device="cpu") as reloaded:
            assert_results_equal(reloaded(case.inputs, **case.options), pipe(case.inputs, **case.options))

    def test_run_reuses_the_loaded_model(self, task_and_pipe):
        task, case, _ = task_and_pipe
        first = hfpipes.run(task, case.inputs[:1], model=case.model, device="cpu", **case.options)
        cached = [p for p in hfpipes._run_cache.values() if p.model_name == case.model]
        assert len(cached) == 1
        second = hfpipes.run(task, case.inputs[:1], model=case.model, device="cpu", **case.options)
        assert [p for p in hfpipes._run_cache.values() if p.model_name == case.model] == cached
        assert_results_equal(first, second)

    def test_the_cli_runs_the_task_on_a_local_model_directory(self, task_and_pipe, tmp_path):
        task, case, pipe = task_and_pipe
        source = tmp_path / "inputs.jsonl"
        source.write_text("".join(json.dumps(_as_json_input(x, tmp_path / f"input-{i}")) + "\n" for i, x in enumerate(case.inputs)))
        options = [f"--option={k}={json.dumps(v)}" for k, v in case.options.items()]
        out = tmp_path / "results.jsonl"
        code = cli(["-q", "run", task, "-m", case.model, "-i", str(source), "-o", str(out), "--images-dir", str(tmp_path / "images"), *options])
        assert code == 0
        results = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(results) == len(case.inputs)
        expected = pipe(case.inputs, **case.options)
        for got, want in zip(results, expected):
            assert isinstance(got, type(want)) and (not isinstance(want, dict) or set(want) - {"image"} <= set(got))


def _as_json_input(value, stem):
    """A test input as the CLI takes it: JSON values as they are, arrays written to image or audio files."""
    if isinstance(value, dict) and "array" in value:
        import soundfile

        soundfile.write(f"{stem}.wav", np.asarray(value["array"]), value["sampling_rate"])
        return f"{stem}.wav"
    if isinstance(value, np.ndarray) and value.ndim == 1:
        import soundfile

        soundfile.write(f"{stem}.wav", value, 16000)
        return f"{stem}.wav"
    if isinstance(value, np.ndarray):
        from PIL import Image

        Image.fromarray(value).save(f"{stem}.png")
        return f"{stem}.png"
    return value
