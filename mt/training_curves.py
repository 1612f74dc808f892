"""Validation curves of one or more training runs: BLEU and loss against the update number.

`train.py` records every validation in a run's history (`all_results.json` at the end, each checkpoint's
`trainer_state.json` while it runs) and draws `training_curves.png` into its output folder when it
finishes. To compare runs, finished or still training:

    python benchmarks/plot_training_curves.py outputs/run_a "longer schedule=outputs/run_b" -o curves.png
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

RESULTS_FILE = "all_results.json"  # written by train.py when a run finishes
STATE_FILE = "trainer_state.json"  # the training state in each checkpoint; train.py writes it under this name


@dataclass
class RunHistory:
    """The validations of one run, in update order."""

    label: str
    steps: list[int]
    bleu: list[float]
    loss: list[float]
    finished: bool
    stopped: bool = False  # ended early on purpose (a recorded history with a "stopped" note): not running

    @property
    def best(self) -> tuple[int, float]:
        """(update, BLEU) of the best validation; the earliest one on a tie, as train.py selects."""
        index = max(range(len(self.bleu)), key=lambda i: (self.bleu[i], -i))
        return self.steps[index], self.bleu[index]


def _history_file(path: Path) -> Path:
    """The JSON holding a run's history: the file itself, the run folder's (or its export's) results, or,
    for a run still training, the newest checkpoint's state."""
    if path.is_file():
        return path
    for candidate in (path / RESULTS_FILE, path / "model" / RESULTS_FILE):
        if candidate.is_file():
            return candidate
    states = sorted((path / "checkpoints").glob(f"step_*/{STATE_FILE}")) if path.is_dir() else []
    if states:
        return states[-1]
    raise FileNotFoundError(
        f"No training history at {path}: expected a train.py output folder (with {RESULTS_FILE} or "
        f"checkpoints/step_*/{STATE_FILE}) or one of those JSON files."
    )


def load_history(path: str | Path, label: str | None = None) -> RunHistory:
    """Read the validation history of a train.py run (folder, `all_results.json` or `trainer_state.json`)."""
    path = Path(path)
    file = _history_file(path)
    try:
        data = json.loads(file.read_text())
        history = data["history"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{file} holds no 'history' list of validations (is it a train.py file?): {error}") from None
    if not history:
        raise ValueError(f"{file} records no validation yet: train past the first eval_steps, or lower --eval_steps.")
    history = sorted(history, key=lambda record: record["step"])
    name = label or (path.name if path.is_dir() else path.parent.name)
    return RunHistory(
        label=name,
        steps=[record["step"] for record in history],
        bleu=[record["bleu"] for record in history],
        loss=[record["loss"] for record in history],
        finished="validation" in data,  # the final scores are written only when training has ended
        stopped="stopped" in data,
    )


def plot_training_curves(runs: list[RunHistory], output: str | Path, title: str | None = None) -> Path:
    """Validation BLEU (left) and validation loss (right) of each run against the update; the best BLEU of
    each run is marked. A run still training is drawn dashed, one stopped early dotted. Returns the PNG's path."""
    if not runs:
        raise ValueError("No run to plot.")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    legend_rows = (len(runs) + 1) // 2  # below both panels, two runs per row: it hides no curve
    legend_height = 0.22 * legend_rows + 0.15  # inches
    figure, (bleu_axis, loss_axis) = plt.subplots(1, 2, figsize=(12, 4.5 + legend_height), dpi=100)
    # tab20's strong shades first, then its light ones: up to 20 runs, no two the same colour.
    palette = plt.get_cmap("tab20")
    colors = [palette(i) for i in range(0, 20, 2)] + [palette(i) for i in range(1, 20, 2)]
    for index, run in enumerate(runs):
        style = "-" if run.finished else ":" if run.stopped else "--"
        best_step, best_bleu = run.best
        suffix = "" if run.finished else f", stopped at {run.steps[-1]}" if run.stopped else ", running"
        (line,) = bleu_axis.plot(run.steps, run.bleu, style, marker=".", color=colors[index % len(colors)],
                                 label=f"{run.label} (best {best_bleu:.2f} @ {best_step}{suffix})")
        bleu_axis.plot([best_step], [best_bleu], "o", markersize=9, markerfacecolor="none", color=line.get_color())
        loss_axis.plot(run.steps, run.loss, style, marker=".", color=line.get_color(), label=run.label)
    # Early validations are far below the rest; start the BLEU axis where the curves get interesting.
    top = max(max(run.bleu) for run in runs)
    bleu_axis.set_ylim(bottom=max(0.0, min(min(run.bleu[len(run.bleu) // 2:]) for run in runs) - 2.0), top=top + 1.0)
    bleu_axis.set(xlabel="update", ylabel="validation BLEU (cased, sacreBLEU)", title="validation BLEU")
    loss_axis.set(xlabel="update", ylabel="validation loss (cross-entropy per token, unsmoothed)", title="validation loss")
    for axis in (bleu_axis, loss_axis):
        axis.grid(True, alpha=0.3)
    figure.legend(*bleu_axis.get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=8, frameon=False)
    if title:
        figure.suptitle(title)
    figure.tight_layout(rect=(0, legend_height / figure.get_figheight(), 1, 1))
    # Written beside the target and renamed: an interrupted save never leaves a truncated picture behind.
    partial = output.with_name(f".{output.stem}.partial{output.suffix}")
    figure.savefig(partial)
    plt.close(figure)
    os.replace(partial, output)
    return output


__all__ = ["RunHistory", "load_history", "plot_training_curves"]
