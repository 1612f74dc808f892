"""Incremental decoding with the KV cache, and generate(): greedy, beam, sampling, batching, the pipeline."""

import pytest
import torch
from transformers.cache_utils import DynamicCache, DynamicLayer, EncoderDecoderCache

from modeling import AttnMTTranslationPipeline
from modeling.modeling_attnmt import AttnMTDecodingCacheLayer

from conftest import tiny_model

TOL = 1e-5
MAX_LENGTH = 40


@pytest.fixture
def source_batch(tokenizer, sources):
    batch = tokenizer(sources, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


@pytest.fixture
def decoder_input_lengths(trained_model):
    """Records the length of `decoder_input_ids` at every decoder call of `trained_model`."""
    lengths = []
    handle = trained_model.model.decoder.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    yield lengths
    handle.remove()


def _strip(ids: torch.Tensor, eos_token_id: int = 2) -> list[int]:
    """A generated row up to its first </s>, without the filler that batching adds after it (greedy
    fills with <pad>; beam search fills with </s>, because transformers reads pad id 0 as "no pad id")."""
    ids = ids.tolist()
    return ids[: ids.index(eos_token_id) + 1] if eos_token_id in ids else ids


def _has_repeated_ngram(ids: list[int], n: int) -> bool:
    ngrams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return len(ngrams) != len(set(ngrams))


def test_generated_translations_are_not_degenerate(trained_model, source_batch, tokenizer):
    # The other tests compare outputs; make sure there is something worth comparing.
    output = trained_model.generate(**source_batch, num_beams=1, max_length=MAX_LENGTH)
    rows = [_strip(row) for row in output]
    assert all(row[0] == 1 for row in rows)  # decoder_start_token_id
    assert len({tuple(row) for row in rows}) == len(rows)
    assert all(len(set(row)) >= 5 for row in rows)
    assert all(row[-1] == tokenizer.eos_token_id for row in rows)  # they stop on their own


# --------------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("prefill", [1, 3])
def test_incremental_decoding_equals_full_forward(trained_model, source_batch, implementation, prefill):
    trained_model.set_attn_implementation(implementation)
    torch.manual_seed(0)
    B, T = source_batch["input_ids"].shape[0], 9
    decoder_input_ids = torch.randint(4, 400, (B, T))
    decoder_input_ids[:, 0] = 1
    with torch.no_grad():
        full = trained_model(**source_batch, decoder_input_ids=decoder_input_ids, use_cache=False).logits
        encoder_outputs = trained_model.get_encoder()(**source_batch)
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        steps = []
        # A first chunk of `prefill` tokens (causal mask with an offset of 0), then one token at a time.
        boundaries = [0, prefill, *range(prefill + 1, T + 1)]
        for start, end in zip(boundaries[:-1], boundaries[1:]):
            out = trained_model(
                encoder_outputs=encoder_outputs,
                attention_mask=source_batch["attention_mask"],
                decoder_input_ids=decoder_input_ids[:, start:end],
                cache=cache,
                use_cache=True,
            )
            assert out.cache is cache and cache.get_seq_length() == end
            steps.append(out.logits)
    incremental = torch.cat(steps, dim=1)  # (B, T, V)
    assert incremental.shape == full.shape
    assert (incremental - full).abs().max() <= TOL * max(1.0, full.abs().max().item())
    assert all(cache.is_updated[layer] for layer in range(2))  # cross-attention keys computed once


def test_chunk_after_cache_uses_offset_causal_mask(trained_model, source_batch):
    # Two tokens at once after a cached prefix: sdpa must get an explicit mask (its own causal kernel
    # would align the queries to the *first* keys).
    torch.manual_seed(1)
    decoder_input_ids = torch.randint(4, 400, (source_batch["input_ids"].shape[0], 5))
    with torch.no_grad():
        full = trained_model(**source_batch, decoder_input_ids=decoder_input_ids, use_cache=False).logits
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        first = trained_model(**source_batch, decoder_input_ids=decoder_input_ids[:, :3], cache=cache).logits
        rest = trained_model(**source_batch, decoder_input_ids=decoder_input_ids[:, 3:], cache=cache).logits
    assert (torch.cat([first, rest], dim=1) - full).abs().max() <= TOL * max(1.0, full.abs().max().item())


def test_cache_is_returned_only_when_asked(trained_model, source_batch):
    decoder_input_ids = torch.ones(source_batch["input_ids"].shape[0], 1, dtype=torch.long)
    with torch.no_grad():
        assert trained_model(**source_batch, decoder_input_ids=decoder_input_ids, use_cache=False).cache is None
        cache = trained_model(**source_batch, decoder_input_ids=decoder_input_ids, use_cache=True).cache
    assert isinstance(cache, EncoderDecoderCache) and cache.get_seq_length() == 1
    with pytest.raises(TypeError, match="EncoderDecoderCache"):
        trained_model(**source_batch, decoder_input_ids=decoder_input_ids, cache=((torch.zeros(1),),))


# --------------------------------------------------------------------------------------------------
# generate(): cache vs no cache
# --------------------------------------------------------------------------------------------------


def test_greedy_with_cache_equals_without(trained_model, source_batch, decoder_input_lengths):
    cached = trained_model.generate(**source_batch, num_beams=1, do_sample=False, max_length=MAX_LENGTH, use_cache=True)
    cached_lengths = list(decoder_input_lengths)
    decoder_input_lengths.clear()
    uncached = trained_model.generate(
        **source_batch, num_beams=1, do_sample=False, max_length=MAX_LENGTH, use_cache=False
    )
    assert torch.equal(cached, uncached)
    # The cache really was used: one new token per step, against the whole prefix without it.
    steps = cached.shape[1] - 1
    assert cached_lengths == [1] * steps
    assert decoder_input_lengths == list(range(1, steps + 1))


@pytest.mark.parametrize("length_penalty", [1.0, 0.3, 2.0])
def test_beam_search_with_cache_equals_without(trained_model, source_batch, length_penalty):
    kwargs = dict(
        num_beams=3,
        num_return_sequences=3,
        length_penalty=length_penalty,
        max_length=MAX_LENGTH,
        return_dict_in_generate=True,
        output_scores=True,
    )
    cached = trained_model.generate(**source_batch, use_cache=True, **kwargs)
    uncached = trained_model.generate(**source_batch, use_cache=False, **kwargs)
    B = source_batch["input_ids"].shape[0]
    assert cached.sequences.shape[0] == 3 * B
    assert torch.equal(cached.sequences, uncached.sequences)
    assert torch.allclose(cached.sequences_scores, uncached.sequences_scores, atol=1e-4)
    # The 3 hypotheses of each source are distinct and ranked best first.
    scores = cached.sequences_scores.view(B, 3)
    assert torch.all(scores[:, :-1] >= scores[:, 1:])
    for i in range(B):
        assert len({tuple(_strip(row)) for row in cached.sequences[3 * i : 3 * i + 3]}) == 3


def test_beam_search_best_hypothesis_scores_at_least_greedy(trained_model, source_batch):
    greedy = trained_model.generate(
        **source_batch, num_beams=1, max_length=MAX_LENGTH, return_dict_in_generate=True, output_scores=True
    )
    beam = trained_model.generate(
        **source_batch, num_beams=3, length_penalty=0.0, max_length=MAX_LENGTH, return_dict_in_generate=True,
        output_scores=True,
    )
    # With length_penalty 0 the beam score is the summed log-probability: at least the greedy path's.
    greedy_scores = trained_model.compute_transition_scores(greedy.sequences, greedy.scores, normalize_logits=True)
    assert torch.all(beam.sequences_scores >= greedy_scores.sum(-1) - 1e-4)


# --------------------------------------------------------------------------------------------------
# generate(): batching, sampling, constraints
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_beams", [1, 3])
def test_batched_generation_equals_one_by_one(trained_model, tokenizer, sources, num_beams):
    batch = tokenizer(sources, padding=True, return_tensors="pt")
    batched = trained_model.generate(**batch, num_beams=num_beams, max_length=MAX_LENGTH)
    for i, sentence in enumerate(sources):
        alone = trained_model.generate(**tokenizer([sentence], return_tensors="pt"), num_beams=num_beams,
                                       max_length=MAX_LENGTH)
        assert _strip(batched[i]) == _strip(alone[0]), sentence


def test_sampling_is_reproducible_with_a_seed(trained_model, source_batch):
    # num_beams=1: the model's generation config defaults to 5 beams (that would be beam *sampling*).
    kwargs = dict(do_sample=True, num_beams=1, top_k=0, temperature=1.5, max_length=MAX_LENGTH)
    torch.manual_seed(123)
    first = trained_model.generate(**source_batch, **kwargs)
    torch.manual_seed(123)
    second = trained_model.generate(**source_batch, **kwargs)
    torch.manual_seed(124)
    other = trained_model.generate(**source_batch, **kwargs)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
    assert ((first >= 0) & (first < 400)).all()
    # top_k=1 sampling can only pick the argmax: it is greedy search.
    greedy = trained_model.generate(**source_batch, num_beams=1, max_length=MAX_LENGTH)
    top1 = trained_model.generate(**source_batch, do_sample=True, num_beams=1, top_k=1, max_length=MAX_LENGTH)
    assert torch.equal(top1, greedy)


def test_no_repeat_ngram_size_is_obeyed(source_batch):
    # An untrained model repeats itself: the constraint has something to forbid.
    model = tiny_model(seed=3)
    free = model.generate(**source_batch, num_beams=1, max_length=MAX_LENGTH)
    assert any(_has_repeated_ngram(_strip(row), 2) for row in free)
    for kwargs in ({"num_beams": 1}, {"num_beams": 3}, {"do_sample": True, "num_beams": 1, "top_k": 0}):
        torch.manual_seed(0)
        constrained = model.generate(**source_batch, no_repeat_ngram_size=2, max_length=MAX_LENGTH, **kwargs)
        for row in constrained:
            assert not _has_repeated_ngram(_strip(row), 2), kwargs
        assert constrained.shape[1] > 5


def test_generation_respects_max_length(trained_model, source_batch):
    output = trained_model.generate(**source_batch, num_beams=1, max_new_tokens=4)
    assert output.shape[1] <= 5  # the start token plus at most 4 new ones


# --------------------------------------------------------------------------------------------------
# The translation pipeline, in process
# --------------------------------------------------------------------------------------------------


def test_translation_pipeline_matches_generate(trained_model, tokenizer, sources):
    pipe = AttnMTTranslationPipeline(model=trained_model, tokenizer=tokenizer)
    results = pipe(sources, num_beams=3, max_length=MAX_LENGTH)
    assert len(results) == len(sources)
    for sentence, result in zip(sources, results):
        ids = trained_model.generate(**tokenizer([sentence], return_tensors="pt"), num_beams=3, max_length=MAX_LENGTH)
        expected = tokenizer.decode(ids[0], skip_special_tokens=True)
        assert result == {"translation_text": expected} and expected.strip()
    single = pipe(sources[0], num_beams=3, max_length=MAX_LENGTH)
    assert single == results[0]
    as_ids = pipe(sources[0], num_beams=3, max_length=MAX_LENGTH, return_tensors=True)
    assert tokenizer.decode(as_ids["translation_token_ids"], skip_special_tokens=True) == results[0]["translation_text"]


def test_beam_reorder_skips_the_identical_cross_attention_rows(trained_model, source_batch, monkeypatch):
    """Our `_reorder_cache` moves only the self-attention keys/values; beam search gives exactly what the
    generic `EncoderDecoderCache.reorder_cache` (both caches reordered) gives."""
    kwargs = dict(num_beams=4, num_return_sequences=2, max_length=MAX_LENGTH, return_dict_in_generate=True,
                  output_scores=True)
    calls, ours_reorder = [], type(trained_model)._reorder_cache
    original = EncoderDecoderCache.reorder_cache
    monkeypatch.setattr(EncoderDecoderCache, "reorder_cache", lambda self, idx: calls.append(1) or original(self, idx))
    ours = trained_model.generate(**source_batch, **kwargs)
    assert not calls  # the model's hook ran, not the cache's own reorder
    monkeypatch.delattr(type(trained_model), "_reorder_cache")
    generic = trained_model.generate(**source_batch, **kwargs)
    assert calls  # now it did
    assert torch.equal(ours.sequences, generic.sequences)
    torch.testing.assert_close(ours.sequences_scores, generic.sequences_scores, rtol=0, atol=1e-6)

    # Unit level: self-attention rows follow beam_idx, cross-attention rows stay where they are.
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    self_kv, cross_kv = torch.arange(4.0).view(4, 1, 1, 1), torch.arange(4.0).view(4, 1, 1, 1) + 10
    cache.self_attention_cache.update(self_kv, self_kv, 0)
    cache.cross_attention_cache.update(cross_kv, cross_kv, 0)
    beam_idx = torch.tensor([1, 1, 3, 2])
    cache = ours_reorder(trained_model, cache, beam_idx)
    assert cache.self_attention_cache.layers[0].keys.flatten().tolist() == [1.0, 1.0, 3.0, 2.0]
    assert cache.cross_attention_cache.layers[0].keys.flatten().tolist() == [10.0, 11.0, 12.0, 13.0]


def test_decoding_cache_layer_equals_dynamic_layer():
    """In-place appends (past the buffer's capacity), deferred and composed beam reorders, crop and batch
    selection from outside: after every operation the keys/values are exactly DynamicLayer's."""
    torch.manual_seed(0)
    ours, reference = AttnMTDecodingCacheLayer(), DynamicLayer()

    def both(operation, *args):
        results = [getattr(layer, operation)(*args) for layer in (ours, reference)]
        assert ours.get_seq_length() == reference.get_seq_length()
        if reference.keys is None:  # after reset
            assert ours.keys is None and ours.values is None
        else:
            assert torch.equal(ours.keys, reference.keys) and torch.equal(ours.values, reference.values)
        return results

    def step(rows=4, length=1):
        new = torch.randn(rows, 2, length, 5)
        (keys, values), (expected_keys, expected_values) = both("update", new, new + 1)
        assert torch.equal(keys, expected_keys) and torch.equal(values, expected_values)

    step(length=3)  # a prefilled prompt
    buffer = ours._key_buffer
    for _ in range(5):
        step()
    assert ours._key_buffer is buffer  # written in place, no new tensor
    for _ in range(30):  # past the first buffer's capacity: it grows
        step()
    assert ours._key_buffer is not buffer and ours.get_seq_length() == 38

    for beam_idx in (torch.tensor([1, 1, 3, 2]), torch.tensor([0, 2, 2, 1])):  # two reorders in a row compose
        ours.reorder_cache(beam_idx)
        reference.reorder_cache(beam_idx)
    assert ours._pending_beam_idx is not None  # not applied yet: the next update does it in its copy
    step()
    assert ours._pending_beam_idx is None and ours.keys.shape == (4, 2, 39, 5)
    ours.reorder_cache(torch.tensor([3, 0, 0, 1]))
    reference.reorder_cache(torch.tensor([3, 0, 0, 1]))
    assert torch.equal(ours.keys, reference.keys)  # reading applies a pending reorder
    step()

    both("crop", -4)
    step()
    both("batch_select_indices", torch.tensor([0, 2]))
    step(rows=2)
    both("batch_repeat_interleave", 3)
    step(rows=6)
    both("reset")
    step(length=2)


@pytest.mark.parametrize("num_beams", [1, 4])
def test_generate_uses_the_decoding_cache_layer_and_matches_dynamic_cache(trained_model, source_batch, num_beams):
    kwargs = dict(num_beams=num_beams, num_return_sequences=min(num_beams, 2), max_length=MAX_LENGTH,
                  return_dict_in_generate=True, output_scores=True)
    ours = trained_model.generate(**source_batch, **kwargs)
    assert all(type(layer) is AttnMTDecodingCacheLayer for layer in ours.cache.self_attention_cache.layers)
    # A cache the caller passes in is used as given: plain DynamicLayers, reordered then appended.
    plain = trained_model.generate(**source_batch, cache=EncoderDecoderCache(DynamicCache(), DynamicCache()), **kwargs)
    assert all(type(layer) is DynamicLayer for layer in plain.cache.self_attention_cache.layers)
    assert torch.equal(ours.sequences, plain.sequences)
    if num_beams > 1:
        torch.testing.assert_close(ours.sequences_scores, plain.sequences_scores, rtol=0, atol=1e-6)
    # The returned cache is in final beam order either way.
    for a, b in zip(ours.cache.self_attention_cache.layers, plain.cache.self_attention_cache.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_forward_signature_is_computed_once_and_lists_the_arguments():
    """generate() inspects a remote-code model's forward signature at every step; it is precomputed and must
    still describe forward (generate also reads it to decide which arguments it may pass)."""
    import inspect

    from modeling import AttnMTForConditionalGeneration

    model = tiny_model()
    parameters = list(inspect.signature(model.forward).parameters)
    assert parameters[:3] == ["input_ids", "attention_mask", "decoder_input_ids"]
    assert "cache" in parameters and "labels" in parameters and "cache_position" not in parameters
    assert inspect.signature(AttnMTForConditionalGeneration.forward) is AttnMTForConditionalGeneration.forward.__signature__


@pytest.mark.parametrize("num_beams", [1, 3])
def test_prepare_inputs_for_generation_gives_what_the_generic_version_gives(trained_model, source_batch, num_beams,
                                                                            monkeypatch):
    """The model's own `prepare_inputs_for_generation` (a lean one for an encoder-decoder) hands forward the same
    arguments as transformers' generic version, at the first step and at a later one, and generation is equal."""
    from transformers.generation.utils import GenerationMixin

    seen = []
    ours = type(trained_model).prepare_inputs_for_generation
    monkeypatch.setattr(type(trained_model), "prepare_inputs_for_generation",
                        lambda self, input_ids, **kwargs: seen.append((input_ids, dict(kwargs))) or ours(self, input_ids, **kwargs))
    with_ours = trained_model.generate(**source_batch, num_beams=num_beams, max_length=MAX_LENGTH)
    assert len(seen) > 3
    for input_ids, kwargs in (seen[0], seen[3]):
        mine = ours(trained_model, input_ids, **kwargs)
        generic = GenerationMixin.prepare_inputs_for_generation(trained_model, input_ids, **kwargs)
        assert mine.keys() == generic.keys()
        for key, value in generic.items():
            assert torch.equal(mine[key], value) if isinstance(value, torch.Tensor) else mine[key] is value, key
    assert seen[3][1]["next_sequence_length"] == 1 and ours(trained_model, *seen[3][:1], **seen[3][1])["decoder_input_ids"].shape[1] == 1
    monkeypatch.setattr(type(trained_model), "prepare_inputs_for_generation", GenerationMixin.prepare_inputs_for_generation)
    assert torch.equal(with_ours, trained_model.generate(**source_batch, num_beams=num_beams, max_length=MAX_LENGTH))


def test_prepare_inputs_for_generation_forwards_extra_arguments_but_not_labels(trained_model, source_batch):
    ids = torch.tensor([[2, 5, 7]])
    decoder_mask = torch.ones(1, 3, dtype=torch.long)
    inputs = trained_model.prepare_inputs_for_generation(
        ids, next_sequence_length=None, attention_mask=source_batch["attention_mask"][:1], use_cache=False,
        decoder_attention_mask=decoder_mask, labels=ids, output_attentions=True,
    )
    assert set(inputs) == {"decoder_input_ids", "attention_mask", "use_cache", "decoder_attention_mask", "output_attentions"}
    assert inputs["decoder_attention_mask"] is decoder_mask and torch.equal(inputs["decoder_input_ids"], ids)


def test_cross_attention_mask_is_built_once_per_generate_and_rebuilt_for_another_mask(trained_model, source_batch,
                                                                                      monkeypatch):
    import modeling.modeling_attnmt as modeling_attnmt

    built = []
    real = modeling_attnmt.build_attention_mask
    monkeypatch.setattr(modeling_attnmt, "build_attention_mask",
                        lambda padding, *args, **kwargs: built.append(padding) or real(padding, *args, **kwargs))
    output = trained_model.generate(**source_batch, num_beams=1, max_new_tokens=6, min_new_tokens=6,
                                    return_dict_in_generate=True)
    source_masks = [mask for mask in built if mask is not None]
    assert len(source_masks) == 2  # the encoder's and the cross-attention's, once for all 6 steps
    # The same cache with another source mask (here: no padding on the first row) gets that mask, not the saved one.
    decoder = trained_model.model.decoder
    cache = output.cache
    mask = cache._attnmt_cross_attention_mask[2]
    other = source_batch["attention_mask"].clone()
    other[0] = 1
    rebuilt = decoder._cross_attention_mask(other, other.shape[1], mask.dtype, cache)
    assert rebuilt is not mask and torch.equal(rebuilt, real(other, 1, other.shape[1], mask.dtype))
    assert decoder._cross_attention_mask(other, other.shape[1], mask.dtype, cache) is rebuilt


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("num_beams", [1, 4])
def test_static_cache_generates_what_the_dynamic_cache_generates(trained_model, source_batch, implementation,
                                                                   num_beams):
    """generate(cache_implementation="static") preallocates every self-attention position up to max_length;
    the positions not written yet hold zeros, and attending to them (as the model once did, silently) changes
    the translations. The decoder masks them by absolute position instead."""
    trained_model.set_attn_implementation(implementation)
    kwargs = dict(num_beams=num_beams, max_length=MAX_LENGTH, return_dict_in_generate=True, output_scores=True)
    dynamic = trained_model.generate(**source_batch, **kwargs)
    static = trained_model.generate(**source_batch, cache_implementation="static", **kwargs)
    assert type(static.cache.self_attention_cache).__name__ == "StaticCache"
    buffer_length = static.cache.self_attention_cache.layers[0].keys.shape[-2]
    # Sized by generate() for every step (the decoder start excluded): at step t, all but t positions are unwritten.
    assert buffer_length == MAX_LENGTH - 1
    assert torch.equal(dynamic.sequences, static.sequences)
    scores = (dynamic.sequences_scores, static.sequences_scores) if num_beams > 1 else (
        torch.stack(dynamic.scores), torch.stack(static.scores))
    torch.testing.assert_close(*scores, rtol=0, atol=5e-5)  # softmax over longer (masked) rows: float noise


def test_static_cache_decoding_step_equals_the_full_forward(trained_model, source_batch):
    """Step by step through a StaticCache (with a decoder padding mask shorter than the buffer), the logits equal
    those of one forward pass over the whole prefix."""
    from transformers import StaticCache

    decoder_ids = torch.tensor([[0, 11, 12, 13, 14, 15]]).repeat(4, 1)
    decoder_mask = torch.ones_like(decoder_ids)
    decoder_mask[0, 2] = 0  # a hidden decoder position: the mask (P + 1 long) is padded to the buffer's length
    full = trained_model(**source_batch, decoder_input_ids=decoder_ids, decoder_attention_mask=decoder_mask).logits
    cache = EncoderDecoderCache(StaticCache(trained_model.config, max_cache_len=16),
                                StaticCache(trained_model.config, max_cache_len=source_batch["input_ids"].shape[1]))
    encoder_outputs = trained_model.get_encoder()(**source_batch)
    steps = []
    for t in range(decoder_ids.shape[1]):
        out = trained_model(encoder_outputs=encoder_outputs, attention_mask=source_batch["attention_mask"],
                            decoder_input_ids=decoder_ids[:, t : t + 1],
                            decoder_attention_mask=decoder_mask[:, : t + 1], cache=cache, use_cache=True)
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=TOL)


def test_static_cache_longer_than_the_position_table_is_a_clear_error(trained_model, source_batch):
    limit = trained_model.config.max_position_embeddings
    with pytest.raises(ValueError, match="max_position_embeddings"):
        trained_model.generate(**source_batch, num_beams=1, max_length=limit + 8, cache_implementation="static")
