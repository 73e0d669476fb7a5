"""Tiny, randomly initialised models built offline, saved with `save_pretrained`, for tests.

They go through the same loading code as real models (`from_pretrained` on a directory). Their outputs are
meaningless, so tests built on them assert structure, determinism and equivalence with the peers
(`transformers.pipeline`, plain diffusers), never quality; quality is judged on the embedded real models.
"""

from __future__ import annotations

from pathlib import Path

SENTENCES = [
    "I love this movie, it is great",
    "This film was awful and boring",
    "What a wonderful day in the park",
    "The food was cold and the service terrible",
    "Absolutely fantastic, would buy again",
    "I hate waiting in long lines",
    "The weather is nice today",
    "This is the worst product ever",
    "She smiled and thanked everyone",
    "Nothing works and nobody cares",
    "An ordinary meeting about the budget",
    "The train leaves at nine in the morning",
]


def train_wordpiece_tokenizer(directory: Path, *, model_max_length: int = 64):
    """A BERT-style WordPiece tokenizer trained on a dozen sentences with `tokenizers`, saved to `directory`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizer

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(SENTENCES, trainers.WordPieceTrainer(vocab_size=200, special_tokens=special))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    tok.decoder = decoders.WordPiece()
    tokenizer = BertTokenizer(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=model_max_length,
    )  # fmt: skip
    tokenizer.save_pretrained(directory)
    return tokenizer


def build_text_classifier(directory: Path, labels=("negative", "positive"), seed: int = 0, dropout: float = 0.1) -> Path:
    """A 2-layer, 32-wide BERT sequence classifier with a WordPiece tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = train_wordpiece_tokenizer(directory)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=64, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)}, pad_token_id=tokenizer.pad_token_id,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(directory)
    return directory


def build_image_classifier(directory: Path, labels=("cat", "dog", "bird"), seed: int = 0) -> Path:
    """A 2-layer, 32-wide ViT on 32x32 images with its image processor."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
    )  # fmt: skip
    ViTForImageClassification(config).save_pretrained(directory)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory
