"""Attention against hand computation and torch.nn.MultiheadAttention; masks; no NaN from masked rows."""

import math

import pytest
import torch
from torch import nn

from modeling import build_attention_mask, eager_attention_forward
from modeling.modeling_attnmt import AttnMTAttention, decoding_step_attention_forward

from conftest import tiny_config, tiny_model

TOL = 1e-5
IMPLEMENTATIONS = ("eager", "sdpa")


def _module(training: bool = False) -> nn.Module:
    module = nn.Module()
    module.train(training)
    return module


def _padding_mask(lengths: list[int], max_length: int) -> torch.Tensor:
    return (torch.arange(max_length)[None, :] < torch.tensor(lengths)[:, None]).long()  # (B, L)


# --------------------------------------------------------------------------------------------------
# build_attention_mask
# --------------------------------------------------------------------------------------------------


def test_build_attention_mask_padding_and_causal_values():
    padding = _padding_mask([3, 5], 5)
    mask = build_attention_mask(padding, 5, 5, torch.float32, causal=True)
    assert mask.shape == (2, 1, 5, 5) and mask.dtype == torch.float32
    minimum = torch.finfo(torch.float32).min
    for b, length in enumerate([3, 5]):
        for t in range(5):
            for s in range(5):
                allowed = s <= t and s < length
                assert mask[b, 0, t, s].item() == (0.0 if allowed else minimum), (b, t, s)


def test_build_attention_mask_padding_only_broadcasts_over_queries():
    mask = build_attention_mask(_padding_mask([2, 4], 4), 3, 4, torch.float16)
    assert mask.shape == (2, 1, 1, 4) and mask.dtype == torch.float16
    expected = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(mask[:, 0, 0] == torch.finfo(torch.float16).min, expected)
    assert torch.equal(mask[:, 0, 0] == 0, ~expected)


def test_build_attention_mask_none_when_nothing_to_mask():
    assert build_attention_mask(None, 4, 4, torch.float32) is None
    assert build_attention_mask(torch.ones(2, 4, dtype=torch.long), 4, 4, torch.float32) is None
    # A single query (one decoding step) may see every cached key: no causal mask needed.
    assert build_attention_mask(None, 1, 6, torch.float32, causal=True) is None


def test_build_attention_mask_causal_with_cache_offset():
    # 2 new queries after 3 cached positions: they are positions 3 and 4 of a 5-key sequence.
    mask = build_attention_mask(None, 2, 5, torch.float32, causal=True)
    assert mask.shape == (1, 1, 2, 5)
    allowed = mask[0, 0] == 0
    assert allowed.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]


# --------------------------------------------------------------------------------------------------
# eager_attention_forward: the formula
# --------------------------------------------------------------------------------------------------


def test_eager_attention_equals_hand_computation():
    torch.manual_seed(0)
    B, H, T, S, Dh = 2, 3, 4, 5, 8
    q, k, v = torch.randn(B, H, T, Dh), torch.randn(B, H, S, Dh), torch.randn(B, H, S, Dh)
    mask = build_attention_mask(_padding_mask([5, 3], S), T, S, torch.float32)

    output, weights = eager_attention_forward(_module(), q, k, v, mask, scaling=1 / math.sqrt(Dh))

    # Element by element: scores, softmax over keys, weighted sum of values.
    expected_w = torch.zeros(B, H, T, S)
    expected_out = torch.zeros(B, T, H, Dh)
    for b in range(B):
        for h in range(H):
            for t in range(T):
                scores = torch.tensor([float(q[b, h, t] @ k[b, h, s]) / math.sqrt(Dh) for s in range(S)])
                scores = scores + mask[b, 0, 0]
                w = torch.exp(scores - scores.max())
                w = w / w.sum()
                expected_w[b, h, t] = w
                expected_out[b, t, h] = sum(w[s] * v[b, h, s] for s in range(S))
    assert output.shape == (B, T, H, Dh) and weights.shape == (B, H, T, S)
    assert (weights - expected_w).abs().max() <= TOL
    assert (output - expected_out).abs().max() <= TOL
    # Padded keys of the second sentence get exactly zero weight.
    assert torch.all(weights[1, :, :, 3:] == 0)


def test_eager_attention_bool_mask_equals_additive_mask():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 2, 3, 4), torch.randn(2, 2, 3, 4), torch.randn(2, 2, 3, 4)
    padding = _padding_mask([3, 2], 3)
    additive = build_attention_mask(padding, 3, 3, torch.float32, causal=True)
    out_add, w_add = eager_attention_forward(_module(), q, k, v, additive, scaling=0.5)
    out_bool, w_bool = eager_attention_forward(_module(), q, k, v, additive == 0, scaling=0.5)
    assert (out_add - out_bool).abs().max() <= TOL and (w_add - w_bool).abs().max() <= TOL


def test_eager_attention_dropout_only_in_training():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4)
    out_eval_1, _ = eager_attention_forward(_module(False), q, k, v, None, scaling=0.5, dropout=0.5)
    out_eval_2, _ = eager_attention_forward(_module(False), q, k, v, None, scaling=0.5, dropout=0.5)
    assert torch.equal(out_eval_1, out_eval_2)
    _, w_train = eager_attention_forward(_module(True), q, k, v, None, scaling=0.5, dropout=0.5)
    assert (w_train == 0).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fully_masked_row_gives_no_nan(dtype):
    torch.manual_seed(0)
    B, H, T, S, Dh = 2, 2, 3, 4, 8
    q, k, v = (torch.randn(B, H, L, Dh).to(dtype) for L in (T, S, S))
    # Sentence 1 is padding only; with causality added its rows are masked twice over.
    mask = build_attention_mask(_padding_mask([4, 0], S), T, S, dtype, causal=True)
    assert mask.dtype == dtype and (mask[1] == torch.finfo(dtype).min).all()
    output, weights = eager_attention_forward(_module(), q, k, v, mask, scaling=Dh**-0.5)
    assert output.dtype == dtype
    assert torch.isfinite(output).all() and torch.isfinite(weights).all()
    # Every row is still a distribution, and the real sentence's future keys get no weight at all.
    assert torch.allclose(weights.float().sum(-1), torch.ones(B, H, T), atol=1e-2)
    future = torch.triu(torch.ones(T, S, dtype=torch.bool), diagonal=S - T + 1)  # queries are the last T positions
    assert future.any() and (weights[0][:, future] == 0).all()
    # Bool masks too.
    output_bool, _ = eager_attention_forward(_module(), q, k, v, mask == 0, scaling=Dh**-0.5)
    assert torch.isfinite(output_bool).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mask_kind", ["none", "additive", "bool"])
def test_decoding_step_attention_equals_the_formula(dtype, mask_kind):
    """The single-query path gives what eager_attention_forward gives: outputs, weights and gradients,
    with keys/values read from the filled part of a larger cache buffer (a non-contiguous view)."""
    torch.manual_seed(0)
    B, H, S, Dh = 3, 4, 6, 8
    buffer = torch.randn(2, B, H, S + 5, Dh).to(dtype)
    key, value = buffer[0, :, :, :S], buffer[1, :, :, :S]
    query = torch.randn(B, 1, H, Dh).to(dtype).transpose(1, 2)  # (B, H, 1, Dh) as _split_heads makes it
    mask = None
    if mask_kind != "none":
        mask = build_attention_mask(_padding_mask([6, 2, 4], S), 1, S, dtype)
        mask = mask == 0 if mask_kind == "bool" else mask
    tol = dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    inputs = [t.detach().clone().requires_grad_(dtype == torch.float32) for t in (query, key, value)]
    reference = [t.detach().clone().requires_grad_(dtype == torch.float32) for t in (query, key, value)]
    output, weights = decoding_step_attention_forward(_module(), *inputs, mask, scaling=Dh**-0.5)
    expected, expected_weights = eager_attention_forward(_module(), *reference, mask, scaling=Dh**-0.5)
    assert output.shape == (B, 1, H, Dh) and output.dtype == dtype and output.is_contiguous()
    assert torch.allclose(output.float(), expected.float(), **tol)
    assert torch.allclose(weights.float(), expected_weights.float(), **tol)
    if mask_kind != "none":
        assert (weights[1, :, 0, 2:] == 0).all()  # sentence 1 has 2 real tokens
    if dtype == torch.float32:
        grad = torch.randn_like(output)
        output.backward(grad)
        expected.backward(grad)
        for mine, theirs in zip(inputs, reference):
            assert torch.allclose(mine.grad, theirs.grad, atol=1e-6, rtol=1e-5)


def test_sdpa_model_decodes_single_queries_with_the_decoding_step_path(monkeypatch):
    """Under sdpa on a CPU a T = 1 step takes decoding_step_attention_forward; longer inputs do not."""
    import modeling.modeling_attnmt as modeling_attnmt

    calls = []

    def spy(module, query, *args, **kwargs):
        calls.append(query.shape[2])
        return decoding_step_attention_forward(module, query, *args, **kwargs)

    monkeypatch.setattr(modeling_attnmt, "decoding_step_attention_forward", spy)
    model = tiny_model(attn_implementation="sdpa")
    ids = torch.tensor([[5, 6, 7, 2], [8, 9, 2, 0]])
    out = model.generate(input_ids=ids, attention_mask=(ids != 0).long(), max_new_tokens=3, min_new_tokens=3,
                         num_beams=1, do_sample=False)
    eager = tiny_model(attn_implementation="eager")
    expected = eager.generate(input_ids=ids, attention_mask=(ids != 0).long(), max_new_tokens=3, min_new_tokens=3,
                              num_beams=1, do_sample=False)
    assert torch.equal(out, expected)
    # 2 decoder layers x (self + cross) attention x 3 steps, all with one query.
    assert calls == [1] * 12


# --------------------------------------------------------------------------------------------------
# AttnMTAttention against torch.nn.MultiheadAttention
# --------------------------------------------------------------------------------------------------


def _attention_pair(implementation: str, is_causal: bool):
    """AttnMTAttention and an nn.MultiheadAttention holding the same weights."""
    config = tiny_config()
    config._attn_implementation = implementation
    torch.manual_seed(0)
    ours = AttnMTAttention(config, num_heads=4, is_causal=is_causal, layer_idx=0).eval()
    for linear in (ours.q_proj, ours.k_proj, ours.v_proj, ours.out_proj):
        nn.init.normal_(linear.bias, std=0.1)  # non-zero biases, so that they are checked too
    reference = nn.MultiheadAttention(32, 4, dropout=0.0, bias=True, batch_first=True).eval()
    with torch.no_grad():
        reference.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        reference.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        reference.out_proj.weight.copy_(ours.out_proj.weight)
        reference.out_proj.bias.copy_(ours.out_proj.bias)
    return ours, reference


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_self_attention_with_key_padding_equals_multihead_attention(implementation):
    ours, reference = _attention_pair(implementation, is_causal=False)
    torch.manual_seed(1)
    x = torch.randn(3, 6, 32)
    padding = _padding_mask([6, 4, 1], 6)
    mask = build_attention_mask(padding, 6, 6, torch.float32)
    with torch.no_grad():
        out, weights = ours(x, attention_mask=mask)
        expected, expected_w = reference(
            x, x, x, key_padding_mask=padding == 0, need_weights=True, average_attn_weights=False
        )
    assert (out - expected).abs().max() <= TOL
    if implementation == "eager":
        assert (weights - expected_w).abs().max() <= TOL
    else:
        assert weights is None


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_causal_self_attention_with_padding_equals_multihead_attention(implementation):
    ours, reference = _attention_pair(implementation, is_causal=True)
    torch.manual_seed(2)
    x = torch.randn(2, 5, 32)
    padding = _padding_mask([5, 3], 5)
    mask = build_attention_mask(padding, 5, 5, torch.float32, causal=True)
    future = torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1)  # True = may not look
    with torch.no_grad():
        out, _ = ours(x, attention_mask=mask)
        expected, _ = reference(x, x, x, key_padding_mask=padding == 0, attn_mask=future, need_weights=False)
        out_causal_only, _ = ours(x, attention_mask=build_attention_mask(None, 5, 5, torch.float32, causal=True))
        expected_causal_only, _ = reference(x, x, x, attn_mask=future, need_weights=False)
    assert (out - expected).abs().max() <= TOL
    assert (out_causal_only - expected_causal_only).abs().max() <= TOL


def test_sdpa_causal_module_without_mask_uses_causal_kernel():
    # The decoder passes no mask to sdpa when nothing is padded: the module's is_causal flag must hide the future.
    ours, reference = _attention_pair("sdpa", is_causal=True)
    x = torch.randn(2, 5, 32)
    future = torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1)
    with torch.no_grad():
        out, _ = ours(x, attention_mask=None)
        expected, _ = reference(x, x, x, attn_mask=future, need_weights=False)
    assert (out - expected).abs().max() <= TOL


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_cross_attention_equals_multihead_attention(implementation):
    ours, reference = _attention_pair(implementation, is_causal=False)
    torch.manual_seed(3)
    queries = torch.randn(2, 4, 32)  # decoder states, T = 4
    memory = torch.randn(2, 7, 32)  # encoder output, S = 7
    padding = _padding_mask([7, 2], 7)
    with torch.no_grad():
        out, weights = ours(queries, key_value_states=memory, attention_mask=build_attention_mask(padding, 4, 7, torch.float32))
        expected, expected_w = reference(
            queries, memory, memory, key_padding_mask=padding == 0, need_weights=True, average_attn_weights=False
        )
        # Without padding the mask is None: cross-attention must not turn causal (sdpa reads module.is_causal).
        out_full, _ = ours(queries, key_value_states=memory, attention_mask=None)
        expected_full, _ = reference(queries, memory, memory, need_weights=False)
    assert out.shape == (2, 4, 32)
    assert (out - expected).abs().max() <= TOL
    assert (out_full - expected_full).abs().max() <= TOL
    if implementation == "eager":
        assert weights.shape == (2, 4, 4, 7)
        assert (weights - expected_w).abs().max() <= TOL


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_model_with_all_padding_source_gives_no_nan(implementation, tokenizer):
    model = tiny_model(attn_implementation=implementation)
    input_ids = torch.tensor([[5, 6, 7, 2], [0, 0, 0, 0]])
    attention_mask = (input_ids != 0).long()
    decoder_input_ids = torch.tensor([[1, 8, 9], [1, 8, 9]])
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
        alone = model(input_ids=input_ids[:1], decoder_input_ids=decoder_input_ids[:1]).logits
    assert torch.isfinite(logits).all()
    # The empty neighbour does not disturb the real sentence.
    assert (logits[0] - alone[0]).abs().max() <= TOL


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model_with_padding_gives_no_nan(dtype):
    model = tiny_model(attn_implementation="eager").to(dtype)
    input_ids = torch.tensor([[5, 6, 7, 2], [9, 2, 0, 0], [0, 0, 0, 0]])
    with torch.no_grad():
        logits = model(
            input_ids=input_ids,
            attention_mask=(input_ids != 0).long(),
            decoder_input_ids=torch.tensor([[1, 8, 9]] * 3),
            decoder_attention_mask=torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]]),
        ).logits
    assert logits.dtype == dtype and torch.isfinite(logits).all()
