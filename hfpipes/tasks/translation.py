"""Translation: a seq2seq translation model, or a causal LM prompted to translate.

transformers 5 removed its translation pipeline; this task calls `generate` itself and picks one of three routes
from the model's config and tokenizer (`TranslationTask.route`):

- `"seq2seq"` (`config.is_encoder_decoder`): `AutoModelForSeq2SeqLM.generate` on the source text, where
  - multilingual models with language tokens (M2M100 `__de__`, NLLB `deu_Latn`, mBART `de_DE`) get the source
    language through `tokenizer.src_lang` and the target as `forced_bos_token_id`;
  - multi-target Marian models (`>>fr<<` tokens in the vocabulary) get the target token before the source text;
  - T5 gets the task prefix of its config (`config.task_specific_params["translation_en_to_de"]["prefix"]`), or
    `T5_PREFIX` when its config names no translation pairs;
  - single-pair models (Marian `opus-mt-en-de`) translate the pair they were trained on; the pair is read from
    the tokenizer (`source_lang`/`target_lang`) or the model's name, and a `tgt_lang` that contradicts it is an
    error.
- `"chat"` (a causal LM whose tokenizer has a chat template): one user message, `CHAT_INSTRUCTION`, rendered
  with the chat template. Languages: any of `LANGUAGES`.
- `"few-shot"` (a causal LM without a chat template): `FEW_SHOT_EXAMPLES` as `"English: ...\\nGerman: ...\\n\\n"`
  pairs, then the source; generation stops at the first token whose text holds a newline and the output is cut
  there. Languages: those of `FEW_SHOT_EXAMPLES` (the examples are parallel, so any pair of them works; the
  source is English unless `src_lang` says otherwise). Newlines inside a source text become spaces.

Languages are ISO 639-1 codes (`"de"`, `"fr"`), mapped to each model's own codes through `LANGUAGES`; a model's own
codes (`"deu_Latn"`) are accepted too. `TranslationTask.supported_languages` lists the target languages of the
loaded model; `tgt_lang` is required unless the model translates into one language only. `TranslationTask.prompt`
shows the exact text the model is given. Decoding is deterministic: greedy, or beam search with `num_beams`.

Example:

```python
>>> import hfpipes
>>> hfpipes.run("translation", "How are you?", model="Helsinki-NLP/opus-mt-en-de")
{'translation_text': 'Wie geht es Ihnen?'}
>>> nllb = hfpipes.load("translation", model="facebook/nllb-200-distilled-600M")
>>> nllb(["Good morning", "Thank you"], tgt_lang="fr", num_beams=4)
[{'translation_text': 'Bonjour'}, {'translation_text': 'Merci'}]
>>> nllb.supported_languages[:5]
['ar', 'bg', 'bn', 'ca', 'cs']
```
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from ..batching import pad_sequences
from ..errors import InvalidInputError
from ..inputs import describe, load_text
from ..task import Task

logger = logging.getLogger("hfpipes")

# ISO 639-1 code -> (English name, NLLB-200 code). The English names go into prompts (chat, few-shot, T5); the
# NLLB codes map users' codes onto NLLB's. M2M100 (`__de__`), mBART (`de_DE`) and Marian (`>>de<<`, `>>deu<<`)
# codes are derived from the ISO code, so they need no column.
LANGUAGES: dict[str, tuple[str, str]] = {
    "ar": ("Arabic", "arb_Arab"), "bg": ("Bulgarian", "bul_Cyrl"), "bn": ("Bengali", "ben_Beng"),
    "ca": ("Catalan", "cat_Latn"), "cs": ("Czech", "ces_Latn"), "da": ("Danish", "dan_Latn"),
    "de": ("German", "deu_Latn"), "el": ("Greek", "ell_Grek"), "en": ("English", "eng_Latn"),
    "es": ("Spanish", "spa_Latn"), "et": ("Estonian", "est_Latn"), "fa": ("Persian", "pes_Arab"),
    "fi": ("Finnish", "fin_Latn"), "fr": ("French", "fra_Latn"), "he": ("Hebrew", "heb_Hebr"),
    "hi": ("Hindi", "hin_Deva"), "hr": ("Croatian", "hrv_Latn"), "hu": ("Hungarian", "hun_Latn"),
    "id": ("Indonesian", "ind_Latn"), "it": ("Italian", "ita_Latn"), "ja": ("Japanese", "jpn_Jpan"),
    "ko": ("Korean", "kor_Hang"), "lt": ("Lithuanian", "lit_Latn"), "lv": ("Latvian", "lvs_Latn"),
    "nl": ("Dutch", "nld_Latn"), "no": ("Norwegian", "nob_Latn"), "pl": ("Polish", "pol_Latn"),
    "pt": ("Portuguese", "por_Latn"), "ro": ("Romanian", "ron_Latn"), "ru": ("Russian", "rus_Cyrl"),
    "sk": ("Slovak", "slk_Latn"), "sl": ("Slovenian", "slv_Latn"), "sr": ("Serbian", "srp_Cyrl"),
    "sv": ("Swedish", "swe_Latn"), "sw": ("Swahili", "swh_Latn"), "th": ("Thai", "tha_Thai"),
    "tr": ("Turkish", "tur_Latn"), "uk": ("Ukrainian", "ukr_Cyrl"), "ur": ("Urdu", "urd_Arab"),
    "vi": ("Vietnamese", "vie_Latn"), "zh": ("Chinese", "zho_Hans"),
}  # fmt: skip

# The one user message a chat model gets ({source}/{target}: English language names; {text}: the source text).
CHAT_INSTRUCTION = (
    "Translate the following text from {source} to {target}. Reply with the translation only, without any "
    "explanation or notes.\n\n{text}"
)

# Parallel everyday sentences for the few-shot prompt of base LMs: every pair of these languages works.
FEW_SHOT_EXAMPLES: tuple[dict[str, str], ...] = (
    {
        "en": "Where is the train station?",
        "de": "Wo ist der Bahnhof?",
        "fr": "Où est la gare ?",
        "es": "¿Dónde está la estación de tren?",
        "it": "Dov'è la stazione ferroviaria?",
        "pt": "Onde fica a estação de trem?",
        "nl": "Waar is het treinstation?",
    },
    {
        "en": "I would like a cup of coffee with milk, please.",
        "de": "Ich hätte gern eine Tasse Kaffee mit Milch, bitte.",
        "fr": "Je voudrais une tasse de café au lait, s'il vous plaît.",
        "es": "Quisiera una taza de café con leche, por favor.",
        "it": "Vorrei una tazza di caffè con latte, per favore.",
        "pt": "Eu gostaria de uma xícara de café com leite, por favor.",
        "nl": "Ik wil graag een kopje koffie met melk, alstublieft.",
    },
    {
        "en": "The weather is beautiful today, so we are going for a walk in the park.",
        "de": "Das Wetter ist heute schön, also gehen wir im Park spazieren.",
        "fr": "Il fait beau aujourd'hui, alors nous allons nous promener dans le parc.",
        "es": "Hoy hace buen tiempo, así que vamos a dar un paseo por el parque.",
        "it": "Oggi il tempo è bello, quindi andiamo a fare una passeggiata nel parco.",
        "pt": "O tempo está lindo hoje, então vamos passear no parque.",
        "nl": "Het weer is vandaag prachtig, dus we gaan wandelen in het park.",
    },
    {
        "en": "My sister works at a hospital and starts very early in the morning.",
        "de": "Meine Schwester arbeitet in einem Krankenhaus und fängt morgens sehr früh an.",
        "fr": "Ma sœur travaille dans un hôpital et commence très tôt le matin.",
        "es": "Mi hermana trabaja en un hospital y empieza muy temprano por la mañana.",
        "it": "Mia sorella lavora in un ospedale e comincia molto presto la mattina.",
        "pt": "Minha irmã trabalha em um hospital e começa muito cedo de manhã.",
        "nl": "Mijn zus werkt in een ziekenhuis en begint 's ochtends heel vroeg.",
    },
    {
        "en": "The city council announced on Tuesday that the new bridge will open next spring.",
        "de": "Der Stadtrat gab am Dienstag bekannt, dass die neue Brücke im nächsten Frühjahr eröffnet wird.",
        "fr": "Le conseil municipal a annoncé mardi que le nouveau pont ouvrira au printemps prochain.",
        "es": "El ayuntamiento anunció el martes que el nuevo puente se abrirá la próxima primavera.",
        "it": "Il consiglio comunale ha annunciato martedì che il nuovo ponte aprirà la prossima primavera.",
        "pt": "A câmara municipal anunciou na terça-feira que a nova ponte será inaugurada na próxima primavera.",
        "nl": "De gemeenteraad maakte dinsdag bekend dat de nieuwe brug volgend voorjaar opengaat.",
    },
)
# One example of the few-shot prompt, and the line the model completes ({source}/{target}: English names).
FEW_SHOT_EXAMPLE = "{source}: {source_text}\n{target}: {target_text}\n\n"
FEW_SHOT_QUERY = "{source}: {source_text}\n{target}:"

# For T5 models whose config names no translation pairs (flan-t5): the wording T5 was trained with.
T5_PREFIX = "translate {source} to {target}: "
T5_MODEL_TYPES = ("t5", "mt5", "umt5", "longt5")

# The source language when the caller names none and the model does not imply one.
DEFAULT_SOURCE = "en"
# Generated tokens per translation unless the caller or the model's generation config says otherwise.
DEFAULT_MAX_NEW_TOKENS = 256
# Tokenizers report 1e30 for "no limit"; then the model's position embeddings set the limit.
_NO_LIMIT = 100_000

_NLLB_CODE = re.compile(r"[a-z]{3}_[A-Z][a-z]{3}")
_MBART_CODE = re.compile(r"[a-z]{2}_[A-Z]{2}")
_NLLB_TO_ISO = {nllb: iso for iso, (_, nllb) in LANGUAGES.items()}
_OPUS_MT_NAME = re.compile(r"opus-mt-([a-z]{2,3})-([a-z]{2,3})(?![A-Za-z])")


def _iso(code: Any) -> str | None:
    """The ISO 639-1 code for a 2-letter or 3-letter (ISO 639-3, as in NLLB codes) code, if `LANGUAGES` knows it."""
    if not isinstance(code, str):
        return None
    code = code.strip().lower()
    if code in LANGUAGES:
        return code
    return next((iso for nllb, iso in _NLLB_TO_ISO.items() if nllb.split("_")[0] == code), None)


@dataclass
class _Languages:
    """What one side (source or target) of the loaded model accepts."""

    # ISO code -> the model's own code. None: the model's languages are not known, so codes are not checked.
    iso: dict[str, str] | None
    # The model's own codes (`deu_Latn`), accepted as they are.
    native: set[str] = field(default_factory=set)
    # The code used when the caller passes none.
    default: str | None = None
    # Whether a call without a code (and without a default) is an error.
    required: bool = True
    # Said after the list of supported codes in errors, e.g. that the model translates one pair only.
    hint: str = ""

    def resolve(self, code: Any, option: str) -> str:
        """The model's own code for a user's code, or an `InvalidInputError` listing the supported ones."""
        if not isinstance(code, str) or not code.strip():
            raise InvalidInputError(f"{option}: expected a language code such as 'de', got {describe(code)}.")
        if code.strip() in self.native:
            return code.strip()
        if code.strip().lower() in self.iso:
            return self.iso[code.strip().lower()]
        raise InvalidInputError(f"{option}: {code!r} is not supported by this model. {self.listing()}")

    def listing(self) -> str:
        supported = f"Supported: {', '.join(sorted(self.iso or ()))}."
        if self.native - set(self.iso or ()):
            supported += f" The model's own codes (such as {sorted(self.native)[0]!r}) are accepted too."
        return supported + (f" {self.hint}" if self.hint else "")


class TranslationTask(Task):
    """Translate texts with a seq2seq translation model or a causal LM (see the module docstring for the routes).

    Attributes:
        route (`str`):
            `"seq2seq"`, `"chat"` or `"few-shot"`: how the loaded model is asked to translate.
        supported_languages (`list[str]` or `None`):
            The ISO codes the model translates into, or `None` when any/unknown.
        source_languages (`list[str]` or `None`):
            The ISO codes it translates from, or `None` when any/unknown.

    Call options:
        src_lang (`str`, *optional*):
            The source language, an ISO 639-1 code (`"en"`) or the model's own code (`"eng_Latn"`). Defaults to the
            model's source language when it has only one, else English.
        tgt_lang (`str`, *optional*):
            The target language. Required unless the model translates into one language only (Marian `en-de`).
        num_beams (`int`, *optional*):
            Beam search width; defaults to the model's generation config (greedy decoding for most models).
        max_new_tokens (`int`, *optional*):
            The most tokens generated per translation. Defaults to the model's generation config, else 256.
    """

    task = "translation"
    batch_budget = 8192  # prompt tokens per batch
    max_batch_size = 32
    window_size = 512

    def _load(self, location: Any, **kwargs: Any) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        config = self.from_pretrained(AutoConfig, **kwargs)
        self.tokenizer = self.from_pretrained(AutoTokenizer, **kwargs)
        if config.is_encoder_decoder:
            self.route = "seq2seq"
            self.model = self.from_pretrained(AutoModelForSeq2SeqLM, **kwargs)
        else:
            self.route = "chat" if getattr(self.tokenizer, "chat_template", None) else "few-shot"
            self.model = self.from_pretrained(AutoModelForCausalLM, **kwargs)
        generation = self.model.generation_config
        eos = generation.eos_token_id if generation.eos_token_id is not None else self.tokenizer.eos_token_id
        self._eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        # Causal LMs often ship without a pad token; the attention mask keeps eos-padding out of the computation.
        candidates = (self.tokenizer.pad_token_id, generation.pad_token_id, *sorted(self._eos_ids))
        self.pad_token_id = next((c for c in candidates if isinstance(c, int)), 0)
        self.default_max_new_tokens = generation.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
        limits = (self.tokenizer.model_max_length, getattr(self.model.config, "max_position_embeddings", None))
        self.max_length = min((n for n in limits if isinstance(n, int) and 0 < n < _NO_LIMIT), default=None)
        self._stop_at_newline = _StopAtNewline(self.tokenizer)
        # How a seq2seq model learns the languages: "language-tokens", "marian-targets", "t5-prefixes",
        # "t5-wording" or "fixed" (see `_seq2seq_languages`).
        self._style = ""
        self._t5_prefixes: dict[tuple[str, str], str] = {}
        # Ids of language tokens, dropped from outputs: not every tokenizer marks them special (M2M100's in v5).
        self._language_ids: set[int] = set()
        if self.route == "chat":
            self._source = _Languages({iso: iso for iso in LANGUAGES}, default=DEFAULT_SOURCE)
            self._target = _Languages({iso: iso for iso in LANGUAGES})
        elif self.route == "few-shot":
            codes = {iso: iso for iso in FEW_SHOT_EXAMPLES[0]}
            hint = "A base LM translates the languages of FEW_SHOT_EXAMPLES (hfpipes.tasks.translation)."
            self._source = _Languages(codes, default=DEFAULT_SOURCE, hint=hint)
            self._target = _Languages(dict(codes), hint=hint)
        else:
            self._source, self._target = self._seq2seq_languages(config)

    def _seq2seq_languages(self, config: Any) -> tuple[_Languages, _Languages]:
        """Work out which languages a seq2seq model translates, and how it is told which ones."""
        tokenizer = self.tokenizer
        native = self._language_codes()
        if native:
            self._style = "language-tokens"
            iso: dict[str, str] = {}
            for code in sorted(native):
                key = _NLLB_TO_ISO.get(code) or (code[:2] if _MBART_CODE.fullmatch(code) else None)
                # M2M100's codes are ISO codes already.
                key = key or (code if re.fullmatch(r"[a-z]{2,3}", code) else None)
                if key is not None:
                    iso.setdefault(key, code)
            get_id = getattr(tokenizer, "get_lang_id", None) or tokenizer.convert_tokens_to_ids
            self._language_ids = {get_id(code) for code in native}
            return _Languages(iso, set(native), default=iso.get(DEFAULT_SOURCE)), _Languages(dict(iso), set(native))

        source, target = self._fixed_pair(config)
        marian_codes = [c[2:-2] for c in getattr(tokenizer, "supported_language_codes", None) or []]
        if marian_codes:
            self._style = "marian-targets"
            iso = {}
            for code in marian_codes:
                if _iso(code) is not None:
                    iso.setdefault(_iso(code), code)
            return _Languages({source: source} if source else None, default=source, required=False), _Languages(
                iso, set(marian_codes)
            )

        task_params = getattr(config, "task_specific_params", None) or {}
        for key, params in task_params.items():
            pair = re.fullmatch(r"translation_([a-z]{2,3})_to_([a-z]{2,3})", key)
            if pair and isinstance(params, dict) and params.get("prefix"):
                self._t5_prefixes[(pair.group(1), pair.group(2))] = params["prefix"]
        if self._t5_prefixes:
            self._style = "t5-prefixes"
            sources = {s for s, _ in self._t5_prefixes}
            targets = {t for _, t in self._t5_prefixes}
            pairs = ", ".join(f"{s}->{t}" for s, t in sorted(self._t5_prefixes))
            hint = f"The model's config names these pairs: {pairs}."
            return (
                _Languages({s: s for s in sources}, default=DEFAULT_SOURCE if DEFAULT_SOURCE in sources else min(sources), hint=hint),
                _Languages({t: t for t in targets}, default=next(iter(targets)) if len(targets) == 1 else None, hint=hint),
            )  # fmt: skip
        if config.model_type in T5_MODEL_TYPES:
            self._style = "t5-wording"
            # Instruction-tuned T5s (flan-t5) understand the T5 wording for any pair; without tgt_lang, no prefix.
            codes = {iso: iso for iso in LANGUAGES}
            return _Languages(codes, default=DEFAULT_SOURCE), _Languages(dict(codes), required=False)

        self._style = "fixed"
        if target is None:
            # Languages fixed by training but unknown to us: the caller's codes cannot be checked, only ignored.
            return _Languages(None, default=source, required=False), _Languages(None, required=False)
        hint = f"This model translates {source or '?'} -> {target} only; load another model for other languages."
        return (
            _Languages({source: source} if source else None, default=source, required=False, hint=hint),
            _Languages({target: target}, default=target, hint=hint),
        )

    def _language_codes(self) -> set[str]:
        """The language codes of a multilingual model's tokenizer: M2M100 `de`, NLLB `deu_Latn`, mBART `de_DE`."""
        codes = getattr(self.tokenizer, "lang_code_to_id", None)
        if codes and hasattr(self.tokenizer, "get_lang_id"):
            return set(codes)
        if not hasattr(self.tokenizer, "src_lang"):
            return set()
        special = getattr(self.tokenizer, "all_special_tokens", None) or []
        return {t for t in special if _NLLB_CODE.fullmatch(t) or _MBART_CODE.fullmatch(t)}

    def _fixed_pair(self, config: Any) -> tuple[str | None, str | None]:
        """The (source, target) ISO codes a single-pair model was trained on, where they can be known."""
        source, target = (
            _iso(getattr(self.tokenizer, "source_lang", None)),
            _iso(getattr(self.tokenizer, "target_lang", None)),
        )
        for name in (
            self.model_name,
            getattr(self.tokenizer, "name_or_path", ""),
            getattr(config, "_name_or_path", ""),
        ):
            match = _OPUS_MT_NAME.search(str(name or ""))
            if match:
                source, target = source or _iso(match.group(1)), target or _iso(match.group(2))
        return source, target

    # ------------------------------------------------------------------------------------------ languages

    @property
    def supported_languages(self) -> list[str] | None:
        """The ISO codes of the languages the loaded model translates into, or `None` when any/unknown.

        Example:

        ```python
        >>> hfpipes.load("translation", model="Helsinki-NLP/opus-mt-en-de").supported_languages
        ['de']
        ```
        """
        return None if self._target.iso is None else sorted(self._target.iso)

    @property
    def source_languages(self) -> list[str] | None:
        """The ISO codes of the languages the loaded model translates from, or `None` when any/unknown."""
        return None if self._source.iso is None else sorted(self._source.iso)

    def _languages(self, src_lang: str | None, tgt_lang: str | None) -> tuple[str | None, str | None]:
        """The (source, target) model codes of a call, defaults applied; an error when one is missing."""
        source = src_lang if src_lang is not None else self._source.default
        target = tgt_lang if tgt_lang is not None else self._target.default
        if source is None and self._source.required:
            raise InvalidInputError(f"src_lang: this model needs the source language. {self._source.listing()}")
        if target is None and self._target.required:
            raise InvalidInputError(
                f"tgt_lang: this model translates into several languages; pass tgt_lang=. {self._target.listing()}"
            )
        return source, target

    def prompt(self, text: str, *, src_lang: str | None = None, tgt_lang: str | None = None) -> str:
        """The exact text the tokenizer encodes for `text`: the chat-templated instruction, the few-shot prompt,
        the T5 prefix or Marian target token plus the text, or the text itself.

        Example:

        ```python
        >>> pipe = hfpipes.load("translation", model="google/gemma-3-270m")
        >>> print(pipe.prompt("Good night", tgt_lang="de")[-40:])
        English: Good night
        German:
        ```
        """
        pre, _, _ = self._check_options({"src_lang": src_lang, "tgt_lang": tgt_lang})
        return self._prompts([load_text(text, "text")], *self._languages(pre.get("src_lang"), pre.get("tgt_lang")))[0]

    def _prompts(self, texts: list[str], source: str | None, target: str | None) -> list[str]:
        if self.route == "chat":
            names = {"source": LANGUAGES[source][0], "target": LANGUAGES[target][0]}
            messages = [[{"role": "user", "content": CHAT_INSTRUCTION.format(text=text, **names)}] for text in texts]
            # enable_thinking=False keeps reasoning models (Qwen3) from thinking aloud; other templates ignore it.
            return [
                self.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True, enable_thinking=False)
                for m in messages
            ]
        if self.route == "few-shot":
            names = {"source": LANGUAGES[source][0], "target": LANGUAGES[target][0]}
            shots = "".join(
                FEW_SHOT_EXAMPLE.format(source_text=example[source], target_text=example[target], **names)
                for example in FEW_SHOT_EXAMPLES
            )
            # One line per sentence is the prompt's format, so a newline inside a source would end it early.
            return [shots + FEW_SHOT_QUERY.format(source_text=" ".join(text.split()), **names) for text in texts]
        if self._style == "t5-prefixes":
            return [self._t5_prefixes[(source, target)] + text for text in texts]
        if self._style == "t5-wording" and target is not None:
            prefix = T5_PREFIX.format(source=LANGUAGES[source][0], target=LANGUAGES[target][0])
            return [prefix + text for text in texts]
        if self._style == "marian-targets":
            return [f">>{target}<< {text}" for text in texts]
        return list(texts)

    # ------------------------------------------------------------------------------------------- options

    def _sanitize_parameters(
        self,
        src_lang: str | None = None,
        tgt_lang: str | None = None,
        num_beams: int | None = None,
        max_new_tokens: int | None = None,
    ):
        preprocess, forward = {}, {}
        for option, side, code in (("src_lang", self._source, src_lang), ("tgt_lang", self._target, tgt_lang)):
            if code is None:
                continue
            if side.iso is None:
                logger.warning(
                    "hfpipes translation: the languages of %r are fixed by its training and unknown here; %s=%r is "
                    "ignored.", self.model_name, option, code,
                )  # fmt: skip
            else:
                preprocess[option] = side.resolve(code, option)
        if "tgt_lang" in preprocess:
            forward["tgt_lang"] = preprocess["tgt_lang"]
        source = preprocess.get("src_lang", self._source.default)
        target = preprocess.get("tgt_lang", self._target.default)
        if source is not None and source == target:
            raise InvalidInputError(f"tgt_lang: the source and target languages are both {target!r}.")
        if (
            self._style == "t5-prefixes"
            and source is not None
            and target is not None
            and (source, target) not in self._t5_prefixes
        ):
            raise InvalidInputError(
                f"src_lang/tgt_lang: {source}->{target} is not supported by this model. {self._target.hint}"
            )
        for name, value in (("num_beams", num_beams), ("max_new_tokens", max_new_tokens)):
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise InvalidInputError(f"{name}: expected a positive integer, got {describe(value)}.")
                forward[name] = value
        return preprocess, forward, {}

    # ------------------------------------------------------------------------------------------- running

    def preprocess(
        self, inputs: list[Any], start: int, src_lang: str | None = None, tgt_lang: str | None = None
    ) -> list[dict]:
        texts = [load_text(text, f"input {start + i}") for i, text in enumerate(inputs)]
        source, target = self._languages(src_lang, tgt_lang)
        prompts = self._prompts(texts, source, target)
        if self.route == "seq2seq":
            if self._style == "language-tokens":
                self.tokenizer.src_lang = source
            encoded = self.tokenizer(prompts, truncation=self.max_length is not None, max_length=self.max_length)
            truncated = [start + i for i, enc in enumerate(encoded.encodings or []) if enc.overflowing]
            if truncated:
                logger.warning(
                    "hfpipes translation: %d input(s) longer than %d tokens were truncated (first: input %d).",
                    len(truncated), self.max_length, truncated[0],
                )  # fmt: skip
        else:
            # Chat templates already hold the special tokens the model expects (bos included).
            encoded = self.tokenizer(prompts, add_special_tokens=self.route == "few-shot")
        features = []
        for i, ids in enumerate(encoded["input_ids"]):
            if self.route != "seq2seq" and self.max_length is not None and len(ids) >= self.max_length:
                raise InvalidInputError(
                    f"input {start + i}: the prompt is {len(ids)} tokens long, but {self.model_name!r} reads at most "
                    f"{self.max_length} tokens (prompt and translation together). Shorten the text."
                )
            features.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
        return features

    def _collate(self, features: list[dict]) -> dict:
        # Decoder-only models continue from the last position, so their prompts are padded on the left.
        side = "right" if self.route == "seq2seq" else "left"
        return pad_sequences(features, {"input_ids": self.pad_token_id, "attention_mask": 0}, padding_side=side)

    def _forward(
        self, batch: dict, tgt_lang: str | None = None, num_beams: int | None = None, max_new_tokens: int | None = None
    ) -> list:
        import torch

        options: dict[str, Any] = {"do_sample": False, "pad_token_id": self.pad_token_id}
        if num_beams is not None:
            options["num_beams"] = num_beams
        requested, max_new_tokens = max_new_tokens, max_new_tokens or self.default_max_new_tokens
        prompt_length = batch["input_ids"].shape[1]
        # Past its length limit a model with learned (or fixed sinusoidal) positions fails with an index error.
        if self.route == "seq2seq":
            positions = getattr(self.model.config, "max_position_embeddings", None)
            room = positions - 1 if positions else None  # the decoder start token takes a position
        else:
            room = self.max_length - prompt_length if self.max_length else None
        if room is not None and max_new_tokens > room:
            if requested:
                logger.warning(
                    "hfpipes translation: the model has room for %d new tokens, not max_new_tokens=%d.", room, requested
                )
            max_new_tokens = room
        if self._style == "language-tokens":
            target = tgt_lang if tgt_lang is not None else self._target.default
            get_id = getattr(self.tokenizer, "get_lang_id", None) or self.tokenizer.convert_tokens_to_ids
            options["forced_bos_token_id"] = get_id(target)
        if self.route == "few-shot":
            from transformers import StoppingCriteriaList

            options["stopping_criteria"] = StoppingCriteriaList([self._stop_at_newline])
        sequences = self.model.generate(**batch, max_new_tokens=max_new_tokens, **options)
        # Seq2seq outputs start with the decoder start token; causal LM outputs with the prompt.
        generated = sequences[:, 1:] if self.route == "seq2seq" else sequences[:, prompt_length:]
        stop_ids = self._eos_ids | (self._stop_at_newline.newline_ids if self.route == "few-shot" else set())
        # A limit the caller chose is theirs; the default one cutting a long text short deserves a word.
        if requested is None and generated.shape[1] >= max_new_tokens and stop_ids:
            stops = torch.tensor(sorted(stop_ids), device=generated.device)
            # Not `generated`: some models force eos on the last step (Marian's forced_eos_token_id).
            unfinished = int((~torch.isin(generated[:, :-1], stops).any(dim=1)).sum())
            if unfinished:
                logger.warning(
                    "hfpipes translation: %d translation(s) reached the default max_new_tokens=%d and may be cut "
                    "short; pass a larger max_new_tokens.", unfinished, max_new_tokens,
                )  # fmt: skip
        return list(generated)

    def postprocess(self, output: Any) -> dict:
        text = self.tokenizer.decode(
            [i for i in output.tolist() if i not in self._language_ids], skip_special_tokens=True
        )
        if self.route == "few-shot":
            text = text.split("\n", 1)[0]
        return {"translation_text": text.strip()}


class _StopAtNewline:
    """A generation stopping criterion: a row is done once the text of its last token contains a newline.

    Token texts are decoded as they are generated and remembered, which costs nothing next to a forward pass;
    decoding a whole vocabulary up front (262k tokens for Gemma) takes seconds.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.is_newline: dict[int, bool] = {}

    @property
    def newline_ids(self) -> set[int]:
        """The ids seen so far whose text contains a newline."""
        return {i for i, newline in self.is_newline.items() if newline}

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        last = input_ids[:, -1].tolist()
        unseen = [i for i in dict.fromkeys(last) if i not in self.is_newline]
        for i, text in zip(unseen, self.tokenizer.batch_decode([[i] for i in unseen]), strict=True):
            self.is_newline[i] = "\n" in text
        return torch.tensor([self.is_newline[i] for i in last], device=input_ids.device)
