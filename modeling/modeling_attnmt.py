"""AttnMT: the Transformer encoder-decoder of "Attention Is All You Need", written out to be read.

Everything the forward pass needs is in this file; it ships to the Hub as remote code beside
`configuration_attnmt.py` and depends on torch and transformers only.

Reading order: `eager_attention_forward` (the formula), `build_attention_mask` (padding and causality),
`AttnMTLinear` (an `nn.Linear` that picks the faster product order for a decoding step) and `AttnMTAttention`
(projections, heads, KV cache), the encoder and decoder blocks and stacks, and finally
`AttnMTForConditionalGeneration` (loss and generation).

Shape legend used in comments:
    B  batch size              T  target (query) length      S  source (key) length
    D  d_model                 H  number of heads            Dh head size = D / H
    V  vocabulary size         P  cached (past) target positions
"""

import inspect
import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, EncoderDecoderCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput, Seq2SeqModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_attnmt import AttnMTConfig


# ---------------------------------------------------------------------------------------------------
# Attention, the formula
# ---------------------------------------------------------------------------------------------------


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention, softmax(Q·Kᵀ/√d_k + mask)·V, one line per step of the paper.

    Args:
        module: the calling attention module (its `training` flag switches dropout on and off).
        query: (B, H, T, Dh). key, value: (B, H, S, Dh).
        attention_mask: additive float mask broadcastable to (B, H, T, S): 0 where a query may look,
            `finfo(dtype).min` where it may not (see `build_attention_mask`); or a bool mask, True = may look.
        scaling: 1/√Dh. Dot products of Dh-dimensional vectors grow like √Dh; without the scaling the
            softmax saturates and its gradients vanish.
        dropout: probability of dropping an attention weight (training only).
        **kwargs: accepted for signature compatibility with transformers' attention registry and ignored.

    Returns:
        output (B, T, H, Dh), ready for the heads to be merged, and the weights (B, H, T, S).
    """
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # (B, H, T, S)
    # The softmax runs in float32: in half precision exp() overflows and small weights round to zero.
    scores = scores.float()
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(torch.float32).min)
        else:
            scores = scores + attention_mask.float()
    # A masked score is a large *finite* negative number, so a row that is entirely masked (a padding
    # query) becomes a uniform distribution instead of NaN, and its output is simply ignored later.
    weights = F.softmax(scores, dim=-1).to(query.dtype)  # (B, H, T, S), each row sums to 1
    weights = apply_dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value)  # (B, H, T, Dh): each query's weighted sum of the values
    output = output.transpose(1, 2).contiguous()  # (B, T, H, Dh)
    return output, weights


def decoding_step_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`eager_attention_forward` for a decoding step (one query per sequence, T = 1), in fewer operations.

    The same formula, softmax(Q·Kᵀ/√d_k + mask)·V in float32, but each (sequence, head) pair is one row of a
    3-D batched product, so torch's 4-D `matmul` bookkeeping (expand, reshape, un-reshape) disappears and the
    scaling and the mask are applied in place: ~48 fewer operations per greedy step of the Multi30k model,
    though mostly views, so the measured time gain is small (benchmarks/RESULTS.md). Same arguments and
    returns as `eager_attention_forward` (tested equal to it).
    """
    B, H, T, Dh = query.shape
    S = key.shape[-2]
    # (B, H, L, Dh) -> (B·H, L, Dh): views, also for a cache buffer's slice (its B and H strides nest).
    scores = torch.bmm(query.reshape(B * H, T, Dh), key.reshape(B * H, S, Dh).transpose(1, 2))  # (B·H, T, S)
    scores = scores.view(B, H, T, S).float().mul_(scaling)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores.masked_fill_(~attention_mask, torch.finfo(torch.float32).min)
        else:
            scores.add_(attention_mask)
    weights = torch.softmax(scores, dim=-1).to(query.dtype)  # (B, H, T, S)
    weights = apply_dropout(weights, p=dropout, training=module.training)
    output = torch.bmm(weights.view(B * H, T, S), value.reshape(B * H, S, Dh))  # (B·H, T, Dh)
    output = output.view(B, H, T, Dh).transpose(1, 2).contiguous()  # (B, T, H, Dh); no copy when T = 1
    return output, weights


# ---------------------------------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------------------------------


def apply_dropout(hidden_states: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout (Srivastava et al., 2014): in training, each element is zeroed with probability p and the others are
    scaled by 1 / (1 - p), so that the expected value is unchanged; outside training, the identity (not even a call).

    On a GPU this is `F.dropout`. On a CPU the mask comes from `cpu_dropout_keep_mask`, four elements per 64-bit
    draw of torch's generator: `F.dropout` draws its mask with `bernoulli_`, one slow draw per element, which took
    16% of a training step of the Multi30k preset on a 2-core CPU (benchmarks/RESULTS.md).
    """
    if not training or p == 0.0:
        return hidden_states
    if hidden_states.device.type != "cpu":
        return F.dropout(hidden_states, p=p, training=True)
    keep, scale = cpu_dropout_keep_mask(hidden_states.shape, p)
    return hidden_states * keep * scale  # autograd keeps the bool mask for the backward, as F.dropout does


def cpu_dropout_keep_mask(shape: torch.Size, p: float) -> tuple[torch.Tensor, float]:
    """A dropout mask drawn 16 bits per element: True (keep) with probability 1 - p', where p' is p rounded to a
    multiple of 2⁻¹⁶ (|p' - p| ≤ 2⁻¹⁷), and the scale 1 / (1 - p') that keeps the expected value exact.

    Each 64-bit draw of the default CPU generator (seeded by `torch.manual_seed`, saved in checkpoints,
    replayed by gradient checkpointing) holds four independent uniform 16-bit integers.
    """
    dropped = round(p * 65536)  # how many of the 65,536 16-bit values mean "drop"
    count = math.prod(shape)
    draws = torch.empty((count + 3) // 4, dtype=torch.int64).random_(torch.iinfo(torch.int64).min, None)  # all 64 bits
    bits = draws.view(torch.int16)[:count]  # uniform over [-32768, 32767]
    keep = (bits >= dropped - 32768).view(shape)
    return keep, 65536 / (65536 - dropped)


def build_attention_mask(
    padding_mask: torch.Tensor | None,
    query_length: int,
    key_length: int,
    dtype: torch.dtype,
    causal: bool = False,
    query_offset: int | torch.Tensor | None = None,
    device: torch.device | None = None,
) -> torch.Tensor | None:
    """The one additive mask that attention adds to its scores: padding and causality together.

    Args:
        padding_mask: (B, S') with 1 for real tokens and 0 for padding (the `attention_mask` convention of
            the tokenizers), or None when nothing is padded. S' < S only with `query_offset` (below): the
            positions after the first S' are then hidden by causality anyway.
        query_length: T. key_length: S; with a KV cache S = P + T and the T queries are the last positions.
        dtype: dtype of the scores; masked entries get `torch.finfo(dtype).min`.
        causal: forbid each query position to see later key positions (decoder self-attention).
        query_offset: the position of the first query when it is not S - T: a static cache holds S
            positions of which only the first P + T are written, and the queries are at P … P + T - 1 (P may
            be a 0-d tensor). Causality then also hides the positions not written yet.
        device: where to build the mask when neither `padding_mask` nor `query_offset` is a tensor to follow.

    Returns:
        A float tensor broadcastable to (B, 1, T, S) holding 0 where attention is allowed and
        `finfo(dtype).min` where it is not, or None when nothing needs masking.
    """
    allowed = None
    if padding_mask is not None and not bool(padding_mask.all()):
        if padding_mask.shape[-1] < key_length and query_offset is not None:
            padding_mask = F.pad(padding_mask, (0, key_length - padding_mask.shape[-1]), value=1)
        allowed = padding_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
    if causal and (query_length > 1 or query_offset is not None):
        if padding_mask is not None:
            device = padding_mask.device
        elif isinstance(query_offset, torch.Tensor):
            device = query_offset.device
        start = key_length - query_length if query_offset is None else query_offset
        query_positions = (torch.arange(query_length, device=device) + start)[:, None]  # (T, 1)
        key_positions = torch.arange(key_length, device=device)[None, :]  # (1, S)
        causal_allowed = (key_positions <= query_positions)[None, None]  # (1, 1, T, S)
        allowed = causal_allowed if allowed is None else allowed & causal_allowed
    if allowed is None:
        return None
    # A single mask filled once with finfo.min (never two masks added together, which could overflow to
    # -inf and make a fully masked row NaN).
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


class AttnMTLinear(nn.Linear):
    """`nn.Linear`, y = x·Wᵀ + b, that on a CPU multiplies a few rows by a large weight as the transpose of W·xᵀ.

    Both orders give the same product (to float rounding), but on a CPU MKL runs one of them much faster for the
    shapes of a decoding step, which multiplies a handful of rows (batch × beams) by every weight of the decoder.
    Measured for 32 rows on a 2-core AMD EPYC (torch 2.13.0, benchmarks/RESULTS.md): the 8,000 × 128 LM head
    1.0–2.3 ms as x·Wᵀ and 0.6–0.75 ms as W·xᵀ, a 2048 × 512 feed-forward weight 1.2–1.6 → 0.8–1.0 ms including
    the copy back to rows; a 128 × 128 weight, which stays in the caches, is faster the usual way (25–39 vs
    38–63 µs). (W·xᵀ writes one row per output feature and reads the weight once in its stored order, a likely
    reason; not verified inside MKL.) So the weight-first order is used for at most `weight_first_max_rows` rows and
    a weight of at least `weight_first_min_weight` elements (1 MiB in float32), on a CPU; everything else, training
    batches included, is the plain `F.linear`. The thresholds were measured on 2-core AMD EPYC and Intel Xeon VMs with
    MKL (the same crossover on both); on another CPU or BLAS, `python benchmarks/weight_first_linear.py` tells whether
    they still pay.

    The result is made contiguous again, unless `transposed_output` (the LM head, whose logits generate() copies
    for its scores anyway): then it is the (…, out_features) view of the W·xᵀ product, column-major. It is an
    `nn.Linear` with the same parameters, so module hooks, weight tying and `state_dict` work as before; code that
    replaces `nn.Linear` layers (adapters, quantisation) simply replaces it.
    """

    weight_first_max_rows = 64
    weight_first_min_weight = 512 * 512

    def __init__(self, in_features: int, out_features: int, bias: bool = True, transposed_output: bool = False):
        super().__init__(in_features, out_features, bias=bias)
        self.transposed_output = transposed_output

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        rows = hidden_states.reshape(-1, hidden_states.shape[-1])  # (N, in)
        if (
            hidden_states.device.type != "cpu"
            or rows.shape[0] > self.weight_first_max_rows
            or self.weight.numel() < self.weight_first_min_weight
        ):
            return super().forward(hidden_states)
        if self.bias is None:
            product = torch.mm(self.weight, rows.t())  # (out, N) = W·xᵀ
        else:
            product = torch.addmm(self.bias.unsqueeze(1), self.weight, rows.t())
        output = product.t()  # (N, out), a view
        if not self.transposed_output:
            output = output.contiguous()
        return output.unflatten(0, hidden_states.shape[:-1])


class AttnMTAttention(nn.Module):
    """Multi-head attention: one module for encoder self-attention, masked decoder self-attention and
    decoder cross-attention.

    Queries come from `hidden_states`; keys and values come from `hidden_states` too (self-attention) or
    from `key_value_states`, the encoder output (cross-attention). Each of the H heads attends in its own
    Dh-dimensional subspace, and the heads' outputs are concatenated and mixed by `out_proj`.
    """

    def __init__(self, config: AttnMTConfig, num_heads: int, is_causal: bool, layer_idx: int | None = None):
        super().__init__()
        self.config = config
        self.embed_dim = config.d_model
        self.num_heads = num_heads
        self.head_dim = config.d_model // num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.attention_dropout
        # Read by the sdpa back-end: a causal module with no explicit mask uses sdpa's own causal kernel.
        # Encoder and cross-attention must say False, or sdpa would apply a causal mask to them.
        self.is_causal = is_causal
        self.layer_idx = layer_idx

        self.q_proj = AttnMTLinear(self.embed_dim, self.embed_dim)
        self.k_proj = AttnMTLinear(self.embed_dim, self.embed_dim)
        self.v_proj = AttnMTLinear(self.embed_dim, self.embed_dim)
        self.out_proj = AttnMTLinear(self.embed_dim, self.embed_dim)

    def _split_heads(self, states: torch.Tensor) -> torch.Tensor:
        B, L, _ = states.shape
        return states.view(B, L, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, Dh)

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        Args:
            hidden_states: (B, T, D), the queries' source.
            key_value_states: (B, S, D) encoder output for cross-attention; None for self-attention.
            attention_mask: additive mask from `build_attention_mask`, broadcastable to (B, 1, T, S).
            cache: the generation cache. Self-attention appends this step's keys/values to it;
                cross-attention projects the encoder output once and reuses it at every later step.

        Returns:
            output (B, T, D) and attention weights (B, H, T, S) under the eager implementation (else None).
        """
        B, T, _ = hidden_states.shape
        is_cross_attention = key_value_states is not None
        query = self._split_heads(self.q_proj(hidden_states))  # (B, H, T, Dh)

        if is_cross_attention and cache is not None and cache.is_updated.get(self.layer_idx):
            # The encoder output does not change while decoding: reuse its keys/values from the first step.
            cached = cache.cross_attention_cache.layers[self.layer_idx]
            key, value = cached.keys, cached.values  # (B, H, S, Dh)
        else:
            source = key_value_states if is_cross_attention else hidden_states
            key = self._split_heads(self.k_proj(source))  # (B, H, S, Dh)
            value = self._split_heads(self.v_proj(source))  # (B, H, S, Dh)
            if cache is not None:
                if is_cross_attention:
                    key, value = cache.cross_attention_cache.update(key, value, self.layer_idx)
                    cache.is_updated[self.layer_idx] = True
                else:
                    # Append this step's keys/values; returns all of them: (B, H, P + T, Dh).
                    key, value = cache.self_attention_cache.update(key, value, self.layer_idx)

        # "eager" is the formula above; any other name ("sdpa") is looked up in transformers' registry.
        implementation = self.config._attn_implementation
        if implementation == "sdpa" and T == 1 and query.device.type == "cpu":
            # A decoding step: one query per sequence. On a CPU the fused kernel then has nothing to fuse, and
            # two small batched matmuls are faster than its per-call set-up (benchmarks/RESULTS.md).
            attention_interface: Callable = decoding_step_attention_forward
        else:
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        output, weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
        )  # output: (B, T, H, Dh)
        output = output.reshape(B, T, self.embed_dim)  # merge heads: (B, T, D)
        return self.out_proj(output), weights


class AttnMTDecodingCacheLayer(DynamicLayer):
    """The decoder self-attention cache of one layer during `generate()`: transformers' `DynamicLayer`
    (keys/values of shape (N, H, P, Dh), grown by one position per step) without its two copies per step.

    - Appending: `DynamicLayer` concatenates, so every step copies the whole cache into a new tensor. Here the
      cache lives in a buffer with spare positions; a step writes its keys/values into the next free slot and
      `keys`/`values` are views of the filled part. The buffer doubles when full (amortised O(1) per step).
    - Beam search keeps, after every step, the cache rows of the surviving hypotheses (`reorder_cache`): a
      gather into yet another tensor. Here the gather is deferred to the next `update` and writes straight
      into the tensor that also receives the new position: one copy per step instead of two.

    Keys, values and therefore generations are exactly those of `DynamicLayer` (tested).
    """

    def __init__(self):
        super().__init__()
        self._pending_beam_idx: torch.LongTensor | None = None
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    # Anything that reads `keys`/`values` from outside (crop, offload, a user inspecting the cache) sees them
    # in beam order: a pending reorder is applied first.
    @property
    def keys(self) -> torch.Tensor | None:
        self._apply_pending_reorder()
        return self._keys

    @keys.setter
    def keys(self, value: torch.Tensor | None):
        self._keys = value

    @property
    def values(self) -> torch.Tensor | None:
        self._apply_pending_reorder()
        return self._values

    @values.setter
    def values(self, value: torch.Tensor | None):
        self._values = value

    def get_seq_length(self) -> int:
        # A reorder does not change the length: no need to apply it to answer.
        if not self.is_initialized or self._keys.numel() == 0:
            return 0
        return self._keys.shape[-2]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.get_seq_length() == 0:
            return
        beam_idx = beam_idx.to(self._keys.device)
        # Two reorders in a row compose: row i of the result is row beam_idx[i] of the first reorder's result.
        pending = self._pending_beam_idx
        self._pending_beam_idx = beam_idx.clone() if pending is None else pending.index_select(0, beam_idx)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        past_length, new_length = self.get_seq_length(), key_states.shape[-2]
        if self._pending_beam_idx is not None:
            # Beam search: gather the surviving rows into a fresh buffer, then append.
            beam_idx, self._pending_beam_idx = self._pending_beam_idx, None
            self._key_buffer = self._gathered_buffer(self._keys, beam_idx, past_length + new_length)
            self._value_buffer = self._gathered_buffer(self._values, beam_idx, past_length + new_length)
        elif not self._owns_buffers(past_length + new_length, key_states.shape[0]):
            # First step, a full buffer, or keys replaced from outside (crop, batch selection): start a
            # buffer with room to spare and copy what is cached into it.
            self._key_buffer = self._grown_buffer(self._keys, key_states, past_length + new_length)
            self._value_buffer = self._grown_buffer(self._values, value_states, past_length + new_length)
        self._key_buffer[:, :, past_length : past_length + new_length] = key_states
        self._value_buffer[:, :, past_length : past_length + new_length] = value_states
        self._keys = self._key_buffer[:, :, : past_length + new_length]  # (N, H, P + T, Dh), a view
        self._values = self._value_buffer[:, :, : past_length + new_length]
        return self._keys, self._values

    def _owns_buffers(self, length: int, batch_size: int) -> bool:
        """Are `keys`/`values` still the filled part of our buffers, with room for `length` positions?"""
        buffer = self._key_buffer
        return (
            buffer is not None
            and buffer.shape[0] == batch_size
            and buffer.shape[-2] >= length
            and self._keys.data_ptr() == buffer.data_ptr()
            and self._keys.stride() == buffer.stride()
            and self._values.data_ptr() == self._value_buffer.data_ptr()
        )

    @staticmethod
    def _grown_buffer(cached: torch.Tensor, new: torch.Tensor, length: int) -> torch.Tensor:
        """An empty (N, H, 2 × length, Dh) buffer holding `cached` in its first positions."""
        N, H, _, Dh = new.shape
        buffer = new.new_empty(N, H, max(2 * length, 16), Dh)
        if cached.numel() > 0:
            buffer[:, :, : cached.shape[-2]] = cached
        return buffer

    @staticmethod
    def _gathered_buffer(cached: torch.Tensor, beam_idx: torch.LongTensor, length: int) -> torch.Tensor:
        """An exact-size (N, H, length, Dh) buffer whose first positions are `cached[beam_idx]`."""
        past_length = cached.shape[-2]
        buffer = cached.new_empty(beam_idx.shape[0], cached.shape[1], length, cached.shape[-1])
        torch.index_select(cached, 0, beam_idx, out=buffer[:, :, :past_length])
        return buffer

    def _apply_pending_reorder(self) -> None:
        beam_idx = getattr(self, "_pending_beam_idx", None)
        if beam_idx is not None:
            self._pending_beam_idx = None
            self._keys = self._keys.index_select(0, beam_idx)
            self._values = self._values.index_select(0, beam_idx)

    def reset(self) -> None:
        self._pending_beam_idx = None
        self._key_buffer = self._value_buffer = None
        super().reset()


# ---------------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------------


class AttnMTSinusoidalPositionalEmbedding(nn.Module):
    """Fixed positions: PE(pos, 2i) = sin(pos / 10000^(2i/D)), PE(pos, 2i+1) = cos(pos / 10000^(2i/D)).

    The table is a non-persistent buffer: it is not saved, and `_init_weights` rebuilds it after loading.
    """

    def __init__(self, num_positions: int, embedding_dim: int):
        super().__init__()
        self.num_positions = num_positions
        self.embedding_dim = embedding_dim
        self.register_buffer("weight", self.create_weight(num_positions, embedding_dim), persistent=False)

    @staticmethod
    def create_weight(num_positions: int, embedding_dim: int) -> torch.Tensor:
        position = torch.arange(num_positions, dtype=torch.float32)[:, None]  # (N, 1)
        inverse_frequency = torch.exp(
            torch.arange(0, embedding_dim, 2, dtype=torch.float32) * (-math.log(10000.0) / embedding_dim)
        )  # (ceil(D/2),)
        table = torch.zeros(num_positions, embedding_dim)
        table[:, 0::2] = torch.sin(position * inverse_frequency)
        table[:, 1::2] = torch.cos(position * inverse_frequency[: embedding_dim // 2])
        return table  # (N, D)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return self.weight[position_ids]


def _position_embedding(config: AttnMTConfig) -> nn.Module:
    if config.position_embedding_type == "learned":
        return nn.Embedding(config.max_position_embeddings, config.d_model)
    return AttnMTSinusoidalPositionalEmbedding(config.max_position_embeddings, config.d_model)


def _check_length(length: int, max_positions: int, side: str) -> None:
    if length > max_positions:
        raise ValueError(
            f"The {side} sequence has {length} tokens but the model's position table holds "
            f"max_position_embeddings={max_positions}. Truncate the input (tokenizer `max_length=`, "
            f"generate `max_new_tokens=`) or build the model with a larger max_position_embeddings."
        )


def _positions(start: int, length: int, max_positions: int, device: torch.device, side: str) -> torch.Tensor:
    _check_length(start + length, max_positions, side)
    return torch.arange(start, start + length, device=device)


def _check_token_ids(ids: torch.Tensor, vocab_size: int, name: str) -> None:
    """A clear error for ids outside the vocabulary (torch's own is an IndexError from inside the embedding)."""
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(
            f"{name} must lie in [0, {vocab_size}) (the model's vocabulary); got {int(ids.min())}..{int(ids.max())}. "
            "Encode the text with the model's own tokenizer."
        )


# ---------------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------------


class AttnMTFeedForward(nn.Module):
    """Position-wise feed-forward: fc2(dropout(act(fc1(x))))."""

    def __init__(self, config: AttnMTConfig, ffn_dim: int):
        super().__init__()
        self.fc1 = AttnMTLinear(config.d_model, ffn_dim)
        self.fc2 = AttnMTLinear(ffn_dim, config.d_model)
        self.activation = ACT2FN[config.activation_function]
        self.activation_dropout = config.activation_dropout

    def forward(self, hidden_states: torch.Tensor, token_index: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            hidden_states: (B, L, D).
            token_index: flat indices into the B·L positions whose output can matter (see
                `positions_that_matter`), or None for all. The block acts on each position alone, so it runs on
                those rows only and the others get 0: in a training batch a quarter of the positions is padding.

        Returns:
            (B, L, D).
        """
        if token_index is None:
            return self._position_wise(hidden_states)
        rows = hidden_states.reshape(-1, hidden_states.shape[-1])  # (B·L, D)
        output = rows.new_zeros(rows.shape).index_copy(0, token_index, self._position_wise(rows.index_select(0, token_index)))
        return output.view(hidden_states.shape)

    def _position_wise(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.activation(self.fc1(hidden_states))
        hidden_states = apply_dropout(hidden_states, p=self.activation_dropout, training=self.training)
        return self.fc2(hidden_states)


def positions_that_matter(mask: torch.Tensor | None, causal: bool) -> torch.Tensor | None:
    """Flat indices of the positions whose hidden states can reach a result, for `AttnMTFeedForward`.

    Args:
        mask: (B, L), True (or 1) for the positions that are used: real source tokens (encoder), or labelled
            target positions (decoder, training loss).
        causal: decoder. A position's hidden state also reaches every later position through causal
            self-attention, so everything up to the last used position of a row is kept (exact for padding
            on either side). In the encoder, a padded position is masked out of every attention, so only the
            real tokens are kept.

    Returns:
        A 1-D index tensor, or None when every position is kept (nothing to skip).
    """
    if mask is None:
        return None
    keep = mask.bool()
    if causal:
        keep = keep.flip(1).cummax(dim=1).values.flip(1)  # True up to the last used position of each row
    if bool(keep.all()):
        return None
    return keep.flatten().nonzero().squeeze(1)


class AttnMTEncoderLayer(GradientCheckpointingLayer):
    """Self-attention, then feed-forward; each wrapped as `x + dropout(f(LN(x)))` (pre-norm) or
    `LN(x + dropout(f(x)))` (post-norm, the paper's placement)."""

    def __init__(self, config: AttnMTConfig):
        super().__init__()
        self.normalize_before = config.normalize_before
        self.dropout = config.dropout
        self.self_attn = AttnMTAttention(config, config.encoder_attention_heads, is_causal=False)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.ffn = AttnMTFeedForward(config, config.encoder_ffn_dim)
        self.final_layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, token_index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        residual = hidden_states
        if self.normalize_before:
            hidden_states = self.self_attn_layer_norm(hidden_states)
        hidden_states, attention_weights = self.self_attn(hidden_states, attention_mask=attention_mask)
        hidden_states = residual + apply_dropout(hidden_states, p=self.dropout, training=self.training)
        if not self.normalize_before:
            hidden_states = self.self_attn_layer_norm(hidden_states)

        residual = hidden_states
        if self.normalize_before:
            hidden_states = self.final_layer_norm(hidden_states)
        hidden_states = self.ffn(hidden_states, token_index)
        hidden_states = residual + apply_dropout(hidden_states, p=self.dropout, training=self.training)
        if not self.normalize_before:
            hidden_states = self.final_layer_norm(hidden_states)
        return hidden_states, attention_weights


class AttnMTDecoderLayer(GradientCheckpointingLayer):
    """Masked self-attention, cross-attention over the encoder output, then feed-forward."""

    def __init__(self, config: AttnMTConfig, layer_idx: int):
        super().__init__()
        self.normalize_before = config.normalize_before
        self.dropout = config.dropout
        heads = config.decoder_attention_heads
        self.self_attn = AttnMTAttention(config, heads, is_causal=True, layer_idx=layer_idx)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.encoder_attn = AttnMTAttention(config, heads, is_causal=False, layer_idx=layer_idx)
        self.encoder_attn_layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.ffn = AttnMTFeedForward(config, config.decoder_ffn_dim)
        self.final_layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)

    def _sublayer(self, norm: nn.LayerNorm, sublayer: Callable, hidden_states: torch.Tensor):
        residual = hidden_states
        if self.normalize_before:
            hidden_states = norm(hidden_states)
        hidden_states, weights = sublayer(hidden_states)
        hidden_states = residual + apply_dropout(hidden_states, p=self.dropout, training=self.training)
        if not self.normalize_before:
            hidden_states = norm(hidden_states)
        return hidden_states, weights

    def forward(
        self,
        hidden_states: torch.Tensor,
        self_attention_mask: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None,
        cache: EncoderDecoderCache | None = None,
        token_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        hidden_states, self_weights = self._sublayer(
            self.self_attn_layer_norm,
            lambda x: self.self_attn(x, attention_mask=self_attention_mask, cache=cache),
            hidden_states,
        )
        hidden_states, cross_weights = self._sublayer(
            self.encoder_attn_layer_norm,
            lambda x: self.encoder_attn(
                x,
                key_value_states=encoder_hidden_states,
                attention_mask=encoder_attention_mask,
                cache=cache,
            ),
            hidden_states,
        )
        hidden_states, _ = self._sublayer(self.final_layer_norm, lambda x: (self.ffn(x, token_index), None), hidden_states)
        return hidden_states, self_weights, cross_weights


# ---------------------------------------------------------------------------------------------------
# Stacks
# ---------------------------------------------------------------------------------------------------


class AttnMTPreTrainedModel(PreTrainedModel):
    config_class = AttnMTConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["AttnMTEncoderLayer", "AttnMTDecoderLayer"]
    _supports_sdpa = True
    _can_compile_fullgraph = False

    def _init_weights(self, module: nn.Module):
        """Xavier-uniform projections and N(0, D^-1/2) embeddings (so that after the √D scaling a token
        embedding has unit variance), as fairseq and tensor2tensor initialise the Transformer."""
        if isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=self.config.d_model**-0.5)
            # Sliced tensors lose the "already loaded" flag, so check it before zeroing the padding row.
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, AttnMTSinusoidalPositionalEmbedding):
            # Non-persistent buffers are not in the checkpoint: rebuild the table after every load.
            init.copy_(module.weight, module.create_weight(module.num_positions, module.embedding_dim))


class AttnMTEncoder(nn.Module):
    """Token embeddings × √D + positions, dropout, `encoder_layers` blocks, and a final LayerNorm (pre-norm)."""

    def __init__(self, config: AttnMTConfig):
        super().__init__()
        self.config = config
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model, config.pad_token_id)
        self.embed_positions = _position_embedding(config)
        self.layers = nn.ModuleList([AttnMTEncoderLayer(config) for _ in range(config.encoder_layers)])
        self.layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps) if config.normalize_before else None

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        return_dict: bool = True,
    ) -> BaseModelOutput | tuple:
        """
        Args:
            input_ids: (B, S) source token ids.
            attention_mask: (B, S), 1 for tokens and 0 for padding.
            inputs_embeds: (B, S, D) instead of `input_ids` (already scaled, positions not yet added).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds to the encoder.")
        if inputs_embeds is None:
            _check_token_ids(input_ids, self.config.vocab_size, "input_ids")
            inputs_embeds = self.embed_tokens(input_ids) * self.embed_scale  # (B, S, D)
        B, S, _ = inputs_embeds.shape
        positions = _positions(0, S, self.config.max_position_embeddings, inputs_embeds.device, "source")
        hidden_states = inputs_embeds + self.embed_positions(positions).to(inputs_embeds.dtype)
        hidden_states = apply_dropout(hidden_states, p=self.config.dropout, training=self.training)

        mask = build_attention_mask(attention_mask, S, S, hidden_states.dtype)  # (B, 1, 1, S) or None
        # Training: the feed-forward blocks skip padded positions (masked out of every attention, so their
        # values reach nothing; outside training the encoder computes every position, as the formula does).
        token_index = positions_that_matter(attention_mask, causal=False) if self.training else None
        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states, weights = layer(hidden_states, mask, token_index)
            if output_attentions:
                all_attentions += (weights,)
        if self.layer_norm is not None:
            hidden_states = self.layer_norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        if not return_dict:
            return tuple(v for v in (hidden_states, all_hidden_states, all_attentions) if v is not None)
        return BaseModelOutput(
            last_hidden_state=hidden_states, hidden_states=all_hidden_states, attentions=all_attentions
        )


class AttnMTDecoder(nn.Module):
    """Target embeddings × √D + positions, `decoder_layers` blocks, and a final LayerNorm (pre-norm)."""

    def __init__(self, config: AttnMTConfig):
        super().__init__()
        self.config = config
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model, config.pad_token_id)
        self.embed_positions = _position_embedding(config)
        self.layers = nn.ModuleList([AttnMTDecoderLayer(config, i) for i in range(config.decoder_layers)])
        self.layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps) if config.normalize_before else None

    def forward(
        self,
        input_ids: torch.LongTensor | None,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        labels_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple | None, tuple | None, tuple | None]:
        """
        Args:
            input_ids: (B, T) decoder input ids (only the new ones when a cache is given).
            encoder_hidden_states: (B, S, D).
            attention_mask: (B, P + T) decoder padding mask, or None (right padding never needs one:
                causality already hides later positions).
            encoder_attention_mask: (B, S) source padding mask.
            cache: cache of earlier steps; P = its length.
            labels_mask: (B, T), True at the positions whose output the training loss scores. In training mode
                the feed-forward blocks skip the positions after the last one of each row (right padding).

        Returns:
            hidden states (B, T, D), all hidden states, self-attention weights, cross-attention weights.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of decoder_input_ids or decoder_inputs_embeds.")
        if inputs_embeds is None:
            if cache is None:  # not while decoding: generate() feeds back the model's own predictions
                _check_token_ids(input_ids, self.config.vocab_size, "decoder_input_ids")
            inputs_embeds = self.embed_tokens(input_ids) * self.embed_scale  # (B, T, D)
        B, T, _ = inputs_embeds.shape
        S = encoder_hidden_states.shape[1]
        past_length = cache.get_seq_length() if cache is not None else 0  # P
        # A static cache (generate(cache_implementation="static"), the fixed shapes torch.compile wants) hands
        # self-attention its whole preallocated buffer of S positions, the P + T written ones first; P is then a
        # 0-d tensor, and the mask must hide the positions not written yet.
        static_cache = cache is not None and cache.is_compileable
        if static_cache:
            key_length = cache.self_attention_cache.get_mask_sizes(T, 0)[0]  # S, the buffer's length
            _check_length(key_length, self.config.max_position_embeddings, "target")
            positions = torch.arange(T, device=inputs_embeds.device) + past_length
        else:
            key_length = past_length + T
            positions = _positions(past_length, T, self.config.max_position_embeddings, inputs_embeds.device, "target")
        hidden_states = inputs_embeds + self.embed_positions(positions).to(inputs_embeds.dtype)
        hidden_states = apply_dropout(hidden_states, p=self.config.dropout, training=self.training)

        dtype = hidden_states.dtype
        fresh = not static_cache and past_length == 0  # nothing cached: the queries are the whole sequence
        if self.config._attn_implementation == "sdpa" and attention_mask is None and fresh:
            # No mask: sdpa sees `is_causal` on the module and runs its fused causal kernel.
            self_attention_mask = None
        else:
            self_attention_mask = build_attention_mask(
                attention_mask,
                T,
                key_length,
                dtype,
                causal=True,
                query_offset=past_length if static_cache else None,
                device=inputs_embeds.device,
            )
        cross_attention_mask = self._cross_attention_mask(encoder_attention_mask, S, dtype, cache)  # (B, 1, 1, S) or None
        token_index = positions_that_matter(labels_mask, causal=True) if self.training else None

        all_hidden_states = () if output_hidden_states else None
        all_self_attentions = () if output_attentions else None
        all_cross_attentions = () if output_attentions else None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states, self_weights, cross_weights = layer(
                hidden_states,
                self_attention_mask,
                encoder_hidden_states,
                cross_attention_mask,
                cache=cache,
                token_index=token_index,
            )
            if output_attentions:
                all_self_attentions += (self_weights,)
                all_cross_attentions += (cross_weights,)
        if self.layer_norm is not None:
            hidden_states = self.layer_norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        return hidden_states, all_hidden_states, all_self_attentions, all_cross_attentions

    @staticmethod
    def _cross_attention_mask(
        encoder_attention_mask: torch.Tensor | None, S: int, dtype: torch.dtype, cache: EncoderDecoderCache | None
    ) -> torch.Tensor | None:
        """The additive (B, 1, 1, S) mask of the source padding for cross-attention, or None.

        While generate() decodes, every step passes the same source mask (the same tensor object), so the mask is
        built at the first step, kept on the cache and reused: rebuilding it costs a reduction, a host sync and two
        fills per step, ~2% of a greedy step of the Multi30k preset. Another mask tensor is built anew.
        """
        saved = getattr(cache, "_attnmt_cross_attention_mask", None)
        if saved is not None and saved[0] is encoder_attention_mask and saved[1] == dtype:
            return saved[2]
        mask = build_attention_mask(encoder_attention_mask, 1, S, dtype)
        if cache is not None:
            cache._attnmt_cross_attention_mask = (encoder_attention_mask, dtype, mask)
        return mask


# ---------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------


class AttnMTModel(AttnMTPreTrainedModel):
    """The bare encoder-decoder, returning decoder hidden states (no output projection)."""

    def __init__(self, config: AttnMTConfig):
        super().__init__(config)
        # One joint vocabulary: source embeddings, target embeddings (and, in the LM head, the output
        # projection) are the same matrix when `tie_word_embeddings` is True.
        self.shared = nn.Embedding(config.vocab_size, config.d_model, config.pad_token_id)
        self._tied_weights_keys = {
            "encoder.embed_tokens.weight": "shared.weight",
            "decoder.embed_tokens.weight": "shared.weight",
        }
        self.encoder = AttnMTEncoder(config)
        self.decoder = AttnMTDecoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared

    def set_input_embeddings(self, value: nn.Embedding):
        self.shared = value
        if self.config.tie_word_embeddings:
            self.encoder.embed_tokens = value
            self.decoder.embed_tokens = value

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        labels_mask: torch.Tensor | None = None,
    ) -> Seq2SeqModelOutput | tuple:
        """
        Args:
            labels_mask: (B, T), True at the target positions a training loss scores (given by
                `AttnMTForConditionalGeneration`); lets the decoder skip the padding after them in training mode.
        """
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if output_attentions and self.config._attn_implementation != "eager":
            raise ValueError(
                "output_attentions=True needs the eager attention (sdpa never materialises the weights): load "
                "with attn_implementation='eager' or call model.set_attn_implementation('eager')."
            )

        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                inputs_embeds=inputs_embeds,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                return_dict=True,
            )
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(
                last_hidden_state=encoder_outputs[0],
                hidden_states=encoder_outputs[1] if len(encoder_outputs) > 1 else None,
                attentions=encoder_outputs[2] if len(encoder_outputs) > 2 else None,
            )

        if cache is not None and not isinstance(cache, EncoderDecoderCache):
            raise TypeError(
                f"cache must be a transformers EncoderDecoderCache, got {type(cache).__name__}. "
                "Tuple caches were removed in transformers 5; let generate() build the cache, or pass "
                "EncoderDecoderCache(DynamicCache(), DynamicCache())."
            )
        if use_cache and cache is None:
            cache = EncoderDecoderCache(DynamicCache(config=self.config), DynamicCache(config=self.config))
        if not use_cache:
            cache = None

        decoder_hidden, decoder_states, decoder_self_attn, cross_attn = self.decoder(
            input_ids=decoder_input_ids,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            attention_mask=decoder_attention_mask,
            encoder_attention_mask=attention_mask,
            inputs_embeds=decoder_inputs_embeds,
            cache=cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            labels_mask=labels_mask,
        )
        output = Seq2SeqModelOutput(
            last_hidden_state=decoder_hidden,
            cache=cache,
            decoder_hidden_states=decoder_states,
            decoder_attentions=decoder_self_attn,
            cross_attentions=cross_attn,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )
        return output if return_dict else output.to_tuple()


class _CrossEntropyWithGradient(torch.autograd.Function):
    """Mean label-smoothed cross-entropy of (N, V) logits whose gradient is computed in the forward pass.

    With q the smoothed target distribution ((1 - ε) on the target token plus ε/V everywhere), the loss is
    mean_n Σ_v -q_v·log softmax(z_n)_v and its gradient is ∂loss/∂z_n = (softmax(z_n) - q) / N. `F.cross_entropy`
    gets there through log_softmax, a zero-filled (N, V) gradient for the picked entries, the smoothing term's
    gradient and log_softmax's backward: several more passes over an (N, V) tensor, which at a small d_model
    costs as much as the output projection itself. Here the log-probabilities are turned into that gradient
    in place. Value and gradient equal `F.cross_entropy(logits, target, label_smoothing=ε)` (tested).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> torch.Tensor:
        N, V = logits.shape
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # (N, V), float32 even under autocast
        loss = -(1.0 - smoothing) * log_probs.gather(1, target[:, None]).sum() / N
        if smoothing > 0:
            loss = loss - smoothing * log_probs.sum() / (N * V)
        grad = log_probs.exp_()  # softmax(z), in place
        if smoothing > 0:
            grad.sub_(smoothing / V)
        grad.scatter_add_(1, target[:, None], grad.new_full((N, 1), smoothing - 1.0))
        grad.div_(N)  # (softmax - q) / N
        ctx.save_for_backward(grad)
        ctx.logits_dtype = logits.dtype
        ctx.used = False
        return loss

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        if ctx.used:
            raise RuntimeError("The training loss's gradient is consumed by the first backward; call the model "
                               "again instead of backward(retain_graph=True) twice, or use model.eval().")
        ctx.used = True
        (grad,) = ctx.saved_tensors
        return grad.mul_(grad_output).to(ctx.logits_dtype), None, None


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean (label-smoothed) cross-entropy of (N, V) logits and (N,) target ids: `F.cross_entropy`, with the
    fewer-passes gradient of `_CrossEntropyWithGradient` when a gradient is needed."""
    if target.numel() == 0:
        raise ValueError("No labelled target position in the batch: every label is -100.")
    if int(target.min()) < 0 or int(target.max()) >= logits.shape[-1]:
        raise ValueError(
            f"Label ids must lie in [0, {logits.shape[-1]}) (the vocabulary) or be -100 (ignored); got "
            f"{int(target.min())}..{int(target.max())}. Tokenize the targets with the model's tokenizer."
        )
    if torch.is_grad_enabled() and logits.requires_grad:
        return _CrossEntropyWithGradient.apply(logits, target, label_smoothing)
    return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Teacher forcing: the decoder reads [start, y1, ..., y_{T-1}] and is trained to predict [y1, ..., yT].
    Ignored label positions (-100) become padding."""
    decoder_input_ids = labels.new_full(labels.shape, pad_token_id)
    decoder_input_ids[:, 1:] = labels[:, :-1]
    decoder_input_ids[:, 0] = decoder_start_token_id
    return decoder_input_ids.masked_fill(decoder_input_ids == -100, pad_token_id)


class AttnMTForConditionalGeneration(AttnMTPreTrainedModel, GenerationMixin):
    """AttnMT with the output projection to the vocabulary: what `generate()`, `Seq2SeqTrainer` and
    `AutoModelForSeq2SeqLM` use."""

    _tied_weights_keys = {"lm_head.weight": "model.shared.weight"}

    def __init__(self, config: AttnMTConfig):
        super().__init__(config)
        self.model = AttnMTModel(config)
        # generate() copies the logits for its scores anyway: a decoding step may return them transposed.
        self.lm_head = AttnMTLinear(config.d_model, config.vocab_size, bias=False, transposed_output=True)
        self.post_init()
        # Translation defaults (a saved generation_config.json overrides them on load): transformers'
        # generic max_length=20 would cut most sentences.
        self.generation_config.max_length = config.max_position_embeddings
        self.generation_config.num_beams = 5

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear):
        self.lm_head = new_embeddings

    def _prepare_cache_for_generation(self, generation_config, model_kwargs: dict, *args, **kwargs):
        """generate() builds an `EncoderDecoderCache` of two `DynamicCache`s; give its self-attention half
        `AttnMTDecodingCacheLayer`s (appends in place, beam reorders fused with them). A cache
        the caller passed in, or any other kind (static, offloaded, quantized), is left as it is."""
        result = super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        cache = model_kwargs.get("cache")
        if (
            isinstance(cache, EncoderDecoderCache)
            and not getattr(cache, "_is_user_defined", False)
            and type(cache.self_attention_cache) is DynamicCache
            and not cache.self_attention_cache.offloading
        ):
            layers = cache.self_attention_cache.layers
            if all(type(layer) is DynamicLayer and not layer.is_initialized for layer in layers):
                cache.self_attention_cache.layers = [AttnMTDecodingCacheLayer() for _ in layers]
        return result

    def _reorder_cache(self, cache: Cache, beam_idx: torch.LongTensor) -> Cache:
        """Keep the cache rows of the hypotheses that survive a beam-search step (generate() calls this hook
        after every step instead of `cache.reorder_cache`).

        Only the self-attention keys/values differ between the beams of one sentence. The cross-attention
        ones are projections of the same encoder output, repeated once per beam, and `beam_idx` only moves
        rows among the beams of the same sentence: reordering them would copy identical rows, every step.
        """
        if isinstance(cache, EncoderDecoderCache):
            cache.self_attention_cache.reorder_cache(beam_idx)
        else:
            cache.reorder_cache(beam_idx)
        return cache

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs,
    ) -> dict:
        """The keyword arguments of `forward` for one decoding step, called by generate() before every step.

        `input_ids` are the target tokens generated so far; with a cache only the last `next_sequence_length` of
        them are new. transformers' generic version also serves decoder-only and multimodal models (prompt
        embeddings, position and token-type ids, 4-D masks for compiled caches) and costs ~110 µs a step, 2% of
        a greedy step of the Multi30k preset; an encoder-decoder needs none of it. `inputs_embeds` and
        `is_first_iteration` concern a decoder-only prompt (the encoder has already read the source) and are
        not forwarded, as in the generic version.
        """
        if next_sequence_length is not None:
            input_ids = input_ids[:, -next_sequence_length:]  # (B, new): the earlier positions are in the cache
        # A fresh contiguous copy (B × 1 ids, nothing to pay): the slice's stride grows with every step, and a
        # compiled forward (static cache) would recompile for a new stride, as in transformers' generic version.
        input_ids = input_ids.clone(memory_format=torch.contiguous_format)
        model_inputs = {"decoder_input_ids": input_ids, "attention_mask": attention_mask}
        if cache is not None:
            model_inputs["cache"] = cache
        for key, value in kwargs.items():
            if key != "labels":  # encoder_outputs, use_cache, decoder_attention_mask, output_attentions, ...
                model_inputs[key] = value
        return model_inputs

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> Seq2SeqLMOutput | tuple:
        r"""
        Args:
            input_ids: (B, S) source token ids; attention_mask (B, S): 1 = token, 0 = padding.
            decoder_input_ids: (B, T) target-side inputs; built from `labels` by shifting right when omitted.
            labels: (B, T) target ids; -100 marks positions left out of the loss (padding).
            cache: an `EncoderDecoderCache` (generate() creates and passes it).

        Returns:
            `Seq2SeqLMOutput` with `loss` (mean token cross-entropy, label-smoothed by
            `config.label_smoothing`) when labels are given, and `logits` (B, T, V). In training mode with
            labels, only the loss is computed (on the labelled positions) and `logits` is None.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if labels is not None:
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
            use_cache = False  # training: the whole target is known, nothing to cache

        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            cache=cache,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            # Training: the decoder's feed-forward blocks skip the padding after the last labelled position.
            labels_mask=labels != -100 if labels is not None and self.training else None,
        )
        hidden_states = outputs.last_hidden_state  # (B, T, D)
        loss, logits = None, None
        if labels is not None:
            labels = labels.to(hidden_states.device)
            labelled = labels != -100  # padding (and any position the caller left out) takes no part
            if self.training:
                # Training needs the loss only: the LM head, the largest matmul of a small model, runs on the
                # labelled positions alone (a quarter of a length-grouped Multi30k batch is padding), and
                # `logits` stays None. Call the model in eval mode, or without labels, for the full logits.
                labelled_logits = self.lm_head(hidden_states[labelled])  # (N, V)
            else:
                logits = self.lm_head(hidden_states)  # (B, T, V)
                labelled_logits = logits[labelled]
            # Label smoothing moves a little probability mass to every other token: the model is penalised
            # for over-confidence, which costs perplexity but improves BLEU (Szegedy et al.; Vaswani et al.).
            loss = cross_entropy(
                labelled_logits, labels[labelled], label_smoothing=self.config.label_smoothing
            )  # mean over the N labelled tokens
        else:
            logits = self.lm_head(hidden_states)  # (B, T, V)

        output = Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
        )
        return output if return_dict else output.to_tuple()


# generate() reads `inspect.signature(model.forward)` to check the arguments it is given, and transformers' generic
# `prepare_inputs_for_generation` (overridden above) reads it at every step of a remote-code model (which this is,
# once loaded from the Hub), looking for a legacy `cache_position` argument: 45 µs a time. inspect returns a
# function's `__signature__` when it has one, so compute it once here.
AttnMTForConditionalGeneration.forward.__signature__ = inspect.signature(AttnMTForConditionalGeneration.forward)


__all__ = [
    "AttnMTPreTrainedModel",
    "AttnMTModel",
    "AttnMTForConditionalGeneration",
    "eager_attention_forward",
    "build_attention_mask",
]
