"""Dropout: `apply_dropout` is dropout (rate, scale, expectation, gradient, independence of the elements), is seeded
like the rest of torch, is replayed by gradient checkpointing, and is what the model trains with on a CPU."""

import math

import pytest
import torch
from torch.nn import functional as F

import modeling.modeling_attnmt as modeling_attnmt
from modeling import AttnMTConfig, AttnMTForConditionalGeneration
from modeling.modeling_attnmt import apply_dropout, cpu_dropout_keep_mask


def _rounded(p: float) -> float:
    return round(p * 65536) / 65536


def test_identity_outside_training_and_at_zero_rate():
    x = torch.randn(4, 5)
    assert apply_dropout(x, 0.3, training=False) is x
    assert apply_dropout(x, 0.0, training=True) is x


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
def test_rate_scale_and_expectation(p):
    torch.manual_seed(0)
    x = torch.ones(1000, 1000)
    y = apply_dropout(x, p, training=True)
    dropped = (y == 0).double().mean().item()
    sigma = math.sqrt(p * (1 - p) / x.numel())
    assert abs(dropped - p) < 5 * sigma
    assert abs(_rounded(p) - p) <= 2**-17
    kept = y[y != 0]
    assert torch.equal(kept, torch.full_like(kept, 1 / (1 - _rounded(p))))  # every kept value scaled alike
    assert abs(y.double().mean().item() - 1.0) < 5 * sigma / (1 - p)  # E[y] = x


def test_elements_are_independent():
    """Four elements share one 64-bit draw: each must still be its own coin. Neighbours and elements 4 apart (the
    same lane of the next draw) are both dropped with probability p², as independent coins are."""
    torch.manual_seed(1)
    p = 0.3
    keep, _ = cpu_dropout_keep_mask(torch.Size([4_000_000]), p)
    dropped = ~keep
    sigma = math.sqrt(p * p * (1 - p * p) / keep.numel())
    for offset in (1, 2, 3, 4):
        both = (dropped[:-offset] & dropped[offset:]).double().mean().item()
        assert abs(both - p * p) < 5 * sigma, offset
    lanes = dropped.view(-1, 4).double().mean(0)  # each of the four 16-bit lanes alone
    assert (lanes - p).abs().max().item() < 5 * math.sqrt(p * (1 - p) / (keep.numel() / 4))


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 5), (1, 1)])
def test_mask_shape_for_sizes_not_divisible_by_four(shape):
    keep, scale = cpu_dropout_keep_mask(torch.Size(shape), 0.5)
    assert keep.shape == shape and keep.dtype == torch.bool and scale == 2.0


def test_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(2)
    x = torch.randn(64, 32, requires_grad=True)
    upstream = torch.randn(64, 32)
    y = apply_dropout(x, 0.3, training=True)
    (y * upstream).sum().backward()
    keep = y != 0
    scale = 1 / (1 - _rounded(0.3))
    torch.testing.assert_close(y, x.detach() * keep * scale)
    torch.testing.assert_close(x.grad, upstream * keep * scale)


def test_seeded_like_torch():
    x = torch.ones(256, 64)
    torch.manual_seed(3)
    first = apply_dropout(x, 0.3, training=True)
    torch.manual_seed(3)
    again = apply_dropout(x, 0.3, training=True)
    other = apply_dropout(x, 0.3, training=True)  # the generator has moved on
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_non_cpu_tensors_use_torch_dropout(monkeypatch):
    calls = []
    monkeypatch.setattr(modeling_attnmt.F, "dropout", lambda x, p, training: calls.append(p) or x)
    x = torch.empty(3, 4, device="meta")
    apply_dropout(x, 0.3, training=True)
    assert calls == [0.3]


def _model_with_dropout() -> AttnMTForConditionalGeneration:
    torch.manual_seed(0)
    config = AttnMTConfig(vocab_size=40, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                          decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, dropout=0.3,
                          attention_dropout=0.2, activation_dropout=0.2, pad_token_id=0, bos_token_id=1,
                          eos_token_id=2, decoder_start_token_id=2)
    return AttnMTForConditionalGeneration(config).train()


def _batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, 40, (3, 9), generator=generator)
    labels = torch.randint(3, 40, (3, 7), generator=generator)
    labels[1, 5:] = -100
    return {"input_ids": input_ids, "attention_mask": (input_ids > 0).long(), "labels": labels}


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_model_trains_with_it_on_cpu_and_never_calls_torch_dropout(monkeypatch, implementation):
    model = _model_with_dropout()
    model.set_attn_implementation(implementation)

    def refuse(*args, **kwargs):
        raise AssertionError("F.dropout called on a CPU: bernoulli_ is the slow mask")

    monkeypatch.setattr(modeling_attnmt.F, "dropout", refuse)
    calls = []
    real = modeling_attnmt.cpu_dropout_keep_mask
    monkeypatch.setattr(modeling_attnmt, "cpu_dropout_keep_mask", lambda *a: calls.append(a) or real(*a))
    model(**_batch()).loss.backward()
    # Encoder: embeddings + 2 layers × (2 residuals + 1 activation) = 7; decoder: embeddings + 2 × (3 + 1) = 9.
    # Eager also drops attention weights (2 encoder self-, 2 decoder self- and 2 cross-attentions); sdpa does that
    # inside its kernel.
    assert len(calls) == 16 + (6 if implementation == "eager" else 0)
    assert {args[1] for args in calls} == {0.3, 0.2}


def test_gradient_checkpointing_replays_the_same_masks():
    batch = _batch()
    model = _model_with_dropout()
    torch.manual_seed(5)
    model(**batch).loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable()
    torch.manual_seed(5)
    model(**batch).loss.backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, reference[name], rtol=1e-5, atol=1e-6, msg=name)
