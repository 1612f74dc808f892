"""Score a translation checkpoint on one split of a parallel corpus: sacreBLEU (cased, the headline number, and
lowercased) and chrF, each with its sacreBLEU signature.

Any `AutoModelForSeq2SeqLM` checkpoint works (a folder, or a Hub id online): an AttnMT export (its code is loaded from the folder with
trust_remote_code) or a built-in model such as Marian.

    python eval.py --model_name_or_path runs/multi30k/model --data_dir ../shared/data/multi30k \
        --split test_2016_flickr --num_beams 5 --output_dir runs/multi30k/eval   # pair: the export's own
    python eval.py --model_name_or_path Helsinki-NLP/opus-mt-en-de --source_lang en --target_lang de ...
    accelerate launch --multi_gpu --num_processes 2 eval.py ... --cpu     # 2 CPU processes, each sentence once
    python eval.py ... --update_model_card --plot_attention 3              # scores into README.md, heatmaps

Writes (with --output_dir) `hypotheses.txt`, one translation per line in corpus order, and `results.json`:
the scores, their signatures and the decoding settings.
"""

import argparse
import contextlib
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import datasets
import transformers
from accelerate import Accelerator
from huggingface_hub import ModelCard, ModelCardData
from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

from mt.data import CorpusSpec, drop_blank_pairs, load_split
from mt.model_card import dataset_label, result_identity, split_eval_results
from mt.scoring import METRIC_SOURCES, load_metrics, score_translations, translate

# `name` or `owner/name`, as the Hub spells repository ids; anything else is taken as a local path.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")

logger = logging.getLogger("eval")


# --------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--model_name_or_path", required=True, help="a checkpoint folder (config.json, weights, tokenizer) or a Hub model id")
    model.add_argument("--trust_remote_code", action=argparse.BooleanOptionalAction, default=True,
                       help="run the model code shipped in the folder (needed for AttnMT exports; default: on)")

    data = parser.add_argument_group("data (one of --dataset_name, --data_dir, --*_file)")
    data.add_argument("--dataset_name", help="a Hub dataset id or a local dataset folder")
    data.add_argument("--dataset_config_name", help="the dataset's configuration, e.g. de-en")
    data.add_argument("--data_dir", help="a folder of line-aligned {split}.{lang}[.gz] files (the Multi30k layout)")
    data.add_argument("--train_file", help="JSON/JSON-lines/CSV file of the train split")
    data.add_argument("--validation_file", help="JSON/JSON-lines/CSV file of the validation split")
    data.add_argument("--test_file", help="JSON/JSON-lines/CSV file of the test split")
    data.add_argument("--source_lang", help="default: the pair the checkpoint was trained on (its all_results.json)")
    data.add_argument("--target_lang", help="default: the pair the checkpoint was trained on (its all_results.json)")
    data.add_argument("--split", default="test", help="split to score (Multi30k files: val, test_2016_flickr, ...)")
    data.add_argument("--max_samples", type=positive_int, help="score only the first N sentence pairs")

    decoding = parser.add_argument_group("decoding (unset: the checkpoint's generation_config)")
    decoding.add_argument("--num_beams", type=positive_int)
    decoding.add_argument("--length_penalty", type=float)
    decoding.add_argument("--max_new_tokens", type=positive_int)
    decoding.add_argument("--max_source_length", type=positive_int, help="truncate sources to N tokens")
    decoding.add_argument("--batch_size", type=positive_int, default=64, help="sentences per generate() call and process")

    output = parser.add_argument_group("output")
    output.add_argument("--output_dir", help="write hypotheses.txt and results.json here")
    output.add_argument("--metric_source", choices=METRIC_SOURCES, default="local",
                        help="local: metrics/ of this repository (offline); hub: evaluate.load from the Hub")
    output.add_argument("--update_model_card", action="store_true",
                        help="add the scores to the checkpoint's README.md model-index (its text is kept)")
    output.add_argument("--plot_attention", type=non_negative_int, default=0,
                        help="save attention heatmaps of the first N sentences of the split")
    output.add_argument("--attention_sentences", nargs="+", metavar="SENTENCE",
                        help="save attention heatmaps of these source sentences instead")
    output.add_argument("--plot_dir", help="folder for the heatmaps (default: OUTPUT_DIR/attention or attention_plots)")
    output.add_argument("--cpu", action="store_true",
                        help="run on the CPU even if a GPU is present; needed for several CPU processes")
    output.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.source_lang is None or args.target_lang is None:
        trained = trained_language_pair(args.model_name_or_path)
        if trained is None:
            parser.error(f"--source_lang and --target_lang are required: {args.model_name_or_path} does not record the "
                         "language pair it was trained on (no all_results.json from train.py)")
        args.source_lang = args.source_lang or trained[0]
        args.target_lang = args.target_lang or trained[1]
    return args


def trained_language_pair(model_name_or_path: str) -> tuple[str, str] | None:
    """(source, target) from the all_results.json that train.py writes beside an export, or None."""
    path = Path(model_name_or_path) / "all_results.json"
    try:
        config = json.loads(path.read_text()).get("config", {})
    except (OSError, ValueError, AttributeError):
        return None
    if config.get("source_lang") and config.get("target_lang"):
        return config["source_lang"], config["target_lang"]
    return None


def checkpoint_language_pair(model_dir: str) -> tuple[str, str] | None:
    """The pair a checkpoint folder was trained on: train.py's all_results.json sits beside `model/` and `best/` (in
    the parent folder) or, for a folder copied elsewhere, in it."""
    return trained_language_pair(str(Path(model_dir).parent)) or trained_language_pair(model_dir)


def corpus_spec(args: argparse.Namespace) -> CorpusSpec:
    return CorpusSpec(
        source_lang=args.source_lang,
        target_lang=args.target_lang,
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
        data_dir=args.data_dir,
        train_file=args.train_file,
        validation_file=args.validation_file,
        test_file=args.test_file,
    )


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def build_accelerator(cpu: bool) -> Accelerator:
    """An Accelerator; refuses a multi-process launch whose processes cannot see each other (hf5-notes §J)."""
    accelerator = Accelerator(cpu=cpu)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes == 1:
        raise RuntimeError(
            f"{launched} processes were launched but each one runs alone (no GPU for each): every process would "
            "score the whole split. Pass --cpu (or set ACCELERATE_USE_CPU=true) to run them as one CPU group."
        )
    return accelerator


def load_model_and_tokenizer(model_name_or_path: str, trust_remote_code: bool = True):
    """Load a seq2seq checkpoint folder and its tokenizer through the Auto classes.

    `model_name_or_path` is a local folder or, online, a Hub model id (e.g. Helsinki-NLP/opus-mt-en-de).

    Raises:
        FileNotFoundError: the folder or its config.json is missing, or the Hub id cannot be fetched.
        ValueError: the checkpoint is not an encoder-decoder (e.g. GPT-2, BERT).
    """
    path = Path(model_name_or_path)
    if path.exists() or not HUB_ID.fullmatch(model_name_or_path):
        if not path.is_dir():
            raise FileNotFoundError(
                f"checkpoint folder {path} does not exist (--model_name_or_path takes a local folder or a Hub id)."
            )
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: it is not a saved transformers checkpoint.")
    try:
        config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    except OSError as error:  # a Hub id that cannot be fetched (offline, private, misspelt)
        raise FileNotFoundError(
            f"{model_name_or_path!r} is not a local folder and could not be fetched from the Hub "
            f"({str(error).strip().splitlines()[0]}). "
            "Offline, pass the folder of a saved checkpoint instead."
        ) from None
    if not getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            f"{model_name_or_path}: config is {config.model_type}, not an encoder-decoder ({type(config).__name__}); "
            "eval.py scores sequence-to-sequence translation models (AutoModelForSeq2SeqLM)."
        )
    model = AutoModelForSeq2SeqLM.from_pretrained(model_name_or_path, config=config, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    return model, tokenizer


def load_corpus(spec: CorpusSpec, split: str, max_samples: int | None = None) -> datasets.Dataset:
    """The split as `source`/`target` columns, blank pairs dropped, cut to `max_samples` pairs."""
    dataset = drop_blank_pairs(load_split(spec, split), split)
    if max_samples is not None and max_samples < len(dataset):
        dataset = dataset.select(range(max_samples))
    return dataset


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------


def evaluate_split(
    model,
    tokenizer,
    dataset: datasets.Dataset,
    metrics: dict,
    *,
    accelerator: Accelerator | None = None,
    batch_size: int = 64,
    num_beams: int | None = None,
    length_penalty: float | None = None,
    max_new_tokens: int | None = None,
    max_source_length: int | None = None,
    progress: bool = True,
) -> tuple[dict, list[str]]:
    """Translate the split's sources and score them against its targets; returns (scores, hypotheses)."""
    hypotheses = translate(
        model,
        tokenizer,
        list(dataset["source"]),
        batch_size=batch_size,
        num_beams=num_beams,
        length_penalty=length_penalty,
        max_new_tokens=max_new_tokens,
        max_source_length=max_source_length,
        accelerator=accelerator,
        progress=progress,
        desc="translating",
    )
    return score_translations(hypotheses, list(dataset["target"]), metrics), hypotheses


def decoding_settings(model, args: argparse.Namespace) -> dict:
    """The decoding options in effect: the flags, else the checkpoint's generation_config."""
    generation_config = model.generation_config
    return {
        "num_beams": args.num_beams if args.num_beams is not None else generation_config.num_beams,
        "length_penalty": args.length_penalty if args.length_penalty is not None else generation_config.length_penalty,
        "max_new_tokens": args.max_new_tokens if args.max_new_tokens is not None else generation_config.max_new_tokens,
        "max_length": None if args.max_new_tokens is not None else generation_config.max_length,
        "max_source_length": args.max_source_length,
        "batch_size": args.batch_size,
    }


def write_outputs(output_dir: str | Path, results: dict, hypotheses: list[str]) -> None:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # One line per sentence, whatever the model produced: a newline inside a hypothesis would shift every later line.
    lines = [" ".join(hypothesis.splitlines()) for hypothesis in hypotheses]
    (output_dir / "hypotheses.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    (output_dir / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def update_model_card(model_dir: str | Path, results: dict) -> Path:
    """Write the scores into `model_dir/README.md` as Hub model-index metadata (huggingface_hub's EvalResult),
    replacing earlier results of the same metric on the same dataset split and keeping the card's text."""
    readme = Path(model_dir) / "README.md"
    if readme.is_file():
        card = ModelCard.load(readme)
    else:
        card = ModelCard(f"---\n{ModelCardData().to_yaml()}\n---\n\n# {Path(model_dir).resolve().name}\n")
    new_results = split_eval_results(results, results["dataset"], results["source_lang"], results["target_lang"],
                                     results["split"])
    replaced = {result_identity(result) for result in new_results}
    kept = [result for result in (card.data.eval_results or []) if result_identity(result) not in replaced]
    card.data.eval_results = kept + new_results
    card.data.model_name = card.data.model_name or Path(model_dir).resolve().name
    card.save(readme)
    return readme


def plot_sentences(args: argparse.Namespace, dataset: datasets.Dataset) -> list[str]:
    if args.attention_sentences:
        return list(args.attention_sentences)
    return list(dataset["source"][: args.plot_attention])


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def setup_logging(accelerator: Accelerator) -> None:
    level = logging.INFO if accelerator.is_main_process else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level, force=True)
    datasets.utils.logging.set_verbosity(logging.WARNING)
    transformers.utils.logging.set_verbosity(logging.WARNING if accelerator.is_main_process else logging.ERROR)


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No progress bars from datasets (filtering) and transformers (weight loading) while the inputs load; the
    previous setting is restored, so that eval.main() called from Python changes nothing for the caller."""
    datasets_bars = not datasets.are_progress_bars_disabled()
    transformers_bars = transformers.utils.logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        if datasets_bars:
            datasets.enable_progress_bars()
        if transformers_bars:
            transformers.utils.logging.enable_progress_bar()


def run(args: argparse.Namespace, accelerator: Accelerator, model, tokenizer, dataset: datasets.Dataset,
        metrics: dict) -> dict:
    """Translate, score, write the outputs (main process) and log the summary; returns results.json's content."""
    spec = corpus_spec(args)
    model.to(accelerator.device)
    logger.info(
        f"scoring {args.model_name_or_path} ({model.config.model_type}) on {spec.describe()} split {args.split!r}, "
        f"{len(dataset)} sentences | {accelerator.num_processes} processes ({accelerator.distributed_type}), "
        f"device {accelerator.device}"
    )

    scores, hypotheses = evaluate_split(
        model,
        tokenizer,
        dataset,
        metrics,
        accelerator=accelerator,
        batch_size=args.batch_size,
        num_beams=args.num_beams,
        length_penalty=args.length_penalty,
        max_new_tokens=args.max_new_tokens,
        max_source_length=args.max_source_length,
        progress=not args.no_progress,
    )
    results = {
        "model": str(args.model_name_or_path),
        "model_type": model.config.model_type,
        "dataset": dataset_label(spec),
        "corpus": spec.describe(),
        "split": args.split,
        "source_lang": args.source_lang,
        "target_lang": args.target_lang,
        **scores,
        "decoding": decoding_settings(model, args),
        "metric_source": args.metric_source,
        "num_processes": accelerator.num_processes,
    }

    if accelerator.is_main_process:
        if args.output_dir:
            write_outputs(args.output_dir, results, hypotheses)
            logger.info(f"wrote {Path(args.output_dir) / 'hypotheses.txt'} and results.json")
        if args.update_model_card:
            logger.info(f"updated the model-index of {update_model_card(args.model_name_or_path, results)}")
        sentences = plot_sentences(args, dataset)
        if sentences:
            from mt.attention_plots import plot_attention  # matplotlib only when pictures are asked for

            plot_dir = args.plot_dir or (Path(args.output_dir) / "attention" if args.output_dir else "attention_plots")
            maps = plot_attention(model, tokenizer, sentences, plot_dir, num_beams=args.num_beams,
                                  max_new_tokens=args.max_new_tokens)
            logger.info(f"saved {sum(len(m.files) for m in maps)} attention heatmaps to {plot_dir}")
    accelerator.wait_for_everyone()
    logger.info(
        f"{results['dataset']} {args.split} ({scores['num_sentences']} sentences): BLEU {scores['bleu']:.2f} | "
        f"lowercased BLEU {scores['bleu_lowercase']:.2f} | chrF {scores['chrf']:.2f} | "
        f"signatures: BLEU {scores['bleu_signature']}, lowercased {scores['bleu_lowercase_signature']}, "
        f"chrF {scores['chrf_signature']}"
    )
    return results


# Errors a user can cause and fix while the inputs are loaded (missing folder, wrong split or language, a checkpoint
# that is not seq2seq, no network for --metric_source hub): reported in one line, without a traceback.
EXPECTED_ERRORS = (OSError, ValueError, RuntimeError)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with quiet_loading():
            dataset = load_corpus(corpus_spec(args), args.split, args.max_samples)
            model, tokenizer = load_model_and_tokenizer(args.model_name_or_path, args.trust_remote_code)
            metrics = load_metrics(args.metric_source)
        accelerator = build_accelerator(args.cpu)
    except EXPECTED_ERRORS as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    setup_logging(accelerator)
    run(args, accelerator, model, tokenizer, dataset, metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
