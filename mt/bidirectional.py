"""Bidirectional training (Ding et al., NAACL 2021, "Improving Neural Machine Translation by Bidirectional
Training"): the first epochs train on the training pairs in both directions, the rest on the wanted one.

Every pair (x, y) also serves as (y, x): with one joint vocabulary and shared embeddings, the same
parameters learn English→German and German→English from the same sentences, which doubles what the encoder
and decoder see of each language early in training, at no cost per update (no extra data, no extra model).
The later epochs train on source→target only, so the final model is an ordinary one-direction model; its
validation, selection and test are source→target throughout. No language tag is needed: the source
sentence's language tells the model which way to translate.

With a tokenizer that encodes source and target alike (train.py's joint tokenizer: the same end-of-sentence
template on both sides), a reversed pair is exactly the forward pair's two id lists swapped.

A multi-way corpus (Multi30k has French and Czech translations of the same training sentences) can add
more pairs to these epochs: other languages into the target language (`extra_source_langs` in train.py), so
the decoder learns the target language from more sources before the source->target epochs. They go into
the target language only: with no language tag, a German source must always mean English output.
"""

import logging

import torch

logger = logging.getLogger(__name__)


class BidirectionalTrainSet(torch.utils.data.Dataset):
    """Training pairs as token ids, served forward only or forward plus reversed (`set_bidirectional`).

    Indices 0..N-1 are the forward pairs in their original order; in bidirectional mode indices N..N+R-1 are
    the R reversed pairs that fit the length limits (a German source may be longer than max_source_length),
    then the E extra pairs, if any.

    Args:
        input_ids, labels: token ids of the N forward pairs (source, target).
        max_source_length, max_target_length: per-side limits in tokens, applied to the reversed pairs.
        bidirectional: the mode to start in.
        extra_input_ids, extra_labels: token ids of pairs served in bidirectional mode only, as they are (other
            source languages into the target language; already within the length limits).
    """

    def __init__(self, input_ids: list[list[int]], labels: list[list[int]], max_source_length: int,
                 max_target_length: int, bidirectional: bool = True,
                 extra_input_ids: list[list[int]] = (), extra_labels: list[list[int]] = ()):
        if len(input_ids) != len(labels) or len(extra_input_ids) != len(extra_labels):
            raise ValueError("input_ids and labels must have one entry per training pair.")
        self.extra_input_ids, self.extra_labels = list(extra_input_ids), list(extra_labels)
        self.input_ids, self.labels = list(input_ids), list(labels)
        fits = [i for i, (source, target) in enumerate(zip(self.input_ids, self.labels))
                if len(target) <= max_source_length and len(source) <= max_target_length]
        if len(fits) < len(self.input_ids):
            logger.warning(f"bidirectional training: {len(self.input_ids) - len(fits)} of {len(self.input_ids)} pairs "
                           "are too long to be used reversed (max_source_length/max_target_length); they train "
                           "forward only")
        self.reversed_index = fits  # the forward pair behind each reversed one
        self.bidirectional = bidirectional

    def set_bidirectional(self, bidirectional: bool) -> tuple[list[int], list[int]]:
        """Switch the mode and return the source and target lengths of the examples it serves."""
        self.bidirectional = bidirectional
        return self.lengths()

    def lengths(self) -> tuple[list[int], list[int]]:
        sources = [len(x) for x in self.input_ids]
        targets = [len(x) for x in self.labels]
        if self.bidirectional:
            sources, targets = (sources + [targets[i] for i in self.reversed_index] + [len(x) for x in self.extra_input_ids],
                                targets + [sources[i] for i in self.reversed_index] + [len(x) for x in self.extra_labels])
        return sources, targets

    def __len__(self) -> int:
        return len(self.input_ids) + (len(self.reversed_index) + len(self.extra_input_ids) if self.bidirectional else 0)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        forward = len(self.input_ids)
        if index < forward:
            return {"input_ids": self.input_ids[index], "labels": self.labels[index]}
        if not self.bidirectional:
            raise IndexError(f"index {index} out of range for {forward} forward-only pairs")
        if index < forward + len(self.reversed_index):
            pair = self.reversed_index[index - forward]
            return {"input_ids": self.labels[pair], "labels": self.input_ids[pair]}
        extra = index - forward - len(self.reversed_index)
        if extra >= len(self.extra_input_ids):
            raise IndexError(f"index {index} out of range for {len(self)} pairs")
        return {"input_ids": self.extra_input_ids[extra], "labels": self.extra_labels[extra]}


def check_tokenizer_encodes_both_sides_alike(tokenizer, sentences: list[str]) -> None:
    """Raise a clear `ValueError` unless the tokenizer gives the same ids to a sentence as source and as
    target: swapping a pair's id lists is then exactly the reversed pair. A joint vocabulary (train.py's own
    tokenizer) passes; a tokenizer with separate source and target vocabularies (e.g. Marian's) does not."""
    for sentence in sentences:
        as_source = tokenizer(sentence)["input_ids"]
        as_target = tokenizer(text_target=sentence)["input_ids"]
        if as_source != as_target:
            raise ValueError(
                "bidirectional_epochs needs a tokenizer that encodes source and target alike (one joint vocabulary), "
                f"but {type(tokenizer).__name__} gives {sentence!r} different ids on the two sides. Train a joint "
                "tokenizer (the default when training from scratch) or set bidirectional_epochs: 0."
            )
