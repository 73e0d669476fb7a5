import logging

import pytest

import hfpipes
from hfpipes.errors import InvalidInputError
from hfpipes.tasks.translation import CHAT_INSTRUCTION, FEW_SHOT_EXAMPLES, LANGUAGES
from tests.fixtures.translation import INPUTS, NEWLINE_TEXT, few_shot_prompt

MAX_NEW_TOKENS = 8
FIXTURES = (
    "tiny_marian",
    "tiny_marian_multi_target",
    "tiny_t5",
    "tiny_nllb",
    "tiny_m2m100",
    "tiny_llama",
    "tiny_llama_chat",
)


@pytest.fixture(scope="module")
def pipes(request):
    """hfpipes pipes by fixture name, loaded once for this module."""
    loaded = {}

    def get(name: str):
        if name not in loaded:
            loaded[name] = hfpipes.load("translation", model=request.getfixturevalue(name), device="cpu")
        return loaded[name]

    yield get
    for pipe in loaded.values():
        pipe.close()


@pytest.fixture(scope="module")
def direct(request):
    """The same models loaded with plain transformers, by fixture name."""
    loaded = {}

    def get(name: str):
        if name not in loaded:
            from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

            path = request.getfixturevalue(name)
            seq2seq = AutoConfig.from_pretrained(path).is_encoder_decoder
            auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
            loaded[name] = (auto.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path))
        return loaded[name]

    return get


class _NewlineStop:
    """Stop a row once the text of its last token holds a newline (decoded here, token by token)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.tensor(["\n" in self.tokenizer.decode(row[-1:]) for row in input_ids.tolist()])


def _reference(name: str, model, tokenizer, text: str, **generate_kwargs) -> str:
    """What calling `generate` yourself gives, one text at a time (English to German)."""
    from transformers import StoppingCriteriaList

    kwargs = {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False, **generate_kwargs}
    skip = 1  # a seq2seq output starts with the decoder start token
    if name in ("tiny_llama", "tiny_llama_chat"):
        if name == "tiny_llama":
            prompt, special = few_shot_prompt(text), True
            kwargs["stopping_criteria"] = StoppingCriteriaList([_NewlineStop(tokenizer)])
        else:
            content = CHAT_INSTRUCTION.format(source="English", target="German", text=text)
            prompt = tokenizer.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
            )
            special = False
        encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=special)
        kwargs["pad_token_id"] = tokenizer.eos_token_id
        skip = encoded["input_ids"].shape[1]
    else:
        prompt = {"tiny_t5": "translate English to German: ", "tiny_marian_multi_target": ">>fr<< "}.get(
            name, ""
        ) + text
        if name == "tiny_nllb":
            tokenizer.src_lang = "eng_Latn"
            kwargs["forced_bos_token_id"] = tokenizer.convert_tokens_to_ids("deu_Latn")
        if name == "tiny_m2m100":
            tokenizer.src_lang = "en"
            kwargs["forced_bos_token_id"] = tokenizer.get_lang_id("de")
        if "forced_bos_token_id" in kwargs:
            skip = 2  # and then the forced language token
        encoded = tokenizer(prompt, return_tensors="pt")
    output = model.generate(**encoded, **kwargs)[0, skip:]
    text = tokenizer.decode(output, skip_special_tokens=True)
    return (text.split("\n", 1)[0] if name == "tiny_llama" else text).strip()


@pytest.mark.parametrize("num_beams", [1, 2])
@pytest.mark.parametrize("name", FIXTURES)
def test_same_translations_as_calling_generate_yourself(pipes, direct, name, num_beams):
    pipe = pipes(name)
    options = {} if name == "tiny_marian" else {"tgt_lang": "fr" if name == "tiny_marian_multi_target" else "de"}
    ours = pipe(INPUTS, num_beams=num_beams, max_new_tokens=MAX_NEW_TOKENS, **options)
    model, tokenizer = direct(name)
    theirs = [{"translation_text": _reference(name, model, tokenizer, text, num_beams=num_beams)} for text in INPUTS]
    assert ours == theirs
    # Random tiny models still translate each input differently, so a mix-up between inputs would show.
    assert len({r["translation_text"] for r in ours}) > 1


@pytest.mark.parametrize(
    "name, route",
    [
        ("tiny_marian", "seq2seq"),
        ("tiny_t5", "seq2seq"),
        ("tiny_nllb", "seq2seq"),
        ("tiny_llama_chat", "chat"),
        ("tiny_llama", "few-shot"),
    ],
)
def test_route_follows_the_config_and_the_chat_template(pipes, name, route):
    assert pipes(name).route == route


@pytest.mark.parametrize("name", ["tiny_marian", "tiny_t5", "tiny_nllb", "tiny_llama_chat"])
def test_batched_equals_one_by_one(pipes, name):
    pipe = pipes(name)
    options = {"max_new_tokens": 6} | ({} if name == "tiny_marian" else {"tgt_lang": "de"})
    texts = INPUTS + [" ".join(INPUTS[:2]), "Good"]
    assert pipe(texts, batch_size=3, **options) == [pipe(text, **options) for text in texts]


# ------------------------------------------------------------------------------------------- seq2seq models


def test_marian_translates_its_one_pair(pipes):
    pipe = pipes("tiny_marian")
    assert pipe.supported_languages == ["de"] and pipe.source_languages == ["en"]
    assert pipe(INPUTS[0], tgt_lang="de", src_lang="en", max_new_tokens=4) == pipe(INPUTS[0], max_new_tokens=4)
    with pytest.raises(
        InvalidInputError, match=r"tgt_lang: 'fr' is not supported by this model\. Supported: de\. .*en -> de only"
    ):
        pipe(INPUTS[0], tgt_lang="fr")
    with pytest.raises(InvalidInputError, match="src_lang: 'fr' is not supported.*Supported: en"):
        pipe(INPUTS[0], src_lang="fr")


def test_default_length_limit_fits_the_model_and_warns_when_it_cuts(pipes, caplog):
    pipe = pipes("tiny_marian")  # 128 positions: the default 256 new tokens would overflow them
    with caplog.at_level(logging.WARNING, logger="hfpipes"):
        result = pipe(INPUTS[0])
    assert result["translation_text"]
    assert "reached the default max_new_tokens=127 and may be cut short" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hfpipes"):
        pipe(INPUTS[0], max_new_tokens=3)  # a limit the caller chose is no surprise
    assert not caplog.text


def test_marian_with_an_unknown_pair_ignores_language_codes_with_a_warning(tiny_marian_unknown_pair, caplog):
    with hfpipes.load("translation", model=tiny_marian_unknown_pair, device="cpu") as pipe:
        assert pipe.supported_languages is None and pipe.source_languages is None
        with caplog.at_level(logging.WARNING, logger="hfpipes"):
            result = pipe(INPUTS[0], tgt_lang="fr", max_new_tokens=4)
        assert "tgt_lang='fr' is ignored" in caplog.text
        assert result == pipe(INPUTS[0], max_new_tokens=4)


def test_multi_target_marian_puts_the_target_token_first(pipes):
    pipe = pipes("tiny_marian_multi_target")
    assert pipe.supported_languages == ["es", "fr", "it"]  # >>ita<< is Italian's ISO 639-3 code
    assert pipe.prompt("Hello", tgt_lang="fr") == ">>fr<< Hello"
    assert pipe.prompt("Hello", tgt_lang="it") == pipe.prompt("Hello", tgt_lang="ita") == ">>ita<< Hello"
    with pytest.raises(
        InvalidInputError, match="tgt_lang: this model translates into several languages.*Supported: es, fr, it"
    ):
        pipe("Hello")


def test_t5_gets_the_task_prefix_of_its_config(pipes):
    pipe = pipes("tiny_t5")
    assert pipe.supported_languages == ["de", "fr"] and pipe.source_languages == ["en"]
    assert pipe.prompt("Hello", tgt_lang="de") == "translate English to German: Hello"
    assert pipe.prompt("Hello", tgt_lang="fr") == "translate English to French: Hello"
    with pytest.raises(InvalidInputError, match="tgt_lang: 'es' is not supported.*Supported: de, fr.*en->de, en->fr"):
        pipe("Hello", tgt_lang="es")
    # Without tgt_lang, English goes to German (DEFAULT_TARGET_FROM_ENGLISH), which this model has.
    assert pipe("Hello", max_new_tokens=4) == pipe("Hello", tgt_lang="de", max_new_tokens=4)


def test_t5_without_translation_pairs_gets_the_t5_wording(tiny_t5_without_pairs):
    with hfpipes.load("translation", model=tiny_t5_without_pairs, device="cpu") as pipe:
        assert pipe.supported_languages == sorted(LANGUAGES)
        assert pipe.prompt("Hello", tgt_lang="fr", src_lang="de") == "translate German to French: Hello"
        assert pipe.prompt("Hello") == "Hello"  # a T5 fine-tuned on one pair needs no prefix


def _spy_on_generate(pipe, monkeypatch) -> list:
    """Record the arguments and the output of each `generate` call (the call itself goes through unchanged)."""
    calls = []
    original = pipe.model.generate

    def generate(**kwargs):
        calls.append((kwargs, original(**kwargs)))
        return calls[-1][1]

    monkeypatch.setattr(pipe.model, "generate", generate)
    return calls


@pytest.mark.parametrize(
    "name, src_lang, tgt_lang, source, target",
    [
        ("tiny_nllb", None, "de", "eng_Latn", "deu_Latn"),  # English unless src_lang says otherwise
        ("tiny_nllb", "fr", "es", "fra_Latn", "spa_Latn"),
        ("tiny_m2m100", "fr", "es", "__fr__", "__es__"),
        ("tiny_mbart", None, "de", "en_XX", "de_DE"),
    ],
)
def test_multilingual_models_get_src_lang_and_forced_bos_token_id(
    pipes, monkeypatch, name, src_lang, tgt_lang, source, target
):
    pipe = pipes(name)
    calls = _spy_on_generate(pipe, monkeypatch)
    pipe("Hello", src_lang=src_lang, tgt_lang=tgt_lang, max_new_tokens=2)
    ((call, _),) = calls
    assert call["forced_bos_token_id"] == pipe.tokenizer.convert_tokens_to_ids(target)
    tokens = pipe.tokenizer.convert_ids_to_tokens(call["input_ids"][0].tolist())
    assert source in (tokens[0], tokens[-1])  # mBART puts the language after the text, the others before it


def test_nllb_accepts_iso_codes_and_its_own_codes(pipes):
    pipe = pipes("tiny_nllb")
    assert pipe.supported_languages == sorted(LANGUAGES)
    assert pipe(INPUTS[:2], tgt_lang="deu_Latn", max_new_tokens=4) == pipe(INPUTS[:2], tgt_lang="de", max_new_tokens=4)
    with pytest.raises(
        InvalidInputError,
        match=r"tgt_lang: 'xx' is not supported.*Supported: ar, bg, .*, zh\. The model's own codes \(such as 'ace_Arab'\)",
    ):
        pipe("Hello", tgt_lang="xx")


def test_mbart_codes_map_to_iso_codes(pipes):
    mbart_cc25 = "ar cs de en es et fi fr gu hi it ja kk ko lt lv my ne nl ro ru si tr vi zh".split()
    assert pipes("tiny_mbart").supported_languages == mbart_cc25


def test_m2m100_languages_are_its_own_iso_codes(pipes):
    pipe = pipes("tiny_m2m100")
    assert len(pipe.supported_languages) == 100 and {"de", "fr", "ast"} <= set(pipe.supported_languages)
    result = pipe("Hello", tgt_lang="de", max_new_tokens=4)["translation_text"]
    assert "__" not in result  # the forced language token is not part of the translation


# ------------------------------------------------------------------------------------------- causal LMs


def test_few_shot_prompt_is_the_documented_one(pipes, monkeypatch):
    pipe = pipes("tiny_llama")
    expected = (
        "English: Where is the train station?\nGerman: Wo ist der Bahnhof?\n\n"
        "English: I would like a cup of coffee with milk, please.\nGerman: Ich hätte gern eine Tasse Kaffee mit Milch, bitte.\n\n"
        "English: The weather is beautiful today, so we are going for a walk in the park.\n"
        "German: Das Wetter ist heute schön, also gehen wir im Park spazieren.\n\n"
        "English: My sister works at a hospital and starts very early in the morning.\n"
        "German: Meine Schwester arbeitet in einem Krankenhaus und fängt morgens sehr früh an.\n\n"
        "English: The city council announced on Tuesday that the new bridge will open next spring.\n"
        "German: Der Stadtrat gab am Dienstag bekannt, dass die neue Brücke im nächsten Frühjahr eröffnet wird.\n\n"
        "English: Excuse me, how much do these shoes cost?\nGerman: Entschuldigung, wie viel kosten diese Schuhe?\n\n"
        "English: I didn't sleep well last night because the neighbours were very loud.\n"
        "German: Ich habe letzte Nacht schlecht geschlafen, weil die Nachbarn sehr laut waren.\n\n"
        "English: Please call me back when you get home.\nGerman: Bitte ruf mich zurück, wenn du nach Hause kommst.\n\n"
        "English: Good morning\nGerman:"
    )
    assert pipe.prompt("Good morning", tgt_lang="de") == expected == few_shot_prompt("Good morning")
    calls = _spy_on_generate(pipe, monkeypatch)
    pipe("Good morning", tgt_lang="de", max_new_tokens=1)
    assert pipe.tokenizer.decode(calls[0][0]["input_ids"][0]) == "<s>" + expected
    # Any pair of the example languages; newlines inside the source would end the prompt's line early.
    french = pipe.prompt("Bonjour\nà tous", src_lang="fr", tgt_lang="nl")
    assert french.startswith("French: Où est la gare ?\nDutch: Waar is het treinstation?\n\n")
    assert french.endswith("\n\nFrench: Bonjour à tous\nDutch:")


def test_without_tgt_lang_english_goes_to_german_and_other_languages_to_english(pipes, caplog):
    pipe = pipes("tiny_llama")
    with caplog.at_level(logging.INFO, logger="hfpipes"):
        assert pipe.prompt("Good morning").endswith("\n\nEnglish: Good morning\nGerman:")
        assert pipe.prompt("Bonjour", src_lang="fr").endswith("\n\nFrench: Bonjour\nEnglish:")
        assert pipe("Good morning", max_new_tokens=3) == pipe("Good morning", tgt_lang="de", max_new_tokens=3)
    assert "no tgt_lang given, translating en -> de (German); choose with tgt_lang=" in caplog.text


def test_few_shot_examples_cover_the_promised_languages():
    assert {"en", "de", "fr", "es", "it", "pt", "nl"} <= set(FEW_SHOT_EXAMPLES[0])
    assert len(FEW_SHOT_EXAMPLES) == 8
    assert all(
        example.keys() == FEW_SHOT_EXAMPLES[0].keys() and "\n" not in "".join(example.values())
        for example in FEW_SHOT_EXAMPLES
    )


def test_few_shot_stops_at_the_first_newline(tiny_llama_newline, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # The model itself writes a newline as its second token and goes on after it.
    model, tokenizer = (
        AutoModelForCausalLM.from_pretrained(tiny_llama_newline),
        AutoTokenizer.from_pretrained(tiny_llama_newline),
    )
    encoded = tokenizer(few_shot_prompt(NEWLINE_TEXT), return_tensors="pt")
    unstopped = model.generate(**encoded, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    continuation = tokenizer.decode(unstopped[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
    first_line, rest = continuation.split("\n", 1)
    assert rest.strip()

    with hfpipes.load("translation", model=tiny_llama_newline, device="cpu") as pipe:
        calls = _spy_on_generate(pipe, monkeypatch)
        assert pipe(NEWLINE_TEXT, tgt_lang="de", max_new_tokens=8) == {"translation_text": first_line.strip()}
        # Generation stopped at the newline token instead of running on to max_new_tokens.
        kwargs, output = calls[0]
        generated = output[0, kwargs["input_ids"].shape[1] :].tolist()
        assert len(generated) == 2 and tokenizer.convert_ids_to_tokens(generated[-1]) == "Ċ"
        # In a batch the row stops alone, and the output is still cut at the newline.
        assert pipe(["Good morning", NEWLINE_TEXT], tgt_lang="de", max_new_tokens=8)[1] == {
            "translation_text": first_line.strip()
        }


def test_chat_prompt_is_the_instruction_in_the_chat_template(pipes):
    pipe = pipes("tiny_llama_chat")
    assert pipe.supported_languages == sorted(LANGUAGES)
    assert pipe.prompt("Good morning", src_lang="fr", tgt_lang="ja") == (
        "<|user|>Translate the following text from French to Japanese. Reply with the translation only, without any "
        "explanation or notes.\n\nGood morning</s><|assistant|>"
    )


# ------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "name, options, message",
    [
        (
            "tiny_llama",
            {"tgt_lang": "ja"},
            r"tgt_lang: 'ja' is not supported by this model\. Supported: de, en, es, fr, it, nl, pt\.",
        ),
        ("tiny_llama", {"tgt_lang": "de", "src_lang": "xx"}, r"src_lang: 'xx' is not supported.*Supported: de, en"),
        ("tiny_llama", {"tgt_lang": "en"}, "source and target languages are both 'en'"),
        ("tiny_llama", {"tgt_lang": 3}, "tgt_lang: expected a language code such as 'de', got int 3"),
        ("tiny_llama_chat", {"tgt_lang": "tlh"}, r"tgt_lang: 'tlh' is not supported.*Supported: ar, bg"),
        ("tiny_marian", {"num_beams": 0}, "num_beams: expected a positive integer, got int 0"),
        ("tiny_marian", {"max_new_tokens": 2.5}, "max_new_tokens: expected a positive integer, got float 2.5"),
    ],
)
def test_bad_options_are_refused_with_the_supported_values(pipes, name, options, message):
    with pytest.raises(InvalidInputError, match=message):
        pipes(name)("Hello", **options)


@pytest.mark.parametrize(
    "bad, message",
    [
        (None, "input 1: expected a text"),
        ("", "input 1: expected a non-empty text"),
        ("  \n", "input 1: expected a non-empty text"),
    ],
)
@pytest.mark.parametrize("name", ["tiny_marian", "tiny_llama"])
def test_bad_texts_name_the_input(pipes, name, bad, message):
    with pytest.raises(InvalidInputError, match=message):
        pipes(name)(["Hello", bad], tgt_lang="de")


def test_empty_list_gives_empty_list(pipes):
    assert pipes("tiny_nllb")([], tgt_lang="de") == []
    assert pipes("tiny_llama")([]) == []
