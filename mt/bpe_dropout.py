"""BPE-dropout (Provilkov et al., ACL 2020): a fresh random segmentation of the training pairs every epoch.

A BPE tokenizer applies its merges greedily, so "Büsche" is always "▁Bü sche" and the model never learns
that "▁Bü s che" or "▁B ü sche" spell the same word. BPE-dropout skips each merge with probability p while
segmenting, so every epoch shows the same sentences cut into slightly different subwords: a regularizer for
small corpora that costs no model compute. Validation, test and generation keep the deterministic
segmentation (the tokenizer that is saved and exported never has dropout).

Lengths change with the segmentation, so the length-grouped batches are rebuilt after every resegmentation
(`LengthGroupedBatchSampler.set_lengths`). A pair whose dropped-out segmentation would be longer than the
length limits keeps its deterministic one.

tokenizers' dropout draws from an RNG that cannot be seeded: a run resumed mid-epoch restarts that epoch
with a new draw (same number of batches skipped, slightly different segmentations). Everything else about
resumption (model, optimizer, schedule, step count, epoch) stays exact.
"""

import torch
from tokenizers import Tokenizer
from tokenizers.models import BPE


class BPEDropoutTrainSet(torch.utils.data.Dataset):
    """Training pairs as token ids, resegmented with BPE-dropout by `resegment()`.

    Args:
        sources, targets: the raw training sentences (already filtered to the pairs that fit).
        input_ids, labels: their deterministic token ids, used until the first `resegment()` and as the
            fallback for pairs whose dropped-out segmentation exceeds the limits.
        tokenizer: the run's `PreTrainedTokenizerFast` (a BPE model); it is copied, never modified.
        dropout: probability of skipping each merge, in (0, 1).
        max_source_length, max_target_length: per-side limits in tokens.
        max_tokens: if set, a pair's source + target must also fit in it.
    """

    def __init__(self, sources: list[str], targets: list[str], input_ids: list[list[int]], labels: list[list[int]],
                 tokenizer, dropout: float, max_source_length: int, max_target_length: int,
                 max_tokens: int | None = None):
        if not len(sources) == len(targets) == len(input_ids) == len(labels):
            raise ValueError("sources, targets, input_ids and labels must have one entry per training pair.")
        if not 0.0 < dropout < 1.0:
            raise ValueError(f"bpe_dropout must lie in (0, 1), got {dropout}.")
        backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        if not isinstance(backend.model, BPE):
            raise ValueError(f"bpe_dropout needs a BPE tokenizer, but this one is {type(backend.model).__name__}; "
                             "train with tokenizer_type: bpe or set bpe_dropout: 0.")
        backend.model.dropout = dropout
        backend.no_truncation()
        backend.no_padding()
        self._backend = backend
        self.sources, self.targets = list(sources), list(targets)
        self.deterministic = (list(input_ids), list(labels))
        self.input_ids, self.labels = self.deterministic
        self.limits = (max_source_length, max_target_length, max_tokens)

    def segment(self) -> tuple[list[list[int]], list[list[int]]]:
        """One random segmentation of every pair (pairs that would not fit keep their deterministic ids)."""
        sources = [e.ids for e in self._backend.encode_batch(self.sources)]
        targets = [e.ids for e in self._backend.encode_batch(self.targets)]
        max_source, max_target, max_tokens = self.limits
        for i, (source, target) in enumerate(zip(sources, targets)):
            too_long = len(source) > max_source or len(target) > max_target
            if too_long or (max_tokens is not None and len(source) + len(target) > max_tokens):
                sources[i], targets[i] = self.deterministic[0][i], self.deterministic[1][i]
        return sources, targets

    def resegment(self, accelerator=None) -> tuple[list[int], list[int]]:
        """Draw a new segmentation (on the main process, shared with the others so that every process
        batches the same lengths) and return the new source and target lengths."""
        if accelerator is None or accelerator.num_processes == 1:
            self.input_ids, self.labels = self.segment()
        else:
            from accelerate.utils import broadcast_object_list

            payload = [self.segment() if accelerator.is_main_process else None]
            self.input_ids, self.labels = broadcast_object_list(payload, from_process=0)[0]
        return self.lengths()

    def lengths(self) -> tuple[list[int], list[int]]:
        return [len(x) for x in self.input_ids], [len(x) for x in self.labels]

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return {"input_ids": self.input_ids[index], "labels": self.labels[index]}
