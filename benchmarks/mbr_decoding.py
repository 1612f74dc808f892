"""Minimum Bayes risk (MBR) decoding against beam search, on one split, for a trained checkpoint.

Beam search returns the translation the model finds most probable. MBR decoding (Kumar and Byrne, 2004;
Eikema and Aziz, 2020; Freitag et al., 2023) returns the candidate that agrees most, on average, with the
model's other likely translations. Each pseudo-reference stands in for a possible true reference:

    chosen = argmax over candidates h of  sum over pseudo-references r of  w(r) * utility(h, r)

This script draws both sets from the model:
- the beam's n-best list (`--num_candidates`, with the beam's sequence scores);
- unbiased samples (`--num_samples`, epsilon sampling with `--epsilon`, as in Freitag et al.).

The utility is sacreBLEU's sentence BLEU (exp smoothing, effective order) or sentence chrF. The weight w(r)
is uniform, or the softmax of the beam scores ("prob"). The script scores each variant with the corpus
metrics of eval.py (mt/scoring.py), next to the checkpoint's own beam search (`--num_beams`, default: its
generation_config). It changes nothing in the checkpoint. Decide on validation and score test once.

    python benchmarks/mbr_decoding.py /work/runs/r23_dropout02/best --data_dir ../shared/data/multi30k \
        --split val --num_candidates 10 --num_samples 16 --json benchmarks/results/mbr_decoding_run23_val.json

Prints one line per variant (BLEU, lowercased BLEU, chrF) and writes them to --json.
"""

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sacrebleu.metrics import BLEU, CHRF
from tqdm.auto import tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from eval import checkpoint_language_pair, evaluate_split, load_corpus, load_model_and_tokenizer  # noqa: E402
from mt.data import CorpusSpec  # noqa: E402
from mt.scoring import load_metrics, score_translations  # noqa: E402

UTILITIES = {"bleu": lambda: BLEU(effective_order=True), "chrf": lambda: CHRF()}


def mbr_select(candidates: list[str], references: list[str], utility, weights=None) -> str:
    """The candidate with the highest expected utility against the pseudo-references.

    Args:
        candidates: hypotheses to choose from (duplicates are scored once; ties go to the first).
        references: pseudo-references (they may include the candidates themselves).
        utility: a sacreBLEU metric object with `sentence_score(hypothesis, [reference])`.
        weights: one weight per pseudo-reference (None: uniform).
    """
    if not candidates or not references:
        raise ValueError("MBR needs at least one candidate and one pseudo-reference.")
    weights = np.full(len(references), 1.0 / len(references)) if weights is None else np.asarray(weights, float)
    if len(weights) != len(references):
        raise ValueError(f"{len(weights)} weights for {len(references)} pseudo-references.")
    unique = list(dict.fromkeys(candidates))
    expected = [float(np.dot(weights, [utility.sentence_score(h, [r]).score for r in references])) for h in unique]
    return unique[int(np.argmax(expected))]


def softmax(scores: list[float]) -> np.ndarray:
    scores = np.asarray(scores, float)
    weights = np.exp(scores - scores.max())
    return weights / weights.sum()


def draw_candidates(model, tokenizer, sources: list[str], *, num_candidates: int, num_samples: int, epsilon: float,
                    batch_size: int, max_new_tokens: int, length_penalty: float) -> list[dict]:
    """For each source: the beam's n-best list with its sequence scores, and epsilon samples."""
    order = sorted(range(len(sources)), key=lambda i: -len(sources[i]))
    drawn: dict[int, dict] = {}
    with torch.inference_mode():
        for start in tqdm(range(0, len(order), batch_size), desc="candidates"):
            indices = order[start:start + batch_size]
            batch = tokenizer([sources[i] for i in indices], return_tensors="pt", padding=True)
            beam = model.generate(**batch, num_beams=num_candidates, num_return_sequences=num_candidates,
                                  length_penalty=length_penalty, max_new_tokens=max_new_tokens,
                                  output_scores=True, return_dict_in_generate=True)
            texts = tokenizer.batch_decode(beam.sequences, skip_special_tokens=True)
            scores = beam.sequences_scores.tolist()
            samples = [[] for _ in indices]
            if num_samples:
                sampled = model.generate(**batch, do_sample=True, num_beams=1, top_k=0, epsilon_cutoff=epsilon,
                                         num_return_sequences=num_samples, max_new_tokens=max_new_tokens)
                flat = tokenizer.batch_decode(sampled, skip_special_tokens=True)
                samples = [flat[k * num_samples:(k + 1) * num_samples] for k in range(len(indices))]
            for k, i in enumerate(indices):
                rows = slice(k * num_candidates, (k + 1) * num_candidates)
                drawn[i] = {"beam": texts[rows], "beam_scores": scores[rows], "samples": samples[k]}
    return [drawn[i] for i in range(len(sources))]


def variants(num_samples: int) -> list[tuple[str, str, str, str, str]]:
    """(name, candidates, pseudo-references, utility, weighting) of the MBR rules compared."""
    rows = [("MBR-BLEU over the n-best, uniform", "beam", "beam", "bleu", "uniform"),
            ("MBR-BLEU over the n-best, beam-score weights", "beam", "beam", "bleu", "prob"),
            ("MBR-chrF over the n-best, uniform", "beam", "beam", "chrf", "uniform")]
    if num_samples:
        rows += [("MBR-BLEU n-best against samples", "beam", "samples", "bleu", "uniform"),
                 ("MBR-BLEU n-best + samples against both", "all", "all", "bleu", "uniform"),
                 ("MBR-chrF n-best against samples", "beam", "samples", "chrf", "uniform"),
                 ("MBR-chrF n-best + samples against both", "all", "all", "chrf", "uniform")]
    return rows


def apply_variant(drawn: list[dict], candidates: str, references: str, utility: str, weighting: str) -> list[str]:
    metric = UTILITIES[utility]()
    pick = {"beam": lambda d: d["beam"], "samples": lambda d: d["samples"], "all": lambda d: d["beam"] + d["samples"]}
    chosen = []
    for d in drawn:
        weights = softmax(d["beam_scores"]) if weighting == "prob" else None
        chosen.append(mbr_select(pick[candidates](d), pick[references](d), metric, weights))
    return chosen


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a checkpoint folder (a train.py export, best/ or model/)")
    parser.add_argument("--data_dir", default=str(REPO_ROOT.parent / "shared" / "data" / "multi30k"))
    parser.add_argument("--source_lang")
    parser.add_argument("--target_lang")
    parser.add_argument("--split", default="val")
    parser.add_argument("--max_samples", type=int, help="only the first N sentence pairs")
    parser.add_argument("--num_beams", type=int, help="the beam-search baseline (default: the checkpoint's)")
    parser.add_argument("--num_candidates", type=int, default=10, help="beam size and n-best list length for MBR")
    parser.add_argument("--num_samples", type=int, default=16, help="epsilon samples per sentence (0: none)")
    parser.add_argument("--epsilon", type=float, default=0.02)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.num_candidates < 2 or args.num_samples < 0:
        parser.error("--num_candidates takes 2 or more, --num_samples 0 or more")
    if not (0.0 < args.epsilon < 1.0):
        parser.error("--epsilon takes a probability between 0 and 1")
    if args.source_lang is None or args.target_lang is None:
        trained = checkpoint_language_pair(args.model)
        if trained is None:
            parser.error(f"--source_lang and --target_lang are required: {args.model} records no language pair")
        args.source_lang, args.target_lang = args.source_lang or trained[0], args.target_lang or trained[1]
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s | %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    torch.manual_seed(args.seed)
    spec = CorpusSpec(source_lang=args.source_lang, target_lang=args.target_lang, data_dir=args.data_dir)
    dataset = load_corpus(spec, args.split, args.max_samples)
    sources, references = list(dataset["source"]), list(dataset["target"])
    model, tokenizer = load_model_and_tokenizer(args.model)
    model.generation_config.max_length = None
    model.eval()
    metrics = load_metrics("local")
    keep = ("bleu", "bleu_lowercase", "chrf")

    started = time.perf_counter()
    num_beams = args.num_beams or model.generation_config.num_beams
    baseline, _ = evaluate_split(model, tokenizer, dataset, metrics, batch_size=args.batch_size, num_beams=num_beams,
                                 max_new_tokens=args.max_new_tokens, progress=False)
    rows = {f"beam {num_beams} (the checkpoint's decoding)": {k: baseline[k] for k in keep}}
    drawn = draw_candidates(model, tokenizer, sources, num_candidates=args.num_candidates,
                            num_samples=args.num_samples, epsilon=args.epsilon, batch_size=args.batch_size,
                            max_new_tokens=args.max_new_tokens, length_penalty=model.generation_config.length_penalty)
    top = score_translations([d["beam"][0] for d in drawn], references, metrics)
    rows[f"beam {args.num_candidates}, top of the n-best"] = {k: top[k] for k in keep}
    for name, candidates, pseudo, utility, weighting in variants(args.num_samples):
        scores = score_translations(apply_variant(drawn, candidates, pseudo, utility, weighting), references, metrics)
        rows[name] = {k: scores[k] for k in keep}
    seconds = time.perf_counter() - started

    width = max(map(len, rows))
    for name, row in rows.items():
        logging.info(f"{name:<{width}}  BLEU {row['bleu']:6.2f} | lc {row['bleu_lowercase']:6.2f} | "
                     f"chrF {row['chrf']:6.2f}")
    results = {"model": str(args.model), "split": args.split, "num_sentences": len(sources),
               "settings": {k: getattr(args, k) for k in ("num_candidates", "num_samples", "epsilon", "seed",
                                                           "max_new_tokens")} | {"num_beams": num_beams},
               "signatures": {k: baseline[f"{k}_signature"] for k in keep}, "rows": rows, "seconds": round(seconds, 1),
               "threads": torch.get_num_threads()}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        logging.info(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
