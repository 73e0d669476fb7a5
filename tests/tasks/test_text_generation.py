import logging

import pytest

import hfpipes
from hfpipes.errors import InvalidInputError

PROMPTS = ["I love this movie", "The weather is nice today and the train leaves at nine", "What"]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What a wonderful day in the park"}]
GREEDY = {"max_new_tokens": 12, "do_sample": False}
SAMPLING = {"max_new_tokens": 24, "do_sample": True, "temperature": 0.9}


@pytest.fixture(scope="module")
def chat_pipe(tiny_chat_llama):
    with hfpipes.load("text-generation", model=tiny_chat_llama, device="cpu") as loaded:
        yield loaded


@pytest.fixture(scope="module")
def base_pipe(tiny_gpt2):
    with hfpipes.load("text-generation", model=tiny_gpt2, device="cpu") as loaded:
        yield loaded


@pytest.fixture(params=["chat", "base"])
def pipe_and_dir(request, tiny_chat_llama, tiny_gpt2):
    if request.param == "chat":
        return request.getfixturevalue("chat_pipe"), tiny_chat_llama
    return request.getfixturevalue("base_pipe"), tiny_gpt2


# ------------------------------------------------------------------------------------------ equivalence


def test_greedy_equals_transformers_pipeline_and_raw_generate(pipe_and_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    pipe, directory = pipe_and_dir
    # Templating plain prompts is our default on chat models; the peers continue the text as it is.
    ours = [r["generated_text"] for r in pipe(PROMPTS, apply_chat_template=False, **GREEDY)]
    peer = pipeline("text-generation", model=directory, device="cpu")
    theirs = [peer(p, return_full_text=False, **GREEDY)[0]["generated_text"] for p in PROMPTS]
    assert ours == theirs
    tokenizer, model = AutoTokenizer.from_pretrained(directory), AutoModelForCausalLM.from_pretrained(directory)
    raw = []
    for prompt in PROMPTS:
        encoded = tokenizer(prompt, return_tensors="pt")
        output = model.generate(**encoded, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id, **GREEDY)
        raw.append(tokenizer.decode(output[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True))
    assert ours == raw
    assert all(isinstance(text, str) and text for text in ours)


def test_chat_messages_equal_transformers_pipeline(chat_pipe, tiny_chat_llama):
    from transformers import pipeline

    peer = pipeline("text-generation", model=tiny_chat_llama, device="cpu")
    prefill = [*CHAT, {"role": "assistant", "content": "It is"}]
    for chat in (CHAT, prefill):
        theirs = peer(chat, **GREEDY)[0]["generated_text"][-1]["content"]
        ours = chat_pipe(chat, **GREEDY)["generated_text"]
        # The pipeline returns the prefilled assistant message completed; we return the new text.
        assert ours == (theirs.removeprefix("It is") if chat is prefill else theirs)


def test_plain_prompt_to_a_chat_model_is_one_user_message_unless_turned_off(chat_pipe):
    templated = chat_pipe(PROMPTS[0], **GREEDY)
    assert templated == chat_pipe([{"role": "user", "content": PROMPTS[0]}], **GREEDY)
    assert chat_pipe(PROMPTS[0], apply_chat_template=True, **GREEDY) == templated
    assert chat_pipe(PROMPTS[0], apply_chat_template=False, **GREEDY) != templated


def test_one_chat_is_one_input_and_a_list_of_chats_is_a_batch(chat_pipe):
    single = chat_pipe(CHAT, **GREEDY)
    assert isinstance(single, dict) and set(single) == {"generated_text"}
    batch = chat_pipe([CHAT, PROMPTS[1], CHAT[1:]], **GREEDY)
    assert isinstance(batch, list) and len(batch) == 3
    assert batch[0] == single
    assert batch[2] == chat_pipe(CHAT[1:], **GREEDY)


def test_base_model_without_pad_token_batches_like_one_by_one(base_pipe):
    assert base_pipe.tokenizer.pad_token is None  # padded with eos, the tokenizer itself is left alone
    one_by_one = [base_pipe(p, **GREEDY) for p in PROMPTS]
    assert base_pipe(PROMPTS, batch_size=3, **GREEDY) == one_by_one


# --------------------------------------------------------------------------------------- sampling, seeds


def test_seed_makes_sampling_reproducible_and_leaves_the_global_rng_alone(chat_pipe):
    import torch

    state = torch.get_rng_state()
    first = chat_pipe(PROMPTS[0], seed=1, **SAMPLING)
    assert torch.equal(torch.get_rng_state(), state)
    assert chat_pipe(PROMPTS[0], seed=1, **SAMPLING) == first
    assert chat_pipe(PROMPTS[0], seed=2, **SAMPLING) != first
    assert chat_pipe(PROMPTS[0], **GREEDY) != first


def test_a_prompt_repeated_across_batches_gets_different_samples(chat_pipe):
    results = chat_pipe([PROMPTS[0]] * 3, batch_size=1, seed=0, **SAMPLING)
    assert len({r["generated_text"] for r in results}) == 3
    assert chat_pipe([PROMPTS[0]] * 3, batch_size=1, seed=0, **SAMPLING) == results


def test_temperature_zero_means_greedy_and_a_positive_one_means_sampling(chat_pipe):
    assert chat_pipe(PROMPTS[0], temperature=0, max_new_tokens=12) == chat_pipe(PROMPTS[0], **GREEDY)
    sampled = chat_pipe(PROMPTS[0], seed=4, **SAMPLING)
    assert chat_pipe(PROMPTS[0], temperature=0.9, seed=4, max_new_tokens=24) == sampled
    assert chat_pipe(PROMPTS[0], temperature=0.9, do_sample=False, max_new_tokens=24) != sampled


def test_sampling_filters_are_accepted(chat_pipe):
    result = chat_pipe(PROMPTS[0], top_p=0.9, top_k=20, repetition_penalty=1.3, seed=0, **SAMPLING)
    assert isinstance(result["generated_text"], str)
    assert result == chat_pipe(PROMPTS[0], top_p=0.9, top_k=20, repetition_penalty=1.3, seed=0, **SAMPLING)


# ----------------------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("options", [GREEDY, {**SAMPLING, "seed": 3}], ids=["greedy", "sampling"])
def test_streamed_pieces_join_to_the_non_streamed_text(chat_pipe, options):
    for prompt in (PROMPTS[0], CHAT):
        pieces = chat_pipe(prompt, stream=True, **options)
        assert not isinstance(pieces, (list, dict))
        pieces = list(pieces)
        assert len(pieces) > 1 and all(isinstance(p, str) and p for p in pieces)
        assert "".join(pieces) == chat_pipe(prompt, **options)["generated_text"]


def test_streaming_with_stop_and_full_text_matches_the_non_streamed_text(chat_pipe):
    full = chat_pipe(PROMPTS[1], apply_chat_template=False, **GREEDY)["generated_text"]
    stop = full[4:6]
    options = {"apply_chat_template": False, "stop": stop, "return_full_text": True, **GREEDY}
    expected = chat_pipe(PROMPTS[1], **options)["generated_text"]
    assert expected == PROMPTS[1] + full[: full.find(stop)]
    assert "".join(chat_pipe(PROMPTS[1], stream=True, **options)) == expected


def test_an_abandoned_stream_stops_generating_and_frees_the_task(chat_pipe):
    stream = chat_pipe(PROMPTS[0], stream=True, max_new_tokens=100, do_sample=False)
    next(stream)
    stream.close()  # joins the generating thread, which saw the cancellation
    assert chat_pipe(PROMPTS[0], **GREEDY)["generated_text"]


def test_stream_refuses_a_batch_and_checks_options_at_the_call(chat_pipe):
    with pytest.raises(InvalidInputError, match="stream=True takes one prompt or one chat, got a list of 2"):
        chat_pipe(PROMPTS[:2], stream=True)
    with pytest.raises(InvalidInputError, match="top_p"):
        chat_pipe(PROMPTS[0], stream=True, top_p=2)
    with pytest.raises(InvalidInputError, match="input 0: expected a non-empty text"):
        chat_pipe("", stream=True)
    with pytest.raises(InvalidInputError, match="Unknown option.*'temprature'.*stream"):
        chat_pipe(PROMPTS[0], stream=True, temprature=1.0)
    with pytest.raises(InvalidInputError, match="stream: expected True or False"):
        chat_pipe(PROMPTS[0], stream="yes")


# ------------------------------------------------------------------------------------ stop, full text


def test_stop_strings_cut_the_output_at_the_first_occurrence(pipe_and_dir):
    pipe, _ = pipe_and_dir
    options = {"apply_chat_template": False, **GREEDY}
    full = [r["generated_text"] for r in pipe(PROMPTS, **options)]
    stops = [text[3:5] for text in full]
    cut = pipe(PROMPTS, stop=stops, **options)
    for text, result in zip(full, cut, strict=True):
        first = min(i for i in (text.find(s) for s in stops) if i >= 0)
        assert result["generated_text"] == text[:first]
    assert cut == [pipe(p, stop=stops, **options) for p in PROMPTS]
    assert pipe(PROMPTS[0], stop=stops[0], **options)["generated_text"] == full[0][: full[0].find(stops[0])]


def test_a_stop_string_that_begins_in_the_prompt_does_not_count(base_pipe):
    options = {"max_new_tokens": 12, "do_sample": False}
    text = base_pipe(PROMPTS[0], **options)["generated_text"]
    stop = PROMPTS[0][-1] + text[0]  # would match across the prompt's end at the first new token
    expected = text[: text.find(stop)] if stop in text else text
    assert base_pipe(PROMPTS[0], stop=stop, **options)["generated_text"] == expected
    assert expected


def test_return_full_text_includes_the_prompt(chat_pipe):
    new = chat_pipe(PROMPTS[0], apply_chat_template=False, **GREEDY)["generated_text"]
    full = chat_pipe(PROMPTS[0], apply_chat_template=False, return_full_text=True, **GREEDY)["generated_text"]
    assert full == PROMPTS[0] + new
    chat_new = chat_pipe(CHAT, **GREEDY)["generated_text"]
    rendered = chat_pipe.tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert chat_pipe(CHAT, return_full_text=True, **GREEDY)["generated_text"] == rendered + chat_new


# ----------------------------------------------------------------------------------------- limits


def test_a_prompt_longer_than_the_context_is_refused_naming_the_input(base_pipe):
    with pytest.raises(InvalidInputError, match="input 1: the prompt is .* tokens long, but .* reads at most 64"):
        base_pipe(["fine", "word " * 100])


def test_generation_past_the_context_is_cut_with_a_warning(base_pipe, caplog):
    prompt = "The weather is nice today " * 5
    length = len(base_pipe.tokenizer(prompt)["input_ids"])
    with caplog.at_level(logging.WARNING, logger="hfpipes"):
        result = base_pipe(prompt, max_new_tokens=64, do_sample=False)
    assert "exceed the model's 64-token context" in caplog.text
    assert len(base_pipe.tokenizer(result["generated_text"])["input_ids"]) <= 64 - length + 1


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "bad, message",
    [
        (None, r"input 1: expected a prompt \(str\) or chat messages"),
        (3, r"input 1: expected a prompt \(str\) or chat messages"),
        ("", "input 1: expected a non-empty text"),
        ("  \n", "input 1: expected a non-empty text"),
        ([], "input 1: expected chat messages, got an empty list"),
        ([{"role": "user"}], "input 1: message 0 has no 'content' key"),
        ([{"content": "hi"}], "input 1: message 0 has no 'role' key"),
        ([{"role": "user", "content": "hi"}, "oops"], "input 1: message 1: expected a dict"),
        ([{"role": "", "content": "hi"}], "input 1: message 0: 'role' must be a non-empty string"),
        ([{"role": "user", "content": None}], "input 1: message 0: 'content' must be a string"),
    ],
)
def test_bad_inputs_name_the_input(chat_pipe, bad, message):
    with pytest.raises(InvalidInputError, match=message):
        chat_pipe([PROMPTS[0], bad], **GREEDY)


def test_single_bad_inputs(chat_pipe, base_pipe):
    assert chat_pipe([]) == []
    with pytest.raises(InvalidInputError, match="input 0: message 0 has no 'content' key"):
        chat_pipe([{"role": "user"}])
    with pytest.raises(InvalidInputError, match="input 0: expected a prompt .* got dict"):
        chat_pipe({"role": "user", "content": "hi"})
    with pytest.raises(InvalidInputError, match="input 0: chat messages need a chat template, but the tokenizer"):
        base_pipe(CHAT)
    with pytest.raises(InvalidInputError, match="input 0: chat messages are always rendered with the chat template"):
        chat_pipe(CHAT, apply_chat_template=False)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"do_sample": True, "temperature": 0}, "temperature: expected a number > 0 when sampling"),
        ({"temperature": -0.5}, "temperature: expected a number >= 0"),
        ({"temperature": float("nan")}, "temperature: expected a number >= 0"),
        ({"temperature": "hot"}, "temperature: expected a number >= 0"),
        ({"top_p": 0}, r"top_p: expected a number in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p: expected a number in \(0, 1\]"),
        ({"top_k": -1}, "top_k: expected an integer >= 0"),
        ({"top_k": 2.5}, "top_k: expected an integer >= 0"),
        ({"max_new_tokens": 0}, "max_new_tokens: expected a positive integer"),
        ({"max_new_tokens": "5"}, "max_new_tokens: expected a positive integer"),
        ({"repetition_penalty": 0}, "repetition_penalty: expected a number > 0"),
        ({"seed": -1}, "seed: expected a non-negative integer"),
        ({"seed": True}, "seed: expected a non-negative integer"),
        ({"stop": ""}, "stop: expected a non-empty string or a list"),
        ({"stop": ["ok", 3]}, "stop: expected a non-empty string or a list"),
        ({"do_sample": "yes"}, "do_sample: expected True or False"),
        ({"return_full_text": 1}, "return_full_text: expected True or False"),
        ({"apply_chat_template": "yes"}, "apply_chat_template: expected True, False or None"),
    ],
)
def test_invalid_options_are_refused(chat_pipe, options, message):
    with pytest.raises(InvalidInputError, match=message):
        chat_pipe(PROMPTS[0], **options)


def test_apply_chat_template_on_a_model_without_one_is_refused(base_pipe):
    with pytest.raises(InvalidInputError, match="apply_chat_template: the tokenizer of .* has no chat template"):
        base_pipe(PROMPTS[0], apply_chat_template=True)
