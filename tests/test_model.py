"""The model: config validation, eager vs sdpa, attention outputs, causality, padding invariance, loss."""

import copy

import pytest
import torch
from torch.nn import functional as F

from modeling import AttnMTConfig, AttnMTForConditionalGeneration
from modeling.modeling_attnmt import AttnMTLinear, cross_entropy, positions_that_matter
from mt.tokenizer import check_tokenizer_matches_config

from conftest import TOKENIZER_VOCAB_SIZE, encode_pairs, tiny_config, tiny_model

TOL = 1e-5


@pytest.fixture
def padded_batch(tokenizer, corpus):
    """Three pairs of clearly different lengths, so sources and labels are both padded."""
    sources, targets = [corpus["en"][0], "A dog runs."], [corpus["de"][0], "Ein Hund."]

    def lengths(texts):
        return {len(ids) for ids in tokenizer(texts)["input_ids"]}

    # The first corpus pair whose source and target lengths both differ from the two above.
    third = next(i for i in range(1, len(corpus["en"]))
                 if len(lengths(sources + [corpus["en"][i]])) == 3 and len(lengths(targets + [corpus["de"][i]])) == 3)
    sources.append(corpus["en"][third])
    targets.append(corpus["de"][third])
    batch = encode_pairs(tokenizer, sources, targets)
    assert (batch["attention_mask"] == 0).any() and (batch["labels"] == -100).any()
    return batch


# --------------------------------------------------------------------------------------------------
# Config validation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["encoder", "decoder"])
def test_config_rejects_d_model_not_divisible_by_heads(side):
    with pytest.raises(ValueError, match=f"{side}_attention_heads"):
        other = "decoder" if side == "encoder" else "encoder"
        AttnMTConfig(d_model=32, **{f"{side}_attention_heads": 5, f"{other}_attention_heads": 4})


@pytest.mark.parametrize(
    "field", ["vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_ffn_dim", "decoder_ffn_dim",
              "encoder_attention_heads", "max_position_embeddings"]
)
@pytest.mark.parametrize("value", [-4, 0])
def test_config_rejects_non_positive_sizes(field, value):
    with pytest.raises(ValueError, match=field):
        AttnMTConfig(**{field: value})


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"activation_function": "swishy"}, "activation_function"),
        ({"dropout": 1.5}, "dropout"),
        ({"attention_dropout": -0.1}, "attention_dropout"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"layer_norm_eps": 0}, "layer_norm_eps"),
        ({"position_embedding_type": "rotary"}, "position_embedding_type"),
        ({"pad_token_id": 8000}, "pad_token_id"),
        ({"attn_implementation": "bogus"}, "attn_implementation"),
        ({"d_model": "32"}, "d_model"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        AttnMTConfig(**kwargs)


def test_from_pretrained_rejects_unknown_attn_implementation(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="attn_implementation"):
        AttnMTForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="bogus")


def test_valid_config_maps_standard_names():
    config = tiny_config()
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (32, 2, 4)
    assert config.is_encoder_decoder and config.use_cache and config.tie_word_embeddings


def test_tokenizer_config_mismatch_is_caught(tokenizer):
    check_tokenizer_matches_config(tokenizer, tiny_config())  # matching: no error
    with pytest.raises(ValueError, match="pad_token_id: tokenizer 0 != config 5"):
        check_tokenizer_matches_config(tokenizer, tiny_config(pad_token_id=5))
    with pytest.raises(ValueError, match="eos_token_id"):
        check_tokenizer_matches_config(tokenizer, tiny_config(eos_token_id=1))
    with pytest.raises(ValueError, match=f"tokenizer has {TOKENIZER_VOCAB_SIZE} tokens"):
        check_tokenizer_matches_config(tokenizer, tiny_config(vocab_size=100))


# --------------------------------------------------------------------------------------------------
# Shapes, ties, positions
# --------------------------------------------------------------------------------------------------


def test_forward_shapes_and_tuple_output(padded_batch):
    model = tiny_model()
    B, T = padded_batch["labels"].shape
    out = model(**padded_batch)
    assert out.logits.shape == (B, T, TOKENIZER_VOCAB_SIZE)
    assert out.encoder_last_hidden_state.shape == (B, padded_batch["input_ids"].shape[1], 32)
    assert out.loss.ndim == 0 and out.cache is None  # labels given: training, nothing cached
    as_tuple = model(**padded_batch, return_dict=False)
    assert torch.equal(as_tuple[0], out.loss) and torch.equal(as_tuple[1], out.logits)


def test_embeddings_tied_to_lm_head():
    model = tiny_model()
    shared = model.model.shared.weight
    assert model.lm_head.weight is shared
    assert model.model.encoder.embed_tokens.weight is shared and model.model.decoder.embed_tokens.weight is shared
    untied = tiny_model(tie_word_embeddings=False)
    pointers = {untied.lm_head.weight.data_ptr(), untied.model.shared.weight.data_ptr()}
    assert len(pointers) == 2


@pytest.fixture
def weight_first_for_any_weight(monkeypatch):
    """Let `AttnMTLinear` take the weight-first product for the small weights of the test models too."""
    monkeypatch.setattr(AttnMTLinear, "weight_first_min_weight", 0)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("transposed_output", [False, True])
@pytest.mark.parametrize("shape", [(3, 1), (64, 1), (5, 7), (65, 1), (9, 30)])
def test_linear_equals_f_linear_on_either_side_of_the_weight_first_product(weight_first_for_any_weight, shape, bias,
                                                                           transposed_output):
    """`AttnMTLinear` computes (W·xᵀ)ᵀ for up to `weight_first_max_rows` rows on a CPU and `F.linear` above: values
    and gradients are those of x·Wᵀ + b either way, and each path returns the layout it promises."""
    torch.manual_seed(0)
    layer = AttnMTLinear(16, 50, bias=bias, transposed_output=transposed_output)
    hidden = torch.randn(*shape, 16, requires_grad=True)
    output = layer(hidden)
    expected_hidden = hidden.detach().clone().requires_grad_()
    expected = F.linear(expected_hidden, layer.weight, layer.bias)
    assert output.shape == expected.shape == (*shape, 50)
    torch.testing.assert_close(output, expected, rtol=0, atol=TOL)
    weight_first = shape[0] * shape[1] <= AttnMTLinear.weight_first_max_rows
    assert output.is_contiguous() is not (weight_first and transposed_output)
    assert output.reshape(-1, 50).data_ptr() == output.data_ptr()  # rows still merge without a copy
    grad = torch.randn(expected.shape)
    output.backward(grad)
    weight_grad, bias_grad = layer.weight.grad.clone(), None if layer.bias is None else layer.bias.grad.clone()
    layer.zero_grad()
    expected.backward(grad)
    torch.testing.assert_close(hidden.grad, expected_hidden.grad, rtol=0, atol=TOL)
    torch.testing.assert_close(weight_grad, layer.weight.grad, rtol=0, atol=TOL)
    if bias:
        torch.testing.assert_close(bias_grad, layer.bias.grad, rtol=0, atol=TOL)


def test_linear_takes_the_weight_first_product_only_for_a_large_weight(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "mm", lambda *args, **kwargs: calls.append("mm") or torch.matmul(*args, **kwargs))
    hidden = torch.randn(32, 1, 128)
    AttnMTLinear(128, 8000, bias=False)(hidden)  # the preset's LM head, 1M elements
    assert calls == ["mm"]
    AttnMTLinear(128, 256, bias=False)(hidden)  # the preset's feed-forward: kept in the caches, plain F.linear
    AttnMTLinear(128, 8000, bias=False)(torch.randn(65, 128))  # more rows than a decoding step
    assert calls == ["mm"]


def test_linear_layers_are_tied_nn_linears_and_decode_as_with_the_plain_product(weight_first_for_any_weight,
                                                                                 padded_batch, monkeypatch):
    model = tiny_model().eval()
    linears = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
    assert linears and all(type(module) is AttnMTLinear for module in linears)
    assert model.lm_head.transposed_output and model.lm_head.weight is model.model.shared.weight
    batch = {k: padded_batch[k] for k in ("input_ids", "attention_mask")}
    kwargs = dict(max_new_tokens=12, return_dict_in_generate=True, output_logits=True)
    with torch.no_grad():
        ours = [model.generate(**batch, num_beams=beams, **kwargs) for beams in (1, 3)]
        monkeypatch.setattr(AttnMTLinear, "weight_first_max_rows", 0)  # every product the plain way
        reference = [model.generate(**batch, num_beams=beams, **kwargs) for beams in (1, 3)]
    for a, b in zip(ours, reference):
        assert torch.equal(a.sequences, b.sequences)
        for x, y in zip(a.logits, b.logits):
            torch.testing.assert_close(x, y, rtol=0, atol=TOL)


def test_sequence_longer_than_position_table_raises():
    model = tiny_model(max_position_embeddings=8)
    with pytest.raises(ValueError, match="max_position_embeddings=8"):
        model(input_ids=torch.ones(1, 9, dtype=torch.long), decoder_input_ids=torch.ones(1, 2, dtype=torch.long))


@pytest.mark.parametrize("overrides", [{"position_embedding_type": "learned"}, {"normalize_before": False},
                                       {"activation_function": "gelu"}])
def test_variants_train_and_stay_finite(overrides, padded_batch):
    model = tiny_model(**overrides)
    loss = model(**padded_batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    if overrides.get("normalize_before") is False:
        assert model.model.encoder.layer_norm is None and model.model.decoder.layer_norm is None


def test_gradient_checkpointing_gives_same_gradients(padded_batch):
    model = tiny_model()
    model.train()
    model(**padded_batch).loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable()
    model(**padded_batch).loss.backward()
    for name, param in model.named_parameters():
        assert (param.grad - reference[name]).abs().max() <= TOL, name


# --------------------------------------------------------------------------------------------------
# Eager vs sdpa
# --------------------------------------------------------------------------------------------------


def _forward_backward(model, batch):
    model.zero_grad()
    out = model(**batch)
    out.loss.backward()
    grads = {name: param.grad.clone() for name, param in model.named_parameters()}
    return out, grads


@pytest.mark.parametrize("decoder_padding_mask", [False, True])
def test_eager_and_sdpa_agree_on_padded_batch(trained_model, padded_batch, decoder_padding_mask):
    batch = dict(padded_batch)
    if decoder_padding_mask:
        batch["decoder_attention_mask"] = (batch["labels"] != -100).long()
    sdpa_model = trained_model
    eager_model = copy.deepcopy(trained_model)
    eager_model.set_attn_implementation("eager")
    assert (sdpa_model.config._attn_implementation, eager_model.config._attn_implementation) == ("sdpa", "eager")

    sdpa_out, sdpa_grads = _forward_backward(sdpa_model, batch)
    eager_out, eager_grads = _forward_backward(eager_model, batch)
    assert abs(sdpa_out.loss.item() - eager_out.loss.item()) <= TOL
    # Logits on real target positions (padding positions may attend differently and are never used).
    real = batch["labels"] != -100
    # float32 round-off grows with magnitude and the logits reach ~10: scale the tolerance by it.
    logits_scale = max(1.0, eager_out.logits.abs().max().item())
    assert (sdpa_out.logits[real] - eager_out.logits[real]).abs().max() <= TOL * logits_scale
    source = batch["attention_mask"].bool()
    encoder_diff = sdpa_out.encoder_last_hidden_state[source] - eager_out.encoder_last_hidden_state[source]
    assert encoder_diff.abs().max() <= TOL
    assert sdpa_grads.keys() == eager_grads.keys() and len(sdpa_grads) > 50
    for name in sdpa_grads:
        assert (sdpa_grads[name] - eager_grads[name]).abs().max() <= TOL, name
    # The gradients are not trivially zero.
    assert sdpa_grads["model.decoder.layers.1.encoder_attn.k_proj.weight"].abs().max() > 1e-4


@pytest.fixture
def sdpa_spy(monkeypatch):
    """Counts calls of torch.nn.functional.scaled_dot_product_attention."""
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return calls


def test_attn_implementation_chosen_at_load_is_used(tmp_path, padded_batch, sdpa_spy):
    tiny_model().save_pretrained(tmp_path)
    calls_per_forward = 2 + 2 * 2  # encoder self-attention + decoder self- and cross-attention
    results = {}
    for requested in ("sdpa", "eager", None):
        kwargs = {} if requested is None else {"attn_implementation": requested}
        model = AttnMTForConditionalGeneration.from_pretrained(tmp_path, **kwargs).eval()
        sdpa_spy.clear()
        with torch.no_grad():
            logits = model(**padded_batch).logits
        results[requested] = (model.config._attn_implementation, len(sdpa_spy), logits)
    assert results["sdpa"][:2] == ("sdpa", calls_per_forward)
    assert results["eager"][:2] == ("eager", 0)
    assert results[None][:2] == ("sdpa", calls_per_forward)  # the default
    real = padded_batch["labels"] != -100
    assert (results["sdpa"][2][real] - results["eager"][2][real]).abs().max() <= TOL


def test_set_attn_implementation_switches_at_run_time(padded_batch, sdpa_spy):
    model = tiny_model()
    for implementation, expected_calls in (("eager", 0), ("sdpa", 6), ("eager", 0)):
        model.set_attn_implementation(implementation)
        sdpa_spy.clear()
        with torch.no_grad():
            model(**padded_batch)
        assert (model.config._attn_implementation, len(sdpa_spy)) == (implementation, expected_calls)


def test_output_attentions_under_eager(padded_batch):
    model = tiny_model(attn_implementation="eager")
    B, S = padded_batch["input_ids"].shape
    T = padded_batch["labels"].shape[1]
    with torch.no_grad():
        out = model(**padded_batch, output_attentions=True, output_hidden_states=True)
    expected_shapes = {
        "encoder_attentions": (B, 4, S, S),
        "decoder_attentions": (B, 4, T, T),
        "cross_attentions": (B, 4, T, S),
    }
    for name, shape in expected_shapes.items():
        weights = getattr(out, name)
        assert len(weights) == 2, name
        for layer_weights in weights:
            assert layer_weights.shape == shape, name
            assert torch.allclose(layer_weights.sum(-1), torch.ones(shape[:-1]), atol=TOL), name
    source_padding = padded_batch["attention_mask"] == 0  # (B, S)
    for layer_weights in out.encoder_attentions + out.cross_attentions:
        assert (layer_weights.permute(0, 3, 1, 2)[source_padding] == 0).all()  # no weight on padded keys
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    for layer_weights in out.decoder_attentions:
        assert (layer_weights[..., future] == 0).all()  # no weight on later positions
    assert len(out.encoder_hidden_states) == 3 and len(out.decoder_hidden_states) == 3


def test_output_attentions_under_sdpa_raises(padded_batch):
    model = tiny_model(attn_implementation="sdpa")
    with pytest.raises(ValueError, match="eager"):
        model(**padded_batch, output_attentions=True)


# --------------------------------------------------------------------------------------------------
# Causality and padding invariance
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_decoder_is_causal(trained_model, implementation):
    trained_model.set_attn_implementation(implementation)
    input_ids = torch.tensor([[40, 41, 42, 43, 2]])
    decoder_input_ids = torch.tensor([[1, 50, 51, 52, 53, 54]])
    changed = decoder_input_ids.clone()
    changed[0, 3:] = torch.tensor([90, 91, 92])
    with torch.no_grad():
        logits = trained_model(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits
        logits_changed = trained_model(input_ids=input_ids, decoder_input_ids=changed).logits
    assert (logits[0, :3] - logits_changed[0, :3]).abs().max() <= TOL
    assert (logits[0, 3:] - logits_changed[0, 3:]).abs().max() > 1e-3  # later positions do see the change


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("decoder_padding_mask", [False, True])
def test_padded_batch_equals_each_sentence_alone(trained_model, padded_batch, implementation, decoder_padding_mask):
    trained_model.set_attn_implementation(implementation)
    labels = padded_batch["labels"]
    decoder_input_ids = trained_model.prepare_decoder_input_ids_from_labels(labels)
    source_lengths = padded_batch["attention_mask"].sum(1)
    target_lengths = (labels != -100).sum(1)
    assert len(set(source_lengths.tolist())) == 3 and len(set(target_lengths.tolist())) == 3
    extra = {"decoder_attention_mask": (labels != -100).long()} if decoder_padding_mask else {}
    with torch.no_grad():
        batched = trained_model(
            input_ids=padded_batch["input_ids"],
            attention_mask=padded_batch["attention_mask"],
            decoder_input_ids=decoder_input_ids,
            **extra,
        ).logits
        for i, (S, T) in enumerate(zip(source_lengths.tolist(), target_lengths.tolist())):
            alone = trained_model(
                input_ids=padded_batch["input_ids"][i : i + 1, :S], decoder_input_ids=decoder_input_ids[i : i + 1, :T]
            ).logits
            # The fused CPU kernel's summation order differs with the padded length: logits of ~10 came out 1.1e-5
            # apart on one AMD EPYC and 1.6e-5 on another (one element in 10,400); leaked padding moves them by > 1e-3.
            torch.testing.assert_close(batched[i, :T], alone[0], rtol=1e-5, atol=1e-4, msg=lambda m: f"sentence {i}: {m}")


# --------------------------------------------------------------------------------------------------
# Labels, teacher forcing and the loss
# --------------------------------------------------------------------------------------------------


def test_prepare_decoder_input_ids_from_labels():
    model = tiny_model()
    labels = torch.tensor([[63, 63, 48, 94, 2, -100, -100], [7, 8, 2, -100, -100, -100, -100]])
    expected = torch.tensor([[1, 63, 63, 48, 94, 2, 0], [1, 7, 8, 2, 0, 0, 0]])
    assert torch.equal(model.prepare_decoder_input_ids_from_labels(labels=labels), expected)
    assert labels[0, 5] == -100  # the labels themselves are not modified


def test_labels_only_forward_equals_explicit_decoder_inputs(trained_model, padded_batch):
    labels = padded_batch["labels"]
    with torch.no_grad():
        implicit = trained_model(**padded_batch)
        explicit = trained_model(
            **padded_batch, decoder_input_ids=trained_model.prepare_decoder_input_ids_from_labels(labels)
        )
    assert torch.equal(implicit.logits, explicit.logits)
    assert implicit.loss.item() == explicit.loss.item()


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_loss_matches_cross_entropy_reference_and_ignores_padding(trained_model, padded_batch, label_smoothing):
    trained_model.config.label_smoothing = label_smoothing
    with torch.no_grad():
        out = trained_model(**padded_batch)
    labels = padded_batch["labels"]
    keep = labels != -100
    logits, targets = out.logits[keep], labels[keep]  # (N, V), (N,): only real target tokens
    reference = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    assert abs(out.loss.item() - reference.item()) <= TOL
    # The same by hand: (1 - eps) * NLL + eps * mean over the vocabulary of -log p.
    log_probs = logits.log_softmax(-1)
    nll = -log_probs.gather(1, targets[:, None]).squeeze(1)
    by_hand = ((1 - label_smoothing) * nll + label_smoothing * -log_probs.mean(-1)).mean()
    assert abs(out.loss.item() - by_hand.item()) <= TOL
    # Ignored positions would change the loss if they were counted.
    counted_padding = F.cross_entropy(
        out.logits.flatten(0, 1), labels.masked_fill(~keep, 0).flatten(), label_smoothing=label_smoothing
    )
    assert abs(out.loss.item() - counted_padding.item()) > 1e-3


def test_training_loss_skips_padding_in_the_lm_head_with_identical_loss_and_gradients(padded_batch):
    """In training mode the LM head runs on labelled positions only; loss and gradients equal those of the
    full (B, T, V) logits with ignored padding, and `logits` is None there (full logits in eval mode)."""
    model = tiny_model(label_smoothing=0.1)  # no dropout: train and eval mode compute the same function
    model.train()
    out = model(**padded_batch)
    assert out.logits is None
    out.loss.backward()
    fast = {name: param.grad.clone() for name, param in model.named_parameters()}

    model.zero_grad()
    model.eval()
    full = model(**padded_batch)
    assert full.logits.shape[:2] == padded_batch["labels"].shape
    reference = F.cross_entropy(full.logits.flatten(0, 1), padded_batch["labels"].flatten(), ignore_index=-100,
                                label_smoothing=0.1)
    reference.backward()
    assert abs(out.loss.item() - reference.item()) <= TOL and abs(full.loss.item() - reference.item()) <= TOL
    for name, grad in fast.items():
        assert (grad - model.get_parameter(name).grad).abs().max() <= TOL, name


def test_positions_that_matter():
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 1]])
    # Encoder: exactly the real tokens. Decoder (causal): everything up to each row's last used position.
    assert positions_that_matter(mask, causal=False).tolist() == [0, 1, 5, 6, 8, 10, 11]
    assert positions_that_matter(mask, causal=True).tolist() == [0, 1, 4, 5, 6, 8, 9, 10, 11]
    assert positions_that_matter(torch.ones(2, 3), causal=True) is None  # nothing to skip
    assert positions_that_matter(None, causal=False) is None


@pytest.mark.parametrize("left_padded_labels", [False, True])
@pytest.mark.parametrize("normalize_before", [True, False])
def test_training_skips_padding_in_the_feed_forward_with_identical_loss_and_gradients(
    padded_batch, left_padded_labels, normalize_before
):
    """In training mode the feed-forward blocks run on the positions that can reach the loss only (real source
    tokens; target positions up to the last labelled one), and loss and gradients equal the full computation's."""
    batch = dict(padded_batch)
    if left_padded_labels:  # the skip must stay exact when a row's unlabelled positions come first
        labels = batch["labels"].clone()
        labels[0, :2] = -100
        batch["labels"] = labels
    model = tiny_model(label_smoothing=0.1, normalize_before=normalize_before)
    rows = {"encoder": [], "decoder": []}
    for side in rows:
        for layer in getattr(model.model, side).layers:
            layer.ffn.fc1.register_forward_hook(lambda module, args, output, side=side: rows[side].append(args[0].numel() // args[0].shape[-1]))

    model.train()
    loss = model(**batch).loss
    loss.backward()
    fast = {name: param.grad.clone() for name, param in model.named_parameters()}
    labelled = batch["labels"] != -100
    kept_targets = sum(int(row.nonzero().max()) + 1 for row in labelled)  # right padding after the last label
    assert rows["encoder"] == [int(batch["attention_mask"].sum())] * 2
    assert rows["decoder"] == [kept_targets] * 2 and kept_targets < labelled.numel()

    rows = {"encoder": [], "decoder": []}
    model.zero_grad()
    model.eval()
    reference = model(**batch).loss
    reference.backward()
    assert rows["encoder"][0] == batch["input_ids"].numel()  # eval mode: every position, as the formula
    assert abs(loss.item() - reference.item()) <= TOL
    for name, grad in fast.items():
        assert (grad - model.get_parameter(name).grad).abs().max() <= TOL, name


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_entropy_with_gradient_equals_torch(label_smoothing, dtype):
    """The training loss computes its gradient in the forward pass; value and gradient are F.cross_entropy's."""
    torch.manual_seed(0)
    logits = (torch.randn(37, 50) * 3).to(dtype).requires_grad_()
    target = torch.randint(0, 50, (37,))
    ours = cross_entropy(logits, target, label_smoothing)
    (ours * 2.5).backward()  # a scaled loss (gradient accumulation, loss scaling) scales the gradient
    grad = logits.grad.clone()
    logits.grad = None
    reference = F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)
    (reference * 2.5).backward()
    assert ours.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
    torch.testing.assert_close(grad, logits.grad, rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-2)
    with torch.no_grad():  # no gradient needed: plain F.cross_entropy
        torch.testing.assert_close(cross_entropy(logits, target, label_smoothing), reference, rtol=0, atol=1e-6)

    retained = cross_entropy(logits, target, label_smoothing)
    retained.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="retain_graph"):
        retained.backward()


def test_bad_labels_get_a_clear_error(padded_batch):
    model = tiny_model().train()
    labels = padded_batch["labels"]
    last = labels.clone()
    last[labels[:, -1] != -100, -1] = 10**6  # the last label of the longest row is never a decoder input
    with pytest.raises(ValueError, match=r"Label ids must lie in \[0, "):
        model(**{**padded_batch, "labels": last})
    with pytest.raises(ValueError, match=r"decoder_input_ids must lie in \[0, "):
        model(**{**padded_batch, "labels": labels.masked_fill(labels == labels[0, 0], 10**6)})
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, .*model's own tokenizer"):
        model(**{**padded_batch, "input_ids": padded_batch["input_ids"] - 1})
    with pytest.raises(ValueError, match="No labelled target position"):
        model(**{**padded_batch, "labels": torch.full_like(padded_batch["labels"], -100)})
