"""The quality-against-compute picture of benchmarks/: work is read from the runs' own records (token budget,
completed updates, shared updates of branched members counted once), scores from the ensemble records, and a
missing record is named."""

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import plot_quality_vs_compute as qc  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def record(steps, tokens=8192, branched_from=None, test=40.0, validation=41.0):
    result = {"config": {"max_train_steps": steps, "max_tokens_per_batch": tokens}, "completed_steps": steps,
              "test": {"bleu_lowercase": test}, "validation": {"bleu": validation}}
    if branched_from:
        result["branched_from"] = {"checkpoint": branched_from[0], "step": branched_from[1], "seed": 1}
    return result


def test_work_counts_token_budget_and_shared_updates_once():
    assert qc.work_of(record(8000)) == 8000
    assert qc.work_of(record(16000, tokens=4096)) == 8000  # half-size updates count half
    independent = [record(6000), record(6000), record(8000)]
    assert qc.ensemble_work(independent) == 20000
    # Two branches of one parent at update 5,000, each trained to 8,000: 5,000 shared + 2 × 3,000.
    branches = [record(8000, branched_from=("parent/step_5000", 5000)) for _ in range(2)]
    assert qc.ensemble_work(branches) == 11000


def test_recorded_results_give_the_documented_points(tmp_path):
    points = {p.label: p for p in qc.collect()}
    three = points["run 31: 6k + 6k + 8k"]
    assert (three.members, three.work) == (3, 20000)
    assert three.test_lowercase == pytest.approx(42.17, abs=0.005)
    assert points["run 29: 2 branches of one run"].work == 11000
    assert points["run 11 (preset)"].test_lowercase == pytest.approx(41.19, abs=0.005)
    # Two side-by-side members in 2.5 h on the Zen 3 VM: run 31's 12,000 member-updates took 8,131 s.
    assert qc.budget_work(8131 / 12000) == pytest.approx(2.5 * 3600 * 12000 / 8131)
    output = qc.plot(list(points.values()), tmp_path / "frontier.png")
    assert output.read_bytes()[:8] == PNG_MAGIC
    assert not list(tmp_path.glob(".*partial*"))


def test_missing_record_is_named(tmp_path):
    (tmp_path / "ensemble.json").write_text(json.dumps(record(6000)))
    with pytest.raises(FileNotFoundError, match="member.json is missing"):
        qc.collect(tmp_path, singles={}, ensembles={"e": ("ensemble.json", ["member.json"])})
