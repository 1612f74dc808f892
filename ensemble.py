"""Combine independently trained AttnMT models (same tokenizer, e.g. different seeds) into one ensemble
checkpoint that averages their next-token probabilities at every decoding step, and export it as a
self-contained Hugging Face folder.

    python train.py --config configs/train/multi30k_en_de.yaml --seed 42 --output_dir runs/seed42
    python train.py --config configs/train/multi30k_en_de.yaml --seed 1 --output_dir runs/seed1
    python ensemble.py --members runs/seed42/model runs/seed1/model --output_dir runs/ensemble
    python eval.py --model_name_or_path runs/ensemble --data_dir ../shared/data/multi30k --split test_2016_flickr

The folder loads like any model, `AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True)`,
and decodes with `generate()` (beam search and the KV cache included) and the `translation` pipeline. It
holds every member's weights: M members cost M times the parameters and about M times the decoding time.

Writes into --output_dir (atomically: an earlier export is replaced only once the new one is complete):
config.json (model_type attnmt_ensemble, the members' configs inside), the model code, model.safetensors,
the tokenizer, generation_config.json (the first member's decoding settings, or --num_beams and
--length_penalty), README.md (a model card listing the members and their scores), and all_results.json
(the language pair and the members' recorded results, read by eval.py).
"""

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer

from modeling import AttnMTEnsembleForConditionalGeneration, AttnMTForConditionalGeneration
from mt.export import export_model
from mt.model_card import render_ensemble_card

logger = logging.getLogger("ensemble")

EXPECTED_ERRORS = (OSError, ValueError, RuntimeError)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--members", nargs="+", required=True, metavar="FOLDER",
                        help="two or more exported AttnMT folders (train.py's OUTPUT_DIR/model) that share one tokenizer")
    parser.add_argument("--output_dir", required=True, help="the ensemble folder to create or replace")
    parser.add_argument("--num_beams", type=int, help="beam size saved in generation_config.json (default: member 0's)")
    parser.add_argument("--length_penalty", type=float, help="saved in generation_config.json (default: member 0's)")
    parser.add_argument("--model_id", help="name used in the model card (default: the output folder's name)")
    args = parser.parse_args(argv)
    if len(args.members) < 2:
        parser.error(f"--members needs at least two folders, got {len(args.members)}: an ensemble of one model is that model")
    if len({Path(member).resolve() for member in args.members}) < len(args.members):
        parser.error("--members lists the same folder twice: each member should be a different model")
    if args.num_beams is not None and args.num_beams < 1:
        parser.error(f"--num_beams must be a positive integer, got {args.num_beams}")
    return args


def load_member(folder: str) -> tuple[AttnMTForConditionalGeneration, object, dict]:
    """The model, tokenizer and recorded results (all_results.json, {} when absent) of one member folder.

    Raises:
        FileNotFoundError: the folder or its config.json is missing.
        ValueError: the folder holds another kind of model (the ensemble combines single AttnMT models).
    """
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"member {path} is not an exported model folder (no config.json); pass train.py's OUTPUT_DIR/model."
        )
    config = AutoConfig.from_pretrained(path, trust_remote_code=True)
    if config.model_type != "attnmt":
        raise ValueError(
            f"member {path} is a {config.model_type!r} model; an ensemble combines single AttnMT models "
            "(an ensemble cannot be a member: list its members instead)."
        )
    model = AttnMTForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    results_file = path / "all_results.json"
    results = json.loads(results_file.read_text(encoding="utf-8")) if results_file.is_file() else {}
    return model, tokenizer, results


def check_same_tokenizer(tokenizers: list, folders: list[str]) -> None:
    """Raise `ValueError` unless every tokenizer has the same vocabulary and special tokens as the first:
    the ensemble averages distributions over token ids, which is meaningful only if the ids mean the same."""
    reference = tokenizers[0]
    for folder, tokenizer in zip(folders[1:], tokenizers[1:]):
        if tokenizer.get_vocab() != reference.get_vocab():
            raise ValueError(
                f"member {folder} has a different vocabulary from {folders[0]}: ensemble members must share one "
                "tokenizer (train them on the same data with the same vocabulary settings, or with one tokenizer folder)."
            )
        if tokenizer.all_special_tokens != reference.all_special_tokens:
            raise ValueError(
                f"member {folder} has special tokens {tokenizer.all_special_tokens}, {folders[0]} has "
                f"{reference.all_special_tokens}: ensemble members must share one tokenizer."
            )


def language_pair(member_results: list[dict], folders: list[str]) -> tuple[str | None, str | None]:
    """The members' common (source, target) from their all_results.json; an error when they differ."""
    pairs = {(r.get("config", {}).get("source_lang"), r.get("config", {}).get("target_lang")) for r in member_results if r}
    if len(pairs) > 1:
        raise ValueError(
            f"the members were trained on different language pairs {sorted(pairs, key=str)} ({', '.join(folders)}): "
            "an ensemble translates one direction."
        )
    return next(iter(pairs), (None, None))


def build_ensemble(folders: list[str], num_beams: int | None = None, length_penalty: float | None = None):
    """Load the members and return (ensemble, tokenizer, member_results)."""
    loaded = [load_member(folder) for folder in folders]
    models, tokenizers, member_results = map(list, zip(*loaded))
    check_same_tokenizer(tokenizers, folders)
    ensemble = AttnMTEnsembleForConditionalGeneration.from_members(models).eval()
    if num_beams is not None:
        ensemble.generation_config.num_beams = num_beams
    if length_penalty is not None:
        ensemble.generation_config.length_penalty = length_penalty
    return ensemble, tokenizers[0], member_results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        ensemble, tokenizer, member_results = build_ensemble(args.members, args.num_beams, args.length_penalty)
        source_lang, target_lang = language_pair(member_results, args.members)
        output_dir = Path(args.output_dir)
        summary = {
            "config": {"source_lang": source_lang, "target_lang": target_lang},
            "num_parameters": sum(p.numel() for p in ensemble.parameters()),
            "members": [
                {"folder": os.path.abspath(folder), "validation": results.get("validation"), "test": results.get("test"),
                 "train_seconds": results.get("train_seconds"), "seed": results.get("config", {}).get("seed"),
                 "num_parameters": sum(p.numel() for p in member.parameters())}
                for folder, results, member in zip(args.members, member_results, ensemble.members)
            ],
        }
        card = render_ensemble_card(ensemble, summary, model_id=args.model_id or output_dir.resolve().name)
        export_model(ensemble, tokenizer, output_dir, model_card=card)
        temporary = output_dir / "all_results.json.tmp"
        temporary.write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
        os.replace(temporary, output_dir / "all_results.json")
    except EXPECTED_ERRORS as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    logger.info(f"ensemble of {len(args.members)} members ({summary['num_parameters']:,} parameters) exported to "
                f"{output_dir}; score it with: python eval.py --model_name_or_path {output_dir} --split ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
