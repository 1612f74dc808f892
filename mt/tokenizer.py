"""Train the joint source/target subword tokenizer and wrap it as a transformers fast tokenizer.

One vocabulary serves both languages (so the source, target and output embeddings can be one matrix).
Special tokens come first and so get the ids the model config expects: <pad>=0, <s>=1, </s>=2, <unk>=3.
"""

from collections.abc import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
SPECIAL_TOKEN_IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "unk_token_id": 3}
TOKENIZER_MODELS = ("bpe", "unigram")


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 8000,
    model: str = "bpe",
    model_max_length: int = 256,
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """Train a joint subword tokenizer on `texts` (source and target sentences together).

    Args:
        texts: an iterator over raw sentences of both languages.
        vocab_size: size of the joint vocabulary, special tokens included.
        model: "bpe" (byte-pair encoding) or "unigram" (SentencePiece's unigram LM).
        model_max_length: longest input the tokenizer lets through with `truncation=True`.
        min_frequency: BPE merges must occur at least this often.

    Returns:
        A `PreTrainedTokenizerFast` that appends `</s>` to every sequence (sources and `text_target=` labels).
    """
    if model not in TOKENIZER_MODELS:
        raise ValueError(f"tokenizer model {model!r} is unknown; use one of {TOKENIZER_MODELS}.")
    special = list(SPECIAL_TOKENS.values())
    if model == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special, show_progress=False
        )
    else:
        tokenizer = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=special, unk_token=SPECIAL_TOKENS["unk_token"], show_progress=False
        )
    # NFKC folds unicode variants (full-width letters, ligatures) into one form; case is kept.
    tokenizer.normalizer = normalizers.NFKC()
    # Metaspace marks word starts with "▁", so decoding restores spaces exactly (no detokenizer needed).
    # Punctuation is then cut off the words it touches ("▁Büsche." -> "▁Büsche", "."): without it, raw text
    # such as Multi30k's spends a seventh of an 8k vocabulary on "word." / "word," variants and splits words
    # differently at the end of a sentence. The cut is lossless: spaces live in "▁", not in the split.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator(_non_empty(texts), trainer=trainer)
    eos = SPECIAL_TOKENS["eos_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, tokenizer.token_to_id(eos))]
    )
    for name, token in SPECIAL_TOKENS.items():
        expected = SPECIAL_TOKEN_IDS[f"{name}_id"]
        if tokenizer.token_to_id(token) != expected:
            raise RuntimeError(f"{token} got id {tokenizer.token_to_id(token)} instead of {expected}.")
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=model_max_length, **SPECIAL_TOKENS)


def _non_empty(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        if text and text.strip():
            yield text


def unknown_token_share(tokenizer, texts: list[str]) -> float:
    """The share of `texts`' subword tokens (`</s>` not counted) that the tokenizer maps to `<unk>`: how much
    of a corpus a tokenizer cannot spell, e.g. a checkpoint's en/de tokenizer on Czech text."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    total = sum(len(x) for x in ids)
    return sum(x.count(tokenizer.unk_token_id) for x in ids) / total if total else 0.0


def check_tokenizer_matches_config(tokenizer, config) -> None:
    """Raise a clear `ValueError` when the tokenizer's special-token ids or size disagree with the model's."""
    problems = []
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id"):
        tokenizer_id, config_id = getattr(tokenizer, name, None), getattr(config, name, None)
        if config_id is not None and tokenizer_id != config_id:
            problems.append(f"{name}: tokenizer {tokenizer_id} != config {config_id}")
    if len(tokenizer) > config.vocab_size:
        problems.append(f"vocabulary: tokenizer has {len(tokenizer)} tokens but config.vocab_size={config.vocab_size}")
    if problems:
        raise ValueError(
            "The tokenizer does not match the model config (" + "; ".join(problems) + "). Use the tokenizer "
            "saved with the checkpoint, or build the config from the tokenizer (see mt.tokenizer.SPECIAL_TOKEN_IDS)."
        )
