"""Real quality: the embedded default translation model (Gemma 3 270M base on the few-shot route) on the held-out
everyday sentences of `hfpipes/assets/translation/everyday.jsonl` (never used as few-shot examples or training data),
with its default settings (greedy decoding).

The floors are the figures of the model card (`model_cards/gemma-3-270m-translation.md`: EN->DE 53.6, EN->FR 58.4)
rounded down to a whole point, so that a token flipped by another CPU's float rounding does not fail the test but a
worse prompt, stop or decoding does; every score is printed. The first use converts the GGUF
into the cache (about a minute), once per machine.
"""

from __future__ import annotations

import json
from importlib import resources

import pytest
import sacrebleu

import hfpipes
from hfpipes.errors import InvalidInputError
from hfpipes.registry import get_spec

pytestmark = pytest.mark.quality

DEFAULT = "embedded:gemma-3-270m"
# Greedy chrF on the 40 held-out sentences as the model card gives it (53.6, 58.4), rounded down.
CHRF_FLOORS = {"de": 53.0, "fr": 58.0}


@pytest.fixture(scope="module")
def pipe():
    with hfpipes.load("translation", model=DEFAULT, device="cpu") as loaded:
        yield loaded


@pytest.fixture(scope="module")
def everyday() -> list[dict[str, str]]:
    text = resources.files("hfpipes").joinpath("assets/translation/everyday.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_the_default_model_is_the_embedded_gemma():
    assert get_spec("translation").default_model == DEFAULT


@pytest.mark.parametrize("target", sorted(CHRF_FLOORS))
def test_chrf_on_held_out_everyday_sentences(pipe, everyday, target):
    translations = [r["translation_text"] for r in pipe([row["en"] for row in everyday], tgt_lang=target)]
    score = sacrebleu.corpus_chrf(translations, [[row[target] for row in everyday]]).score
    print(f"EN->{target.upper()} chrF {score:.1f} (floor {CHRF_FLOORS[target]})")
    for row, translation in zip(everyday[:5], translations, strict=False):
        print(f"  {row['en']!r} -> {translation!r}")
    assert score >= CHRF_FLOORS[target]


def test_good_morning_without_options_is_german(pipe):
    # No tgt_lang: English goes to German (and the task logs how to choose another language).
    assert pipe("Good morning") == {"translation_text": "Guten Morgen"}


# Held-out sentences the default model translates right with greedy decoding (about half of them are; the model
# card lists the meaning errors of the rest).
@pytest.mark.parametrize(
    "text, target, words",
    [
        ("The children are playing in the garden.", "de", ("Kinder", "spielen", "Garten")),
        ("I lost my keys yesterday evening.", "de", ("Schlüssel", "verloren", "gestern Abend")),
        ("The museum is closed on Mondays.", "fr", ("musée", "fermé", "lundi")),
        ("The kitchen is small but very bright.", "fr", ("cuisine", "petite", "lumineuse")),
    ],
)
def test_spot_checks_keep_the_meaning(pipe, text, target, words):
    translation = pipe(text, tgt_lang=target)["translation_text"]
    print(repr(translation))
    assert all(word in translation for word in words)


def test_unsupported_target_language_is_a_clear_error(pipe):
    with pytest.raises(InvalidInputError, match=r"tgt_lang: 'ja' is not supported.*Supported: "):
        pipe("Good morning", tgt_lang="ja")
