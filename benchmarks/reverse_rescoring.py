"""Rescore the beam's n-best list with the reverse direction, p(source | hypothesis), from the same model.

A model trained with bidirectional epochs (mt/bidirectional.py; the Multi30k preset) translates German→English
as well as English→German with the same weights, and no language tag: the input's language says the way. So
every candidate y of the beam for a source x can also be scored by how well it translates back into x:

    score(y) = (1 − λ) · log p(y | x) / |y|  +  λ · log p(x | y) / |x|

The first term is the beam's own score of y (with the checkpoint's length penalty, 1.0 in the preset), so
λ = 0 is plain beam search (the top of the n-best); λ > 0 prefers candidates that keep the source's content,
which is what a translation that drops or invents words loses (the "channel" term of noisy-channel reranking,
Yee et al., EMNLP 2019; here without a language model, and without a second model). Both terms are per-token
mean log-probabilities of the model itself: the beam's scores, and one teacher-forced forward pass over the
reversed pairs (an AttnMTEnsemble folder works too: its forward returns the members' averaged probabilities).

Selection stays on validation: the script picks λ on `--tune_split` (default val) by BLEU and then decodes
`--test_split` once, reporting λ = 0 and the chosen λ there. It changes nothing in the checkpoint.

    python benchmarks/reverse_rescoring.py /work/runs/r28_ensemble --data_dir ../shared/data/multi30k \
        --json benchmarks/results/reverse_rescoring_run28_ensemble.json

Prints one line per λ on the tuning split and the test split's two lines, and writes them to --json.
"""

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from eval import checkpoint_language_pair, load_corpus, load_model_and_tokenizer  # noqa: E402
from mt.data import CorpusSpec  # noqa: E402
from mt.scoring import load_metrics, score_translations  # noqa: E402

KEEP = ("bleu", "bleu_lowercase", "chrf")
DEFAULT_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def n_best(model, tokenizer, sources: list[str], *, num_beams: int, batch_size: int, max_new_tokens: int,
           length_penalty: float) -> tuple[list[list[str]], list[torch.Tensor]]:
    """The beam's `num_beams` finished hypotheses per source, best first (the first is plain beam search's), and
    their beam scores: log p(y | x) / |y|^length_penalty, what beam search itself ranks by."""
    order = sorted(range(len(sources)), key=lambda i: -len(sources[i]))  # similar lengths batch together
    found: dict[int, tuple[list[str], torch.Tensor]] = {}
    with torch.inference_mode():
        for start in tqdm(range(0, len(order), batch_size), desc="n-best", leave=False):
            indices = order[start:start + batch_size]
            batch = tokenizer([sources[i] for i in indices], return_tensors="pt", padding=True)
            beam = model.generate(**batch, num_beams=num_beams, num_return_sequences=num_beams,
                                  length_penalty=length_penalty, max_new_tokens=max_new_tokens,
                                  output_scores=True, return_dict_in_generate=True)
            texts = tokenizer.batch_decode(beam.sequences, skip_special_tokens=True)
            scores = beam.sequences_scores.float().cpu()
            for k, i in enumerate(indices):
                rows = slice(k * num_beams, (k + 1) * num_beams)
                found[i] = (texts[rows], scores[rows])
    return [found[i][0] for i in range(len(sources))], [found[i][1] for i in range(len(sources))]


def mean_log_probs(model, tokenizer, inputs: list[str], outputs: list[str], batch_size: int) -> torch.Tensor:
    """log p(output | input) / number of output tokens (end of sentence included), per pair, teacher-forced.

    Returns a float tensor of shape (len(inputs),).
    """
    if len(inputs) != len(outputs):
        raise ValueError(f"{len(inputs)} inputs for {len(outputs)} outputs.")
    scores = torch.empty(len(inputs))
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            rows = slice(start, start + batch_size)
            batch = tokenizer(inputs[rows], text_target=outputs[rows], return_tensors="pt", padding=True)
            labels = batch.pop("labels")
            mask = labels != tokenizer.pad_token_id  # (B, T)
            decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels)  # teacher forcing
            logits = model(**batch, decoder_input_ids=decoder_input_ids).logits  # (B, T, V)
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            picked = log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # (B, T)
            scores[rows] = (picked * mask).sum(-1) / mask.sum(-1)
    return scores


def reverse_scores(model, tokenizer, sources: list[str], candidates: list[list[str]],
                   batch_size: int) -> list[torch.Tensor]:
    """Per source: log p(source | candidate) / |source| for each of its candidates (the model run backwards)."""
    flat_sources = [x for x, ys in zip(sources, candidates) for _ in ys]
    flat_candidates = [y for ys in candidates for y in ys]
    reverse = mean_log_probs(model, tokenizer, flat_candidates, flat_sources, batch_size)
    return list(reverse.split([len(ys) for ys in candidates]))


def rerank(candidates: list[list[str]], forward: list[torch.Tensor], reverse: list[torch.Tensor],
           weight: float) -> list[str]:
    """The candidate with the highest (1 − λ)·forward + λ·reverse per source (ties: the beam's order)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the reverse weight λ must lie in [0, 1], got {weight}.")
    chosen = []
    for ys, f, r in zip(candidates, forward, reverse):
        combined = (1.0 - weight) * f + weight * r
        chosen.append(ys[int(torch.argmax(combined))])
    return chosen


def decode_split(model, tokenizer, spec: CorpusSpec, split: str, args) -> dict:
    dataset = load_corpus(spec, split, args.max_samples)
    sources, references = list(dataset["source"]), list(dataset["target"])
    candidates, forward = n_best(model, tokenizer, sources, num_beams=args.num_beams, batch_size=args.batch_size,
                                 max_new_tokens=args.max_new_tokens, length_penalty=args.length_penalty)
    reverse = reverse_scores(model, tokenizer, sources, candidates, args.batch_size * args.num_beams)
    return {"candidates": candidates, "forward": forward, "reverse": reverse, "references": references}


def score_weights(decoded: dict, weights, metrics: dict) -> dict[float, dict]:
    rows = {}
    for weight in weights:
        hypotheses = rerank(decoded["candidates"], decoded["forward"], decoded["reverse"], weight)
        scores = score_translations(hypotheses, decoded["references"], metrics)
        rows[weight] = {k: scores[k] for k in KEEP} | {"signatures": {k: scores[f"{k}_signature"] for k in KEEP}}
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a checkpoint folder (a train.py export or an ensemble.py folder)")
    parser.add_argument("--data_dir", default=str(REPO_ROOT.parent / "shared" / "data" / "multi30k"))
    parser.add_argument("--source_lang")
    parser.add_argument("--target_lang")
    parser.add_argument("--tune_split", default="val", help="the split λ is chosen on")
    parser.add_argument("--test_split", default="test_2016_flickr", help="decoded once with the chosen λ ('' for none)")
    parser.add_argument("--weights", type=float, nargs="+", default=list(DEFAULT_WEIGHTS), help="the λ grid")
    parser.add_argument("--max_samples", type=int, help="only the first N sentence pairs of each split")
    parser.add_argument("--num_beams", type=int, help="beam size = n-best length (default: the checkpoint's)")
    parser.add_argument("--length_penalty", type=float, help="default: the checkpoint's")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not args.weights or any(not 0.0 <= w <= 1.0 for w in args.weights):
        parser.error("--weights takes values in [0, 1]")
    if 0.0 not in args.weights:
        args.weights = [0.0, *args.weights]  # beam search itself is always a candidate rule
    if args.num_beams is not None and args.num_beams < 2:
        parser.error("--num_beams takes 2 or more (the n-best list needs two candidates)")
    if args.source_lang is None or args.target_lang is None:
        trained = checkpoint_language_pair(args.model)
        if trained is None:
            parser.error(f"--source_lang and --target_lang are required: {args.model} records no language pair")
        args.source_lang, args.target_lang = args.source_lang or trained[0], args.target_lang or trained[1]
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s | %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    spec = CorpusSpec(source_lang=args.source_lang, target_lang=args.target_lang, data_dir=args.data_dir)
    model, tokenizer = load_model_and_tokenizer(args.model)
    model.generation_config.max_length = None
    model.eval()
    args.num_beams = args.num_beams or model.generation_config.num_beams
    if args.length_penalty is None:
        args.length_penalty = model.generation_config.length_penalty or 1.0  # transformers' own default
    metrics = load_metrics("local")

    started = time.perf_counter()
    tuned = score_weights(decode_split(model, tokenizer, spec, args.tune_split, args), args.weights, metrics)
    best = max(tuned, key=lambda w: (tuned[w]["bleu"], -w))  # ties go to the smaller λ
    for weight, row in tuned.items():
        logging.info(f"{args.tune_split} λ={weight:.2f}  BLEU {row['bleu']:6.2f} | lc {row['bleu_lowercase']:6.2f} | "
                     f"chrF {row['chrf']:6.2f}{'  <- chosen' if weight == best else ''}")
    results = {"model": str(args.model), "language_pair": f"{args.source_lang}-{args.target_lang}",
               "settings": {"num_beams": args.num_beams, "length_penalty": args.length_penalty,
                            "max_new_tokens": args.max_new_tokens, "weights": args.weights},
               "tune_split": args.tune_split, "tuned": {str(w): row for w, row in tuned.items()}, "chosen_weight": best}
    if args.test_split:
        tested = score_weights(decode_split(model, tokenizer, spec, args.test_split, args), sorted({0.0, best}), metrics)
        for weight, row in tested.items():
            logging.info(f"{args.test_split} λ={weight:.2f}  BLEU {row['bleu']:6.2f} | lc {row['bleu_lowercase']:6.2f} | "
                         f"chrF {row['chrf']:6.2f}")
        results |= {"test_split": args.test_split, "test": {str(w): row for w, row in tested.items()}}
    results |= {"seconds": round(time.perf_counter() - started, 1), "threads": torch.get_num_threads()}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        logging.info(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
