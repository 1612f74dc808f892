"""Which checkpoint average of a finished train.py run scores best on validation? Test only for the winner.

train.py chooses between its best validation checkpoint and the average of the last N kept checkpoints
(`average_last_checkpoints`, 10 in the preset). This script asks the wider question on a finished run's
kept checkpoints, without training anything: for each window size k it averages the last k checkpoints
(train.py's own `average_checkpoints`) and translates the validation split with the run's decoding settings;
it also scores the exported `best/` checkpoint, which must reproduce the BLEU the run recorded for it (a check
that the settings match). Model selection stays on validation: the test split is translated once, for the
candidate with the highest validation BLEU, and only with `--test_split`.

    python benchmarks/checkpoint_averaging_windows.py /work/runs/multi30k_en_de_r14 --windows 2 3 4 5 7 10 \
        --test_split test_2016_flickr --json benchmarks/results/averaging_windows_run14.json

Prints one line per candidate (validation BLEU, lowercased BLEU, chrF) and the winner's test scores.
"""

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from eval import evaluate_split, load_corpus, load_model_and_tokenizer  # noqa: E402
from mt.data import CorpusSpec  # noqa: E402
from mt.scoring import load_metrics  # noqa: E402
from train import average_checkpoints, list_checkpoints  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished train.py output folder (best/, checkpoints/, "
                        "train_config.yaml)")
    parser.add_argument("--windows", type=int, nargs="+", default=[2, 3, 5, 10],
                        help="average the last k kept checkpoints, for each k (default: 2 3 5 10)")
    parser.add_argument("--test_split", default=None, help="also score the validation winner on this split")
    parser.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    args = parser.parse_args(argv)
    if any(k < 2 for k in args.windows):
        parser.error("--windows takes sizes >= 2 (the best single checkpoint is always scored)")
    return args


def run_settings(run_dir: Path) -> dict:
    """The run's resolved config (train_config.yaml), which holds its corpus and decoding settings."""
    path = run_dir / "train_config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {run_dir} is not a train.py output folder.")
    return yaml.safe_load(path.read_text())


def recorded_best_bleu(run_dir: Path) -> float | None:
    """The validation BLEU train.py recorded for best/ (from the last checkpoint's trainer_state.json)."""
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        return None
    return json.loads((checkpoints[-1] / "trainer_state.json").read_text()).get("best_bleu")


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s | %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    config = run_settings(args.run_dir)
    checkpoints = list_checkpoints(args.run_dir)
    too_wide = [k for k in args.windows if k > len(checkpoints)]
    if too_wide:
        raise SystemExit(f"{args.run_dir} keeps {len(checkpoints)} checkpoints; windows {too_wide} are wider.")
    spec = CorpusSpec(source_lang=config["source_lang"], target_lang=config["target_lang"],
                      dataset_name=config.get("dataset_name"), dataset_config_name=config.get("dataset_config_name"),
                      data_dir=config.get("data_dir"), train_file=config.get("train_file"),
                      validation_file=config.get("validation_file"), test_file=config.get("test_file"))
    metrics = load_metrics("local")
    validation = load_corpus(spec, config["validation_split"], config.get("max_eval_samples"))
    decoding = dict(batch_size=config["per_device_eval_batch_size"], num_beams=config["num_beams"],
                    length_penalty=config["length_penalty"], max_new_tokens=config["max_new_tokens"],
                    max_source_length=config["max_source_length"], progress=False)

    model, tokenizer = load_model_and_tokenizer(str(args.run_dir / "best"))
    model.generation_config.max_length = None  # decoding length comes from max_new_tokens, as in train.py
    model.eval()
    best_weights = {k: v.clone() for k, v in model.state_dict().items()}

    def score(name: str, weights: dict | None, split=validation) -> dict:
        if weights is not None:
            model.load_state_dict(weights, strict=False)
            model.tie_weights()
        started = time.perf_counter()
        with torch.no_grad():
            scores, _ = evaluate_split(model, tokenizer, split, metrics, **decoding)
        scores = {k: scores[k] for k in ("bleu", "bleu_lowercase", "chrf", "bleu_signature")}
        logging.info(f"{name:<28} BLEU {scores['bleu']:.2f} | lc {scores['bleu_lowercase']:.2f} | "
                     f"chrF {scores['chrf']:.2f} | {time.perf_counter() - started:.0f} s")
        return scores

    candidates = {"best single": {"checkpoints": ["best"], **score("best single", None)}}
    recorded = recorded_best_bleu(args.run_dir)
    if recorded is not None and abs(recorded - candidates["best single"]["bleu"]) > 0.01:
        logging.warning(f"best/ scores {candidates['best single']['bleu']:.2f} here but the run recorded "
                        f"{recorded:.2f}: the decoding settings differ from the run's")
    for k in args.windows:
        paths = checkpoints[-k:]
        name = f"average of last {k}"
        candidates[name] = {"checkpoints": [p.name for p in paths], **score(name, average_checkpoints(paths))}

    winner = max(candidates, key=lambda name: candidates[name]["bleu"])
    logging.info(f"validation winner: {winner} ({candidates[winner]['bleu']:.2f})")
    results = {"run_dir": str(args.run_dir), "validation_split": config["validation_split"],
               "recorded_best_bleu": recorded, "decoding": decoding, "candidates": candidates, "winner": winner}
    if args.test_split:
        weights = best_weights if winner == "best single" else \
            average_checkpoints([args.run_dir / "checkpoints" / name for name in candidates[winner]["checkpoints"]])
        test = load_corpus(spec, args.test_split, config.get("max_test_samples"))
        results["test_split"] = args.test_split
        results["winner_test"] = score(f"{winner} on {args.test_split}", weights, split=test)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        logging.info(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
