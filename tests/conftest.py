"""Shared tiny fixtures: a 2+2-layer, d_model 32 AttnMT config, a joint tokenizer trained on a few hundred
Multi30k lines, and a model briefly trained on Multi30k pairs so that generation is not degenerate.

Everything is seeded and CPU-only; the whole suite is meant to run in well under three minutes on 2 cores.
"""

import copy
import gzip
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# `pytest` (unlike `python -m pytest`) does not put the working directory on sys.path.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from modeling import AttnMTConfig, AttnMTForConditionalGeneration  # noqa: E402
from mt.tokenizer import train_tokenizer  # noqa: E402

MULTI30K = REPO_ROOT.parent / "shared/data/multi30k"
NUM_TOKENIZER_LINES = 300  # per language
TOKENIZER_VOCAB_SIZE = 400

torch.set_num_threads(2)


def read_lines(split: str, lang: str, n: int) -> list[str]:
    """The first `n` lines of a Multi30k file, stripped."""
    with gzip.open(MULTI30K / f"{split}.{lang}.gz", "rt", encoding="utf-8") as f:
        return [line.strip() for _, line in zip(range(n), f)]


def tiny_config(vocab_size: int = TOKENIZER_VOCAB_SIZE, **overrides) -> AttnMTConfig:
    """The test architecture: d_model 32, 2 encoder + 2 decoder layers, 4 heads, ffn 64, no dropout."""
    kwargs = dict(
        vocab_size=vocab_size,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        max_position_embeddings=64,
    )
    kwargs.update(overrides)
    return AttnMTConfig(**kwargs)


def tiny_model(seed: int = 0, attn_implementation: str | None = None, **overrides) -> AttnMTForConditionalGeneration:
    """A freshly initialised tiny model in eval mode (seeded)."""
    torch.manual_seed(seed)
    config = tiny_config(**overrides)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    return AttnMTForConditionalGeneration(config).eval()


def encode_pairs(tokenizer, sources: list[str], targets: list[str]) -> dict[str, torch.Tensor]:
    """A padded batch whose label padding is -100 (what DataCollatorForSeq2Seq produces)."""
    batch = tokenizer(sources, text_target=targets, padding=True, return_tensors="pt")
    batch["labels"] = batch["labels"].masked_fill(batch["labels"] == tokenizer.pad_token_id, -100)
    return dict(batch)


def train_steps(model, batch, steps: int, lr: float = 3e-3, stop_below: float | None = None) -> list[float]:
    """Full-batch AdamW steps; returns the loss of every step. Leaves the model in eval mode."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if stop_below is not None and losses[-1] < stop_below:
            break
    model.eval()
    return losses


@pytest.fixture(scope="session")
def corpus() -> dict[str, list[str]]:
    """A few hundred aligned English/German Multi30k training lines."""
    return {lang: read_lines("train", lang, NUM_TOKENIZER_LINES) for lang in ("en", "de")}


@pytest.fixture(scope="session")
def tokenizer(corpus):
    """Joint BPE tokenizer (<pad>=0, <s>=1, </s>=2, <unk>=3) trained on both languages."""
    tok = train_tokenizer(corpus["en"] + corpus["de"], vocab_size=TOKENIZER_VOCAB_SIZE)
    assert len(tok) == TOKENIZER_VOCAB_SIZE
    return tok


@pytest.fixture(scope="session")
def short_pairs(corpus) -> tuple[list[str], list[str]]:
    """The 8 shortest English-German pairs among the tokenizer lines (for overfitting)."""
    order = sorted(range(len(corpus["en"])), key=lambda i: len(corpus["en"][i]) + len(corpus["de"][i]))[:8]
    return [corpus["en"][i] for i in order], [corpus["de"][i] for i in order]


@pytest.fixture(scope="session")
def _trained_state(corpus, tokenizer) -> dict[str, torch.Tensor]:
    """Weights of a tiny model trained for a moment on 32 pairs: outputs are varied, not one repeated token."""
    model = tiny_model(seed=1)
    batch = encode_pairs(tokenizer, corpus["en"][:32], corpus["de"][:32])
    losses = train_steps(model, batch, steps=120)
    assert losses[-1] < 0.5 * losses[0]
    return copy.deepcopy(model.state_dict())


@pytest.fixture
def trained_model(_trained_state) -> AttnMTForConditionalGeneration:
    """A fresh copy of the briefly trained tiny model (tests may mutate it), sdpa attention, eval mode."""
    model = tiny_model(seed=1)
    model.load_state_dict(_trained_state)
    return model.eval()


@pytest.fixture
def sources(corpus) -> list[str]:
    """Four English sentences of different lengths: three seen in training (index < 32), one unseen."""
    return [corpus["en"][0], corpus["en"][5], corpus["en"][17], corpus["en"][250]]
