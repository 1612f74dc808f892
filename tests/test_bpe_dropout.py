"""BPE-dropout: every epoch a new segmentation of the same text, within the length limits, never leaking
into the tokenizer that evaluates and is exported; and the batch sampler that follows the new lengths."""

import pytest

from conftest import read_lines
from mt.batching import LengthGroupedBatchSampler
from mt.bpe_dropout import BPEDropoutTrainSet
from mt.tokenizer import train_tokenizer

PAIRS = 500


@pytest.fixture(scope="module")
def pairs() -> tuple[list[str], list[str]]:
    return read_lines("train", "en", PAIRS), read_lines("train", "de", PAIRS)


@pytest.fixture(scope="module")
def bpe(pairs):
    sources, targets = pairs
    return train_tokenizer(sources + targets, vocab_size=1500, model="bpe")


def train_set(bpe, pairs, dropout=0.1, max_length=128, max_tokens=None):
    sources, targets = pairs
    encoded = bpe(sources, text_target=targets)
    return BPEDropoutTrainSet(sources, targets, encoded["input_ids"], encoded["labels"], bpe, dropout,
                              max_length, max_length, max_tokens)


def test_each_resegmentation_spells_the_same_text_in_new_subwords(bpe, pairs):
    sources, targets = pairs
    deterministic = bpe(sources, text_target=targets)
    data = train_set(bpe, pairs)
    first = data.resegment()
    first_ids = list(data.input_ids)
    second = data.resegment()

    for ids, text in [(data.input_ids, sources), (data.labels, targets)]:
        assert all(row[-1] == bpe.eos_token_id for row in ids)
        assert bpe.batch_decode(ids, skip_special_tokens=True) == text  # lossless, as the deterministic cut
    changed = sum(a != b for a, b in zip(data.input_ids, deterministic["input_ids"]))
    redrawn = sum(a != b for a, b in zip(data.input_ids, first_ids))
    assert changed > PAIRS // 4 and redrawn > PAIRS // 4, (changed, redrawn)
    # p=0.1 skips one merge in ten: a little longer than the greedy cut, far from characters.
    deterministic_tokens = sum(map(len, deterministic["input_ids"]))
    assert deterministic_tokens < sum(first[0]) < 1.5 * deterministic_tokens
    assert (sum(first[0]), sum(first[1])) != (sum(second[0]), sum(second[1]))
    assert data[3] == {"input_ids": data.input_ids[3], "labels": data.labels[3]} and len(data) == PAIRS

    # The run's own tokenizer is untouched: evaluation, generation and the export stay deterministic.
    assert bpe.backend_tokenizer.model.dropout is None
    assert bpe(sources, text_target=targets)["input_ids"] == deterministic["input_ids"]


def test_a_pair_that_would_outgrow_the_limits_keeps_its_deterministic_ids(bpe, pairs):
    sources, targets = pairs
    deterministic = bpe(sources, text_target=targets)
    limit = max(max(map(len, deterministic["input_ids"])), max(map(len, deterministic["labels"])))
    data = train_set(bpe, pairs, dropout=0.5, max_length=limit, max_tokens=2 * limit)
    source_lengths, target_lengths = data.resegment()
    assert max(source_lengths) <= limit and max(target_lengths) <= limit
    kept = [i for i, ids in enumerate(data.input_ids) if ids == deterministic["input_ids"][i]]
    assert kept, "p=0.5 should push the longest sentences over the limit"
    # Fallbacks take the whole pair, so source and target stay from the same segmentation rule.
    longest = max(range(PAIRS), key=lambda i: len(deterministic["input_ids"][i]))
    assert data.input_ids[longest] == deterministic["input_ids"][longest]
    assert data.labels[longest] == deterministic["labels"][longest]

    tight = train_set(bpe, pairs, dropout=0.5, max_length=128, max_tokens=limit)
    assert all(s + t <= limit or (s, t) == (len(a), len(b)) for s, t, a, b in zip(
        *tight.resegment(), deterministic["input_ids"], deterministic["labels"]))


def test_unigram_tokenizers_and_bad_probabilities_are_clear_errors(bpe, pairs):
    sources, targets = pairs
    unigram = train_tokenizer(sources + targets, vocab_size=800, model="unigram")
    encoded = unigram(sources, text_target=targets)
    with pytest.raises(ValueError, match="bpe_dropout needs a BPE tokenizer, but this one is Unigram"):
        BPEDropoutTrainSet(sources, targets, encoded["input_ids"], encoded["labels"], unigram, 0.1, 128, 128)
    for p in (0.0, 1.0):
        with pytest.raises(ValueError, match=r"bpe_dropout must lie in \(0, 1\)"):
            train_set(bpe, pairs, dropout=p)
    with pytest.raises(ValueError, match="one entry per training pair"):
        BPEDropoutTrainSet(sources, targets[:-1], [[2]] * PAIRS, [[2]] * PAIRS, bpe, 0.1, 128, 128)


def test_sampler_rebuilds_its_batches_for_new_lengths():
    sampler = LengthGroupedBatchSampler([4] * 12, [4] * 12, max_sentences=100, max_tokens=32, seed=1)
    assert sorted(len(b) for b in sampler) == [4, 4, 4]  # 4 pairs x (4 + 4) tokens = 32
    sampler.set_lengths([8] * 12, [8] * 12)
    batches = list(sampler)
    assert sorted(len(b) for b in batches) == [2] * 6 and sorted(i for b in batches for i in b) == list(range(12))
    with pytest.raises(ValueError, match="max_tokens_per_batch=32 is smaller than the longest pair \\(40 tokens\\)"):
        sampler.set_lengths([20] * 12, [20] * 12)
