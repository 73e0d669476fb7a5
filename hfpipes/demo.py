"""The application-areas demo: a web UI (`hfpipes demo`) and a terminal tour (`hfpipes demo --cli`).

What deep learning does, one area per tab, each run by the task's offline default model (or the one given with
`--model TASK=PATH_OR_ID`): computer vision (a CNN classifies a photo), language (an encoder transformer labels
sentiment, a language model translates, a decoder-only LLM chats with streaming), speech (an encoder-decoder
transformer transcribes audio with timestamps) and creative generation (a diffusion model draws what you ask for).
Each tab explains the architecture doing the work and links the model's card.

The web UI is a Gradio app bound to 127.0.0.1 unless `host=` says otherwise; the environment's
`GRADIO_SERVER_NAME` is ignored so that no variable can expose it silently, Gradio's analytics are off (the demo
works with no network) and a public share link exists only with `share=True`. Models load on the first request
of their tab, once, and stay loaded for every later request and user (`DemoModels`). Errors show in the page
as one readable message; unexpected ones are logged in full on the server.

The terminal tour runs each of the six tasks once on the bundled examples (`hfpipes/assets/examples/`) and prints
a table: area, task, input, output, time. Gradio is imported only by `build_app` and `launch`, so the tour and
`import hfpipes` never import it.

Example:

```python
>>> from hfpipes import demo
>>> demo.tour()                        # the terminal tour, on the offline default models
>>> demo.launch(port=7860)             # the web UI at http://127.0.0.1:7860 (blocks until Ctrl+C)
>>> models = demo.DemoModels({"sentiment": "out/sentiment-minilm"})
>>> demo.analyse_sentiment(models, "What a lovely day")
{'positive': 0.97, 'negative': 0.03}
```

```
$ hfpipes demo                                   # http://127.0.0.1:7860
$ hfpipes demo --model sentiment=out/my-model   # your fine-tuned model in the Language tab
$ hfpipes demo --cli                             # the terminal tour
```
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import re
import shutil
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .errors import HfpipesError, InvalidInputError, ModelNotFoundError

if TYPE_CHECKING:  # pragma: no cover
    import gradio as gr
    from PIL import Image

    from .task import Task

__all__ = [
    "AREAS",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "EXAMPLES_DIR",
    "DemoModels",
    "ModelCard",
    "analyse_sentiment",
    "build_app",
    "chat",
    "classify_image",
    "find_model_card",
    "generate_image",
    "generation_options",
    "launch",
    "parse_model_overrides",
    "tour",
    "transcribe",
    "translate",
    "translation_languages",
]

logger = logging.getLogger("hfpipes")

EXAMPLES_DIR = Path(__file__).resolve().parent / "assets" / "examples"
# The cards of the default models live in the repository's `model_cards/` (beside the package in a checkout).
MODEL_CARDS_DIR = Path(__file__).resolve().parent.parent / "model_cards"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

EXAMPLE_IMAGES = ("chelsea.jpg", "coffee.jpg", "rocket.jpg")
EXAMPLE_AUDIO = ("goforward.wav", "seven-of-clubs.wav", "ill-disposed.wav")
EXAMPLE_AUDIO_LABELS = (
    "goforward.wav: a command (2.8 s)",
    "seven-of-clubs.wav: a playing card (1.5 s)",
    "ill-disposed.wav: Jane Austen, read aloud (3 s)",
)
EXAMPLE_REVIEWS = (
    "I love this library, it made my week!",
    "The battery died after an hour. Total waste of money.",
    "Best pizza in town, the staff were lovely.",
    "The film was slow, predictable and far too long.",
)
EXAMPLE_SENTENCES = (
    "The children are playing in the garden.",
    "Could you tell me where the museum is?",
    "Tomorrow it will rain in the north of the country.",
)
EXAMPLE_QUESTIONS = (
    "What is the capital of France?",
    "Explain what a neural network is in two sentences.",
    "Write a haiku about the sea.",
)
EXAMPLE_PROMPTS = ("a handwritten seven", "digit 3", "the number zero")
# The chat tab's answers: long enough to read, short enough for a CPU.
CHAT_MAX_NEW_TOKENS = 128
# Dropdown value meaning "let the prompt pick the class".
FROM_PROMPT = "(from the prompt)"
# Steps offered by default in the Creative tab: the model's own default, up to this many.
DEMO_STEPS = 50


@dataclass(frozen=True)
class Area:
    """One section of the demo: an application area, the task doing it and the architecture behind it."""

    # The task's registry name.
    task: str
    # The tab (or sub-tab) title and the table's first column.
    area: str
    # What the section does, in a few words.
    what: str
    # One paragraph on the architecture doing the work (markdown).
    architecture: str


AREAS: dict[str, Area] = {
    area.task: area
    for area in (
        Area(
            "image-classification",
            "Vision",
            "image classification",
            "**A convolutional neural network (CNN)** looks at the photo through small learned filters slid across "
            "it. Early layers respond to edges and colours; deeper layers, which see ever larger parts of the image "
            "as it is downsampled, respond to textures, object parts and whole objects. The last layer turns the "
            "pooled features into one score per class (the 1,000 ImageNet categories), and a softmax makes the "
            "scores probabilities. The default model, EfficientNet-Lite0, is a mobile-sized CNN (4.7M parameters) "
            "built from depthwise-separable *inverted residual* blocks: it answers in a few milliseconds on a CPU.",
        ),
        Area(
            "sentiment",
            "Language",
            "sentiment analysis",
            "**An encoder transformer** reads the whole text at once: layer after layer, *self-attention* updates "
            "each token's vector with information from every other token, so that *not* can change what *good* "
            "means. A summary vector of the sentence goes through a small classification head, one score per "
            "label, and a softmax gives the confidence. The default model is MiniLM (6 layers, 22M parameters, a "
            "distilled BERT) fine-tuned with LoRA (small low-rank updates to its weights) on labelled tweets.",
        ),
        Area(
            "translation",
            "Language",
            "translation",
            "Translation is the task the transformer was invented for. In an **encoder-decoder** model (Marian, "
            "T5, NLLB) the encoder reads the source sentence and the decoder writes the translation one token at a "
            "time, attending to the encoder's output at every step. A **decoder-only language model** can "
            "translate too: shown a few example sentence pairs in its prompt (*English: … German: …*), it "
            "continues the pattern. The offline default, Gemma 3 270M, works that way (few-shot prompting), so it "
            "offers the languages of its examples; `--model translation=Helsinki-NLP/opus-mt-en-de` swaps in a "
            "dedicated encoder-decoder.",
        ),
        Area(
            "text-generation",
            "Language",
            "chat (text generation)",
            "**A decoder-only LLM** predicts the next token from all the tokens before it (*causal* "
            "self-attention: no peeking ahead), appends it and repeats; that loop is all of text generation, and "
            "the page shows each token as it comes. Instruction-tuned models were further trained on "
            "conversations; a *chat template* turns the messages into the special-token format they saw in "
            "training. The default, SmolLM2-135M-Instruct, is tiny by LLM standards (135M parameters): fluent, "
            "but not always right.",
        ),
        Area(
            "speech-recognition",
            "Speech",
            "speech recognition",
            "**An encoder-decoder transformer** (Whisper) hears the audio as a log-Mel spectrogram: the energy in "
            "80 frequency bands, 100 times a second. A small convolutional stem and a transformer encoder read it; "
            "the decoder writes the transcript token by token while attending to the audio, and also writes "
            "*timestamp tokens* that mark where each segment starts and ends. Whisper learnt from 680,000 hours of "
            "transcribed web audio; the default, whisper-tiny.en, has 39M parameters and knows English only.",
        ),
        Area(
            "image-generation",
            "Creative",
            "image generation",
            "**A diffusion model** generates by removing noise. In training, Gaussian noise of random strength is "
            "added to real images and a U-Net learns to predict that noise. To generate, it starts from pure noise "
            "and removes a little of the predicted noise at each of a number of *steps*; the *seed* fixes the "
            "starting noise, so the same seed gives the same image. The default model is *class-conditional*: an "
            "embedding of the digit you ask for is added to the U-Net's step embedding and steers every step "
            "towards it. Trained from scratch on scikit-learn's handwritten digits (16×16 pixels), it is tiny and "
            "fast; Stable Diffusion works the same way, in a compressed latent space, steered by a text encoder.",
        ),
    )
}
TASKS = tuple(AREAS)


# ------------------------------------------------------------------------------------------------------ models


def parse_model_overrides(items: list[str] | tuple[str, ...] | None) -> dict[str, str]:
    """Turn `--model TASK=PATH_OR_ID` arguments into `{canonical task name: model spec}`.

    Task names may be aliases (`asr=...`, `chat=...`); a task given twice keeps the last value.

    Args:
        items (`list[str]`, *optional*):
            `TASK=PATH_OR_ID` strings.

    Raises:
        `InvalidInputError`: an item is not `TASK=VALUE`; `UnknownTaskError`: the task is not registered.

    Example:

    ```python
    >>> parse_model_overrides(["asr=openai/whisper-small", "sentiment=out/my-model"])
    {'speech-recognition': 'openai/whisper-small', 'sentiment': 'out/my-model'}
    ```
    """
    from .registry import get_spec

    overrides: dict[str, str] = {}
    for item in items or ():
        task, sep, spec = str(item).partition("=")
        if not sep or not task.strip() or not spec.strip():
            raise InvalidInputError(
                f"--model {item!r}: expected TASK=PATH_OR_ID, e.g. --model sentiment=out/my-model "
                f"(tasks: {', '.join(TASKS)})."
            )
        overrides[get_spec(task).name] = spec.strip()
    return overrides


class DemoModels:
    """The demo's models: each task's model is loaded on its first request, once, and kept for every later
    request and user. Thread-safe: concurrent first requests for one task load it once (the others wait), and
    different tasks load in parallel.

    Args:
        overrides (`dict[str, str]`, *optional*):
            `{task: model spec}` replacing the registry's default models (see `parse_model_overrides`).
        device (`str`, *optional*, defaults to `"auto"`):
            Where the models run.

    Example:

    ```python
    >>> models = DemoModels({"image-generation": "out/ddpm-digits"})
    >>> models.spec("image-generation")
    'out/ddpm-digits'
    >>> pipe = models.get("image-classification")   # loads once; later calls return the same object
    ```
    """

    def __init__(self, overrides: dict[str, str] | None = None, *, device: Any = "auto") -> None:
        from .registry import get_spec

        self.overrides = {get_spec(task).name: spec for task, spec in (overrides or {}).items()}
        self.device = device
        self.load_seconds: dict[str, float] = {}
        self._loaded: dict[str, Task] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def spec(self, task: str) -> str | None:
        """The model spec the demo uses for `task`: the override, else the registry's default (or `None`)."""
        from .registry import get_spec

        spec = get_spec(task)
        return self.overrides.get(spec.name, spec.default_model)

    def is_loaded(self, task: str) -> bool:
        """Whether `task`'s model is loaded already."""
        from .registry import get_spec

        return get_spec(task).name in self._loaded

    def get(self, task: str) -> Task:
        """The loaded model of `task`, loading it on the first call.

        Raises:
            `ModelNotFoundError`: the task has no default model and none was given; or any loading error.
        """
        import hfpipes

        from .registry import get_spec

        name = get_spec(task).name
        pipe = self._loaded.get(name)
        if pipe is not None:
            return pipe
        with self._locks_lock:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            pipe = self._loaded.get(name)
            if pipe is None:
                spec = self.spec(name)
                if spec is None:
                    raise ModelNotFoundError(
                        f"The {name!r} task has no default model yet: start the demo with "
                        f"--model {name}=PATH_OR_ID (a local model directory or a Hub id)."
                    )
                started = time.perf_counter()
                pipe = hfpipes.load(name, spec, device=self.device)
                self.load_seconds[name] = time.perf_counter() - started
                self._loaded[name] = pipe
        return pipe

    def close(self) -> None:
        """Free every loaded model."""
        for pipe in self._loaded.values():
            pipe.close()
        self._loaded.clear()


# ------------------------------------------------------------------------------------------------- model cards


@dataclass(frozen=True)
class ModelCard:
    """Where the card of a model is, for the demo's "model in use" line."""

    # The model spec as given (`embedded:efficientnet-lite0`, a path, a Hub id).
    spec: str
    # A one-line description of the model, or "".
    description: str
    # The text shown for the link, and its target: a local card file, a Hub page, or `None` (no link).
    link_text: str
    file: Path | None = None
    url: str | None = None

    def text(self) -> str:
        """The card's markdown without its YAML metadata block, or "" when the card is not a local file."""
        if self.file is None:
            return ""
        try:
            text = self.file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return ""
        return re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.DOTALL).strip()


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def find_model_card(spec: str) -> ModelCard:
    """Find the card of a model spec: `model_cards/<name>.md` for the project's own defaults (`embedded:NAME`,
    `package:.../NAME`, or a directory named `NAME`), the `README.md` a fine-tuned model directory carries, the Hub
    page of a Hub id, or nothing (the spec itself is shown).

    Example:

    ```python
    >>> find_model_card("embedded:efficientnet-lite0").link_text
    'model_cards/efficientnet-lite0.md'
    >>> find_model_card("openai/whisper-small").url
    'https://huggingface.co/openai/whisper-small'
    ```
    """
    from .sources import EMBEDDED_MODELS

    description = ""
    candidates = []
    hub_id = None
    if spec.startswith("embedded:"):
        name = spec.removeprefix("embedded:")
        candidates.append(name)
        model = EMBEDDED_MODELS.get(name)
        if model is not None:
            description = f"{model.description} (from {model.original_id}; licence: {model.licence})"
            hub_id = model.original_id if _HUB_ID.match(model.original_id) else None
    else:
        candidates.append(Path(spec.removeprefix("package:").rstrip("/\\")).name)
    for name in candidates:
        card = MODEL_CARDS_DIR / f"{name}.md"
        if name and card.is_file():
            return ModelCard(spec, description, f"model_cards/{card.name}", file=card)
    local = Path(spec).expanduser()
    if local.is_dir() and (local / "README.md").is_file():
        return ModelCard(spec, description, f"{spec.rstrip('/')}/README.md", file=local / "README.md")
    if hub_id is None and not local.exists() and _HUB_ID.match(spec):
        hub_id = spec
    if hub_id is not None:
        url = f"https://huggingface.co/{hub_id}"
        return ModelCard(spec, description, url, url=url)
    return ModelCard(spec, description, spec)


# ------------------------------------------------------------------------------------------- handlers (no UI)
# Plain functions from the UI's input values to its output values; they raise `HfpipesError`s with readable
# messages, which the web UI shows and the tests check.


def classify_image(models: DemoModels, image: Any, top_k: int = 5) -> dict[str, float]:
    """The `top_k` labels of an image (a path, `PIL.Image` or array) with their probabilities, best first.

    Example:

    ```python
    >>> classify_image(models, "hfpipes/assets/examples/chelsea.jpg", top_k=2)
    {'tabby, tabby cat': 0.41, 'tiger cat': 0.25}
    ```
    """
    if image is None:
        raise InvalidInputError("No image: upload one or pick one of the examples.")
    results = models.get("image-classification")(image, top_k=top_k)
    return {r["label"]: float(r["score"]) for r in results}


def analyse_sentiment(models: DemoModels, text: str | None) -> dict[str, float]:
    """Every label of the sentiment model with its probability, best first.

    Example:

    ```python
    >>> analyse_sentiment(models, "I love it")
    {'positive': 0.98, 'negative': 0.02}
    ```
    """
    if not text or not text.strip():
        raise InvalidInputError("No text: type a sentence or pick one of the examples.")
    results = models.get("sentiment")(text, top_k=None)
    return {r["label"]: float(r["score"]) for r in results}


def _language_choices(codes: list[str] | None) -> list[tuple[str, str]]:
    from .tasks.translation import LANGUAGES

    codes = sorted(LANGUAGES) if codes is None else codes
    choices = [(f"{LANGUAGES[c][0]} ({c})" if c in LANGUAGES else c, c) for c in codes]
    return sorted(choices, key=lambda choice: choice[0])


def translation_languages(models: DemoModels) -> tuple[list[tuple[str, str]], list[tuple[str, str]], str, str]:
    """The source and target languages the translation model supports, as `(label, code)` dropdown choices,
    and the pair to preselect (English -> German where the model has it).

    Example:

    ```python
    >>> sources, targets, source, target = translation_languages(models)
    >>> source, target
    ('en', 'de')
    ```
    """
    pipe = models.get("translation")
    sources = _language_choices(pipe.source_languages)
    targets = _language_choices(pipe.supported_languages)
    source_codes = [code for _, code in sources]
    source = "en" if "en" in source_codes else source_codes[0]
    target_codes = [code for _, code in targets if code != source] or [code for _, code in targets]
    target = "de" if "de" in target_codes else target_codes[0]
    return sources, targets, source, target


def translate(models: DemoModels, text: str | None, src_lang: str | None = None, tgt_lang: str | None = None) -> str:
    """Translate `text` from `src_lang` to `tgt_lang` (ISO codes; `None` = the model's default).

    Example:

    ```python
    >>> translate(models, "Good morning", "en", "fr")
    'Bonjour'
    ```
    """
    if not text or not text.strip():
        raise InvalidInputError("No text: type a sentence or pick one of the examples.")
    pipe = models.get("translation")
    options = {}
    # A model whose languages are unknown (None) translates its one pair: no codes to pass.
    if src_lang and pipe.source_languages is not None:
        options["src_lang"] = src_lang
    if tgt_lang and pipe.supported_languages is not None:
        options["tgt_lang"] = tgt_lang
    return pipe(text, **options)["translation_text"]


def _message_text(content: Any) -> str:
    """The text of a chat message's content: a string, or Gradio's list of parts (`{"type": "text", ...}`)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "")
    if isinstance(content, (list, tuple)):
        return "".join(_message_text(part) for part in content)
    return ""


def chat(
    models: DemoModels,
    message: str | None,
    history: list[dict] | None = None,
    max_new_tokens: int = CHAT_MAX_NEW_TOKENS,
    temperature: float = 0.0,
) -> Iterator[str]:
    """Answer `message` after the conversation `history` (`[{"role", "content"}]`), yielding the growing answer
    while it is generated. `temperature=0` decodes greedily (the same answer every time).

    Example:

    ```python
    >>> for answer in chat(models, "What is the capital of France?"):
    ...     pass
    >>> answer
    'The capital of France is Paris.'
    ```
    """
    if not message or not message.strip():
        raise InvalidInputError("No message: type a question or pick one of the examples.")
    messages = [
        {"role": m["role"], "content": _message_text(m.get("content"))}
        for m in history or ()
        if m.get("role") in ("user", "assistant", "system") and _message_text(m.get("content")).strip()
    ]
    messages.append({"role": "user", "content": message})
    options: dict[str, Any] = {"max_new_tokens": int(max_new_tokens), "stream": True}
    if temperature and temperature > 0:
        options.update(do_sample=True, temperature=float(temperature))
    else:
        options["do_sample"] = False
    answer = ""
    for piece in models.get("text-generation")(messages, **options):
        answer += piece
        yield answer
    if not answer:
        yield "(the model ended its answer at once, with no text)"


def transcribe(models: DemoModels, audio: Any) -> tuple[str, list[list]]:
    """The transcript of an audio file (path) and its segments as `[start, end, text]` rows (times in seconds, as
    text with two decimals).

    Example:

    ```python
    >>> transcribe(models, "hfpipes/assets/examples/goforward.wav")
    ('Go forward 10 meters.', [['0.00', '2.00', 'Go forward 10 meters.']])
    ```
    """
    if audio is None:
        raise InvalidInputError("No audio: upload a file, record yourself or pick one of the examples.")
    result = models.get("speech-recognition")(audio, return_timestamps=True)
    rows = [
        [f"{float(start):.2f}", f"{float(end):.2f}", chunk["text"].strip()]
        for chunk in result.get("chunks", [])
        for start, end in [chunk["timestamp"]]
    ]
    return result["text"], rows


def generation_options(models: DemoModels) -> dict[str, Any]:
    """What the Creative tab offers for the loaded image-generation model: `kind` (`"class-conditional"`,
    `"text-to-image"` or `"unconditional"`), `classes` (class names, for class-conditional models), `steps` (the
    model's default number of denoising steps) and `size` (`(width, height)` of its images).

    Example:

    ```python
    >>> generation_options(models)
    {'kind': 'class-conditional', 'classes': ['0', '1', ..., '9'], 'steps': 50, 'size': (16, 16)}
    ```
    """
    pipe = models.get("image-generation")
    parameter = inspect.signature(pipe.model.__call__).parameters.get("num_inference_steps")
    steps = parameter.default if parameter is not None and isinstance(parameter.default, int) else DEMO_STEPS
    # A DDPMPipeline defaults to 1000 steps even when its scheduler was trained with fewer timesteps.
    trained = getattr(getattr(getattr(pipe.model, "scheduler", None), "config", None), "num_train_timesteps", None)
    if isinstance(trained, int):
        steps = min(steps, trained)
    labels = getattr(pipe, "class_labels", None)
    height, width = pipe.default_size
    return {
        "kind": pipe.kind,
        "classes": list(labels.names) if labels is not None else [],
        "steps": steps,
        "size": (width, height),
    }


def generate_image(
    models: DemoModels,
    prompt: str | None,
    class_label: str | None = None,
    seed: int | float | None = 0,
    steps: int | float | None = None,
    progress: bool = True,
) -> tuple[Image.Image, str]:
    """One image for `prompt` (or for the class `class_label` of a class-conditional model), and a caption.

    Args:
        prompt (`str`): What to draw; for class-conditional models it names the class (`"a handwritten seven"`).
        class_label (`str`, *optional*): The class, overriding the prompt; `None`, `""` or `FROM_PROMPT` = none.
        seed (`int`, *optional*, defaults to 0): The starting noise.
        steps (`int`, *optional*): Denoising steps; defaults to the model's default, at most `DEMO_STEPS` (50).
        progress (`bool`, *optional*, defaults to `True`): Show diffusers' denoising progress bar (tqdm).

    Example:

    ```python
    >>> image, caption = generate_image(models, "a handwritten seven", seed=0, steps=50)
    >>> image.size, caption
    ((16, 16), 'class 7 · seed 0 · 50 steps · 16×16 pixels')
    ```
    """
    if seed is None or (isinstance(seed, float) and not seed.is_integer()):
        raise InvalidInputError(f"seed: expected a whole number, got {seed!r}.")
    pipe = models.get("image-generation")
    if steps is None:
        steps = min(generation_options(models)["steps"], DEMO_STEPS)
    options: dict[str, Any] = {"seed": int(seed), "num_inference_steps": int(steps), "progress": progress}
    if class_label and class_label != FROM_PROMPT:
        options["class_label"] = class_label
    prompt = (prompt or "").strip()
    if not prompt and "class_label" not in options and pipe.kind != "unconditional":
        raise InvalidInputError("No prompt: describe the image (e.g. 'a handwritten seven') or pick a class.")
    result = pipe(prompt, **options)
    image = result["image"]
    what = f"class {result['label']}" if "label" in result else repr(prompt) if prompt else "unconditional"
    caption = f"{what} · seed {result['seed']} · {int(steps)} steps · {image.width}×{image.height} pixels"
    return image, caption


# ------------------------------------------------------------------------------------------------------ web UI

_CSS = """
#creative-image img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }
.hfp-architecture { font-size: 0.95em; }
footer { display: none !important; }
"""

_INTRO = """# hfpipes: what deep learning does

One tab per application area. Each runs a small pretrained model **on this machine, offline**, through the same
`hfpipes.run(task, inputs)` call, and explains the architecture doing the work. A tab's model loads the first time
you use it (a few seconds; the very first run on a machine also converts the offline models, a minute or two),
then stays loaded. Swap any model with `hfpipes demo --model TASK=PATH_OR_ID`, for example one you just fine-tuned.
"""


def _ui_error(err: BaseException) -> Exception:
    """The `gr.Error` shown in the page for an exception raised by a handler."""
    import gradio as gr

    if isinstance(err, gr.Error):
        return err
    if isinstance(err, HfpipesError):
        return gr.Error(str(err))
    logger.error("hfpipes demo: unexpected error", exc_info=err)
    return gr.Error(f"Something went wrong: {type(err).__name__}: {err}. The full error is in the server's log.")


def _ui(fn: Callable) -> Callable:
    """Wrap a handler so that its errors show as one readable message in the page, not a stack trace."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            raise _ui_error(err) from err

    return wrapper


def _ui_stream(fn: Callable) -> Callable:
    """`_ui` for generator handlers (Gradio streams a handler only when it is a generator function)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
        try:
            yield from fn(*args, **kwargs)
        except Exception as err:
            raise _ui_error(err) from err

    return wrapper


def _file_url(path: Path) -> str:
    return f"/gradio_api/file={path}"


def _card_files(models: DemoModels) -> list[str]:
    """The local card files the page links to, which the server must be allowed to send."""
    files = (find_model_card(spec).file for spec in map(models.spec, TASKS) if spec is not None)
    return sorted({str(file) for file in files if file is not None})


def _model_section(gr: Any, models: DemoModels, task: str) -> Any:
    """The architecture paragraph, the "model in use" line and the model's card (folded). Returns the model line,
    where the loading progress of tabs that load their model when opened shows."""
    gr.Markdown(AREAS[task].architecture, elem_classes=["hfp-architecture"])
    spec = models.spec(task)
    if spec is None:
        return gr.Markdown(
            f"**Model:** none. The `{task}` task has no default model yet: start the demo with "
            f"`hfpipes demo --model {task}=PATH_OR_ID`.",
            elem_id=f"{task}-model",
        )
    card = find_model_card(spec)
    description = f" — {card.description}" if card.description else ""
    if card.file is not None:
        link = f" **Card:** [{card.link_text}]({_file_url(card.file)})"
    elif card.url is not None:
        link = f" **Card:** [{card.link_text}]({card.url})"
    else:
        link = " (no model card found)"
    line = gr.Markdown(f"**Model:** `{spec}`{description}.{link}", elem_id=f"{task}-model")
    text = card.text()
    if text:
        with gr.Accordion("Model card", open=False):
            gr.Markdown(text)
    return line


def build_app(models: DemoModels | None = None) -> gr.Blocks:
    """Build the demo's Gradio app (not launched): one tab per application area.

    Args:
        models (`DemoModels`, *optional*):
            The models to use; defaults to the offline default models.

    Returns:
        `gradio.Blocks`; `launch` serves it (with the settings it needs: the card files, the CSS, no analytics).

    Example:

    ```python
    >>> import gradio as gr
    >>> app = build_app(DemoModels({"sentiment": "out/sentiment-minilm"}))
    >>> with gr.Blocks() as page:   # e.g. inside a larger Gradio app
    ...     app.render()
    ```
    """
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    import gradio as gr

    models = models if models is not None else DemoModels()
    examples = EXAMPLES_DIR

    with gr.Blocks(title="hfpipes demo: what deep learning does", analytics_enabled=False) as app:
        gr.Markdown(_INTRO)
        with gr.Tabs():
            # ----------------------------------------------------------------------------------------- Vision
            with gr.Tab("Vision", id="vision", elem_id="tab-vision"):
                gr.Markdown("## Vision: what is in this photo?")
                _model_section(gr, models, "image-classification")
                with gr.Row():
                    with gr.Column():
                        image = gr.Image(
                            label="Photo",
                            type="filepath",
                            sources=["upload", "clipboard"],
                            height=320,
                            elem_id="vision-image",
                        )
                        classify_button = gr.Button("Classify", variant="primary", elem_id="vision-run")
                        gr.Examples(
                            [[str(examples / name)] for name in EXAMPLE_IMAGES],
                            inputs=[image],
                            label="Example photos",
                            elem_id="vision-examples",
                        )
                    with gr.Column():
                        labels = gr.Label(label="Top 5 labels", num_top_classes=5, elem_id="vision-labels")
                classify_button.click(_ui(lambda path: classify_image(models, path)), [image], [labels])

            # --------------------------------------------------------------------------------------- Language
            with gr.Tab("Language", id="language", elem_id="tab-language"):
                with gr.Tabs():
                    with gr.Tab("Sentiment", id="sentiment", elem_id="tab-sentiment"):
                        gr.Markdown("## Language: is this text positive or negative?")
                        _model_section(gr, models, "sentiment")
                        with gr.Row():
                            with gr.Column():
                                review = gr.Textbox(
                                    label="Text",
                                    lines=3,
                                    placeholder="Type a review, a tweet, a message…",
                                    elem_id="sentiment-text",
                                )
                                sentiment_button = gr.Button("Analyse", variant="primary", elem_id="sentiment-run")
                                gr.Examples(
                                    [[text] for text in EXAMPLE_REVIEWS],
                                    inputs=[review],
                                    label="Examples",
                                    elem_id="sentiment-examples",
                                )
                            with gr.Column():
                                sentiment = gr.Label(label="Sentiment", elem_id="sentiment-label")
                        sentiment_handler = _ui(lambda text: analyse_sentiment(models, text))
                        sentiment_button.click(sentiment_handler, [review], [sentiment])
                        review.submit(sentiment_handler, [review], [sentiment])

                    with gr.Tab("Translation", id="translation", elem_id="tab-translation") as translation_tab:
                        gr.Markdown("## Language: translation")
                        translation_model = _model_section(gr, models, "translation")
                        with gr.Row():
                            source_lang = gr.Dropdown(
                                [("English (en)", "en")], value="en", label="From", elem_id="translation-source"
                            )
                            target_lang = gr.Dropdown(
                                [("German (de)", "de")], value="de", label="To", elem_id="translation-target"
                            )
                        with gr.Row():
                            with gr.Column():
                                source_text = gr.Textbox(label="Text", lines=3, elem_id="translation-text")
                                translate_button = gr.Button("Translate", variant="primary", elem_id="translation-run")
                                gr.Examples(
                                    [[text] for text in EXAMPLE_SENTENCES],
                                    inputs=[source_text],
                                    label="Examples",
                                    elem_id="translation-examples",
                                )
                            with gr.Column():
                                translated = gr.Textbox(label="Translation", lines=3, elem_id="translation-output")

                        # Opening the tab loads the model, which says which languages it offers; only the first
                        # opening of a page sets the dropdowns, so coming back keeps the user's choice.
                        translation_ready = gr.State(False)

                        def on_translation_open(ready: bool) -> tuple[Any, Any, bool]:
                            if ready:
                                return gr.skip(), gr.skip(), True
                            sources, targets, source, target = translation_languages(models)
                            return (
                                gr.Dropdown(choices=sources, value=source),
                                gr.Dropdown(choices=targets, value=target),
                                True,
                            )

                        translation_tab.select(
                            _ui(on_translation_open),
                            [translation_ready],
                            [source_lang, target_lang, translation_ready],
                            show_progress_on=translation_model,
                        )
                        translate_handler = _ui(lambda text, src, tgt: translate(models, text, src, tgt))
                        translate_button.click(translate_handler, [source_text, source_lang, target_lang], [translated])

                    with gr.Tab("Chat", id="chat", elem_id="tab-chat"):
                        gr.Markdown("## Language: chat with a small LLM")
                        _model_section(gr, models, "text-generation")
                        # Greedy decoding: the same question gets the same answer, which makes the demo repeatable.
                        gr.ChatInterface(
                            _ui_stream(lambda message, history: chat(models, message, history)),
                            chatbot=gr.Chatbot(height=380, elem_id="chat-bot", label="Chat"),
                            textbox=gr.Textbox(placeholder="Ask something…", elem_id="chat-input", submit_btn=True),
                            examples=list(EXAMPLE_QUESTIONS),
                            cache_examples=False,
                            fill_height=False,
                        )

            # ----------------------------------------------------------------------------------------- Speech
            with gr.Tab("Speech", id="speech", elem_id="tab-speech"):
                gr.Markdown("## Speech: what was said, and when?")
                _model_section(gr, models, "speech-recognition")
                with gr.Row():
                    with gr.Column():
                        audio = gr.Audio(
                            label="Audio", sources=["upload", "microphone"], type="filepath", elem_id="speech-audio"
                        )
                        transcribe_button = gr.Button("Transcribe", variant="primary", elem_id="speech-run")
                        gr.Examples(
                            [[str(examples / name)] for name in EXAMPLE_AUDIO], inputs=[audio], label="Example recordings",
                            example_labels=list(EXAMPLE_AUDIO_LABELS), elem_id="speech-examples",
                        )  # fmt: skip
                    with gr.Column():
                        transcript = gr.Textbox(label="Transcript", lines=3, elem_id="speech-transcript")
                        segments = gr.Dataframe(
                            headers=["start (s)", "end (s)", "text"],
                            label="Segments",
                            interactive=False,
                            elem_id="speech-segments",
                        )
                transcribe_button.click(_ui(lambda path: transcribe(models, path)), [audio], [transcript, segments])

            # --------------------------------------------------------------------------------------- Creative
            with gr.Tab("Creative", id="creative", elem_id="tab-creative") as creative_tab:
                gr.Markdown("## Creative: draw something from noise")
                creative_model = _model_section(gr, models, "image-generation")
                with gr.Row():
                    with gr.Column():
                        prompt = gr.Textbox(label="Prompt", value=EXAMPLE_PROMPTS[0], elem_id="creative-prompt")
                        class_label = gr.Dropdown(
                            [FROM_PROMPT], value=FROM_PROMPT, label="Class", elem_id="creative-class"
                        )
                        with gr.Row():
                            seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", elem_id="creative-seed")
                            steps = gr.Slider(
                                1, 200, value=DEMO_STEPS, step=1, label="Denoising steps", elem_id="creative-steps"
                            )
                        generate_button = gr.Button("Generate", variant="primary", elem_id="creative-run")
                        gr.Examples(
                            [[p] for p in EXAMPLE_PROMPTS],
                            inputs=[prompt],
                            label="Example prompts",
                            elem_id="creative-examples",
                        )
                    with gr.Column():
                        picture = gr.Image(
                            label="Generated image", type="pil", format="png", height=256, elem_id="creative-image"
                        )
                        caption = gr.Markdown(elem_id="creative-caption")

                # As in the Translation tab: the first opening loads the model and sets the controls.
                creative_ready = gr.State(False)

                def on_creative_open(ready: bool) -> tuple[Any, Any, Any, bool]:
                    if ready:
                        return gr.skip(), gr.skip(), gr.skip(), True
                    options = generation_options(models)
                    conditional = options["kind"] == "class-conditional"
                    classes = gr.Dropdown(
                        choices=[FROM_PROMPT, *options["classes"]], value=FROM_PROMPT, visible=conditional
                    )
                    default = options["steps"]
                    slider = gr.Slider(minimum=1, maximum=max(default, DEMO_STEPS), value=min(default, DEMO_STEPS))
                    return classes, slider, gr.Textbox(interactive=options["kind"] != "unconditional"), True

                # Gradio finds `gr.Progress` as a default value; track_tqdm shows diffusers' denoising bar in the page.
                def on_generate(
                    text: str,
                    label: str,
                    seed_value: float,
                    step_count: float,
                    progress=gr.Progress(track_tqdm=True),  # noqa: B008
                ) -> tuple[Any, str]:
                    image, text_caption = generate_image(models, text, label, seed_value, step_count, progress=True)
                    return image, text_caption

                creative_tab.select(
                    _ui(on_creative_open),
                    [creative_ready],
                    [class_label, steps, prompt, creative_ready],
                    show_progress_on=creative_model,
                )
                generate_button.click(_ui(on_generate), [prompt, class_label, seed, steps], [picture, caption])

    return app


def _is_loopback(host: str) -> bool:
    return host in _LOOPBACK_HOSTS or host.startswith("127.")


def launch(
    host: str | None = None,
    port: int = DEFAULT_PORT,
    share: bool = False,
    models: DemoModels | dict[str, str] | None = None,
    block: bool = True,
) -> gr.Blocks:
    """Build and serve the web UI.

    Args:
        host (`str`, *optional*):
            The address to listen on. Defaults to 127.0.0.1 (this machine only), whatever `GRADIO_SERVER_NAME`
            says; pass `"0.0.0.0"` explicitly to let other machines in.
        port (`int`, *optional*, defaults to 7860):
            The port.
        share (`bool`, *optional*, defaults to `False`):
            Ask Gradio for a public share link (needs a network; anyone with the link can use the demo).
        models (`DemoModels` or `dict[str, str]`, *optional*):
            The models, or `{task: model spec}` overrides of the defaults.
        block (`bool`, *optional*, defaults to `True`):
            Serve until interrupted; with `False`, return once the server runs (close it with `app.close()`).

    Returns:
        `gradio.Blocks`: the running app.

    Example:

    ```python
    >>> from hfpipes import demo
    >>> demo.launch(port=7861, models={"sentiment": "out/sentiment-minilm"})
    ```
    """
    if models is None or isinstance(models, dict):
        models = DemoModels(models)
    if host is None:
        if os.environ.get("GRADIO_SERVER_NAME", DEFAULT_HOST) != DEFAULT_HOST:
            logger.warning(
                "hfpipes demo: ignoring GRADIO_SERVER_NAME=%s; pass --host to listen on another address.",
                os.environ["GRADIO_SERVER_NAME"],
            )
        host = DEFAULT_HOST
    elif not _is_loopback(host):
        logger.warning(
            "hfpipes demo: listening on %s: other machines on the network can use the demo (and its models).", host
        )
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise InvalidInputError(f"port: expected a port number from 1 to 65535, got {port!r}.")
    app = build_app(models)
    try:
        app.launch(
            server_name=host,
            server_port=port,
            share=share,
            prevent_thread_lock=True,
            show_error=True,
            quiet=not share,  # Gradio prints the share link itself
            ssr_mode=False,
            footer_links=[],
            allowed_paths=_card_files(models),
            css=_CSS,
        )
    except OSError as err:
        reason = f"port {port} is taken" if "empty port" in str(err) else str(err)
        raise InvalidInputError(f"Cannot serve the demo on {host}:{port}: {reason}. Pick another --port.") from None
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else f"[{host}]" if ":" in host else host
    logger.info("hfpipes demo: http://%s:%d%s", shown, port, " (Ctrl+C to stop)" if block else "")
    if block:
        app.block_thread()
    return app


# ------------------------------------------------------------------------------------------------- the tour


@dataclass(frozen=True)
class _Step:
    task: str
    input: str
    run: Callable[[DemoModels, Path], str]


def _tour_vision(models: DemoModels, output_dir: Path) -> str:
    labels = classify_image(models, EXAMPLES_DIR / "chelsea.jpg", top_k=3)
    return ", ".join(f"{label} ({score:.2f})" for label, score in labels.items())


def _tour_sentiment(models: DemoModels, output_dir: Path) -> str:
    results = models.get("sentiment")(list(EXAMPLE_REVIEWS[:3]))
    return " | ".join(f"{r['label']} ({r['score']:.2f})" for r in results)


def _tour_translation(models: DemoModels, output_dir: Path) -> str:
    _, targets, source, target = translation_languages(models)
    return f"[{source}->{target}] " + translate(models, EXAMPLE_SENTENCES[0], source, target)


def _tour_chat(models: DemoModels, output_dir: Path) -> str:
    *_, answer = chat(models, EXAMPLE_QUESTIONS[0], max_new_tokens=40)
    return " ".join(answer.split())


def _tour_speech(models: DemoModels, output_dir: Path) -> str:
    text, segments = transcribe(models, EXAMPLES_DIR / "goforward.wav")
    if segments:
        return f"{text!r} ({len(segments)} segment(s), {segments[0][0]}-{segments[-1][1]} s)"
    return repr(text)


def _tour_creative(models: DemoModels, output_dir: Path) -> str:
    image, caption = generate_image(models, EXAMPLE_PROMPTS[0], seed=0, progress=False)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "creative-seed0.png"
    image.save(path)
    return f"{caption}, saved to {path}"


_TOUR: tuple[_Step, ...] = (
    _Step("image-classification", "chelsea.jpg (a cat)", _tour_vision),
    _Step("sentiment", " / ".join(f"{' '.join(text.split()[:3])}…" for text in EXAMPLE_REVIEWS[:3]), _tour_sentiment),
    _Step("translation", EXAMPLE_SENTENCES[0], _tour_translation),
    _Step("text-generation", EXAMPLE_QUESTIONS[0], _tour_chat),
    _Step("speech-recognition", "goforward.wav (2.8 s of speech)", _tour_speech),
    _Step("image-generation", f"{EXAMPLE_PROMPTS[0]!r}, seed 0", _tour_creative),
)
_COLUMNS = ("AREA", "TASK", "INPUT", "OUTPUT", "TIME")


class _Table:
    """Rows of wrapped plain-text columns, printed as they come; the output column takes the spare width."""

    def __init__(self, file: IO[str], width: int | None = None) -> None:
        width = width or shutil.get_terminal_size((120, 24)).columns
        fixed = [8, 22, 26, 0, 20]
        fixed[3] = max(28, width - sum(fixed) - 2 * (len(fixed) - 1))
        self.widths = fixed
        self.file = file

    def row(self, cells: tuple[str, ...]) -> None:
        wrapped = [textwrap.wrap(cell, w) or [""] for cell, w in zip(cells, self.widths, strict=True)]
        for i in range(max(len(lines) for lines in wrapped)):
            parts = [
                (lines[i] if i < len(lines) else "").ljust(w) for lines, w in zip(wrapped, self.widths, strict=True)
            ]
            print("  ".join(parts).rstrip(), file=self.file, flush=True)

    def rule(self) -> None:
        print("  ".join("-" * w for w in self.widths), file=self.file, flush=True)


def tour(
    models: DemoModels | dict[str, str] | None = None,
    output_dir: str | os.PathLike | None = None,
    file: IO[str] | None = None,
    width: int | None = None,
) -> int:
    """The terminal tour: run each application area once on the bundled examples and print a table.

    Each row handles its own error (the row says what went wrong and the tour goes on).

    Args:
        models (`DemoModels` or `dict[str, str]`, *optional*):
            The models, or `{task: model spec}` overrides of the offline defaults.
        output_dir (`str`, *optional*):
            Where the generated image is saved; defaults to a new temporary directory.
        file (`IO[str]`, *optional*):
            Where the table goes; defaults to stdout.
        width (`int`, *optional*):
            The table's width; defaults to the terminal's.

    Returns:
        `int`: 0 when every area ran, 1 otherwise (the exit status of `hfpipes demo --cli`).

    Example:

    ```python
    >>> from hfpipes import demo
    >>> demo.tour()
    AREA       TASK                    INPUT                       OUTPUT                        TIME
    Vision     image classification    chelsea.jpg (a cat)         tabby, tabby cat (0.45), ...  0.05 s + load 1.9 s
    ...
    ```
    """
    if models is None or isinstance(models, dict):
        models = DemoModels(models)
    file = file if file is not None else sys.stdout
    directory = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="hfpipes-demo-"))
    table = _Table(file, width)
    table.row(_COLUMNS)
    table.rule()
    failures = 0
    started = time.perf_counter()
    for step in _TOUR:
        area = AREAS[step.task]
        load = 0.0
        begin = time.perf_counter()
        try:
            loaded_before = models.is_loaded(step.task)
            models.get(step.task)
            load = 0.0 if loaded_before else time.perf_counter() - begin
            begin = time.perf_counter()
            output = step.run(models, directory)
        except Exception as err:  # each row reports its own error; the tour goes on
            failures += 1
            logger.debug("hfpipes demo: %s failed", step.task, exc_info=err)
            output = f"ERROR: {type(err).__name__}: {err}"
        elapsed = time.perf_counter() - begin
        timing = f"{elapsed:.2f} s" + (f" + load {load:.1f} s" if load >= 0.05 else "")
        table.row((area.area, area.what, step.input, output, timing))
    table.rule()
    total = time.perf_counter() - started
    if failures:
        print(f"{failures} of {len(_TOUR)} areas failed ({total:.1f} s).", file=file, flush=True)
        return 1
    print(f"All {len(_TOUR)} areas ran in {total:.1f} s. Web UI: hfpipes demo", file=file, flush=True)
    return 0
