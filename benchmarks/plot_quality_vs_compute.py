"""Test BLEU against training compute for the finished Multi30k en->de runs of benchmarks/RESULTS.md.

Issue 5 asks for 42.0 lowercased BLEU on test2016 within 2.5 h of training on a 2-core CPU. Every recipe change
of runs 1-30 moved a single model by less than the seed spread, and ensembles of independent members bought
BLEU with more training. This picture puts all of them on one axis: the training work each result cost,
counted in updates of ~8,192 tokens summed over an ensemble's members (a 4,096-token update counts half),
against the test score, with the target and what 2.5 h buys on the measured machines.

    python benchmarks/plot_quality_vs_compute.py            # writes docs/multi30k_quality_vs_compute.png
    python benchmarks/plot_quality_vs_compute.py --print    # and the table behind it

The records are the JSON files of benchmarks/results/; a run's work comes from its own record (completed updates
and token budget), an ensemble's from its members' records, so nothing here is typed in twice.
"""

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results"
OUTPUT = "docs/multi30k_quality_vs_compute.png"
REFERENCE_TOKENS = 8192  # the preset's token budget per update: one unit of work on the x axis
TARGET = 42.0  # issue 5: lowercased sacreBLEU on test_2016_flickr

# Finished single models trained from scratch on the training split (stopped runs have no test score; the
# distillation runs of run 22 also cost a teacher and are left out).
SINGLE_RUNS = {
    "run 1": "multi30k_en_de_wu_recipe.json",
    "run 3": "multi30k_en_de_run3_cosine.json",
    "run 4": "multi30k_en_de_run4_punct.json",
    "run 7": "multi30k_en_de_run7_12k.json",
    "run 8": "multi30k_en_de_run8_bpe_dropout.json",
    "run 10": "multi30k_en_de_run10_vocab10k.json",
    "run 11 (preset)": "multi30k_en_de_run11_bidirectional.json",
    "run 12": "multi30k_en_de_run12_12k_bidirectional.json",
    "run 14": "multi30k_en_de_run14_bidirectional20.json",
    "run 17": "multi30k_en_de_run17_token_dropout.json",
    "run 18": "multi30k_en_de_run18_seed1.json",
    "run 20": "multi30k_en_de_run20_label_smoothing02.json",
    "run 23": "multi30k_en_de_run23_dropout02.json",
    "run 25": "multi30k_en_de_run25_lr7e-3.json",
    "run 26": "multi30k_en_de_run26_batch4k.json",
    "run 27 seed 42": "multi30k_en_de_run27_seed42_6000.json",
    "run 27 seed 1": "multi30k_en_de_run27_seed1_6000.json",
    "run 28": "multi30k_en_de_run28_4k.json",
    "run 30": "multi30k_en_de_run30_weight_decay005.json",
    "run 31 seed 2": "multi30k_en_de_run31_seed2_6000.json",
    "run 31 seed 3": "multi30k_en_de_run31_seed3_6000.json",
    "run 32": "multi30k_en_de_run32_weight_decay005_seed4.json",
}
# Ensembles: their record (with the ensemble's scores) and the records of the members whose training they cost.
ENSEMBLES = {
    "run 27: 2 × 6k": ("multi30k_en_de_run27_ensemble.json",
                       ["multi30k_en_de_run27_seed42_6000.json", "multi30k_en_de_run27_seed1_6000.json"]),
    "run 31: 2 × 6k": ("multi30k_en_de_run31_ensemble.json",
                       ["multi30k_en_de_run31_seed2_6000.json", "multi30k_en_de_run31_seed3_6000.json"]),
    "run 31: 6k + 6k + 8k": ("multi30k_en_de_run31_three_member_ensemble_over_budget.json",
                             ["multi30k_en_de_run31_seed2_6000.json", "multi30k_en_de_run31_seed3_6000.json",
                              "multi30k_en_de_run30_weight_decay005.json"]),
    "run 32: 2 × 8k": ("multi30k_en_de_run32_two_8k_members_over_budget.json",
                       ["multi30k_en_de_run30_weight_decay005.json", "multi30k_en_de_run32_weight_decay005_seed4.json"]),
    "run 32: 6k + 8k (seed 3)": ("multi30k_en_de_run32_combo_6k_8k.json",
                                 ["multi30k_en_de_run31_seed3_6000.json", "multi30k_en_de_run32_weight_decay005_seed4.json"]),
    "run 32: 6k + 8k (seed 2)": ("multi30k_en_de_run32_combo_6k_8k_b.json",
                                 ["multi30k_en_de_run31_seed2_6000.json", "multi30k_en_de_run32_weight_decay005_seed4.json"]),
    "run 32: 6k + 6k + 8k": ("multi30k_en_de_run32_combo_6k_6k_8k.json",
                             ["multi30k_en_de_run31_seed2_6000.json", "multi30k_en_de_run31_seed3_6000.json",
                              "multi30k_en_de_run32_weight_decay005_seed4.json"]),
    "run 32: 6k + 6k + 8k + 8k": ("multi30k_en_de_run32_combo_four_members.json",
                                  ["multi30k_en_de_run31_seed2_6000.json", "multi30k_en_de_run31_seed3_6000.json",
                                   "multi30k_en_de_run30_weight_decay005.json",
                                   "multi30k_en_de_run32_weight_decay005_seed4.json"]),
    "run 29: 2 branches of one run": ("multi30k_en_de_run29_branched_ensemble.json",
                                      ["multi30k_en_de_run29_branch_seed1.json", "multi30k_en_de_run29_branch_seed2.json"]),
}
# Two members side by side, one thread each, validations, test decode and export included (RESULTS.md runs 27
# and 31): seconds of wall clock per update of one member, i.e. per unit of work on the x axis ÷ 2.
MEASURED_PAIR_RATES = {
    "2.5 h, Zen 3 VM (run 31)": 8131 / 12000,
    "2.5 h, Zen 4 VM (run 27)": 2.15 * 3600 / 12000,
}


@dataclass
class Point:
    label: str
    members: int
    work: float  # updates of REFERENCE_TOKENS tokens, summed over members
    test_lowercase: float
    validation: float  # cased, the selection metric


def work_of(record: dict) -> float:
    config = record["config"]
    steps = record.get("completed_steps") or config["max_train_steps"]
    return steps * config.get("max_tokens_per_batch", REFERENCE_TOKENS) / REFERENCE_TOKENS


def ensemble_work(members: list[dict]) -> float:
    """Work of an ensemble's members; members branched from one run (run 29) pay for the shared updates once."""
    work, parents = 0.0, {}
    for record in members:
        work += work_of(record)
        branch = record.get("branched_from")
        if branch:
            shared = branch["step"] * record["config"].get("max_tokens_per_batch", REFERENCE_TOKENS) / REFERENCE_TOKENS
            work -= shared
            parents[branch["checkpoint"]] = shared
    return work + sum(parents.values())


def load(name: str, results: Path) -> dict:
    path = results / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: SINGLE_RUNS/ENSEMBLES in {Path(__file__).name} name the "
                                "recorded runs of benchmarks/results/; fix the name or record the run first.")
    return json.loads(path.read_text())


def collect(results: Path = RESULTS, singles: dict | None = None, ensembles: dict | None = None) -> list[Point]:
    points = []
    for label, name in (SINGLE_RUNS if singles is None else singles).items():
        record = load(name, results)
        points.append(Point(label, 1, work_of(record), record["test"]["bleu_lowercase"], record["validation"]["bleu"]))
    for label, (name, members) in (ENSEMBLES if ensembles is None else ensembles).items():
        record = load(name, results)
        scores = record.get("ensemble", record)  # run 29's record also holds its parent and a weight average
        work = ensemble_work([load(member, results) for member in members])
        points.append(Point(label, len(members), work, scores["test"]["bleu_lowercase"], scores["validation"]["bleu"]))
    return points


def budget_work(seconds_per_pair_update: float, hours: float = 2.5) -> float:
    """Member-updates two side-by-side runs finish in `hours` at a measured wall-clock rate."""
    return hours * 3600 / seconds_per_pair_update


def plot(points: list[Point], output: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output.parent.mkdir(parents=True, exist_ok=True)
    figure, axis = plt.subplots(figsize=(9, 5.5), dpi=100)
    styles = {1: ("o", "tab:blue", "single model"), 2: ("s", "tab:orange", "2-member ensemble"),
              3: ("^", "tab:red", "3-member ensemble"), 4: ("D", "tab:purple", "4-member ensemble")}
    for members, (marker, color, name) in styles.items():
        group = [p for p in points if p.members == members]
        if group:
            axis.scatter([p.work / 1000 for p in group], [p.test_lowercase for p in group], marker=marker,
                         color=color, s=45, label=name, zorder=3)
    for p in points:
        if p.members > 1 or p.label.startswith("run 11"):
            axis.annotate(p.label, (p.work / 1000, p.test_lowercase), textcoords="offset points", xytext=(6, -3),
                          fontsize=8)
    axis.axhline(TARGET, color="black", linestyle="--", linewidth=1)
    axis.text(axis.get_xlim()[0], TARGET + 0.05, f" target {TARGET}", fontsize=8, va="bottom")
    for (name, rate), style in zip(MEASURED_PAIR_RATES.items(), (":", "-.")):
        x = budget_work(rate) / 1000
        axis.axvline(x, color="gray", linestyle=style, linewidth=1)
        axis.text(x, axis.get_ylim()[0], f" {name}", rotation=90, fontsize=8, va="bottom", ha="right", color="gray")
    axis.set(xlabel=f"training work: thousands of {REFERENCE_TOKENS:,}-token updates, summed over members",
             ylabel="test2016 BLEU, lowercased (sacreBLEU)",
             title="Multi30k en→de: test BLEU against training work (benchmarks/RESULTS.md)")
    axis.grid(True, alpha=0.3)
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    partial = output.with_name(f".{output.stem}.partial{output.suffix}")  # never a truncated picture
    figure.savefig(partial)
    plt.close(figure)
    os.replace(partial, output)
    return output


def main(argv=None) -> list[Point]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", default=str(REPO_ROOT / OUTPUT))
    parser.add_argument("--print", action="store_true", help="Also print the table behind the picture.")
    args = parser.parse_args(argv)
    points = collect()
    if args.print:
        print(f"{'result':<31} {'members':>7} {'work (updates)':>15} {'val BLEU':>9} {'test lc':>8}")
        for p in sorted(points, key=lambda p: (p.work, p.test_lowercase)):
            print(f"{p.label:<31} {p.members:>7} {p.work:>15,.0f} {p.validation:>9.2f} {p.test_lowercase:>8.2f}")
        for name, rate in MEASURED_PAIR_RATES.items():
            print(f"{name}: {budget_work(rate):,.0f} member-updates for two side-by-side runs")
    print(f"wrote {plot(points, Path(args.output))}")
    return points


if __name__ == "__main__":
    main()
