"""Fine-tuning data: every accepted source, and every bad one reported with its file and row."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import hfpipes
from hfpipes.data import load_records, split_records
from hfpipes.errors import DataError


def test_csv_jsonl_and_column_mapping(tmp_path):
    (tmp_path / "a.csv").write_text("review,stars\nGreat phone,pos\nAwful,neg\n", encoding="utf-8")
    records = load_records(tmp_path / "a.csv", required=("text", "label"), columns={"text": "review", "label": "stars"})
    assert [r.values for r in records] == [{"text": "Great phone", "label": "pos"}, {"text": "Awful", "label": "neg"}]
    assert records[1].where.endswith("a.csv, row 3")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "x", "label": 1}) + "\n\n" + json.dumps({"text": "y", "label": 0}) + "\n")
    assert len(load_records(tmp_path / "b.jsonl", required=("text", "label"))) == 2


def test_image_folder_and_audio_folder(tmp_path):
    for label in ("cat", "dog"):
        (tmp_path / "img" / label).mkdir(parents=True)
        Image.new("RGB", (10, 10)).save(tmp_path / "img" / label / "a.png")
    records = load_records(tmp_path / "img", required=("image", "label"))
    assert sorted(r.values["label"] for r in records) == ["cat", "dog"]
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "metadata.csv").write_text("file_name,transcription\na.wav,hello world\n")
    (tmp_path / "audio" / "a.wav").write_bytes(b"RIFF")
    records = load_records(tmp_path / "audio", required=("audio", "text"))
    assert records[0].values["text"] == "hello world" and records[0].values["audio"].endswith("a.wav")


def test_datasets_and_split():
    from datasets import Dataset, DatasetDict

    ds = Dataset.from_dict({"text": [f"t{i}" for i in range(10)], "label": [i % 2 for i in range(10)]})
    assert len(load_records(ds, required=("text", "label"))) == 10
    dd = DatasetDict(train=ds, validation=ds.select(range(3)))
    assert len(load_records(dd, required=("text", "label"), split="eval")) == 3
    train, held = split_records(load_records(ds, required=("text",)), 0.2, seed=0)
    assert len(train) == 8 and len(held) == 2


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: (d / "x.csv").write_text("review,label\nfine,pos\n") and d / "x.csv", "x.csv, row 2: missing column 'text'.*columns=\\{'text'"),
        (lambda d: (d / "e.csv").write_text("") or d / "e.csv", "e.csv: the file is empty"),
        (lambda d: (d / "h.csv").write_text("text,label\n") and d / "h.csv", "The train data is empty"),
        (lambda d: (d / "l.csv").write_bytes("text,label\ncaf\xe9,pos\n".encode("latin-1")) and d / "l.csv", "l.csv: not UTF-8"),
        (lambda d: (d / "j.jsonl").write_text('{"text": "a", "label": "b"}\n{oops\n') and d / "j.jsonl", "j.jsonl, line 2: not valid JSON"),
        (lambda d: (d / "v.csv").write_text("text,label\n,pos\n") and d / "v.csv", "v.csv, row 2: the 'text' value is empty"),
        (lambda d: d / "missing.csv", "missing.csv: data file not found"),
        (lambda d: (d / "x.xlsx").write_text("?") and d / "x.xlsx", "unsupported data file type"),
    ],
)
def test_bad_files_name_the_file_and_row(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        load_records(make(tmp_path), required=("text", "label"))


def test_audio_folder_naming_a_missing_file(tmp_path):
    (tmp_path / "metadata.csv").write_text("file_name,text\nthere.wav,hi\nmissing.wav,yo\n")
    (tmp_path / "there.wav").write_bytes(b"x")
    with pytest.raises(DataError, match="metadata.csv, row 3: audio file 'missing.wav' not found"):
        load_records(tmp_path, required=("audio", "text"))


def test_bad_records_are_reported_before_training(tiny_text_classifier, tiny_image_classifier, tmp_path):
    train = [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}]
    with pytest.raises(DataError, match="record 1: label 'neg' is not in the label set \\['pos'\\]"):
        hfpipes.finetune("sentiment", train, model=tiny_text_classifier, output_dir=str(tmp_path / "o"), labels=["pos"])
    with pytest.raises(DataError, match="record 1: expected a text"):
        hfpipes.finetune("sentiment", [*train, {"text": 5, "label": "pos"}][::2], model=tiny_text_classifier, output_dir=str(tmp_path / "o"), labels=["pos", "neg"])
    for label in ("cat", "dog"):
        (tmp_path / "img" / label).mkdir(parents=True)
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "img" / label / "ok.png")
    (tmp_path / "img" / "dog" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="notes.txt.*not an image"):
        hfpipes.finetune("image-classification", str(tmp_path / "img"), model=tiny_image_classifier, output_dir=str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()
