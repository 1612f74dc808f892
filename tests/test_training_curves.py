"""Validation curves: histories read from a finished run, a run still training and a bare JSON file; the
best point is train.py's choice; the comparison script writes one PNG; bad input gets a clear error."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mt.training_curves import load_history, plot_training_curves

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def history(steps, bleus):
    return [{"step": s, "loss": 5.0 - s / 1000, "bleu": b, "bleu_lowercase": b + 0.2, "chrf": 50.0}
            for s, b in zip(steps, bleus)]


@pytest.fixture
def runs(tmp_path):
    finished = tmp_path / "finished"
    finished.mkdir()
    # Out of order on purpose, with a tie for the best: the earliest of the tied validations is the best.
    (finished / "all_results.json").write_text(json.dumps(
        {"validation": {"bleu": 30.0}, "history": history([1000, 500, 1500, 2000], [30.0, 10.0, 30.0, 29.5])}))
    running = tmp_path / "running"
    for step, records in ((500, history([500], [9.0])), (1000, history([500, 1000], [9.0, 20.0]))):
        folder = running / "checkpoints" / f"step_{step:07d}"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text(json.dumps({"completed_steps": step, "history": records}))
    return finished, running


def test_histories_from_finished_and_running_runs(runs):
    finished, running = runs
    done = load_history(finished)
    assert done.label == "finished" and done.finished
    assert done.steps == [500, 1000, 1500, 2000] and done.bleu == [10.0, 30.0, 30.0, 29.5]
    assert done.best == (1000, 30.0)
    # A run still training: the newest checkpoint's state, and it is marked as such.
    live = load_history(running, label="mine")
    assert live.label == "mine" and not live.finished
    assert live.steps == [500, 1000] and live.best == (1000, 20.0)
    assert not live.stopped and not done.stopped
    # A run stopped early and recorded as such is neither finished nor running.
    stopped = finished.parent / "stopped.json"
    stopped.write_text(json.dumps({"stopped": "behind the reference", "history": history([500, 1000], [5.0, 8.0])}))
    halted = load_history(stopped)
    assert halted.stopped and not halted.finished and halted.best == (1000, 8.0)
    # A bare JSON file works too.
    assert load_history(finished / "all_results.json").steps == done.steps


def test_plot_writes_a_png(runs, tmp_path):
    output = plot_training_curves([load_history(path) for path in runs], tmp_path / "sub" / "curves.png")
    assert output.read_bytes()[:8] == PNG_MAGIC and output.stat().st_size > 10_000
    assert [p.name for p in output.parent.iterdir()] == ["curves.png"]  # the partial file was renamed, not left


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No training history"):
        load_history(tmp_path)
    empty = tmp_path / "all_results.json"
    empty.write_text(json.dumps({"history": []}))
    with pytest.raises(ValueError, match="no validation yet"):
        load_history(empty)
    empty.write_text(json.dumps({"bleu": 3}))
    with pytest.raises(ValueError, match="no 'history'"):
        load_history(empty)
    with pytest.raises(ValueError, match="No run"):
        plot_training_curves([], tmp_path / "x.png")


def test_comparison_script_with_labels_and_recorded_runs(runs, tmp_path):
    finished, running = runs
    output = tmp_path / "compare.png"
    command = [sys.executable, "benchmarks/plot_training_curves.py", "--results", f"longer=run={running}",
               str(finished), "-o", str(output)]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert output.read_bytes()[:8] == PNG_MAGIC
    # The recorded runs of RESULTS.md, then the two given here; the label may itself contain "=".
    assert "run 4: + punctuation split: 16 validations, best BLEU 41.20 at update 6500" in run.stdout
    assert "run 11: run 4 + 11 bidirectional epochs (preset): 16 validations, best BLEU 41.46 at update 7500" in run.stdout
    assert "longer=run: 2 validations, best BLEU 20.00 at update 1000 (still training)" in run.stdout
    assert "finished: 4 validations, best BLEU 30.00 at update 1000\n" in run.stdout
