"""The demo without a browser: its handlers on tiny models, the model cache, model cards, the terminal tour (tiny
models in-process; the real default models in a subprocess, marked slow), and where the web server listens.

The browser test is `tests/test_demo_browser.py`.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import wave
from pathlib import Path

import pytest

import hfpipes
from hfpipes import demo
from hfpipes.cli import build_parser, main
from hfpipes.errors import InvalidInputError, ModelNotFoundError, UnknownTaskError
from hfpipes.registry import get_spec

EXAMPLES = demo.EXAMPLES_DIR
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_models(
    tiny_image_classifier, tiny_text_classifier, tiny_marian, tiny_chat_llama, tiny_whisper_english, tiny_class_ddpm
) -> dict[str, str]:
    return {
        "image-classification": tiny_image_classifier,
        "sentiment": tiny_text_classifier,
        "translation": tiny_marian,
        "text-generation": tiny_chat_llama,
        "speech-recognition": tiny_whisper_english,
        "image-generation": tiny_class_ddpm,
    }


@pytest.fixture(scope="module")
def models(tiny_models):
    models = demo.DemoModels(tiny_models, device="cpu")
    yield models
    models.close()


# ------------------------------------------------------------------------------------------ assets and imports


def test_bundled_examples_exist_and_are_small():
    files = [EXAMPLES / name for name in (*demo.EXAMPLE_IMAGES, *demo.EXAMPLE_AUDIO)]
    assert all(path.is_file() for path in files)
    assert sum(path.stat().st_size for path in EXAMPLES.iterdir()) < 1_500_000
    for name in demo.EXAMPLE_AUDIO:
        with wave.open(str(EXAMPLES / name)) as audio:
            assert (audio.getnchannels(), audio.getframerate()) == (1, 16000)
    assert all(name in (EXAMPLES / "README.md").read_text() for name in (*demo.EXAMPLE_IMAGES, *demo.EXAMPLE_AUDIO))


def test_importing_hfpipes_and_the_tour_does_not_import_gradio():
    code = "import sys, hfpipes, hfpipes.cli, hfpipes.demo; print('gradio' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_areas_cover_every_task_with_an_explanation():
    assert set(demo.AREAS) == set(hfpipes.list_tasks())
    for area in demo.AREAS.values():
        assert area.area in ("Vision", "Language", "Speech", "Creative")
        assert len(area.architecture.split()) > 50  # a paragraph, not a label


# ---------------------------------------------------------------------------------------------------- models


def test_parse_model_overrides_accepts_aliases_and_rejects_bad_items():
    assert demo.parse_model_overrides(["asr=a/b", "chat=dir", "sentiment=x=y"]) == {
        "speech-recognition": "a/b",
        "text-generation": "dir",
        "sentiment": "x=y",
    }
    assert demo.parse_model_overrides(None) == {}
    with pytest.raises(InvalidInputError, match="TASK=PATH_OR_ID"):
        demo.parse_model_overrides(["sentiment"])
    with pytest.raises(UnknownTaskError, match="Did you mean 'sentiment'"):
        demo.parse_model_overrides(["sentimnet=x"])


def test_models_load_once_under_concurrent_first_requests(tiny_text_classifier, monkeypatch):
    loads = []
    real_load = hfpipes.load
    monkeypatch.setattr(hfpipes, "load", lambda *args, **kwargs: loads.append(args) or real_load(*args, **kwargs))
    models = demo.DemoModels({"sentiment": tiny_text_classifier}, device="cpu")
    assert not models.is_loaded("sentiment")
    barrier = threading.Barrier(4)
    pipes = []

    def request() -> None:
        barrier.wait()
        pipes.append(models.get("text-classification"))

    threads = [threading.Thread(target=request) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1 and len(pipes) == 4 and all(pipe is pipes[0] for pipe in pipes)
    assert models.is_loaded("sentiment") and models.get("sentiment") is pipes[0]
    models.close()


def test_a_task_without_a_model_says_how_to_give_one(monkeypatch):
    from hfpipes import registry

    spec = get_spec("sentiment")
    monkeypatch.setitem(registry._TASKS, "sentiment", dataclasses.replace(spec, default_model=None))
    with pytest.raises(ModelNotFoundError, match="--model sentiment=PATH_OR_ID"):
        demo.DemoModels().get("sentiment")


def test_model_cards_are_found_for_defaults_hub_ids_and_fine_tuned_models(tmp_path):
    card = demo.find_model_card("embedded:efficientnet-lite0")
    assert card.link_text == "model_cards/efficientnet-lite0.md" and card.file.is_file()
    assert "EfficientNet" in card.text() and not card.text().startswith("---")  # metadata block removed
    assert "licence" in card.description
    assert demo.find_model_card("openai/whisper-small").url == "https://huggingface.co/openai/whisper-small"
    # an embedded model without a card of its own links to the original checkpoint's Hub page
    assert demo.find_model_card("embedded:whisper-base").url == "https://huggingface.co/openai/whisper-base"
    assert demo.find_model_card("embedded:whisper-tiny.en").link_text == "model_cards/whisper-tiny.en.md"
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n# My fine-tune\n")
    card = demo.find_model_card(str(tmp_path))
    assert card.file == tmp_path / "README.md" and card.text() == "# My fine-tune"
    bare = demo.find_model_card(str(tmp_path / "nowhere"))
    assert bare.file is None and bare.url is None and bare.link_text == str(tmp_path / "nowhere")


# -------------------------------------------------------------------------------------------------- handlers


def test_classify_image_gives_top_labels_from_the_label_set(models):
    labels = demo.classify_image(models, EXAMPLES / "chelsea.jpg")
    assert set(labels) <= {"cat", "dog", "bird"} and len(labels) == 3
    assert list(labels.values()) == sorted(labels.values(), reverse=True)
    assert sum(labels.values()) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(InvalidInputError, match="No image"):
        demo.classify_image(models, None)


def test_unsupported_upload_is_a_readable_error(models, tmp_path):
    fake = tmp_path / "notes.jpg"
    fake.write_text("not an image")
    with pytest.raises(InvalidInputError, match="notes.jpg|image"):
        demo.classify_image(models, str(fake))
    fake_audio = tmp_path / "notes.wav"
    fake_audio.write_text("not audio")
    with pytest.raises(InvalidInputError):
        demo.transcribe(models, str(fake_audio))


def test_analyse_sentiment_gives_every_label(models):
    labels = demo.analyse_sentiment(models, "I love it")
    assert set(labels) == {"negative", "positive"}
    assert sum(labels.values()) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(InvalidInputError, match="No text"):
        demo.analyse_sentiment(models, "   ")


def test_translation_languages_are_those_of_the_model(models):
    sources, targets, source, target = demo.translation_languages(models)
    assert (sources, targets, source, target) == ([("English (en)", "en")], [("German (de)", "de")], "en", "de")
    translation = demo.translate(models, "Good morning", source, target)
    assert isinstance(translation, str)
    assert translation == models.get("translation")("Good morning")["translation_text"]


def test_chat_streams_the_growing_answer_and_reads_gradio_history(models):
    history = [
        {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
        {"role": "assistant", "content": "Hi!"},
    ]
    answers = list(demo.chat(models, "Where is the station?", history, max_new_tokens=8))
    assert answers and all(b.startswith(a) for a, b in zip(answers, answers[1:], strict=False))
    messages = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "Where is the station?"},
    ]
    expected = models.get("text-generation")(messages, max_new_tokens=8, do_sample=False)["generated_text"]
    assert answers[-1] == (expected or "(the model ended its answer at once, with no text)")
    with pytest.raises(InvalidInputError, match="No message"):
        next(demo.chat(models, ""))


def test_transcribe_gives_text_and_segments(models):
    text, rows = demo.transcribe(models, str(EXAMPLES / "goforward.wav"))
    assert isinstance(text, str)
    for start, end, segment in rows:
        assert float(start) <= float(end) and isinstance(segment, str)
    with pytest.raises(InvalidInputError, match="No audio"):
        demo.transcribe(models, None)


def test_generate_image_by_prompt_or_class(models):
    options = demo.generation_options(models)
    assert options["kind"] == "class-conditional" and options["classes"] == [str(i) for i in range(10)]
    assert options["steps"] == 100  # the pipeline says 1000; its scheduler was trained with 100 timesteps
    assert options["size"] == (16, 16)
    image, caption = demo.generate_image(models, "a handwritten seven", seed=3, steps=2, progress=False)
    assert image.size == (16, 16)
    assert caption == "class 7 · seed 3 · 2 steps · 16×16 pixels"
    by_class, caption = demo.generate_image(models, "", class_label="7", seed=3, steps=2, progress=False)
    assert caption.startswith("class 7") and by_class.tobytes() == image.tobytes()
    with pytest.raises(InvalidInputError, match="No prompt"):
        demo.generate_image(models, "", demo.FROM_PROMPT, seed=0, steps=2)
    with pytest.raises(InvalidInputError, match="seed"):
        demo.generate_image(models, "7", seed=1.5, steps=2)


# ----------------------------------------------------------------------------------------------------- web UI


def test_ui_errors_are_readable_messages_and_unexpected_ones_are_logged(caplog):
    import gradio as gr

    def bad_input():
        raise InvalidInputError("input 0: not an image")

    def bug():
        raise ZeroDivisionError("division by zero")

    with pytest.raises(gr.Error, match="input 0: not an image"):
        demo._ui(bad_input)()
    with caplog.at_level(logging.ERROR, logger="hfpipes"), pytest.raises(gr.Error, match="server's log"):
        demo._ui(bug)()
    assert "ZeroDivisionError" in caplog.text

    def stream():
        yield "a"
        raise InvalidInputError("stopped")

    with pytest.raises(gr.Error, match="stopped"):
        list(demo._ui_stream(stream)())


def test_app_has_a_tab_per_area_and_serves_its_card_files(tiny_models):
    app = demo.build_app(demo.DemoModels(tiny_models))
    ids = {block.elem_id for block in app.blocks.values()}
    tabs = {"tab-vision", "tab-language", "tab-sentiment", "tab-translation", "tab-chat", "tab-speech", "tab-creative"}
    assert tabs <= ids
    assert {f"{task}-model" for task in demo.TASKS} <= ids
    assert str(demo.MODEL_CARDS_DIR / "efficientnet-lite0.md") in demo._card_files(demo.DemoModels())
    assert demo._card_files(demo.DemoModels(tiny_models)) == []  # tiny models have no cards


def _listening_addresses(port: int) -> set[str]:
    """The local addresses with a listening TCP socket on `port`, from /proc/net/tcp (IPv4, Linux)."""
    addresses = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        address, hex_port = fields[1].split(":")
        if int(hex_port, 16) == port and fields[3] == "0A":  # 0A = LISTEN
            addresses.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return addresses


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # a UDP "connect" sends nothing; it only picks the outgoing interface
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not Path("/proc/net/tcp").is_file(), reason="reads /proc/net/tcp (Linux)")
def test_server_listens_on_loopback_only_unless_host_says_so(monkeypatch):
    # An environment variable alone must not expose the demo.
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    port = _free_port()
    app = demo.launch(port=port, block=False)
    try:
        assert _listening_addresses(port) == {"127.0.0.1"}
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        other = _non_loopback_address()
        if other is not None:
            with pytest.raises(OSError):
                socket.create_connection((other, port), timeout=5).close()
    finally:
        app.close()
    port = _free_port()
    app = demo.launch(host="0.0.0.0", port=port, block=False)
    try:
        assert _listening_addresses(port) == {"0.0.0.0"}
    finally:
        app.close()


def test_cli_demo_arguments():
    args = build_parser().parse_args(["demo"])
    assert (args.cli, args.host, args.port, args.share, args.model) == (False, None, 7860, False, [])
    args = build_parser().parse_args(
        ["demo", "--host", "0.0.0.0", "--port", "8000", "--share", "--model", "asr=x", "--model", "chat=y"]
    )
    assert (args.host, args.port, args.share, args.model) == ("0.0.0.0", 8000, True, ["asr=x", "chat=y"])


# ------------------------------------------------------------------------------------------------------ tour


_ROW = re.compile(r"^(Vision|Language|Speech|Creative)\s{2,}")


def _table_rows(output: str) -> list[str]:
    return [line for line in output.splitlines() if _ROW.match(line)]


def test_cli_tour_runs_six_areas(tiny_models, tmp_path, capsys):
    arguments = ["-q", "demo", "--cli", "--output-dir", str(tmp_path)]
    for task, spec in tiny_models.items():
        arguments += ["--model", f"{task}={spec}"]
    assert main(arguments) == 0
    output = capsys.readouterr().out
    rows = _table_rows(output)
    assert [row.split()[0] for row in rows] == ["Vision", "Language", "Language", "Language", "Speech", "Creative"]
    assert "ERROR" not in output and "All 6 areas ran" in output
    assert (tmp_path / "creative-seed0.png").is_file()


def test_tour_reports_a_failing_area_and_goes_on(tiny_models, tmp_path):
    broken = {**tiny_models, "translation": str(tmp_path / "missing-model")}
    out = io.StringIO()
    assert demo.tour(broken, output_dir=tmp_path, file=out, width=140) == 1
    rows = _table_rows(out.getvalue())
    assert len(rows) == 6
    assert "ERROR: ModelNotFoundError" in rows[2] and all("ERROR" not in row for row in rows[3:])
    assert "1 of 6 areas failed" in out.getvalue()


@pytest.mark.slow
def test_tour_on_the_default_models(request, tmp_path):
    """`hfpipes demo --cli` as the README runs it; a task without a default model yet gets a tiny one."""
    stand_ins = {"sentiment": "tiny_text_classifier", "image-generation": "tiny_class_ddpm"}
    command = [sys.executable, "-m", "hfpipes", "demo", "--cli", "--output-dir", str(tmp_path)]
    for task in demo.TASKS:
        if get_spec(task).default_model is None:
            command += ["--model", f"{task}={request.getfixturevalue(stand_ins[task])}"]
    env = {**os.environ, "COLUMNS": "160"}
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = _table_rows(result.stdout)
    assert len(rows) == 6 and "ERROR" not in result.stdout and "All 6 areas ran" in result.stdout
    if get_spec("speech-recognition").default_model is not None:
        assert "go forward" in result.stdout.lower()  # the transcript (the input column says "goforward.wav")
