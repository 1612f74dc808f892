"""mt.attention_plots: the weights are the model's own output_attentions, rows are distributions, and the PNG
files exist with the size the layout promises."""

import numpy as np
import pytest
import torch
from PIL import Image

from eval_fixtures import tiny_marian
from mt.attention_plots import (
    CONTINUATION_MARK,
    DPI,
    PANEL_COLUMNS,
    compute_attention_maps,
    display_tokens,
    figure_size,
    plot_attention,
)

SENTENCE = "Two young, White males are outside near many bushes."


def reference_attentions(model, maps, start_token_id: int):
    """The model's own output_attentions (eager) for the source and the generated target, teacher-forced."""
    model.set_attn_implementation("eager")
    with torch.no_grad():
        outputs = model(
            input_ids=torch.tensor([maps.source_ids]),
            decoder_input_ids=torch.tensor([[start_token_id] + maps.target_ids[:-1]]),
            output_attentions=True,
        )
    return (torch.stack(outputs.cross_attentions)[:, 0].numpy(), torch.stack(outputs.encoder_attentions)[:, 0].numpy())


def test_plot_attention_writes_pngs_and_returns_the_model_weights(trained_model, tokenizer, tmp_path):
    config = trained_model.config
    trained_model.train()  # the mode must come back
    [maps] = plot_attention(trained_model, tokenizer, [SENTENCE], tmp_path, num_beams=2, max_new_tokens=12)
    assert trained_model.training and config._attn_implementation == "sdpa"
    trained_model.eval()

    # The translation is the model's own (beam search), read back token by token.
    generated = trained_model.generate(**tokenizer([SENTENCE], return_tensors="pt"), num_beams=2, max_new_tokens=12)[0]
    assert maps.target_ids == generated[1:].tolist()
    assert maps.translation == tokenizer.decode(generated, skip_special_tokens=True) != ""
    assert maps.source_ids == tokenizer(SENTENCE).input_ids

    source_len, target_len = len(maps.source_ids), len(maps.target_ids)
    layers, heads = config.decoder_layers, config.decoder_attention_heads
    assert maps.cross_attentions.shape == (layers, heads, target_len, source_len)
    assert maps.encoder_attentions.shape == (config.encoder_layers, config.encoder_attention_heads, source_len,
                                             source_len)
    np.testing.assert_allclose(maps.cross_attentions.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(maps.encoder_attentions.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(maps.mean_cross_attention.sum(-1), 1.0, atol=1e-5)
    assert maps.cross_attentions.std() > 0.01  # not uniform: the trained model looks somewhere in particular

    cross, encoder = reference_attentions(trained_model, maps, config.decoder_start_token_id)
    np.testing.assert_allclose(maps.cross_attentions, cross, atol=1e-6)
    np.testing.assert_allclose(maps.encoder_attentions, encoder, atol=1e-6)

    # Files: one grid per layer (heads as panels) for each kind, plus the averaged figure.
    expected = [f"sentence00_cross_layer{i}.png" for i in range(layers)]
    expected += [f"sentence00_encoder_layer{i}.png" for i in range(config.encoder_layers)]
    expected += ["sentence00_average.png"]
    assert [path.name for path in maps.files] == expected
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(expected)

    panel_rows, panel_columns = -(-heads // PANEL_COLUMNS), min(heads, PANEL_COLUMNS)
    sizes = {
        "cross": figure_size(target_len, source_len, panel_rows, panel_columns),
        "encoder": figure_size(source_len, source_len, panel_rows, panel_columns),
        "average": figure_size(max(target_len, source_len), source_len, 1, 2),
    }
    for path in maps.files:
        with Image.open(path) as image:
            assert image.format == "PNG"
            kind = path.stem.split("_")[1]
            width, height = sizes[kind]
            assert image.size == (round(width * DPI), round(height * DPI))
            pixels = np.asarray(image.convert("L"))
            assert pixels.std() > 10  # something is drawn, not a blank canvas
        with Image.open(path) as image:
            image.verify()  # a complete, uncorrupted PNG stream


def test_attention_maps_of_a_marian_model(tokenizer):
    """The same code on a built-in model that starts decoding from the pad token, greedy search."""
    model = tiny_marian(tokenizer)
    maps = compute_attention_maps(model, tokenizer, "A dog runs.", max_new_tokens=6)
    assert len(maps.target_ids) == 6 and model.config._attn_implementation == "sdpa"
    assert maps.cross_attentions.shape == (1, 2, 6, len(maps.source_ids))
    np.testing.assert_allclose(maps.cross_attentions.sum(-1), 1.0, atol=1e-5)
    cross, encoder = reference_attentions(model, maps, model.config.decoder_start_token_id)
    np.testing.assert_allclose(maps.cross_attentions, cross, atol=1e-6)
    np.testing.assert_allclose(maps.encoder_attentions, encoder, atol=1e-6)


def test_display_tokens_mark_word_starts_and_continuations(tokenizer):
    vocab = tokenizer.get_vocab()
    word_start = next(piece for piece in sorted(vocab) if piece.startswith("▁") and len(piece) > 2)
    continuation = next(piece for piece in sorted(vocab) if piece.isalpha() and len(piece) > 1)
    ids = [vocab[word_start], vocab[continuation], tokenizer.eos_token_id]
    assert display_tokens(tokenizer, ids) == [word_start[1:], CONTINUATION_MARK + continuation, "</s>"]


def test_figure_size_grows_with_tokens_and_panels():
    assert figure_size(5, 10, 1, 4) == pytest.approx((4 * (1.8 + 3.0) + 1.0, 1.6 + 1.5 + 1.0))
    width, height = figure_size(5, 10, 2, 4)
    assert height == pytest.approx(2 * (1.6 + 1.5) + 1.0)
    assert figure_size(20, 20)[0] > figure_size(5, 5)[0]
