"""Sequence-level knowledge distillation (Kim & Rush, 2016): translate one split of a parallel corpus with a
teacher checkpoint and write the result as a line-aligned corpus folder that train.py and eval.py read with
--data_dir.

    python distill.py --model_name_or_path runs/teacher/model --data_dir ../shared/data/multi30k \
        --source_lang en --target_lang de --split train --num_beams 5 --keep_original \
        --copy_splits val test_2016_flickr --output_dir runs/multi30k_distilled
    python train.py --config configs/train/multi30k_en_de.yaml --data_dir runs/multi30k_distilled ...
    accelerate launch --multi_gpu --num_processes 2 distill.py ... --cpu    # 2 CPU processes share the work

Writes into --output_dir:

* `{split}.{src}` / `{split}.{tgt}`: the split's sources and the teacher's translations of them (with
  --keep_original, the original pairs first and the distilled pairs after them: the union, twice the size);
* `{other}.{src}` / `{other}.{tgt}` for each --copy_splits split, unchanged: validation and test keep their
  human references, so that scores of a student stay comparable;
* `distillation.json`: the teacher, the corpus, the decoding settings, the counts, the time taken, and the
  teacher's scores against the split's own references (how far the distilled targets are from the originals).

The sources are translated in chunks, each saved under OUTPUT_DIR/.distill_parts/ as soon as it is done; the
same command started again after an interruption resumes after the last finished chunk. The corpus files are
written atomically, and distillation.json last: a folder that has it is complete.
"""

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import datasets
from accelerate import Accelerator

from eval import (
    EXPECTED_ERRORS,
    build_accelerator,
    corpus_spec,
    load_corpus,
    load_model_and_tokenizer,
    positive_int,
    quiet_loading,
    setup_logging,
)
from mt.data import CorpusSpec
from mt.model_card import dataset_label
from mt.scoring import load_metrics, score_translations, translate

PARTS_DIR = ".distill_parts"
MANIFEST = "manifest.json"
RECORD = "distillation.json"

logger = logging.getLogger("distill")


# --------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    model = parser.add_argument_group("teacher")
    model.add_argument("--model_name_or_path", required=True,
                       help="the teacher: a checkpoint folder (config.json, weights, tokenizer) or a Hub model id")
    model.add_argument("--trust_remote_code", action=argparse.BooleanOptionalAction, default=True,
                       help="run the model code shipped in the folder (needed for AttnMT exports; default: on)")

    data = parser.add_argument_group("data (one of --dataset_name, --data_dir, --*_file)")
    data.add_argument("--dataset_name", help="a Hub dataset id or a local dataset folder")
    data.add_argument("--dataset_config_name", help="the dataset's configuration, e.g. de-en")
    data.add_argument("--data_dir", help="a folder of line-aligned {split}.{lang}[.gz] files (the Multi30k layout)")
    data.add_argument("--train_file", help="JSON/JSON-lines/CSV file of the train split")
    data.add_argument("--validation_file", help="JSON/JSON-lines/CSV file of the validation split")
    data.add_argument("--test_file", help="JSON/JSON-lines/CSV file of the test split")
    data.add_argument("--source_lang", required=True)
    data.add_argument("--target_lang", required=True)
    data.add_argument("--split", default="train", help="the split whose sources the teacher translates (default: train)")
    data.add_argument("--max_samples", type=positive_int, help="translate only the first N sentence pairs")
    data.add_argument("--keep_original", action="store_true",
                      help="write the original pairs too, followed by the distilled ones (the union)")
    data.add_argument("--copy_splits", nargs="*", default=[], metavar="SPLIT",
                      help="splits written to the output folder unchanged (e.g. val test_2016_flickr)")

    decoding = parser.add_argument_group("decoding (unset: the teacher's generation_config)")
    decoding.add_argument("--num_beams", type=positive_int)
    decoding.add_argument("--length_penalty", type=float)
    decoding.add_argument("--max_new_tokens", type=positive_int)
    decoding.add_argument("--max_source_length", type=positive_int, help="truncate sources to N tokens")
    decoding.add_argument("--batch_size", type=positive_int, default=64, help="sentences per generate() call and process")

    output = parser.add_argument_group("output")
    output.add_argument("--output_dir", required=True, help="the distilled corpus folder")
    output.add_argument("--chunk_size", type=positive_int, default=2000,
                        help="sentences translated between two saves (what an interruption can cost)")
    output.add_argument("--overwrite", action="store_true", help="replace corpus files already in --output_dir")
    output.add_argument("--cpu", action="store_true",
                        help="run on the CPU even if a GPU is present; needed for several CPU processes")
    output.add_argument("--no_progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.split in args.copy_splits:
        parser.error(f"--copy_splits names {args.split!r}, the split being distilled; list only the other splits.")
    return args


def output_files(args: argparse.Namespace) -> list[Path]:
    output_dir = Path(args.output_dir)
    splits = [args.split, *args.copy_splits]
    return [output_dir / f"{split}.{lang}" for split in splits for lang in (args.source_lang, args.target_lang)]


def check_output_dir(args: argparse.Namespace) -> None:
    """Refuse to write over the input corpus, or over a corpus already in the output folder without --overwrite."""
    output_dir = Path(args.output_dir).resolve()
    if args.data_dir is not None and Path(args.data_dir).resolve() == output_dir:
        raise ValueError(f"--output_dir {args.output_dir} is the input --data_dir: distilling there would overwrite "
                         "the original corpus. Choose another folder.")
    existing = [path.name for path in output_files(args) if path.exists()]
    if existing and not args.overwrite:
        raise FileExistsError(f"{args.output_dir} already holds {', '.join(existing)}. Pass --overwrite to replace "
                              "them, or choose another --output_dir.")


# --------------------------------------------------------------------------------------------------
# Chunked, resumable translation
# --------------------------------------------------------------------------------------------------


def run_identity(args: argparse.Namespace, sources: list[str]) -> dict:
    """What a saved chunk depends on: a resumed run must match it, or its chunks would mix two teachers."""
    digest = hashlib.sha256("\n".join(sources).encode("utf-8")).hexdigest()
    return {
        "teacher": str(Path(args.model_name_or_path).resolve()) if Path(args.model_name_or_path).exists()
        else args.model_name_or_path,
        "split": args.split,
        "source_lang": args.source_lang,
        "target_lang": args.target_lang,
        "num_sentences": len(sources),
        "sources_sha256": digest,
        "chunk_size": args.chunk_size,
        "num_beams": args.num_beams,
        "length_penalty": args.length_penalty,
        "max_new_tokens": args.max_new_tokens,
        "max_source_length": args.max_source_length,
    }


def prepare_parts(parts_dir: Path, identity: dict, accelerator: Accelerator) -> None:
    """Create the chunk folder, or check that the one left by an interrupted run belongs to this same run."""
    manifest = parts_dir / MANIFEST
    if accelerator.is_main_process:
        if manifest.is_file():
            saved = json.loads(manifest.read_text())
            changed = sorted(key for key in identity if saved.get(key) != identity[key])
            if changed:
                raise ValueError(
                    f"{parts_dir} holds the chunks of an interrupted run with other settings ({', '.join(changed)} "
                    "differ). Start that run again with its own arguments to finish it, or delete the folder to "
                    "start over."
                )
        else:
            parts_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(manifest, json.dumps(identity, indent=2) + "\n")
    accelerator.wait_for_everyone()


def part_path(parts_dir: Path, index: int) -> Path:
    return parts_dir / f"part-{index:05d}.jsonl"


def translate_in_chunks(model, tokenizer, sources: list[str], args: argparse.Namespace, accelerator: Accelerator,
                        parts_dir: Path) -> tuple[list[str], int]:
    """Translate `sources` chunk by chunk, skipping chunks saved by an earlier run; returns the translations in
    input order and how many chunks were resumed rather than translated.

    The sentences are put in order of tokenized length before being cut into chunks, so that each chunk (and each
    batch inside it) holds sentences of similar length, as a single translate() call over the split would.
    """
    lengths = [len(ids) for ids in tokenizer(sources)["input_ids"]]
    order = sorted(range(len(sources)), key=lambda i: -lengths[i])
    chunks = [order[start:start + args.chunk_size] for start in range(0, len(order), args.chunk_size)]
    translations: dict[int, str] = {}
    resumed = 0
    started = time.perf_counter()
    for number, indices in enumerate(chunks):
        path = part_path(parts_dir, number)
        if path.is_file():
            saved = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
            translations.update((entry["index"], entry["translation"]) for entry in saved)
            resumed += 1
            continue
        hypotheses = translate(
            model,
            tokenizer,
            [sources[i] for i in indices],
            batch_size=args.batch_size,
            num_beams=args.num_beams,
            length_penalty=args.length_penalty,
            max_new_tokens=args.max_new_tokens,
            max_source_length=args.max_source_length,
            accelerator=accelerator,
            progress=not args.no_progress,
            desc=f"chunk {number + 1}/{len(chunks)}",
        )
        # One line per sentence, whatever the model produced: a newline inside a translation would misalign the corpus.
        hypotheses = [" ".join(hypothesis.split()) for hypothesis in hypotheses]
        translations.update(zip(indices, hypotheses))
        if accelerator.is_main_process:
            write_atomic(path, "".join(json.dumps({"index": i, "translation": h}, ensure_ascii=False) + "\n"
                                       for i, h in zip(indices, hypotheses)))
        accelerator.wait_for_everyone()
        done = sum(len(chunk) for chunk in chunks[: number + 1])
        elapsed = time.perf_counter() - started
        logger.info(f"chunk {number + 1}/{len(chunks)} saved | {done:,}/{len(sources):,} sentences | "
                    f"{elapsed / 60:.1f} min this run")
    missing = len(sources) - len(translations)
    if missing:
        raise RuntimeError(f"{missing} of {len(sources)} sentences have no translation in {parts_dir}: delete the "
                           "folder and run again.")
    return [translations[i] for i in range(len(sources))], resumed


# --------------------------------------------------------------------------------------------------
# Writing the corpus
# --------------------------------------------------------------------------------------------------


def write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def write_lines(path: Path, lines: list[str]) -> None:
    write_atomic(path, "".join(line + "\n" for line in lines))


def distilled_pairs(sources: list[str], targets: list[str], translations: list[str],
                    keep_original: bool) -> tuple[list[str], list[str], int]:
    """The pairs to write: (sources, targets, number of distilled pairs dropped because the teacher said nothing)."""
    kept = [(source, translation) for source, translation in zip(sources, translations) if translation]
    dropped = len(sources) - len(kept)
    new_sources = [source for source, _ in kept]
    new_targets = [translation for _, translation in kept]
    if keep_original:
        return sources + new_sources, targets + new_targets, dropped
    return new_sources, new_targets, dropped


def copy_split(spec: CorpusSpec, split: str, output_dir: Path) -> int:
    dataset = load_corpus(spec, split)
    write_lines(output_dir / f"{split}.{spec.source_lang}", list(dataset["source"]))
    write_lines(output_dir / f"{split}.{spec.target_lang}", list(dataset["target"]))
    return len(dataset)


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, accelerator: Accelerator, model, tokenizer, dataset: datasets.Dataset,
        metrics: dict) -> dict:
    """Translate (resuming the chunks in OUTPUT_DIR/.distill_parts, which `prepare_parts` has checked), write the
    corpus folder (main process) and log a summary; returns distillation.json's content."""
    spec = corpus_spec(args)
    output_dir = Path(args.output_dir)
    parts_dir = output_dir / PARTS_DIR
    sources, targets = list(dataset["source"]), list(dataset["target"])
    model.to(accelerator.device)
    logger.info(f"distilling {spec.describe()} split {args.split!r} ({len(sources):,} sentences) with "
                f"{args.model_name_or_path} | {accelerator.num_processes} processes, device {accelerator.device}")

    started = time.perf_counter()
    translations, resumed = translate_in_chunks(model, tokenizer, sources, args, accelerator, parts_dir)
    seconds = time.perf_counter() - started
    teacher_scores = score_translations(translations, targets, metrics)

    out_sources, out_targets, dropped = distilled_pairs(sources, targets, translations, args.keep_original)
    generation_config = model.generation_config
    record = {
        "teacher": str(args.model_name_or_path),
        "teacher_model_type": model.config.model_type,
        "dataset": dataset_label(spec),
        "corpus": spec.describe(),
        "split": args.split,
        "source_lang": args.source_lang,
        "target_lang": args.target_lang,
        "num_sentences": len(sources),
        "keep_original": args.keep_original,
        "num_distilled_pairs": len(sources) - dropped,
        "num_empty_translations_dropped": dropped,
        "num_pairs_written": len(out_sources),
        "identical_to_reference": sum(t == r for t, r in zip(translations, targets)),
        "copied_splits": {},
        "teacher_scores_against_references": teacher_scores,
        "decoding": {
            "num_beams": args.num_beams if args.num_beams is not None else generation_config.num_beams,
            "length_penalty": args.length_penalty if args.length_penalty is not None else generation_config.length_penalty,
            "max_new_tokens": args.max_new_tokens if args.max_new_tokens is not None else generation_config.max_new_tokens,
            "max_source_length": args.max_source_length,
            "batch_size": args.batch_size,
        },
        "chunks_resumed": resumed,
        "translation_seconds_this_run": round(seconds, 1),
        "num_processes": accelerator.num_processes,
    }
    if accelerator.is_main_process:
        write_lines(output_dir / f"{args.split}.{args.source_lang}", out_sources)
        write_lines(output_dir / f"{args.split}.{args.target_lang}", out_targets)
        for split in args.copy_splits:
            record["copied_splits"][split] = copy_split(spec, split, output_dir)
        write_atomic(output_dir / RECORD, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        shutil.rmtree(parts_dir)
    accelerator.wait_for_everyone()
    logger.info(
        f"wrote {len(out_sources):,} pairs to {output_dir / args.split}.{{{args.source_lang},{args.target_lang}}} "
        f"({len(sources) - dropped:,} distilled{', after the originals' if args.keep_original else ''}; "
        f"{dropped} empty translations dropped) in {seconds / 60:.1f} min | teacher vs the references: "
        f"BLEU {teacher_scores['bleu']:.2f}, chrF {teacher_scores['chrf']:.2f}"
    )
    return record


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_output_dir(args)
        with quiet_loading():
            spec = corpus_spec(args)
            dataset = load_corpus(spec, args.split, args.max_samples)
            for split in args.copy_splits:  # a misspelt split fails now, not after an hour of translation
                load_corpus(spec, split, max_samples=1)
            model, tokenizer = load_model_and_tokenizer(args.model_name_or_path, args.trust_remote_code)
            metrics = load_metrics("local")
        accelerator = build_accelerator(args.cpu)
        prepare_parts(Path(args.output_dir) / PARTS_DIR, run_identity(args, list(dataset["source"])), accelerator)
    except EXPECTED_ERRORS as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    setup_logging(accelerator)
    run(args, accelerator, model, tokenizer, dataset, metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
