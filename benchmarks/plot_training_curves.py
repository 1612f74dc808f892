"""Compare the validation curves of train.py runs, finished or still training, in one picture.

Each argument is a run: a train.py output folder (or its `all_results.json` / a checkpoint's
`trainer_state.json`), optionally labelled as `LABEL=PATH`.

    python benchmarks/plot_training_curves.py outputs/multi30k_en_de "12k updates=outputs/run7" -o curves.png
    python benchmarks/plot_training_curves.py --results   # the recorded runs of benchmarks/results/ (RESULTS.md)
"""

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from mt.training_curves import load_history, plot_training_curves  # noqa: E402

# The Multi30k en->de runs recorded in RESULTS.md, in groups of a readable size: one picture per group (run 11,
# the preset, is the reference line in each).
RECORDED_GROUPS = {
    "recipe": ("From Wu et al.'s recipe to the preset, and longer schedules (runs 1-12)", {
        "run 1: Wu et al. recipe, inverse-sqrt": "benchmarks/results/multi30k_en_de_wu_recipe.json",
        "run 3: + cosine decay": "benchmarks/results/multi30k_en_de_run3_cosine.json",
        "run 4: + punctuation split": "benchmarks/results/multi30k_en_de_run4_punct.json",
        "run 7: run 4 for 12,000 updates": "benchmarks/results/multi30k_en_de_run7_12k.json",
        "run 8: run 4 + BPE-dropout 0.1": "benchmarks/results/multi30k_en_de_run8_bpe_dropout.json",
        "run 10: run 4 + 10k vocabulary": "benchmarks/results/multi30k_en_de_run10_vocab10k.json",
        "run 11: run 4 + 11 bidirectional epochs (preset)": "benchmarks/results/multi30k_en_de_run11_bidirectional.json",
        "run 12: run 11 for 12,000 updates": "benchmarks/results/multi30k_en_de_run12_12k_bidirectional.json",
    }),
    "preset_changes": ("One change to the preset at a time (runs 13-32)", {
        "run 11: run 4 + 11 bidirectional epochs (preset)": "benchmarks/results/multi30k_en_de_run11_bidirectional.json",
        "run 13: run 11 + R-Drop, half batches": "benchmarks/results/multi30k_en_de_run13_rdrop_stopped.json",
        "run 14: run 11 with 20 bidirectional epochs": "benchmarks/results/multi30k_en_de_run14_bidirectional20.json",
        "run 16: run 11 + fr/cs sources, 16k vocabulary": "benchmarks/results/multi30k_en_de_run16_multiway_stopped.json",
        "run 17: run 11 + token dropout 0.1": "benchmarks/results/multi30k_en_de_run17_token_dropout.json",
        "run 18: run 11 with seed 1": "benchmarks/results/multi30k_en_de_run18_seed1.json",
        "run 19: run 11 with FFN 512": "benchmarks/results/multi30k_en_de_run19_ffn512_stopped.json",
        "run 20: run 11 + label smoothing 0.2": "benchmarks/results/multi30k_en_de_run20_label_smoothing02.json",
        "run 21: run 11 with 1,000 warm-up updates": "benchmarks/results/multi30k_en_de_run21_warmup1000_stopped.json",
        "run 23: run 11 with dropout 0.2": "benchmarks/results/multi30k_en_de_run23_dropout02.json",
        "run 25: run 11 with learning rate 7e-3": "benchmarks/results/multi30k_en_de_run25_lr7e-3.json",
        "run 26: run 11 with 4k-token batches, 16,000 updates": "benchmarks/results/multi30k_en_de_run26_batch4k.json",
        "run 30: run 11 with weight decay 0.05": "benchmarks/results/multi30k_en_de_run30_weight_decay005.json",
        "run 32: run 30 with seed 4": "benchmarks/results/multi30k_en_de_run32_weight_decay005_seed4.json",
    }),
    "short_runs": ("Shorter runs: ensemble members and branches (runs 27-31)", {
        "run 11: run 4 + 11 bidirectional epochs (preset)": "benchmarks/results/multi30k_en_de_run11_bidirectional.json",
        "run 27: ensemble member, 6,000 updates, seed 42": "benchmarks/results/multi30k_en_de_run27_seed42_6000.json",
        "run 27: ensemble member, 6,000 updates, seed 1": "benchmarks/results/multi30k_en_de_run27_seed1_6000.json",
        "run 28: the preset shortened to 4,000 updates": "benchmarks/results/multi30k_en_de_run28_4k.json",
        "run 29: branch of one run at update 5,000, seed 1": "benchmarks/results/multi30k_en_de_run29_branch_seed1.json",
        "run 31: ensemble member, 6,000 updates, seed 2": "benchmarks/results/multi30k_en_de_run31_seed2_6000.json",
        "run 31: ensemble member, 6,000 updates, seed 3": "benchmarks/results/multi30k_en_de_run31_seed3_6000.json",
    }),
}
RECORDED_RUNS = {label: path for _, runs in RECORDED_GROUPS.values() for label, path in runs.items()}
RECORDED_PLOT = "docs/multi30k_validation_curves_{group}.png"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", metavar="[LABEL=]PATH", help="train.py output folders or history JSON files.")
    parser.add_argument("-o", "--output", default=None, help="PNG to write (default: training_curves.png). "
                        f"--results alone writes one picture per group of recorded runs: {RECORDED_PLOT}.")
    parser.add_argument("--title", default=None)
    parser.add_argument("--results", action="store_true", help="Plot the runs recorded in benchmarks/results/.")
    args = parser.parse_args(argv)
    if not args.runs and not args.results:
        parser.error("give at least one run folder, or --results")
    return args


def report(runs) -> None:
    for run in runs:
        step, bleu = run.best
        print(f"{run.label}: {len(run.steps)} validations, best BLEU {bleu:.2f} at update {step}"
              + ("" if run.finished else " (stopped)" if run.stopped else " (still training)"))


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.results and not args.runs and not args.output:
        # The pictures of RESULTS.md: one per group, so that no two runs of a picture share a colour.
        for group, (title, recorded) in RECORDED_GROUPS.items():
            runs = [load_history(REPO_ROOT / path, label) for label, path in recorded.items()]
            path = plot_training_curves(runs, REPO_ROOT / RECORDED_PLOT.format(group=group), title=args.title or title)
            report(runs)
            print(f"wrote {path}")
        return
    runs = []
    if args.results:
        runs += [load_history(REPO_ROOT / path, label) for label, path in RECORDED_RUNS.items()]
    for spec in args.runs:
        label, _, path = spec.rpartition("=") if "=" in spec and not Path(spec).exists() else ("", "", spec)
        runs.append(load_history(path, label or None))
    path = plot_training_curves(runs, args.output or "training_curves.png", title=args.title)
    report(runs)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
