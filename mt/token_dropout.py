"""Token dropout: during training, replace random input tokens with <unk>.

Dropout inside the network hides units; token dropout hides whole input tokens. Each source token (the
encoder's `input_ids`) and each target-side input token (the decoder's `decoder_input_ids`, the labels
shifted right) is replaced with `<unk>` with probability p. The labels are untouched, so the decoder must
still predict every target token, now from a context with holes in it: it cannot lean on one cue word,
and the encoder learns to carry a sentence through a missing word. This is the word dropout of Sennrich and
Zhang (ACL 2019, "Revisiting Low-Resource Neural Machine Translation"; after Gal and Ghahramani, 2016),
applied to subword tokens, and the <unk> replacement of Zhang et al. (COLING 2020, "Token Drop Mechanism for
Neural Machine Translation"): a regularizer for small corpora that costs no model compute.

Padding, the decoder's start token and `</s>` are never replaced (they carry no word, and the model must
see where a sentence starts and ends). Validation, test and generation never drop tokens: only train.py's
training loop calls this. The draws come from torch's global generator, like dropout masks, so a run
resumed from a checkpoint (which saves and restores that generator) draws the same tokens as one that
was never stopped.
"""

import torch


def drop_tokens(ids: torch.Tensor, p: float, unk_token_id: int, keep_ids: torch.Tensor) -> torch.Tensor:
    """`ids` with each token not in `keep_ids` replaced by `unk_token_id` with probability `p` (a new tensor)."""
    if p <= 0:
        return ids
    hit = torch.rand(ids.shape, device=ids.device) < p
    hit &= ~torch.isin(ids, keep_ids.to(ids.device))
    return ids.masked_fill(hit, unk_token_id)


def apply_token_dropout(batch: dict, source_p: float, target_p: float, special_ids: dict[str, int]) -> dict:
    """A copy of a training `batch` with token dropout on its source and decoder inputs.

    Args:
        batch: a collated batch with `input_ids` and (for the target side) `decoder_input_ids`.
        source_p, target_p: replacement probabilities for the two sides, in [0, 1).
        special_ids: the tokenizer's `pad_token_id`, `bos_token_id`, `eos_token_id` (never replaced; the
            decoder start token is `bos_token_id` here) and `unk_token_id` (the replacement).
    """
    if target_p > 0 and "decoder_input_ids" not in batch:
        raise ValueError("target_token_dropout needs decoder_input_ids in the batch: build the collator with the "
                         "model (DataCollatorForSeq2Seq(tokenizer, model=model)) so that it shifts the labels.")
    keep = torch.tensor([special_ids[name] for name in ("pad_token_id", "bos_token_id", "eos_token_id")])
    unk = special_ids["unk_token_id"]
    dropped = dict(batch)
    for name, p in (("input_ids", source_p), ("decoder_input_ids", target_p)):
        if p > 0:
            dropped[name] = drop_tokens(batch[name], p, unk, keep)
    return dropped
