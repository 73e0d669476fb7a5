import io

import numpy as np
import pytest
import soundfile

from hfpipes.errors import InvalidInputError
from hfpipes.inputs import load_audio, load_text


def test_text_control_characters_are_removed_and_bytes_decoded():
    assert load_text("a\x00b\x1bc\td", "input 0") == "abc\td"
    assert load_text("caf\u00e9".encode(), "input 0") == "caf\u00e9"
    with pytest.raises(InvalidInputError, match="input 4: expected a non-empty text"):
        load_text("\x00\x01", "input 4")


def _wav_bytes(samples, rate, subtype="PCM_16"):
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def test_audio_forms_agree(tmp_path):
    rate = 16000
    t = np.arange(rate) / rate
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    path = tmp_path / "tone.wav"
    path.write_bytes(_wav_bytes(tone, rate, "FLOAT"))
    from_path = load_audio(str(path), "input 0", sampling_rate=rate)
    assert from_path.dtype == np.float32 and from_path.shape == (rate,)
    np.testing.assert_allclose(load_audio(path.read_bytes(), "input 0", sampling_rate=rate), from_path)
    np.testing.assert_allclose(load_audio({"array": tone, "sampling_rate": rate}, "input 0", sampling_rate=rate), tone)
    np.testing.assert_allclose(load_audio(tone, "input 0", sampling_rate=rate), tone)
    int16 = (tone * 32767).astype(np.int16)
    np.testing.assert_allclose(load_audio(int16, "input 0", sampling_rate=rate), tone, atol=1e-4)


def test_audio_stereo_is_downmixed_and_resampled():
    rate = 44100
    t = np.arange(rate) / rate
    left = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    stereo = np.stack([left, left], axis=1)  # (frames, channels)
    out = load_audio({"array": stereo, "sampling_rate": rate}, "input 0", sampling_rate=16000)
    assert out.shape == (16000,)
    np.testing.assert_allclose(out[1000:15000].max(), 1.0, atol=0.02)
    channels_first = load_audio({"array": stereo.T, "sampling_rate": rate}, "input 0", sampling_rate=16000)
    np.testing.assert_allclose(channels_first, out)
    eight_k = load_audio(_wav_bytes(left[:8000], 8000), "input 0", sampling_rate=16000)
    assert eight_k.shape == (16000,)


@pytest.mark.parametrize(
    "bad, message",
    [
        ("/nonexistent/clip.wav", "input 2: audio file not found"),
        (b"", "0 bytes"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "cannot be decoded"),
        (b"plain text, not audio at all", "cannot be decoded"),
        (np.zeros(0, dtype=np.float32), "empty"),
        (np.array([0.0, np.nan], dtype=np.float32), "NaN or infinite"),
        (np.array([0.0, np.inf]), "NaN or infinite"),
        ({"array": np.zeros(10)}, "'array' \\(or 'raw'\\) and 'sampling_rate'"),
        ({"array": np.zeros(10), "sampling_rate": -1}, "positive integer sampling_rate"),
        (np.zeros((3, 3, 3)), "shape"),
        (None, "expected audio"),
        (np.array(["a", "b"]), "numeric audio samples"),
    ],
)
def test_bad_audio_is_refused_naming_the_input(bad, message):
    with pytest.raises(InvalidInputError, match=message):
        load_audio(bad, "input 2", sampling_rate=16000)
