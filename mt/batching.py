"""Length-grouped batches, by sentence count or by token count, reproducible per (seed, epoch).

Sentences are sorted by length (ties broken at random), cut into batches that stay under the token
budget, and the batches are shuffled: each batch holds sentences of similar length, so padding stays
small, while the order the model sees changes every epoch. The same (seed, epoch) gives the same batches,
which is what exact resumption needs.
"""

import numpy as np
from torch.utils.data import Sampler


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Yield lists of dataset indices.

    Args:
        source_lengths, target_lengths: token counts of each example.
        max_sentences: at most this many sentences per batch.
        max_tokens: at most this many tokens per batch, counted as padded source + padded target
            (`batch size × (longest source + longest target)`), i.e. what the model actually computes on.
        shuffle: random tie-breaking and batch order (training); False gives a fixed sorted order.
        seed: base seed; the epoch is added to it (`set_epoch`).
    """

    def __init__(
        self,
        source_lengths: list[int],
        target_lengths: list[int],
        max_sentences: int,
        max_tokens: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
    ):
        self.max_sentences = max_sentences
        self.max_tokens = max_tokens
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.set_lengths(source_lengths, target_lengths)

    def set_lengths(self, source_lengths: list[int], target_lengths: list[int]) -> None:
        """New token counts for the same examples (e.g. after a BPE-dropout resegmentation); batches are rebuilt."""
        if len(source_lengths) != len(target_lengths):
            raise ValueError("source_lengths and target_lengths differ in length.")
        longest = max(s + t for s, t in zip(source_lengths, target_lengths))
        if self.max_tokens is not None and longest > self.max_tokens:
            raise ValueError(
                f"max_tokens_per_batch={self.max_tokens} is smaller than the longest pair ({longest} tokens); raise it "
                "or lower max_source_length/max_target_length."
            )
        self.source_lengths = np.asarray(source_lengths)
        self.target_lengths = np.asarray(target_lengths)
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _make_batches(self) -> list[list[int]]:
        rng = np.random.default_rng(self.seed + self.epoch)
        n = len(self.source_lengths)
        tie_break = rng.permutation(n) if self.shuffle else np.arange(n)
        # lexsort sorts by the last key first: by source length, then target length, then the random key.
        order = np.lexsort((tie_break, self.target_lengths, self.source_lengths))
        batches, batch, longest_source, longest_target = [], [], 0, 0
        for index in order:
            source, target = int(self.source_lengths[index]), int(self.target_lengths[index])
            new_source, new_target = max(longest_source, source), max(longest_target, target)
            too_many = len(batch) + 1 > self.max_sentences
            too_long = self.max_tokens is not None and (len(batch) + 1) * (new_source + new_target) > self.max_tokens
            if batch and (too_many or too_long):
                batches.append(batch)
                batch, new_source, new_target = [], source, target
            batch.append(int(index))
            longest_source, longest_target = new_source, new_target
        if batch:
            batches.append(batch)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _batches(self) -> list[list[int]]:
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self._make_batches())
        return self._cache[1]

    def __iter__(self):
        yield from self._batches()

    def __len__(self) -> int:
        return len(self._batches())
