"""Real quality: the embedded default text-generation model (SmolLM2-135M-Instruct, GGUF Q4_1 dequantized) on
short factual questions, with its default settings (chat template, greedy decoding), and streaming on it.

A 135M-parameter model knows few facts reliably: the assertions cover the questions it answers right with
greedy decoding (measured on 16, listed in `model_cards/smollm2-135m-instruct.md`); every answer is printed.
"""

from __future__ import annotations

import re

import pytest

import hfpipes
from hfpipes.registry import get_spec

pytestmark = pytest.mark.quality

DEFAULT = "embedded:smollm2-135m-instruct"
# Question -> words that make the answer right; True where the default model gets it right (greedy decoding).
QUESTIONS = {
    "What is the capital of France?": (("paris",), True),
    "What is the capital of Japan?": (("tokyo",), True),
    "What is the capital of Germany?": (("berlin",), True),
    "What colour is the sky on a clear day?": (("blue",), True),
    "How many days are there in a week?": (("seven", "7"), True),
    "What is the capital of Italy?": (("rome",), False),
    "What is the capital of Spain?": (("madrid",), False),
    "What is two plus two?": (("four", "4"), False),
    "What is three times three?": (("nine", "9"), False),
    "What is ten minus four?": (("six", "6"), False),
    "What colour is grass?": (("green",), False),
    "What colour is snow?": (("white",), False),
    "What animal says meow?": (("cat",), False),
    "What animal barks?": (("dog",), False),
    "How many legs does a spider have?": (("eight", "8"), False),
    "What is the largest planet in our solar system?": (("jupiter",), False),
}
# The facts come in the first sentence; the rest of a long answer is the model rambling.
MAX_NEW_TOKENS = 48


def first_sentence(text: str) -> str:
    return re.split(r"(?<=[.!?])\s|\n", text.strip(), maxsplit=1)[0].lower()


def is_right(answer: str, words: tuple[str, ...]) -> bool:
    return any(re.search(rf"\b{re.escape(word)}\b", first_sentence(answer)) for word in words)


def test_the_default_model_is_the_embedded_smollm2():
    assert get_spec("text-generation").default_model == DEFAULT


def test_capital_of_france_with_the_default_settings():
    answer = hfpipes.run("text-generation", "What is the capital of France?", device="cpu")["generated_text"]
    print(repr(answer))
    assert "Paris" in answer


def test_short_factual_questions():
    results = hfpipes.run("text-generation", list(QUESTIONS), device="cpu", max_new_tokens=MAX_NEW_TOKENS)
    right, missed = 0, []
    for (question, (words, expected)), result in zip(QUESTIONS.items(), results, strict=True):
        answer = result["generated_text"]
        ok = is_right(answer, words)
        right += ok
        if expected and not ok:
            missed.append((question, answer))
        print(f"{'OK' if ok else '--'} {question} -> {answer!r}")
    print(f"{right}/{len(QUESTIONS)} right in the first sentence")
    assert not missed


def test_streaming_gives_the_same_answer_piece_by_piece():
    question = "What is the capital of Germany?"
    pieces = list(hfpipes.run("text-generation", question, device="cpu", stream=True, max_new_tokens=MAX_NEW_TOKENS))
    print(pieces)
    assert len(pieces) > 3 and all(isinstance(p, str) and p for p in pieces)
    whole = hfpipes.run("text-generation", question, device="cpu", max_new_tokens=MAX_NEW_TOKENS)["generated_text"]
    assert "".join(pieces) == whole and "Berlin" in whole
