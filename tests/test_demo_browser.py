"""The web demo in a real browser: `hfpipes demo` on a free local port, driven by headless Chromium.

Each test opens one tab, runs its example, waits for the output and checks that it is sensible (a label from the
model's label set, a non-empty transcript, an image of the model's size), then saves a screenshot of the tab in
`test-artifacts/`. With `HFPIPES_UPDATE_SCREENSHOT=1`, the Vision tab's screenshot also replaces `docs/demo.png`,
the README's picture (never in plain CI runs, so they leave the tree clean).

The demo runs the offline default models; a task without a default model yet gets a tiny one. Playwright drives
Debian's Chromium (`/usr/bin/chromium`, installed by `requirements/system-deps.sh`); `playwright install` cannot
download browsers here.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync",
]  # fmt: skip
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
README_SCREENSHOT = ROOT / "docs" / "demo.png"
# Generous: the first request of a tab loads its model (and, on a fresh machine, converts it once).
MODEL_TIMEOUT_MS = 240_000
SERVER_START_S = 120


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def demo_models(request) -> dict[str, str]:
    """The model of each task: the registry's default, or a tiny model where the task has none yet."""
    from hfpipes.registry import get_spec

    stand_ins = {"sentiment": "tiny_text_classifier", "image-generation": "tiny_class_ddpm"}
    models = {}
    for task in (
        "image-classification",
        "sentiment",
        "translation",
        "text-generation",
        "speech-recognition",
        "image-generation",
    ):
        default = get_spec(task).default_model
        models[task] = default if default is not None else request.getfixturevalue(stand_ins[task])
    return models


@pytest.fixture(scope="module")
def server(demo_models, tmp_path_factory):
    """`hfpipes demo` in a subprocess, as a user starts it; yields its URL."""
    from hfpipes.registry import get_spec

    port = _free_port()
    overrides = [f"{task}={spec}" for task, spec in demo_models.items() if spec != get_spec(task).default_model]
    command = [sys.executable, "-m", "hfpipes", "demo", "--port", str(port)]
    for override in overrides:
        command += ["--model", override]
    log = tmp_path_factory.mktemp("demo-server") / "server.log"
    with log.open("w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + SERVER_START_S
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"hfpipes demo exited with {process.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"hfpipes demo did not answer on {url} within {SERVER_START_S} s:\n{log.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(log, ARTIFACTS / "demo-server.log")


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: run `bash requirements/system-deps.sh` (installs Debian's chromium).")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def requested() -> list[str]:
    """Every URL the page requested."""
    return []


@pytest.fixture(scope="module")
def page(browser, server, requested):
    """One page for the whole module, like one visitor going through the tabs."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(30_000)
    page.on("request", lambda request: requested.append(request.url))
    page.goto(server)
    page.wait_for_selector("#vision-run")
    yield page
    page.close()


def _screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"demo-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def _open_tab(page, *names: str) -> None:
    """Click a tab (then a sub-tab) by its title."""
    for name in names:
        page.get_by_role("tab", name=name, exact=True).click()


def _check_no_error(page) -> None:
    """Fail with the page's own message when the demo showed an error toast."""
    toasts = page.locator(".toast-body.error")
    if toasts.count():
        pytest.fail(f"the demo showed an error: {toasts.first.inner_text()}")


def _wait_for(page, what: str, condition, timeout_ms: int = MODEL_TIMEOUT_MS):
    """Poll `condition()` until it returns something truthy; fail early on an error toast."""
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        _check_no_error(page)
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            _screenshot(page, "timeout")
            pytest.fail(f"timed out waiting for {what}")
        page.wait_for_timeout(250)


def _label_set(task: str, spec: str) -> set[str]:
    import hfpipes

    with hfpipes.load(task, spec, device="cpu") as pipe:
        return set(pipe.model.config.id2label.values())


def _top_label(page, elem_id: str) -> str:
    heading = page.locator(f"#{elem_id} h2")
    return heading.inner_text().strip() if heading.count() else ""


def test_vision_tab(page, server, demo_models):
    _open_tab(page, "Vision")
    page.locator("#vision-examples button.gallery-item").first.click()
    _wait_for(page, "the example photo", lambda: page.locator("#vision-image img").count(), timeout_ms=30_000)
    page.click("#vision-run")
    label = _wait_for(page, "the top label", lambda: _top_label(page, "vision-labels"))
    labels = _label_set("image-classification", demo_models["image-classification"])
    assert label in labels
    bars = page.locator("#vision-labels .confidence-set")
    assert bars.count() == min(5, len(labels))
    assert set(bars.all_inner_texts()) and all(any(name in text for name in labels) for text in bars.all_inner_texts())
    card_link = page.locator("#image-classification-model a").first.get_attribute("href")
    if card_link.startswith("/"):  # a card file served by the demo (Hub pages need a network)
        assert page.request.get(server.rstrip("/") + card_link).ok
    _screenshot(page, "vision")
    if os.environ.get("HFPIPES_UPDATE_SCREENSHOT") == "1":
        README_SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(README_SCREENSHOT))


def test_sentiment_tab(page, demo_models):
    _open_tab(page, "Language", "Sentiment")
    page.locator("#sentiment-examples button.gallery-item").first.click()
    text = page.locator("#sentiment-text textarea")
    _wait_for(page, "the example text", lambda: text.input_value(), timeout_ms=30_000)
    page.click("#sentiment-run")
    label = _wait_for(page, "the sentiment label", lambda: _top_label(page, "sentiment-label"))
    labels = _label_set("sentiment", demo_models["sentiment"])
    assert label in labels
    assert page.locator("#sentiment-label .confidence-set").count() == len(labels)
    _screenshot(page, "sentiment")


def test_translation_tab(page):
    _open_tab(page, "Language", "Translation")
    page.locator("#translation-examples button.gallery-item").first.click()
    text = page.locator("#translation-text textarea")
    source = _wait_for(page, "the example text", lambda: text.input_value(), timeout_ms=30_000)
    page.click("#translation-run")
    output = page.locator("#translation-output textarea")
    translation = _wait_for(page, "the translation", lambda: output.input_value().strip())
    assert translation != source
    _screenshot(page, "translation")


def test_chat_tab(page, demo_models):
    from hfpipes.registry import get_spec

    _open_tab(page, "Language", "Chat")
    question = "What is the capital of France?"
    page.locator("#chat-input textarea").fill(question)
    page.locator("#chat-input textarea").press("Enter")
    bot = page.locator("#chat-bot .message.bot")
    _wait_for(page, "the answer to start", lambda: bot.count() and bot.last.inner_text().strip())
    # Streaming is over when the chat takes input again.
    _wait_for(page, "the answer to end", lambda: page.locator("#chat-input textarea").is_editable())
    answer = bot.last.inner_text().strip()
    assert answer
    if demo_models["text-generation"] == get_spec("text-generation").default_model:
        assert "paris" in answer.lower()
    _screenshot(page, "chat")


def test_speech_tab(page, demo_models):
    from hfpipes.registry import get_spec

    _open_tab(page, "Speech")
    page.locator("#speech-examples button.gallery-item").first.click()
    _wait_for(page, "the example recording", lambda: page.locator("#speech-audio audio").count(), timeout_ms=30_000)
    page.click("#speech-run")
    output = page.locator("#speech-transcript textarea")
    transcript = _wait_for(page, "the transcript", lambda: output.input_value().strip())
    if demo_models["speech-recognition"] == get_spec("speech-recognition").default_model:
        assert "forward" in transcript.lower()
    segments = page.locator("#speech-segments tbody tr")
    _wait_for(page, "the segments table", lambda: segments.count() >= 1, timeout_ms=10_000)
    _screenshot(page, "speech")


def test_creative_tab(page, demo_models):
    import hfpipes

    with hfpipes.load("image-generation", demo_models["image-generation"], device="cpu") as pipe:
        height, width = pipe.default_size
        conditional = pipe.kind == "class-conditional"
    _open_tab(page, "Creative")
    page.locator("#creative-examples button.gallery-item").nth(1).click()  # "digit 3"
    prompt = page.locator("#creative-prompt textarea, #creative-prompt input").first
    _wait_for(page, "the example prompt", lambda: prompt.input_value() == "digit 3", timeout_ms=30_000)
    page.click("#creative-run")
    image = page.locator("#creative-image img")
    _wait_for(
        page, "the image", lambda: image.count() and image.first.evaluate("img => img.complete && img.naturalWidth > 0")
    )
    size = image.first.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert size == [width, height]
    caption = page.locator("#creative-caption").inner_text()
    assert "seed 0" in caption
    if conditional:
        assert "class 3" in caption
    _screenshot(page, "creative")


def test_the_page_needs_no_network(page, server, requested):
    """Everything the page loaded while going through the tabs came from the demo itself: it works offline."""
    assert requested
    outside = sorted({url for url in requested if not url.startswith((server, "data:", "blob:"))})
    assert not outside
