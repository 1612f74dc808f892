"""Pictures of where a translation model looks: cross-attention and encoder self-attention heatmaps.

For each sentence the model first translates it (greedy or beam search, as configured), then reads its own
translation back in one teacher-forced forward pass with `output_attentions=True`. That pass runs with the
eager attention (the only implementation that materialises the weights); the model's previous attention
implementation, training mode and gradients are restored afterwards.

Row t of a cross-attention map is the distribution over source tokens the decoder used when it produced
target token t; every row sums to 1. Files written per sentence (prefix `sentence<i>`):

    <prefix>_cross_layer<l>.png     one panel per head, target tokens (rows) x source tokens (columns)
    <prefix>_encoder_layer<l>.png   one panel per head, source tokens x source tokens
    <prefix>_average.png            cross-attention and encoder self-attention averaged over layers and heads

Shape legend: L layers, H heads, T target tokens, S source tokens.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

WORD_START = "▁"  # SentencePiece/Metaspace marks the first piece of a word with it
CONTINUATION_MARK = "##"  # shown in front of pieces that continue the previous word
PANEL_COLUMNS = 4  # heads per row in the per-layer grids
DPI = 100


@dataclass
class AttentionMaps:
    """The attention weights of one translated sentence, and the files drawn from them.

    cross_attentions: (L, H, T, S), decoder layer l, head h, target token t attending to source token s.
    encoder_attentions: (L, H, S, S), encoder self-attention.
    source_ids / target_ids: the S source token ids and the T generated target ids (without the start token).
    source_tokens / target_tokens: their display labels.
    """

    source: str
    translation: str
    source_ids: list[int]
    target_ids: list[int]
    source_tokens: list[str]
    target_tokens: list[str]
    cross_attentions: np.ndarray
    encoder_attentions: np.ndarray
    files: list[Path] = field(default_factory=list)

    @property
    def mean_cross_attention(self) -> np.ndarray:
        """(T, S): averaged over layers and heads; rows still sum to 1."""
        return self.cross_attentions.mean(axis=(0, 1))

    @property
    def mean_encoder_attention(self) -> np.ndarray:
        """(S, S): averaged over layers and heads."""
        return self.encoder_attentions.mean(axis=(0, 1))


def display_tokens(tokenizer, token_ids) -> list[str]:
    """Readable labels for subword ids: a word-initial "▁" is stripped, and pieces that continue a word get
    a leading "##" (so "▁Hund" "e" reads "Hund" "##e"); special tokens such as </s> stay as they are."""
    special = set(tokenizer.all_special_tokens)
    labels = []
    for piece in tokenizer.convert_ids_to_tokens(list(token_ids)):
        if piece in special:
            labels.append(piece)
        elif piece.startswith(WORD_START):
            labels.append(piece[len(WORD_START):] or WORD_START)
        else:
            labels.append(CONTINUATION_MARK + piece)
    return labels


def compute_attention_maps(
    model,
    tokenizer,
    sentence: str,
    *,
    num_beams: int | None = None,
    max_new_tokens: int | None = None,
) -> AttentionMaps:
    """Translate `sentence`, then return the attention weights of the model reading that translation.

    Args:
        model: a seq2seq model whose forward accepts `output_attentions` (AttnMT, Marian, ...).
        tokenizer: its tokenizer.
        sentence: the source sentence.
        num_beams, max_new_tokens: decoding options; None keeps the model's generation_config.
    """
    options = {"num_beams": num_beams, "max_new_tokens": max_new_tokens}
    generation_kwargs = {name: value for name, value in options.items() if value is not None}
    device = model.device
    inputs = tokenizer([sentence], return_tensors="pt", truncation=True).to(device)
    previous_implementation = model.config._attn_implementation
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            generated = model.generate(**inputs, **generation_kwargs)[0]  # (1 + T,), starts with the start token
            generated = _strip_trailing_padding(generated, tokenizer.pad_token_id)
            model.set_attn_implementation("eager")
            outputs = model(
                **inputs,
                decoder_input_ids=generated[None, :-1],  # teacher forcing: read y_0 .. y_{T-1}, predict y_1 .. y_T
                output_attentions=True,
                return_dict=True,
            )
    finally:
        model.set_attn_implementation(previous_implementation)
        model.train(was_training)
    cross = torch.stack(outputs.cross_attentions, dim=0)[:, 0]  # (L, H, T, S)
    encoder = torch.stack(outputs.encoder_attentions, dim=0)[:, 0]  # (L, H, S, S)
    return AttentionMaps(
        source=sentence,
        translation=tokenizer.decode(generated, skip_special_tokens=True),
        source_ids=inputs["input_ids"][0].tolist(),
        target_ids=generated[1:].tolist(),
        source_tokens=display_tokens(tokenizer, inputs["input_ids"][0].tolist()),
        target_tokens=display_tokens(tokenizer, generated[1:].tolist()),
        cross_attentions=cross.float().cpu().numpy(),
        encoder_attentions=encoder.float().cpu().numpy(),
    )


def _strip_trailing_padding(ids: torch.Tensor, pad_token_id: int | None) -> torch.Tensor:
    """Beam search pads finished hypotheses; keep the start token even when it equals the pad id (Marian)."""
    if pad_token_id is None:
        return ids
    end = len(ids)
    while end > 1 and ids[end - 1].item() == pad_token_id:
        end -= 1
    return ids[:end]


def figure_size(rows: int, columns: int, panel_rows: int = 1, panel_columns: int = 1) -> tuple[float, float]:
    """Figure size in inches for panels of a rows x columns heatmap: about 0.3 inch per token, with room for
    the tick labels, the colorbar and the title. At `DPI` dots per inch this is the PNG's size in pixels."""
    panel_width = 1.8 + 0.3 * columns
    panel_height = 1.6 + 0.3 * rows
    return round(panel_columns * panel_width + 1.0, 1), round(panel_rows * panel_height + 1.0, 1)


def _heatmap(axis, weights: np.ndarray, row_labels: list[str], column_labels: list[str], title: str, vmax: float = 1.0):
    image = axis.imshow(weights, cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto", interpolation="nearest")
    axis.set_xticks(range(len(column_labels)), labels=column_labels, rotation=90, fontsize=8)
    axis.set_yticks(range(len(row_labels)), labels=row_labels, fontsize=8)
    axis.set_title(title, fontsize=9)
    return image


def _save(figure, path: Path, title: str) -> Path:
    figure.suptitle(title, fontsize=10)
    figure.savefig(path, dpi=DPI)  # no bbox_inches="tight": the pixel size stays figure_size() * DPI
    plt.close(figure)
    return path


def _layer_grid(weights: np.ndarray, row_labels, column_labels, title: str, path: Path, axis_names) -> Path:
    """One panel per head of one layer; `weights` is (H, rows, columns)."""
    heads = weights.shape[0]
    panel_columns = min(heads, PANEL_COLUMNS)
    panel_rows = math.ceil(heads / panel_columns)
    figure, axes = plt.subplots(
        panel_rows,
        panel_columns,
        figsize=figure_size(len(row_labels), len(column_labels), panel_rows, panel_columns),
        squeeze=False,
        layout="constrained",
    )
    image = None
    for head, axis in enumerate(axes.flat):
        if head >= heads:
            axis.axis("off")
            continue
        image = _heatmap(axis, weights[head], row_labels, column_labels, f"head {head}")
        axis.set_xlabel(axis_names[1], fontsize=8)
        axis.set_ylabel(axis_names[0], fontsize=8)
    figure.colorbar(image, ax=axes, shrink=0.8, label="attention weight")
    return _save(figure, path, title)


def plot_attention_maps(maps: AttentionMaps, output_dir: str | Path, prefix: str = "sentence") -> list[Path]:
    """Draw the per-layer head grids and the averaged figure of `maps` into `output_dir`; return the paths
    (also stored in `maps.files`)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    caption = f"{maps.source}\n→ {maps.translation}"
    files = []
    for layer, weights in enumerate(maps.cross_attentions):
        files.append(_layer_grid(
            weights, maps.target_tokens, maps.source_tokens, f"Cross-attention, decoder layer {layer}\n{caption}",
            output_dir / f"{prefix}_cross_layer{layer}.png", ("target token", "source token"),
        ))
    for layer, weights in enumerate(maps.encoder_attentions):
        files.append(_layer_grid(
            weights, maps.source_tokens, maps.source_tokens, f"Encoder self-attention, layer {layer}\n{caption}",
            output_dir / f"{prefix}_encoder_layer{layer}.png", ("query token", "key token"),
        ))

    # Averages are flatter than single heads: one shared scale up to their maximum keeps the pattern visible.
    vmax = float(max(maps.mean_cross_attention.max(), maps.mean_encoder_attention.max()))
    rows = max(len(maps.target_tokens), len(maps.source_tokens))
    figure, axes = plt.subplots(
        1, 2, figsize=figure_size(rows, len(maps.source_tokens), 1, 2), squeeze=False, layout="constrained"
    )
    _heatmap(axes[0, 0], maps.mean_cross_attention, maps.target_tokens, maps.source_tokens,
             "cross-attention (mean of layers and heads)", vmax)
    axes[0, 0].set_xlabel("source token", fontsize=8)
    axes[0, 0].set_ylabel("target token", fontsize=8)
    image = _heatmap(axes[0, 1], maps.mean_encoder_attention, maps.source_tokens, maps.source_tokens,
                     "encoder self-attention (mean of layers and heads)", vmax)
    axes[0, 1].set_xlabel("key token", fontsize=8)
    axes[0, 1].set_ylabel("query token", fontsize=8)
    figure.colorbar(image, ax=axes, shrink=0.8, label="attention weight")
    files.append(_save(figure, output_dir / f"{prefix}_average.png", caption))
    maps.files = files
    return files


def plot_attention(
    model,
    tokenizer,
    sentences: list[str],
    output_dir: str | Path,
    *,
    num_beams: int | None = None,
    max_new_tokens: int | None = None,
) -> list[AttentionMaps]:
    """Translate each sentence, compute its attention maps and save its heatmaps as PNG files in `output_dir`
    (prefix `sentence<i>`). Returns one `AttentionMaps` per sentence, with the weights and `files`."""
    results = []
    for index, sentence in enumerate(sentences):
        maps = compute_attention_maps(model, tokenizer, sentence, num_beams=num_beams, max_new_tokens=max_new_tokens)
        plot_attention_maps(maps, output_dir, prefix=f"sentence{index:02d}")
        results.append(maps)
    return results


__all__ = [
    "AttentionMaps",
    "compute_attention_maps",
    "display_tokens",
    "figure_size",
    "plot_attention",
    "plot_attention_maps",
]
