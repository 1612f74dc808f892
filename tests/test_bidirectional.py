"""Bidirectional training: the reversed pairs are the forward pairs' ids swapped, within the length limits, and
only a tokenizer that encodes both sides alike is accepted."""

import pytest

from conftest import read_lines
from mt.batching import LengthGroupedBatchSampler
from mt.bidirectional import BidirectionalTrainSet, check_tokenizer_encodes_both_sides_alike
from mt.tokenizer import train_tokenizer

PAIRS = 300


@pytest.fixture(scope="module")
def pairs() -> tuple[list[str], list[str]]:
    return read_lines("train", "en", PAIRS), read_lines("train", "de", PAIRS)


@pytest.fixture(scope="module")
def joint(pairs):
    sources, targets = pairs
    return train_tokenizer(sources + targets, vocab_size=1200, model="bpe")


def test_reversed_pairs_are_the_other_direction_of_the_same_sentences(joint, pairs):
    sources, targets = pairs
    encoded = joint(sources, text_target=targets)
    data = BidirectionalTrainSet(encoded["input_ids"], encoded["labels"], 128, 128, bidirectional=True)
    assert len(data) == 2 * PAIRS
    for i in (0, 7, PAIRS - 1):
        assert data[i] == {"input_ids": encoded["input_ids"][i], "labels": encoded["labels"][i]}
        reversed_pair = data[PAIRS + i]
        # The German sentence is now the source and the English one the label, each encoded as the tokenizer
        # would encode it on that side.
        assert reversed_pair["input_ids"] == joint(targets[i])["input_ids"]
        assert reversed_pair["labels"] == joint(text_target=sources[i])["input_ids"]
        assert joint.decode(reversed_pair["input_ids"], skip_special_tokens=True) == targets[i]

    source_lengths, target_lengths = data.lengths()
    assert source_lengths[PAIRS:] == target_lengths[:PAIRS] and target_lengths[PAIRS:] == source_lengths[:PAIRS]

    forward_lengths = data.set_bidirectional(False)
    assert len(data) == PAIRS and forward_lengths == (source_lengths[:PAIRS], target_lengths[:PAIRS])
    with pytest.raises(IndexError, match="forward-only"):
        data[PAIRS]
    assert data.set_bidirectional(True) == (source_lengths, target_lengths) and len(data) == 2 * PAIRS


def test_reversed_pairs_respect_the_length_limits(joint, pairs, caplog):
    """With a tighter source limit, a pair whose German side is too long for the source trains forward only."""
    sources, targets = pairs
    encoded = joint(sources, text_target=targets)
    max_source = max(len(x) for x in encoded["input_ids"])  # every forward pair fits
    max_target = max(len(x) for x in encoded["labels"])
    too_long = [i for i, labels in enumerate(encoded["labels"]) if len(labels) > max_source]
    assert too_long, "the test needs German sides longer than the longest English one"
    with caplog.at_level("WARNING"):
        data = BidirectionalTrainSet(encoded["input_ids"], encoded["labels"], max_source, max_target)
    assert len(data) == 2 * PAIRS - len(too_long)
    assert f"{len(too_long)} of {PAIRS} pairs are too long to be used reversed" in caplog.text
    source_lengths, target_lengths = data.lengths()
    assert max(source_lengths) <= max_source and max(target_lengths) <= max_target
    served = {tuple(data[i]["labels"]) for i in range(PAIRS, len(data))}
    assert not served & {tuple(encoded["input_ids"][i]) for i in too_long}

    # The sampler batches whatever mode the set is in.
    sampler = LengthGroupedBatchSampler(source_lengths, target_lengths, max_sentences=32, max_tokens=2048)
    assert sorted(i for batch in sampler for i in batch) == list(range(len(data)))
    sampler.set_lengths(*data.set_bidirectional(False))
    assert sorted(i for batch in sampler for i in batch) == list(range(PAIRS))


class _SeparateVocabularies:
    """Stands in for a tokenizer with separate source and target vocabularies (Marian's): the same text gets
    other ids as a target."""

    def __call__(self, text=None, text_target=None):
        return {"input_ids": [5, 6, 2] if text_target is None else [7, 8, 2]}


def test_only_a_tokenizer_that_encodes_both_sides_alike_is_accepted(joint, pairs):
    check_tokenizer_encodes_both_sides_alike(joint, [pairs[0][0], pairs[1][0]])
    with pytest.raises(ValueError, match="encodes source and target alike.*bidirectional_epochs: 0"):
        check_tokenizer_encodes_both_sides_alike(_SeparateVocabularies(), ["A dog runs."])


def test_epoch_based_runs_count_the_longer_bidirectional_epochs():
    """Without max_train_steps the schedule's length is counted per kind of epoch: 40 pairs in batches of 16 are
    5 batches in both directions and 3 in one; 2 of 5 epochs bidirectional make 2 × 5 + 3 × 3 = 19 updates."""
    from torch.utils.data import DataLoader

    import train
    from mt.config import TrainingConfig

    ids = [[5, 6, 2]] * 40
    data = BidirectionalTrainSet(ids, ids, 128, 128, bidirectional=True)
    sampler = LengthGroupedBatchSampler(*data.lengths(), max_sentences=16)
    loader = DataLoader(data, batch_sampler=sampler, collate_fn=list)
    config = TrainingConfig(num_train_epochs=5, bidirectional_epochs=2)
    assert train.plan_updates(config, loader, sampler, data, num_processes=1) == (3, 5, 19, 5)
    assert not data.bidirectional and len(sampler) == 3  # the training loop switches it on for the first epochs
    config = TrainingConfig(num_train_epochs=5, bidirectional_epochs=2, max_train_steps=12)
    data.set_bidirectional(True)
    sampler.set_lengths(*data.lengths())
    assert train.plan_updates(config, loader, sampler, data, num_processes=1) == (3, 5, 12, 3)


def test_extra_source_pairs_follow_the_reversed_pairs_in_bidirectional_mode_only(joint, pairs):
    """Pairs from other source languages (a multi-way corpus) are served after the reversed pairs, as they are,
    and only while the set is bidirectional."""
    sources, targets = pairs
    encoded = joint(sources, text_target=targets)
    french = read_lines("train", "fr", 20)
    extra = joint(french, text_target=targets[:20])
    data = BidirectionalTrainSet(encoded["input_ids"], encoded["labels"], 128, 128, bidirectional=True,
                                 extra_input_ids=extra["input_ids"], extra_labels=extra["labels"])
    assert len(data) == 2 * PAIRS + 20
    assert data[2 * PAIRS] == {"input_ids": extra["input_ids"][0], "labels": extra["labels"][0]}
    assert data[2 * PAIRS + 19] == {"input_ids": extra["input_ids"][19], "labels": extra["labels"][19]}
    assert data[PAIRS + 3]["labels"] == encoded["input_ids"][3]  # the reversed pairs keep their indices
    assert joint.decode(data[2 * PAIRS + 5]["input_ids"], skip_special_tokens=True) == french[5]
    with pytest.raises(IndexError, match="out of range"):
        data[2 * PAIRS + 20]
    source_lengths, target_lengths = data.lengths()
    assert source_lengths[2 * PAIRS:] == [len(x) for x in extra["input_ids"]]
    assert target_lengths[2 * PAIRS:] == [len(x) for x in extra["labels"]]
    assert len(source_lengths) == len(target_lengths) == len(data)

    data.set_bidirectional(False)
    assert len(data) == PAIRS and len(data.lengths()[0]) == PAIRS
    with pytest.raises(IndexError, match="forward-only"):
        data[2 * PAIRS]
    with pytest.raises(ValueError, match="one entry per training pair"):
        BidirectionalTrainSet(encoded["input_ids"], encoded["labels"], 128, 128, extra_input_ids=extra["input_ids"],
                              extra_labels=extra["labels"][:3])
