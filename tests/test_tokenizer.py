"""The joint subword tokenizer: special-token ids, lossless round trips, punctuation kept off words."""

import re
import unicodedata

import pytest

from mt.tokenizer import SPECIAL_TOKEN_IDS, check_tokenizer_matches_config, train_tokenizer
from conftest import read_lines, tiny_config

LINES = 2000  # per language: enough for a 2k vocabulary, about a second to train


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return read_lines("train", "en", LINES) + read_lines("train", "de", LINES)


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def joint_tokenizer(request, corpus):
    return train_tokenizer(corpus, vocab_size=2000, model=request.param)


def test_special_tokens_get_the_ids_the_config_expects(joint_tokenizer):
    for name, token_id in SPECIAL_TOKEN_IDS.items():
        assert getattr(joint_tokenizer, name) == token_id
    assert len(joint_tokenizer) == 2000
    ids = joint_tokenizer("Ein Hund rennt.")["input_ids"]
    assert ids[-1] == SPECIAL_TOKEN_IDS["eos_token_id"] and ids.count(SPECIAL_TOKEN_IDS["eos_token_id"]) == 1
    assert SPECIAL_TOKEN_IDS["unk_token_id"] not in ids


@pytest.mark.parametrize("lang", ["en", "de"])
def test_decoding_restores_unseen_sentences_exactly(joint_tokenizer, lang):
    """Validation sentences (never seen in training) come back character for character, NFKC aside."""
    sentences = read_lines("val", lang, 300)
    for sentence in sentences:
        ids = joint_tokenizer(sentence)["input_ids"]
        assert joint_tokenizer.decode(ids, skip_special_tokens=True) == unicodedata.normalize("NFKC", sentence)


def test_punctuation_is_never_merged_into_a_word(joint_tokenizer):
    glued = [t for t in joint_tokenizer.get_vocab() if re.search(r"\w[.,!?;:\"()]|[.,!?;:\"()]\w", t)]
    assert glued == []
    tokens = joint_tokenizer.tokenize("Ein Hund rennt durch den Park.")
    assert tokens[-1] == "." and "".join(tokens[:-1]).replace("▁", " ").strip() == "Ein Hund rennt durch den Park"
    # The same word gets the same pieces at the end of a sentence as inside it.
    inside = joint_tokenizer.tokenize("Ein Hund rennt.")[:-1]
    assert joint_tokenizer.tokenize("Ein Hund rennt, und")[: len(inside)] == inside


def test_unknown_tokenizer_model_is_a_clear_error(corpus):
    with pytest.raises(ValueError, match="tokenizer model 'wordpiece' is unknown"):
        train_tokenizer(corpus[:10], vocab_size=100, model="wordpiece")


def test_tokenizer_larger_than_the_model_vocabulary_is_a_clear_error(joint_tokenizer):
    check_tokenizer_matches_config(joint_tokenizer, tiny_config(vocab_size=2000))
    with pytest.raises(ValueError, match="tokenizer has 2000 tokens but config.vocab_size=1000"):
        check_tokenizer_matches_config(joint_tokenizer, tiny_config(vocab_size=1000))


def test_tokenizer_granularity_benchmark_counts_tokens_and_unknowns():
    """benchmarks/tokenizer_granularity.py: a tokenizer that never saw Czech maps some Czech letters to <unk>;
    one that learns Czech too has none, and its counts are the tokenizer's own."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import tokenizer_granularity

    without, with_czech = (tokenizer_granularity.main(["--train_langs", langs, "--measure_langs", "en,cs",
                                                       "--vocab_sizes", "2000", "--sentences", "200"])[0]
                           for langs in ("en,de", "en,de,cs"))
    assert without["unk_per_sentence"]["cs"] > 0.5 and with_czech["unk_per_sentence"]["cs"] == 0
    assert without["unk_per_sentence"]["en"] == 0 == with_czech["unk_per_sentence"]["en"]
    # Czech cut by an en+de vocabulary takes many more pieces than by one that learnt it.
    assert without["tokens_per_sentence"]["cs"] > 1.3 * with_czech["tokens_per_sentence"]["cs"]
    assert 5 < with_czech["tokens_per_sentence"]["en"] < 40
