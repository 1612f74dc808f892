"""Translate a list of sentences and score them: the one code path shared by train.py (validation BLEU)
and eval.py (test scores), so that the numbers logged during training and the reported ones agree.

* `load_metrics` loads the sacreBLEU-based `evaluate` modules (offline from `metrics/`, or from the Hub).
* `score_translations` gives cased BLEU (the headline number), lowercased BLEU and chrF, each with the
  sacreBLEU signature that says how it was computed.
* `translate` runs batched generation, sorted by length, optionally sharded over the processes of an
  `accelerate` run; every process gets back the full list of translations in input order.
"""

import functools
from pathlib import Path

import evaluate
import torch
from accelerate.data_loader import prepare_data_loader
from sacrebleu.metrics import BLEU, CHRF
from tqdm.auto import tqdm

METRICS_DIR = Path(__file__).resolve().parents[1] / "metrics"
METRIC_NAMES = ("sacrebleu", "chrf")
METRIC_SOURCES = ("local", "hub")


def load_metrics(source: str = "local") -> dict:
    """The `evaluate` modules that `score_translations` uses: {"sacrebleu": module, "chrf": module}.

    Args:
        source: "local" loads `metrics/sacrebleu` and `metrics/chrf` of this repository by path (no network
            needed); "hub" loads the Hub's `sacrebleu` and `chrf` modules (the same sacreBLEU calls; needs the network once).

    The modules keep their data in memory (no cache files), so that every process of a distributed run can
    score the gathered translations without lock files colliding.
    """
    if source not in METRIC_SOURCES:
        raise ValueError(f"metric source {source!r} is unknown; use one of {METRIC_SOURCES}.")
    metrics = {}
    for name in METRIC_NAMES:
        path = str(METRICS_DIR / name) if source == "local" else name
        try:
            metrics[name] = evaluate.load(path, keep_in_memory=True)
        except (OSError, ConnectionError, ImportError) as error:
            hint = " Offline, use the local modules (--metric_source local)." if source == "hub" else ""
            raise RuntimeError(f"could not load the {name!r} metric from {path} ({error}).{hint}") from error
    return metrics


@functools.cache
def _default_metrics() -> dict:
    return load_metrics("local")


def _signature(metric, hypotheses: list[str], references: list[list[str]]) -> str:
    """sacreBLEU's signature of `metric` (a BLEU or CHRF object); it needs the number of references, which
    sacreBLEU learns only by scoring."""
    metric.corpus_score(hypotheses, list(map(list, zip(*references))))
    return str(metric.get_signature())


def score_translations(hypotheses: list[str], references: list[str], metrics: dict | None = None) -> dict:
    """Corpus-level scores of detokenized translations against one reference each.

    Args:
        hypotheses: system outputs, one string per sentence.
        references: the reference translations, in the same order.
        metrics: what `load_metrics` returns; None loads the local modules (once per process).

    Returns:
        {"bleu": cased sacreBLEU (13a tokenization, exp smoothing; the headline number), "bleu_signature",
        "bleu_lowercase", "bleu_lowercase_signature", "chrf", "chrf_signature", "num_sentences"}.

    Raises:
        ValueError: the two lists differ in length, or are empty.
    """
    if len(hypotheses) != len(references):
        raise ValueError(
            f"{len(hypotheses)} hypotheses but {len(references)} references: each sentence needs exactly one of each."
        )
    if not hypotheses:
        raise ValueError("there is nothing to score: no hypotheses and no references.")
    metrics = metrics if metrics is not None else _default_metrics()
    references = [[reference] for reference in references]
    bleu = metrics["sacrebleu"].compute(predictions=hypotheses, references=references)
    bleu_lowercase = metrics["sacrebleu"].compute(predictions=hypotheses, references=references, lowercase=True)
    chrf = metrics["chrf"].compute(predictions=hypotheses, references=references)
    # The Hub modules return no signature; the one sacreBLEU computes for the same (default) settings is exact.
    return {
        "bleu": float(bleu["score"]),
        "bleu_signature": bleu.get("signature") or _signature(BLEU(), hypotheses, references),
        "bleu_lowercase": float(bleu_lowercase["score"]),
        "bleu_lowercase_signature": bleu_lowercase.get("signature") or _signature(BLEU(lowercase=True), hypotheses,
                                                                                    references),
        "chrf": float(chrf["score"]),
        "chrf_signature": chrf.get("signature") or _signature(CHRF(), hypotheses, references),
        "num_sentences": len(hypotheses),
    }


def _generation_kwargs(num_beams, length_penalty, max_new_tokens) -> dict:
    """Only the options that were set: None means "as in the model's generation_config"."""
    options = {"num_beams": num_beams, "length_penalty": length_penalty, "max_new_tokens": max_new_tokens}
    return {name: value for name, value in options.items() if value is not None}


def _truncation_kwargs(tokenizer, max_source_length: int | None) -> dict:
    """Truncate to `max_source_length`, else to the tokenizer's `model_max_length` when it has a real one
    (tokenizers saved without a limit report a huge sentinel value)."""
    if max_source_length is not None:
        return {"truncation": True, "max_length": max_source_length}
    if tokenizer.model_max_length is not None and tokenizer.model_max_length < 1_000_000:
        return {"truncation": True}
    return {}


def translate(
    model,
    tokenizer,
    sources: list[str],
    *,
    batch_size: int = 64,
    num_beams: int | None = None,
    length_penalty: float | None = None,
    max_new_tokens: int | None = None,
    max_source_length: int | None = None,
    accelerator=None,
    progress: bool = True,
    desc: str = "translating",
) -> list[str]:
    """Translate `sources` with `model.generate`, batched, and return detokenized strings in input order.

    Sentences are sorted by tokenized length (longest first) so that each batch holds sentences of similar
    length: less padding and fewer wasted decoder steps. The order is restored before returning.

    Args:
        model: a seq2seq model with `generate` (possibly wrapped by `accelerator.prepare`).
        tokenizer: its tokenizer; outputs are decoded with `batch_decode(skip_special_tokens=True)`.
        sources: the source sentences.
        batch_size: sentences per `generate` call (per process).
        num_beams, length_penalty, max_new_tokens: decoding options; None keeps the model's generation_config.
        max_source_length: truncate sources to this many tokens (None: the tokenizer's model_max_length).
        accelerator: an `accelerate.Accelerator`. With several processes the sentences are sharded, each process
            generates its share, and the outputs are gathered (each sentence counted once); every process
            receives the full list.
        progress: show a progress bar (on the main process only).
        desc: the progress bar's label.
    """
    if not sources:
        return []
    distributed = accelerator is not None and accelerator.num_processes > 1
    unwrapped = accelerator.unwrap_model(model) if accelerator is not None else model
    device = accelerator.device if accelerator is not None else unwrapped.device
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    truncation = _truncation_kwargs(tokenizer, max_source_length)

    lengths = [len(ids) for ids in tokenizer(list(sources), **truncation)["input_ids"]]
    order = sorted(range(len(sources)), key=lambda i: -lengths[i])  # stable: ties keep input order

    def collate(indices: list[int]) -> dict:
        batch = tokenizer([sources[i] for i in indices], padding=True, return_tensors="pt", **truncation)
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                "index": torch.tensor(indices, dtype=torch.long)}

    loader = torch.utils.data.DataLoader(order, batch_size=batch_size, shuffle=False, collate_fn=collate)
    if distributed:
        # The sharded loader gives each process every num_processes-th batch and repeats a few sentences to even
        # out the last round; gather_for_metrics drops those repeats again. (The module-level prepare_data_loader
        # does not register the loader with the accelerator, so save_state/load_state never see it.)
        loader = prepare_data_loader(
            loader,
            device=accelerator.device,
            num_processes=accelerator.num_processes,
            process_index=accelerator.process_index,
            put_on_device=True,
            even_batches=True,
        )
    is_main = accelerator.is_main_process if accelerator is not None else True
    generation_kwargs = _generation_kwargs(num_beams, length_penalty, max_new_tokens)

    was_training = model.training
    model.eval()
    outputs: dict[int, list[int]] = {}
    try:
        with torch.inference_mode():
            for batch in tqdm(loader, desc=desc, disable=not (progress and is_main)):
                generated = unwrapped.generate(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=batch["attention_mask"].to(device),
                    **generation_kwargs,
                )
                indices = batch["index"].to(device)
                if distributed:
                    generated = accelerator.pad_across_processes(generated, dim=1, pad_index=pad_token_id)
                    generated, indices = accelerator.gather_for_metrics((generated, indices))
                for index, ids in zip(indices.tolist(), generated.tolist()):
                    outputs[index] = ids
    finally:
        model.train(was_training)

    missing = len(sources) - len(outputs)
    if missing:
        raise RuntimeError(f"{missing} of {len(sources)} sentences came back untranslated from generation.")
    return tokenizer.batch_decode([outputs[i] for i in range(len(sources))], skip_special_tokens=True)


__all__ = ["load_metrics", "score_translations", "translate", "METRICS_DIR"]
