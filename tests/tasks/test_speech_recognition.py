import io
import re

import numpy as np
import pytest
import soundfile

import hfpipes
from hfpipes.errors import InvalidInputError, ModelLoadError
from tests import tiny_models
from tests.fixtures.speech_recognition import FRAME, SAMPLING_RATE, letter_signal, tone

# Greedy decoding with the task's fixed `task="transcribe"`, spelled out for transformers' pipeline.
PEER_GREEDY = {"num_beams": 1, "task": "transcribe"}
SECONDS_PER_FRAME = FRAME / SAMPLING_RATE


@pytest.fixture(scope="module")
def whisper(tiny_whisper):
    with hfpipes.load("speech-recognition", model=tiny_whisper, device="cpu") as loaded:
        yield loaded


@pytest.fixture(scope="module")
def whisper_peer(tiny_whisper):
    from transformers import pipeline

    return pipeline("automatic-speech-recognition", model=tiny_whisper, device="cpu")


@pytest.fixture(scope="module")
def ctc(tiny_wav2vec2_ctc):
    with hfpipes.load("speech-recognition", model=tiny_wav2vec2_ctc, device="cpu") as loaded:
        yield loaded


@pytest.fixture(scope="module")
def ctc_peer(tiny_wav2vec2_ctc):
    from transformers import pipeline

    return pipeline("automatic-speech-recognition", model=tiny_wav2vec2_ctc, device="cpu")


@pytest.fixture(scope="module")
def letters(letter_ctc):
    with hfpipes.load("speech-recognition", model=letter_ctc, device="cpu") as loaded:
        yield loaded


@pytest.fixture(scope="module")
def letters_peer(letter_ctc):
    from transformers import pipeline

    return pipeline("automatic-speech-recognition", model=letter_ctc, device="cpu")


@pytest.fixture(scope="module")
def long_text():
    """About 70 s of known words for the letter model (two 20 ms frames per character)."""
    words = re.sub(r"[^a-z ]", "", " ".join(tiny_models.SENTENCES).lower()).split()
    text = " ".join(words * 6)
    return text[: text.rindex(" ", 0, 1750)]


def window_counter(pipe, monkeypatch):
    """Counts the windows that reach `_forward` (the model itself is untouched)."""
    calls = []
    original = pipe._forward

    def spy(batch, **kwargs):
        calls.append(len(batch["strides"]))
        return original(batch, **kwargs)

    monkeypatch.setattr(pipe, "_forward", spy)
    return calls


def word_timestamps(text):
    """Where `letter_signal(text)` puts each word: character i occupies frame 2 i (then a blank frame)."""
    spans, position = [], 0
    for word in text.split(" "):
        spans.append(
            {
                "text": word,
                "timestamp": (
                    2 * position * SECONDS_PER_FRAME,
                    (2 * (position + len(word) - 1) + 1) * SECONDS_PER_FRAME,
                ),
            }
        )
        position += len(word) + 1
    return spans


def assert_chunks_equal(ours, theirs, strip=True):
    """Same chunks as the pipeline's; Whisper segment texts are stripped of the pipeline's leading space."""
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert a["text"] == (b["text"].strip() if strip else b["text"])
        assert a["timestamp"] == pytest.approx(b["timestamp"], abs=1e-6)


# ------------------------------------------------------------------------------------------------ Whisper


def test_whisper_matches_transformers_pipeline_on_short_audio(whisper, whisper_peer):
    clips = [tone(2.0, 220), tone(0.5, 440, seed=1), tone(7.0, 330, seed=2)]
    ours = whisper(clips, max_new_tokens=8)
    theirs = [whisper_peer(clip, generate_kwargs={**PEER_GREEDY, "max_new_tokens": 8}) for clip in clips]
    assert [r["text"] for r in ours] == [r["text"].strip() for r in theirs]
    assert all(r["text"] for r in ours)  # the tiny model does write something, so equality means something
    german = whisper(clips[0], max_new_tokens=8, language="german")
    assert german == {
        "text": whisper_peer(clips[0], generate_kwargs={**PEER_GREEDY, "max_new_tokens": 8, "language": "de"})[
            "text"
        ].strip()
    }
    assert whisper(clips[0], max_new_tokens=8, language="DE") == german
    assert whisper(clips[0], max_new_tokens=8, language="<|de|>") == german


def test_whisper_timestamps_match_the_pipeline_as_float_tuples(whisper, whisper_peer):
    clip = tone(2.0, 220)
    ours = whisper(clip, max_new_tokens=12, return_timestamps=True)
    theirs = whisper_peer(clip, return_timestamps=True, generate_kwargs={**PEER_GREEDY, "max_new_tokens": 12})
    assert set(ours) == {"text", "chunks"} and ours["text"] == theirs["text"].strip()
    assert ours["chunks"]
    for chunk in ours["chunks"]:
        start, end = chunk["timestamp"]
        assert isinstance(chunk["text"], str) and isinstance(chunk["timestamp"], tuple)
        assert type(start) is float and type(end) is float and 0.0 <= start <= end
    assert_chunks_equal(ours["chunks"], theirs["chunks"])
    assert set(whisper(clip, max_new_tokens=12, return_timestamps=False)) == {"text"}


def test_whisper_long_audio_is_cut_into_overlapping_windows_like_the_pipeline(whisper, whisper_peer, monkeypatch):
    clip = tone(15.0, 300, seed=3)
    windows = window_counter(whisper, monkeypatch)
    ours = whisper(clip, max_new_tokens=8)
    # The tiny model's window is 10 s; strides of 10/6 s on each side: windows at 0 s and 6.67 s.
    assert sum(windows) == 2
    peer = {"chunk_length_s": 10, "ignore_warning": True}
    theirs = whisper_peer(clip, **peer, generate_kwargs={**PEER_GREEDY, "max_new_tokens": 8})
    assert ours == {"text": theirs["text"].strip()} and ours["text"]
    stamped = whisper(clip, max_new_tokens=8, return_timestamps=True)
    theirs = whisper_peer(clip, **peer, return_timestamps=True, generate_kwargs={**PEER_GREEDY, "max_new_tokens": 8})
    assert stamped["text"] == theirs["text"].strip()
    assert_chunks_equal(stamped["chunks"], theirs["chunks"])


def test_whisper_windows_of_several_inputs_share_batches(whisper, monkeypatch):
    clips = [tone(15.0, 300, seed=3), tone(1.0, 200), tone(12.0, 250, seed=4)]
    one_by_one = [whisper(clip, max_new_tokens=8) for clip in clips]
    batches = window_counter(whisper, monkeypatch)
    assert whisper(clips, max_new_tokens=8, batch_size=4) == one_by_one
    assert batches == [4, 1]  # 2 + 1 + 2 windows, longest first


def test_multilingual_whisper_always_transcribes(whisper, monkeypatch):
    seen = []
    generate = whisper.model.generate
    monkeypatch.setattr(whisper.model, "generate", lambda **kwargs: seen.append(kwargs) or generate(**kwargs))
    whisper(tone(1.0), max_new_tokens=4)
    whisper(tone(1.0), max_new_tokens=4, language="de")
    assert [k["task"] for k in seen] == ["transcribe", "transcribe"]
    assert "language" not in seen[0] and seen[1]["language"] == "de"


@pytest.mark.parametrize(
    "language, message",
    [
        ("klingon", "unknown language 'klingon'"),
        ("fr", r"this model has no 'french' \('fr'\) token; it knows \['de', 'en'\]"),
        ("", "expected a language code"),
        (3, "expected a language code"),
    ],
)
def test_bad_languages_are_refused_before_running(whisper, language, message):
    with pytest.raises(InvalidInputError, match=f"language: {message}"):
        whisper(tone(1.0), language=language)


def test_english_only_whisper_accepts_english_and_refuses_other_languages(tiny_whisper_english, monkeypatch):
    with hfpipes.load("speech-recognition", model=tiny_whisper_english, device="cpu") as english:
        seen = []
        generate = english.model.generate
        monkeypatch.setattr(english.model, "generate", lambda **kwargs: seen.append(kwargs) or generate(**kwargs))
        plain = english(tone(1.0), max_new_tokens=4)
        assert english(tone(1.0), max_new_tokens=4, language="english") == plain
        assert english(tone(1.0), max_new_tokens=4, language="en") == plain
        # English-only checkpoints take neither a task nor a language token.
        assert all("task" not in k and "language" not in k for k in seen)
        with pytest.raises(InvalidInputError, match="English-only Whisper model; it cannot transcribe 'german'"):
            english(tone(1.0), language="de")


@pytest.mark.parametrize(
    "options, message",
    [
        ({"max_new_tokens": 0}, "max_new_tokens: expected an integer from 1 to 60"),
        ({"max_new_tokens": 61}, "max_new_tokens: expected an integer from 1 to 60"),
        ({"max_new_tokens": "8"}, "max_new_tokens"),
        ({"num_beams": 0}, "num_beams: expected a positive integer"),
        ({"chunk_length_s": 11}, "chunk_length_s: Whisper sees at most 10 s"),
        ({"chunk_length_s": -1}, "chunk_length_s: expected a positive number"),
        ({"chunk_length_s": True}, "chunk_length_s: expected a positive number"),
        ({"stride_length_s": (5, 5)}, "must be shorter than the window"),
        ({"stride_length_s": (1, 2, 3)}, "stride_length_s: expected a number of seconds"),
        ({"stride_length_s": -1}, "stride_length_s: expected a number of seconds"),
        ({"return_timestamps": "word"}, "only available for CTC models"),
    ],
)
def test_bad_whisper_options_are_refused(whisper, options, message):
    with pytest.raises(InvalidInputError, match=message):
        whisper(tone(1.0), **options)


def test_beam_search_and_custom_windows_run(whisper):
    clips = [tone(1.0), tone(3.0, 300, seed=1)]
    beams = whisper(clips, max_new_tokens=4, num_beams=2)
    assert beams == [whisper(clip, max_new_tokens=4, num_beams=2) for clip in clips]
    assert all(isinstance(r["text"], str) for r in beams)
    assert isinstance(whisper(tone(15.0), max_new_tokens=4, chunk_length_s=6, stride_length_s=(0.5, 1))["text"], str)


def test_whisper_silence_is_not_an_error(whisper):
    assert isinstance(whisper(np.zeros(SAMPLING_RATE, dtype=np.float32), max_new_tokens=4)["text"], str)


# ---------------------------------------------------------------------------------------------------- CTC


def test_ctc_matches_transformers_pipeline_batched_and_padded(ctc, ctc_peer):
    clips = [tone(1.0, 220), tone(3.0, 440, seed=1), tone(0.3, 330, seed=2), tone(2.2, 500, seed=3)]
    ours = ctc(clips, batch_size=4)
    assert [r["text"] for r in ours] == [ctc_peer(clip)["text"] for clip in clips]
    assert all(r["text"] for r in ours)


@pytest.mark.parametrize("options", [{}, {"chunk_length_s": 8, "stride_length_s": (1, 2)}])
def test_ctc_long_audio_matches_the_pipeline_with_the_same_windows(ctc, ctc_peer, options, monkeypatch):
    clip = tone(30.0, 260, seed=5)
    windows = window_counter(ctc, monkeypatch)
    ours = ctc(clip, **options)
    assert sum(windows) == (2 if not options else 6)
    theirs = ctc_peer(
        clip, chunk_length_s=options.get("chunk_length_s", 20), stride_length_s=options.get("stride_length_s")
    )
    assert ours == {"text": theirs["text"]}


def test_ctc_word_and_char_timestamps_match_the_pipeline(letters, letters_peer):
    audio = letter_signal("the quick brown fox")
    words = letters(audio, return_timestamps=True)
    assert words["chunks"] == letters(audio, return_timestamps="word")["chunks"]
    assert_chunks_equal(words["chunks"], letters_peer(audio, return_timestamps="word")["chunks"])
    assert words["chunks"] == [
        dict(c, timestamp=pytest.approx(c["timestamp"])) for c in word_timestamps("the quick brown fox")
    ]
    chars = letters(audio, return_timestamps="char")["chunks"]
    assert_chunks_equal(chars, letters_peer(audio, return_timestamps="char")["chunks"], strip=False)
    assert [c["text"] for c in chars] == list("the quick brown fox")
    assert all(type(t) is float for c in chars for t in c["timestamp"])


def test_ctc_models_trained_without_attention_mask_get_zero_padding_only(ctc, ctc_peer, monkeypatch):
    # Like wav2vec2-base (group norm): its feature extractor says so, and the model then sees no mask.
    monkeypatch.setattr(ctc.feature_extractor, "return_attention_mask", False)
    keys = []
    forward = ctc._forward
    monkeypatch.setattr(ctc, "_forward", lambda batch, **kw: keys.append(sorted(batch)) or forward(batch, **kw))
    clips = [tone(1.0, 220), tone(2.0, 440, seed=1)]
    assert ctc(clips[1]) == {"text": ctc_peer(clips[1])["text"]}
    assert [r["text"] for r in ctc(clips)] and keys == [["input_values", "strides"]] * 2


def test_ctc_refuses_whisper_only_options(ctc):
    for options in ({"language": "en"}, {"max_new_tokens": 3}, {"num_beams": 2}):
        with pytest.raises(InvalidInputError, match="only Whisper models take this option"):
            ctc(tone(1.0), **options)
    with pytest.raises(InvalidInputError, match="return_timestamps: expected True, False, 'word' or 'char'"):
        ctc(tone(1.0), return_timestamps="segment")


def test_ctc_batched_equals_one_by_one_and_survives_save_and_reload(ctc, tmp_path):
    clips = [tone(s, 200 + 40 * i, seed=i) for i, s in enumerate([0.4, 2.5, 1.1, 25.0, 0.01])]
    one_by_one = [ctc(clip) for clip in clips]
    assert ctc(clips, batch_size=3) == one_by_one
    with hfpipes.load("speech-recognition", model=ctc.save_pretrained(tmp_path / "copy"), device="cpu") as reloaded:
        assert reloaded(clips) == one_by_one


# ------------------------------------------------------------------ long audio with a known transcript


def test_70_s_of_known_words_merge_without_dropped_or_repeated_words(letters, long_text, monkeypatch):
    audio = letter_signal(long_text)
    assert 69 < len(audio) / SAMPLING_RATE <= 70
    windows = window_counter(letters, monkeypatch)
    assert letters(audio) == {"text": long_text}
    assert sum(windows) == 5  # 20 s windows, 13.3 s apart
    # Every character is one frame: a frame lost or kept twice at any seam would change the text.
    for options in ({"chunk_length_s": 7, "stride_length_s": (1, 2)}, {"chunk_length_s": 3.3, "stride_length_s": 0.2}):
        assert letters(audio, **options) == {"text": long_text}


def test_long_audio_word_timestamps_stay_exact_across_seams(letters, letters_peer, long_text):
    audio = letter_signal(long_text)
    expected = word_timestamps(long_text)
    result = letters(audio, return_timestamps=True)
    assert len(result["chunks"]) == len(expected)
    for ours, truth in zip(result["chunks"], expected, strict=True):
        assert ours["text"] == truth["text"]
        assert ours["timestamp"] == pytest.approx(truth["timestamp"], abs=1e-6)
    assert_chunks_equal(result["chunks"], letters_peer(audio, chunk_length_s=20, return_timestamps="word")["chunks"])


def test_chunks_of_a_long_input_batch_with_short_inputs(letters, long_text):
    texts = ["hello world", long_text, "a"]
    assert letters([letter_signal(t) for t in texts], batch_size=4) == [{"text": t} for t in texts]


def test_silence_gives_an_empty_transcript(letters, ctc):
    assert letters(np.zeros(3 * SAMPLING_RATE, dtype=np.float32)) == {"text": ""}
    assert isinstance(ctc(np.zeros(SAMPLING_RATE, dtype=np.float32))["text"], str)


# --------------------------------------------------------------------------------------------- input forms


def test_every_audio_form_gives_the_same_transcript(letters, tmp_path):
    text = "every form works"
    audio = letter_signal(text)
    wav, flac = tmp_path / "clip.wav", tmp_path / "clip.flac"
    soundfile.write(wav, audio, SAMPLING_RATE)  # 16-bit PCM
    soundfile.write(flac, audio, SAMPLING_RATE)
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, SAMPLING_RATE, format="WAV")
    forms = [
        audio,  # bare array: already at the model's rate
        audio.astype(np.float64),
        str(wav),
        flac,
        buffer.getvalue(),  # bytes
        {"array": audio, "sampling_rate": SAMPLING_RATE},
        {"raw": audio, "sampling_rate": SAMPLING_RATE},
        np.round(audio * 32767).astype(np.int16),
        np.stack([audio, audio], axis=1),  # stereo, (frames, channels)
        np.stack([audio, audio]),  # stereo, (channels, frames)
        [audio.tolist()],  # a list of samples inside the list of inputs
    ]
    assert letters(audio) == {"text": text}
    results = letters(forms[:-1]) + letters(forms[-1])
    assert results == [{"text": text}] * len(forms)


def test_another_sampling_rate_is_resampled(letters, ctc):
    # 48 kHz symbols three times as long in samples; soxr brings them back to 16 kHz frames.
    audio = np.repeat(letter_signal("resampled"), 3)
    assert letters({"array": audio, "sampling_rate": 48000}) == {"text": "resampled"}
    clip = tone(2.0, 300)[::2]  # 8 kHz
    import soxr

    assert ctc({"array": clip, "sampling_rate": 8000}) == ctc(soxr.resample(clip, 8000, SAMPLING_RATE, quality="HQ"))


def test_very_short_audio_is_padded_not_an_error(letters, ctc):
    # Shorter than one frame: padded with silence up to the convolution's receptive field.
    assert letters(np.full(10, 0.09, dtype=np.float32)) == {"text": ""}
    assert letters(np.full(FRAME, 0.09, dtype=np.float32)) == {"text": "b"}
    assert isinstance(ctc(np.zeros(5, dtype=np.float32))["text"], str)


@pytest.mark.parametrize(
    "bad, message",
    [
        (b"certainly not audio", "input 1: expected an audio file .* cannot be decoded"),
        (np.array([], dtype=np.float32), "input 1: the audio is empty"),
        (np.array([0.1, np.nan, 0.2], dtype=np.float32), "input 1: the audio contains NaN"),
        ("/no/such/clip.wav", "input 1: audio file not found"),
        ({"array": np.zeros(10)}, "input 1: an audio dict needs"),
        (0.5, "input 1: expected audio .* A list is always a list of inputs"),
        (None, "input 1: expected audio"),
    ],
)
def test_bad_audio_is_refused_naming_the_input(letters, bad, message):
    with pytest.raises(InvalidInputError, match=message):
        letters([letter_signal("ok"), bad])


def test_unreadable_file_names_the_input_and_the_path(letters, tmp_path):
    fake = tmp_path / "fake.wav"
    fake.write_text("this is text, not a wave file")
    with pytest.raises(InvalidInputError, match=r"input 0 \('.*fake.wav'\): expected an audio file"):
        letters(str(fake))


def test_a_model_that_is_not_for_speech_recognition_is_refused(tiny_text_classifier):
    with pytest.raises(ModelLoadError, match="expected a Whisper model or a CTC model"):
        hfpipes.load("speech-recognition", model=tiny_text_classifier, device="cpu")


# ------------------------------------------------------------------------------------------ transformers' noise


def _generation_warnings(run) -> list[str]:
    """What transformers' generation module logs while `run()` runs (its `warning_once` cache cleared first)."""
    import logging

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    logging.Logger.warning_once.cache_clear()
    generation_logger, collect = logging.getLogger("transformers.generation.utils"), Collect()
    generation_logger.addHandler(collect)
    try:
        run()
    finally:
        generation_logger.removeHandler(collect)
    return collect.messages


def test_whisper_transcription_logs_none_of_transformers_own_generate_warnings(whisper):
    messages = _generation_warnings(lambda: whisper(tone(1.0, 440), max_new_tokens=5))
    assert not [m for m in messages if "Passing `generation_config` together" in m or "Both `max_new_tokens`" in m]


def test_the_generate_warning_filter_keeps_warnings_about_other_arguments():
    import logging

    from hfpipes.tasks.speech_recognition import _WhisperGenerateNoiseFilter

    def kept(message):
        return _WhisperGenerateNoiseFilter().filter(logging.LogRecord("t", logging.WARNING, "", 0, message, None, None))

    own = "Passing `generation_config` together with generation-related arguments=({'suppress_tokens', 'begin_suppress_tokens'}) is deprecated"
    other = "Passing `generation_config` together with generation-related arguments=({'suppress_tokens', 'temperature'}) is deprecated"
    assert not kept(own) and kept(other) and kept("Setting `pad_token_id` to `eos_token_id`")
