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
  there. Languages: those of `FEW_SHOT_EXAMPLES`, each measured with the default model (the examples are
  parallel, so any pair of them works; the source is English unless `src_lang` says otherwise). Newlines inside a
  source text become spaces.

The default model (no `model=`) is Gemma 3 270M base, `embedded:gemma-3-270m`, on the few-shot route: no
translation model ships in any package, and this small LM with 8 examples was the best offline option measured
(chrF per language and decoding mode in `model_cards/gemma-3-270m-translation.md`, on the held-out sentences of
`hfpipes/assets/translation/everyday.jsonl`, which are never used as examples or training data).

Languages are ISO 639-1 codes (`"de"`, `"fr"`), mapped to each model's own codes through `LANGUAGES`; a model's own
codes (`"deu_Latn"`) are accepted too. `TranslationTask.supported_languages` lists the target languages of the
loaded model. A model that translates into several languages, called without `tgt_lang`, translates English into
German and any other language into English (`DEFAULT_TARGET_FROM_ENGLISH`, `DEFAULT_TARGET`) and logs its choice;
where the model has no such target, `tgt_lang` is required. `TranslationTask.prompt` shows the exact text the model
is given. Decoding is deterministic: greedy, or beam search with `num_beams`.

Fine-tuning (`hfpipes.finetune("translation", ...)`, data columns `source` and `target`, optionally `src_lang` and
`tgt_lang` per record, else `task_options: {src_lang, tgt_lang}`): a seq2seq model learns the target's token ids;
a causal LM learns to complete the prompt its route builds (few-shot or chat) with the target and the route's end
(the example's line end, or the chat template's end of turn), with the loss on those tokens only. Evaluation
generates greedily and reports BLEU and chrF (`main_metric`). `tasks/translation.yaml` is a LoRA recipe for the
default model.

Example:

```python
>>> import hfpipes
>>> hfpipes.run("translation", "Good morning")  # the default model; English -> German unless tgt_lang= says otherwise
{'translation_text': 'Guten Morgen'}
>>> hfpipes.run("translation", "Where is the pharmacy?", tgt_lang="fr", num_beams=4)
{'translation_text': 'Où est la pharmacie ?'}
>>> hfpipes.run("translation", "How are you?", model="Helsinki-NLP/opus-mt-en-de")
{'translation_text': 'Wie geht es Ihnen?'}
>>> nllb = hfpipes.load("translation", model="facebook/nllb-200-distilled-600M")
>>> nllb(["Good morning", "Thank you"], tgt_lang="fr", num_beams=4)
[{'translation_text': 'Bonjour'}, {'translation_text': 'Merci'}]
>>> nllb.supported_languages[:5]
['ar', 'bg', 'bn', 'ca', 'cs']
>>> pairs = [{"source": "Save the file", "target": "Datei speichern"}, ...]
>>> hfpipes.finetune("translation", pairs, model="Helsinki-NLP/opus-mt-en-de", output_dir="out/mt", epochs=3).metrics
{'eval_loss': ..., 'bleu': ..., 'chrf': ..., ...}
```
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..batching import pad_sequences
from ..errors import ConfigError, DataError, InvalidInputError
from ..inputs import describe, load_text
from ..task import ADAPTER_INFO, Task

if TYPE_CHECKING:  # pragma: no cover
    from ..sources import ModelLocation

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

# Parallel everyday sentences for the few-shot prompt of base LMs: every pair of these languages works. Eight
# measured better than five or three on a development set (hfpipes/assets/translation/everyday-dev.jsonl: +4.6
# chrF EN->DE, +5.0 EN->FR with Gemma 3 270M); each language is measured with the default model on the held-out
# everyday.jsonl (model_cards/gemma-3-270m-translation.md). Neither set shares a sentence with these examples.
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
    {
        "en": "Excuse me, how much do these shoes cost?",
        "de": "Entschuldigung, wie viel kosten diese Schuhe?",
        "fr": "Excusez-moi, combien coûtent ces chaussures ?",
        "es": "Perdone, ¿cuánto cuestan estos zapatos?",
        "it": "Mi scusi, quanto costano queste scarpe?",
        "pt": "Com licença, quanto custam estes sapatos?",
        "nl": "Pardon, hoeveel kosten deze schoenen?",
    },
    {
        "en": "I didn't sleep well last night because the neighbours were very loud.",
        "de": "Ich habe letzte Nacht schlecht geschlafen, weil die Nachbarn sehr laut waren.",
        "fr": "J'ai mal dormi la nuit dernière parce que les voisins étaient très bruyants.",
        "es": "Anoche dormí mal porque los vecinos hacían mucho ruido.",
        "it": "Stanotte ho dormito male perché i vicini erano molto rumorosi.",
        "pt": "Não dormi bem ontem à noite porque os vizinhos estavam fazendo muito barulho.",
        "nl": "Ik heb vannacht slecht geslapen omdat de buren veel lawaai maakten.",
    },
    {
        "en": "Please call me back when you get home.",
        "de": "Bitte ruf mich zurück, wenn du nach Hause kommst.",
        "fr": "Rappelle-moi quand tu rentres, s'il te plaît.",
        "es": "Por favor, llámame cuando llegues a casa.",
        "it": "Per favore, richiamami quando arrivi a casa.",
        "pt": "Por favor, me ligue de volta quando chegar em casa.",
        "nl": "Bel me alsjeblieft terug als je thuiskomt.",
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
# The target language when a model that translates into several languages is called without tgt_lang: German for
# English sources, English for any other source (when the model supports it; else tgt_lang stays required).
DEFAULT_TARGET_FROM_ENGLISH = "de"
DEFAULT_TARGET = "en"
# The `task_options` of a fine-tune: the languages of the records that have no src_lang/tgt_lang of their own.
TRAINING_OPTIONS = ("src_lang", "tgt_lang")
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
            The target language. A model that translates into one language only (Marian `en-de`) needs none; a
            multi-target model called without it translates English into German and other languages into
            English, and logs which it chose (an error when the model has no such target).
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

        # A LoRA fine-tune (`Task.save_trained` with peft) holds the adapter and the tokenizer, not the config; a
        # shipped adapter may leave out the tokenizer too (Gemma's is 33 MB). Both then come from the base model.
        directory = Path(location.path)
        base = _adapter_base(directory, self.allow_pickle) if location.is_local else None
        config_path = base.path if base and not (directory / "config.json").is_file() else None
        tokenizer_path = base.path if base and not (directory / "tokenizer_config.json").is_file() else None
        config = self.from_pretrained(AutoConfig, path=config_path, **kwargs)
        self.tokenizer = self.from_pretrained(AutoTokenizer, path=tokenizer_path, **kwargs)
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
        # (source, target) pairs whose default target language has been logged already (once per pair).
        self._announced_defaults: set[tuple[str, str]] = set()
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

    def _default_target(self, source: str | None) -> str | None:
        """The model's code for the target of a multi-target model called without tgt_lang: German for English
        sources, else English (`DEFAULT_TARGET_FROM_ENGLISH`, `DEFAULT_TARGET`); `None` when the model lacks it."""
        if self._target.iso is None or source is None:
            return None
        source_iso = {code: iso for iso, code in (self._source.iso or {}).items()}.get(source, source)
        iso = DEFAULT_TARGET_FROM_ENGLISH if source_iso == "en" else DEFAULT_TARGET
        target = self._target.iso.get(iso)
        if target is not None and (source, target) not in self._announced_defaults:
            self._announced_defaults.add((source, target))
            logger.info(
                "hfpipes translation: no tgt_lang given, translating %s -> %s (%s); choose with tgt_lang=, one of %s.",
                source_iso, iso, LANGUAGES[iso][0], ", ".join(sorted(self._target.iso)),
            )  # fmt: skip
        return target

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
            # enable_thinking=False keeps reasoning models (Qwen3) from thinking aloud; other templates ignore it.
            return [
                self.tokenizer.apply_chat_template(
                    self._chat_messages(text, source, target),
                    tokenize=False,
                    add_generation_prompt=True,
                    enable_thinking=False,
                )
                for text in texts
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

    def _chat_messages(self, text: str, source: str, target: str) -> list[dict[str, str]]:
        names = {"source": LANGUAGES[source][0], "target": LANGUAGES[target][0]}
        return [{"role": "user", "content": CHAT_INSTRUCTION.format(text=text, **names)}]

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
        source = preprocess.get("src_lang", self._source.default)
        target = preprocess.get("tgt_lang", self._target.default)
        if target is None and self._target.required:
            target = self._default_target(source)
            if target is not None:
                preprocess["tgt_lang"] = target
        if "tgt_lang" in preprocess:
            forward["tgt_lang"] = preprocess["tgt_lang"]
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
        return self._generate(self.model, batch, tgt_lang, num_beams, max_new_tokens)

    def _generate(
        self, model: Any, batch: dict, tgt_lang: str | None, num_beams: int | None, max_new_tokens: int | None
    ) -> list:
        """Greedy (or beam) generation from a collated batch of prompts with `model` (the loaded one, or the one a
        fine-tune is training); one tensor of generated ids per row."""
        import torch

        options: dict[str, Any] = {"do_sample": False, "pad_token_id": self.pad_token_id}
        if num_beams is not None:
            options["num_beams"] = num_beams
        requested, max_new_tokens = max_new_tokens, max_new_tokens or self.default_max_new_tokens
        prompt_length = batch["input_ids"].shape[1]
        # Past its length limit a model with learned (or fixed sinusoidal) positions fails with an index error.
        if self.route == "seq2seq":
            positions = getattr(model.config, "max_position_embeddings", None)
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
        sequences = model.generate(**batch, max_new_tokens=max_new_tokens, **options)
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

    # ------------------------------------------------------------------------------------------- fine-tuning
    # Seq2seq models learn the target's token ids (`text_target`); causal LMs learn the completion of the prompt
    # the inference route builds (few-shot or chat), with the loss on the completion only. Evaluation generates
    # greedily and scores BLEU and chrF.

    train_columns = ("source", "target")
    optional_train_columns = ("src_lang", "tgt_lang")
    main_metric = "chrf"
    greater_is_better = True

    @property
    def peft_task_type(self) -> str:
        """LoRA's task type: `"SEQ_2_SEQ_LM"` for encoder-decoder models, `"CAUSAL_LM"` for the chat and few-shot
        routes."""
        return "SEQ_2_SEQ_LM" if self.route == "seq2seq" else "CAUSAL_LM"

    def prepare_training(self, train: list, eval: list, config: Any) -> None:
        import inspect

        super().prepare_training(train, eval, config)
        self.check_task_options(
            config.task_options, TRAINING_OPTIONS, "the languages of records without src_lang/tgt_lang columns"
        )
        # Records without their own language columns take these (the caller's, else the model's defaults).
        defaults: dict[str, str | None] = {}
        for option, side in (("src_lang", self._source), ("tgt_lang", self._target)):
            code = config.task_options.get(option)
            if code is None or side.iso is None:
                defaults[option] = side.default
                continue
            try:
                defaults[option] = side.resolve(code, f"task_options.{option}")
            except InvalidInputError as err:
                raise ConfigError(str(err)) from None
        self._train_languages = (defaults["src_lang"], defaults["tgt_lang"])
        # Seq2seq: source tokens; causal LMs: prompt and target together.
        self._train_max_length = min((n for n in (config.max_length, self.max_length) if n), default=None)
        positions = getattr(self.model.config, "max_position_embeddings", None) if self.route == "seq2seq" else None
        limits = (config.max_target_length, positions - 1 if positions else None)  # the decoder start takes one
        self._train_max_target_length = min((n for n in limits if n), default=None)
        # Weights a checkpoint never stores (Marian's sinusoidal positions, trainable once loaded in transformers 5)
        # must stay as they are: a reloaded model would have the originals back.
        unsaved = getattr(self.model, "_keys_to_ignore_on_save", None) or ()
        for name, parameter in self.model.named_parameters():
            if name in unsaved:
                parameter.requires_grad_(False)
        # Causal LMs: logits only where there are labels (`training_loss`), when the model can be asked to.
        self._keep_logits = (
            self.route != "seq2seq" and "logits_to_keep" in inspect.signature(self.model.forward).parameters
        )

    def encode_example(self, example: dict, where: str) -> dict:
        source_text = load_text(example["source"], f"{where}, column 'source'")
        target_text = load_text(example["target"], f"{where}, column 'target'")
        source, target = self._example_languages(example, where)
        prompt = self._prompts([source_text], source, target)[0]
        if self.route == "seq2seq":
            if self._style == "language-tokens":
                self.tokenizer.src_lang, self.tokenizer.tgt_lang = source, target
            limit, target_limit = self._train_max_length, self._train_max_target_length
            encoded = self.tokenizer(prompt, truncation=limit is not None, max_length=limit)
            labels = self.tokenizer(
                text_target=target_text, truncation=target_limit is not None, max_length=target_limit
            )
            return {
                "input_ids": encoded["input_ids"],
                "attention_mask": encoded["attention_mask"],
                "labels": labels["input_ids"],
            }
        # The prompt is tokenized exactly as `preprocess` does, so the model learns from the context it will see.
        prompt_ids = self.tokenizer(prompt, add_special_tokens=self.route == "few-shot")["input_ids"]
        completion = self._completion(prompt, source_text, target_text, source, target)
        target_ids = self.tokenizer(completion, add_special_tokens=False)["input_ids"]
        target_ids = target_ids[: self._train_max_target_length or None]
        if self._train_max_length is not None:
            room = self._train_max_length - len(prompt_ids)
            if room < 1:
                raise DataError(
                    f"{where}: the prompt is {len(prompt_ids)} tokens long, which leaves no room for the target within "
                    f"max_length={self._train_max_length}. Shorten the source or raise max_length."
                )
            target_ids = target_ids[:room]
        return {
            "input_ids": prompt_ids + target_ids,
            "attention_mask": [1] * (len(prompt_ids) + len(target_ids)),
            "labels": [-100] * len(prompt_ids) + target_ids,
        }

    def _example_languages(self, example: dict, where: str) -> tuple[str | None, str | None]:
        """The model codes of a training record's languages: its own columns, else the fine-tune's defaults."""
        languages = dict(zip(("src_lang", "tgt_lang"), self._train_languages, strict=True))
        for option, side in (("src_lang", self._source), ("tgt_lang", self._target)):
            code = example.get(option)
            if code is None or (isinstance(code, str) and not code.strip()) or side.iso is None:
                continue
            try:
                languages[option] = side.resolve(code, option)
            except InvalidInputError as err:
                raise DataError(f"{where}: {err}") from None
        source, target = languages["src_lang"], languages["tgt_lang"]
        for option, side, code in (("src_lang", self._source, source), ("tgt_lang", self._target, target)):
            if code is None and side.required:
                raise DataError(
                    f"{where}: no {option}: this model translates several languages, so give the record a {option} "
                    f"column or set task_options: {{{option}: ...}}. {side.listing()}"
                )
        if source is not None and source == target:
            raise DataError(f"{where}: the source and target languages are both {target!r}.")
        if self._style == "t5-prefixes" and (source, target) not in self._t5_prefixes:
            raise DataError(f"{where}: {source}->{target} is not supported by this model. {self._target.hint}")
        return source, target

    def _completion(self, prompt: str, source_text: str, target_text: str, source: str, target: str) -> str:
        """What a causal LM should write after `prompt`: the translation and the end the route stops at (the
        few-shot example's line end, or the chat template's end of turn)."""
        if self.route == "few-shot":
            names = {"source": LANGUAGES[source][0], "target": LANGUAGES[target][0]}
            query = FEW_SHOT_QUERY.format(source_text="", **names)
            # One line per translation, as in the prompt: a newline inside the target would end it early.
            example = FEW_SHOT_EXAMPLE.format(source_text="", target_text=" ".join(target_text.split()), **names)
            return example[len(query) :]
        messages = [*self._chat_messages(source_text, source, target), {"role": "assistant", "content": target_text}]
        full = self.tokenizer.apply_chat_template(messages, tokenize=False, enable_thinking=False)
        # Templates that render an answer differently from the generation prompt (reasoning models) end at eos.
        return full[len(prompt) :] if full.startswith(prompt) else target_text + (self.tokenizer.eos_token or "")

    def training_collate(self, features: list[dict]) -> dict:
        multiple = 8 if self.train_config.mixed_precision != "no" else None  # tensor cores want multiples of 8
        # Padded apart: a seq2seq model's labels are not as long as its inputs.
        batch = pad_sequences(
            features, {"input_ids": self.pad_token_id, "attention_mask": 0}, pad_to_multiple_of=multiple
        )
        return {**batch, **pad_sequences(features, {"labels": -100}, pad_to_multiple_of=multiple)}

    def training_loss(self, model: Any, batch: dict) -> Any:
        if not self._keep_logits:
            return model(**batch).loss
        import torch

        # A causal LM's logits over the whole prompt are most of its compute and memory (262k-token vocabularies);
        # only the positions that predict a label are needed. The loss is the model's own: mean token cross-entropy.
        labels = batch["labels"]
        labeled = labels != -100
        first = int(labeled.int().argmax(dim=1)[labeled.any(dim=1)].min()) if labeled.any() else 1
        keep = labels.shape[1] - max(first, 1) + 1
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), labels[:, labels.shape[1] - keep + 1 :].flatten(), ignore_index=-100
        )

    def eval_predictions(self, model: Any, batch: dict) -> tuple[list, list]:
        labels = batch["labels"]
        references = [self.postprocess(row[row != -100])["translation_text"] for row in labels]
        # Without max_target_length, runaway outputs are cut at 1.5 times the longest reference (they score no better).
        longest = int((labels != -100).sum(dim=1).max())
        max_new_tokens = self.train_config.max_target_length or longest + longest // 2 + 8
        if self.route == "seq2seq":
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            groups = self._rows_by_target(labels)
        else:
            # The prompt is what precedes the first label (rows are padded on the right).
            starts = (labels != -100).int().argmax(dim=1).tolist()
            prompts = [ids[:start].tolist() for ids, start in zip(batch["input_ids"], starts, strict=True)]
            inputs = self._collate([{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in prompts])
            inputs = {key: value.to(labels.device) for key, value in inputs.items()}
            groups = {None: list(range(len(prompts)))}
        outputs: list[Any] = [None] * len(labels)
        for target, rows in groups.items():
            group = {key: value[rows] for key, value in inputs.items()}
            for row, output in zip(rows, self._generate(model, group, target, None, max_new_tokens), strict=True):
                outputs[row] = output
        return [self.postprocess(output)["translation_text"] for output in outputs], references

    def _rows_by_target(self, labels: Any) -> dict[str | None, list[int]]:
        """Rows of a seq2seq batch grouped by target language: a language-token model is told its target through
        `forced_bos_token_id`, one per `generate` call; the label ids say which language each row is in."""
        if self._style != "language-tokens":
            return {None: list(range(len(labels)))}
        get_id = getattr(self.tokenizer, "get_lang_id", None) or self.tokenizer.convert_tokens_to_ids
        codes = {get_id(code): code for code in self._target.native}
        groups: dict[str | None, list[int]] = {}
        for row, ids in enumerate(labels.tolist()):
            groups.setdefault(next((codes[i] for i in ids if i in codes), None), []).append(row)
        return groups

    def compute_metrics(self, predictions: list, references: list) -> dict[str, float]:
        from ..metrics import load_metric

        return {
            **load_metric("bleu").compute(predictions=predictions, references=references),
            **load_metric("chrf").compute(predictions=predictions, references=references),
        }


def _adapter_base(directory: Path, allow_pickle: bool) -> ModelLocation | None:
    """Where the base model of a LoRA adapter directory is, when the directory lacks its config or tokenizer."""
    if not (directory / "adapter_config.json").is_file():
        return None
    if (directory / "config.json").is_file() and (directory / "tokenizer_config.json").is_file():
        return None
    from ..sources import resolve_model

    info = directory / ADAPTER_INFO
    if info.is_file():
        spec = json.loads(info.read_text())["base_model"]
    else:
        spec = json.loads((directory / "adapter_config.json").read_text())["base_model_name_or_path"]
    return resolve_model(spec, allow_pickle=allow_pickle)


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
