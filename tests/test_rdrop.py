"""R-Drop: the loss equals its definition (checked against torch.distributions and F.cross_entropy), is the
ordinary loss when dropout is off, adds a positive KL term when it is on, and train.py uses it when asked."""

from types import SimpleNamespace

import pytest
import torch
from torch.distributions import Categorical, kl_divergence
from torch import nn
from torch.nn import functional as F

import train
from modeling import AttnMTConfig, AttnMTForConditionalGeneration
from mt.config import load_config
from mt.rdrop import rdrop_loss, symmetric_kl
from test_train import TINY

V = 50


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, V, (3, 7), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    labels = torch.randint(3, V, (3, 6), generator=generator)
    labels[2, 4:] = -100
    decoder_input_ids = torch.cat([torch.full((3, 1), 2), labels[:, :-1].clamp(min=0)], dim=1)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "decoder_input_ids": decoder_input_ids}


def _model(dropout: float) -> AttnMTForConditionalGeneration:
    torch.manual_seed(0)
    config = AttnMTConfig(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                          decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, dropout=dropout,
                          attention_dropout=dropout, activation_dropout=dropout, label_smoothing=0.1,
                          pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=2)
    return AttnMTForConditionalGeneration(config).train()


def _reference(first: torch.Tensor, second: torch.Tensor, target: torch.Tensor, alpha: float) -> torch.Tensor:
    """The R-Drop loss from its definition: mean of the two label-smoothed cross-entropies plus α/2 × the mean
    symmetric KL, with torch.distributions' KL."""
    p1, p2 = Categorical(logits=first), Categorical(logits=second)
    cross_entropies = F.cross_entropy(first, target, label_smoothing=0.1) + F.cross_entropy(second, target,
                                                                                          label_smoothing=0.1)
    return cross_entropies / 2 + alpha / 2 * ((kl_divergence(p1, p2) + kl_divergence(p2, p1)) / 2).mean()


class StandIn(nn.Module):
    """A model that returns fixed logits for the doubled batch, and their label-smoothed CE as its loss."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits, self.head, self.seen = logits, nn.Identity(), {}

    def get_output_embeddings(self) -> nn.Module:
        return self.head

    def forward(self, labels, **inputs):
        self.seen.update(inputs, labels=labels)
        labelled = labels != -100
        return SimpleNamespace(logits=self.logits, loss=F.cross_entropy(self.logits[labelled], labels[labelled],
                                                                        label_smoothing=0.1))


def test_loss_is_the_definition_on_given_logits():
    """Half the authors' loss: the mean of the two passes' cross-entropies plus α/2 × the mean symmetric KL over
    the labelled tokens (padding excluded); value and gradient."""
    batch = _batch()
    logits = torch.randn(6, 6, V, generator=torch.Generator().manual_seed(1), requires_grad=True)
    model = StandIn(logits)
    loss = rdrop_loss(model, batch, alpha=5.0)
    for name in ("input_ids", "attention_mask", "decoder_input_ids", "labels"):  # the batch stacked on itself
        assert torch.equal(model.seen[name], torch.cat([batch[name], batch[name]]))

    labelled = batch["labels"] != -100
    target = batch["labels"][labelled]
    reference_logits = logits.detach().clone().requires_grad_(True)
    reference = _reference(reference_logits[:3][labelled], reference_logits[3:][labelled], target, alpha=5.0)
    assert reference - _reference(logits[:3][labelled], logits[3:][labelled], target, alpha=0.0) > 0.1
    torch.testing.assert_close(loss, reference)
    loss.backward()
    reference.backward()
    torch.testing.assert_close(logits.grad, reference_logits.grad)
    assert logits.grad[3:][~labelled].abs().max() == 0  # padding positions get no gradient


@pytest.mark.parametrize("rows, block_rows", [(1, 64), (37, 8), (64, 64), (130, 64)])
def test_symmetric_kl_value_and_gradient_match_autograd_on_the_definition(rows, block_rows):
    """The blocked KL with its gradient written out equals KL(P ‖ Q) + KL(Q ‖ P) averaged over rows, computed in
    float64 by torch.distributions and differentiated by autograd, whatever the row count and block size."""
    generator = torch.Generator().manual_seed(rows)
    a = (3 * torch.randn(rows, 97, generator=generator)).requires_grad_(True)
    b = (3 * torch.randn(rows, 97, generator=generator)).requires_grad_(True)
    weight = torch.tensor(2.5)  # an upstream gradient other than 1
    (weight * symmetric_kl(a, b, block_rows=block_rows)).backward()
    a64, b64 = a.detach().double().requires_grad_(True), b.detach().double().requires_grad_(True)
    p, q = Categorical(logits=a64), Categorical(logits=b64)
    reference = (kl_divergence(p, q) + kl_divergence(q, p)).mean()
    (weight * reference).backward()
    torch.testing.assert_close(symmetric_kl(a, b, block_rows=block_rows).double(), reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.grad.double(), a64.grad, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(b.grad.double(), b64.grad, rtol=1e-4, atol=1e-7)


def test_symmetric_kl_is_zero_for_equal_logits_keeps_the_input_dtype_and_checks_shapes():
    a = torch.randn(5, 11, dtype=torch.bfloat16, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    kl = symmetric_kl(a, b)
    assert kl.dtype == torch.float32 and kl.item() == 0
    kl.backward()
    assert a.grad.dtype == torch.bfloat16 and a.grad.abs().max() == 0
    with pytest.raises(ValueError, match=r"two \(N, V\) logit tensors of one shape, got \(5, 11\) and \(5, 12\)"):
        symmetric_kl(a, torch.randn(5, 12))
    empty = torch.zeros(0, 11, requires_grad=True)
    assert symmetric_kl(empty, empty).item() == 0


def test_attnmt_keeps_its_labelled_positions_only_head_and_matches_the_definition():
    """AttnMT in training mode returns no logits; the KL comes from its LM head's output. With every position
    labelled the model runs the same operations with and without labels, so with one seed both see the same
    dropout masks: the loss equals the definition applied to the full logits of the doubled batch."""
    model, batch = _model(dropout=0.3), _batch()
    batch["labels"][2, 4:] = 7  # every position labelled
    torch.manual_seed(3)
    loss = rdrop_loss(model, batch, alpha=5.0)
    torch.manual_seed(3)
    inputs = {name: torch.cat([batch[name], batch[name]]) for name in ("input_ids", "attention_mask",
                                                                          "decoder_input_ids")}
    logits = model(**inputs, use_cache=False).logits  # (6, 6, V), the same dropout masks
    target = batch["labels"].flatten()
    reference = _reference(logits[:3].flatten(0, 1), logits[3:].flatten(0, 1), target, alpha=5.0)
    assert reference - _reference(logits[:3].flatten(0, 1), logits[3:].flatten(0, 1), target, alpha=0.0) > 0.001
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-5)


def test_without_dropout_it_is_the_ordinary_loss():
    """Dropout off: the two passes agree token by token (a mismatched pairing of the two copies' positions would
    give a positive KL), the KL term vanishes, and the loss is the model's own loss, padding included."""
    model, batch = _model(dropout=0.0), _batch()
    torch.testing.assert_close(rdrop_loss(model, batch, alpha=5.0), model(**batch).loss, rtol=1e-5, atol=1e-5)


def test_with_dropout_the_kl_term_is_positive_and_trains_every_parameter():
    """Same seed, so the same dropout masks: the α = 5 loss exceeds the α = 0 loss by 5/2 × a positive KL."""
    model, batch = _model(dropout=0.3), _batch()
    torch.manual_seed(7)
    plain = rdrop_loss(model, batch, alpha=0.0)
    torch.manual_seed(7)
    regularised = rdrop_loss(model, batch, alpha=5.0)
    assert 0.001 < (regularised - plain).item() / 2.5 < 1.0
    regularised.backward()
    without_gradient = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert without_gradient == []
    with pytest.raises(ValueError, match="rdrop_alpha must be >= 0"):
        load_config(TINY + ["--rdrop_alpha", "-1"])


def test_train_py_uses_rdrop_every_update_and_records_it(tmp_path, monkeypatch):
    calls = []
    real = train.rdrop_loss
    monkeypatch.setattr(train, "rdrop_loss", lambda *args, **kwargs: calls.append(args[2]) or real(*args, **kwargs))
    output_dir = tmp_path / "rdrop"
    results = train.main(TINY + ["--rdrop_alpha", "2", "--test_split", "", "--output_dir", str(output_dir)])
    assert results["completed_steps"] == 8 and calls == [2.0] * 8
    card = (output_dir / "model" / "README.md").read_text()
    assert "weight decay 0.0, R-Drop α 2 (each batch twice, symmetric KL" in card
