"""Fill `model_card.md` (the repository's template) with what a run measured, plus Hub metadata."""

import string
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE = Path(__file__).resolve().parents[1] / "model_card.md"


def dataset_label(spec) -> str:
    """A readable dataset name for results and model cards: the Hub id or folder name, "Multi30k (task 1)" for
    the raw Multi30k folder, else the data file's name. `spec` is a CorpusSpec or a TrainingConfig."""
    if spec.dataset_name:
        return spec.dataset_name
    if spec.data_dir:
        name = Path(spec.data_dir).resolve().name
        return "Multi30k (task 1)" if name.lower() == "multi30k" else name
    data_file = spec.test_file or spec.validation_file or spec.train_file
    return Path(data_file).name if data_file else "custom corpus"


SCORE_KEYS = ("bleu", "bleu_lowercase", "chrf")


def split_eval_results(scores: dict, dataset: str, source_lang: str, target_lang: str, split: str) -> list[EvalResult]:
    """Hub model-index entries (task translation, dataset, language pair, split) for cased BLEU, lowercased BLEU
    and chrF of one split, each with its sacreBLEU signature. train.py's card and eval.py write the same entries,
    so that a later eval.py run on the same split replaces them instead of adding duplicates."""
    return [
        EvalResult(
            task_type="translation", task_name="Translation", dataset_type=dataset, dataset_name=dataset,
            dataset_config=f"{source_lang}-{target_lang}", dataset_split=split,
            metric_type="chrf" if key == "chrf" else "bleu", metric_name=f"{key} ({split})",
            metric_value=round(scores[key], 2), metric_config=scores[f"{key}_signature"],
        )
        for key in SCORE_KEYS
    ]


def result_identity(result: EvalResult) -> tuple:
    """What makes two model-index entries the same measurement (the value aside)."""
    return (result.task_type, result.dataset_type, result.dataset_config, result.dataset_split, result.metric_type,
            result.metric_name)


def eval_results(results: dict, config, dataset: str) -> list[EvalResult]:
    entries = []
    for split in ("validation", "test"):
        if split in results:
            split_name = getattr(config, f"{split}_split") or split
            entries += split_eval_results(results[split], dataset, config.source_lang, config.target_lang, split_name)
    return entries


def regularisation_extras(config) -> str:
    """The regularisers beyond dropout, label smoothing and weight decay that the run used, for the card's table."""
    extras = []
    if config.source_token_dropout or config.target_token_dropout:
        extras.append(f"token dropout {config.source_token_dropout:g} (source) and {config.target_token_dropout:g} "
                      "(target inputs), tokens replaced with `<unk>`")
    if config.rdrop_alpha:
        extras.append(f"R-Drop α {config.rdrop_alpha:g} (each batch twice, symmetric KL; Liang et al. 2021)")
    return "".join(f", {extra}" for extra in extras)


def render_model_card(model, config, results: dict, model_id: str | None = None) -> str:
    """Return the README.md text (YAML metadata + filled template) for an exported model."""
    dataset = dataset_label(config)
    model_id = model_id or config.hub_model_id or Path(config.output_dir).name
    rows, signatures = [], []
    for split in ("validation", "test"):
        if split in results:
            r = results[split]
            rows.append(f"| {getattr(config, f'{split}_split') or split} | {r['num_sentences']} | {r['bleu']:.2f} | "
                        f"{r['bleu_lowercase']:.2f} | {r['chrf']:.2f} |")
            signatures.append(f"- {split} BLEU: `{r['bleu_signature']}`\n- {split} lowercased BLEU: "
                              f"`{r['bleu_lowercase_signature']}`\n- {split} chrF: `{r['chrf_signature']}`")
    c = model.config
    selection = results.get("selection", {})
    selected = (f"average of checkpoints {', '.join(selection.get('averaged_checkpoints', []))}"
                if selection.get("selected") == "average"
                else f"best validation BLEU (step {selection.get('best_step')})")
    hours = results.get("train_seconds", 0) / 3600
    src, tgt = config.source_lang, config.target_lang
    directions = f"{src}→{tgt}"
    if config.bidirectional_epochs:
        epochs = f"{config.bidirectional_epochs} epoch" + ("s" if config.bidirectional_epochs > 1 else "")
        extra = "".join(f", {lang}→{tgt}" for lang in config.extra_sources())
        directions = (f"{src}→{tgt} and {tgt}→{src}{extra} for the first {epochs} (bidirectional training, Ding et al. "
                      f"2021), then {src}→{tgt} only")
    example = results.get("example", {})
    values = {
        "model_name": Path(model_id).name, "model_id": model_id, "source_lang": config.source_lang,
        "target_lang": config.target_lang, "dataset": dataset, "results_table": "\n".join(rows),
        "signatures": "\n".join(signatures), "num_beams": config.num_beams, "length_penalty": config.length_penalty,
        "max_new_tokens": config.max_new_tokens, "selection": selected,
        "example_source": example.get("source", "A man is riding a bicycle."),
        "example_translation": example.get("translation", ""),
        "encoder_layers": c.encoder_layers, "decoder_layers": c.decoder_layers, "d_model": c.d_model,
        "heads": c.encoder_attention_heads, "ffn_dim": c.encoder_ffn_dim,
        "norm_placement": "pre-norm (x + f(LN(x)))" if c.normalize_before else "post-norm (LN(x + f(x)), as in the paper)",
        "position_embedding_type": c.position_embedding_type, "activation_function": c.activation_function,
        "vocab_size": c.vocab_size, "tokenizer_type": config.tokenizer_type, "tied": c.tie_word_embeddings,
        "num_parameters": f"{results.get('num_parameters', 0):,}", "num_train_pairs": f"{results.get('num_train_pairs', 0):,}",
        "completed_steps": results.get("completed_steps"), "directions": directions,
        "batching": (f"≤ {config.max_tokens_per_batch} tokens per batch" if config.max_tokens_per_batch
                     else f"{config.per_device_train_batch_size} sentences per batch"),
        "gradient_accumulation_steps": config.gradient_accumulation_steps, "adam_beta1": config.adam_beta1,
        "adam_beta2": config.adam_beta2, "learning_rate": config.learning_rate,
        "lr_scheduler_type": config.lr_scheduler_type, "num_warmup_steps": config.num_warmup_steps,
        "dropout": c.dropout, "label_smoothing": config.label_smoothing, "weight_decay": config.weight_decay,
        "regularisation_extras": regularisation_extras(config),
        "mixed_precision": config.mixed_precision, "train_time": f"{hours:.2f} h ({results.get('train_seconds', 0):.0f} s)",
        "hardware": results.get("hardware", "unknown"),
    }
    body = string.Template(TEMPLATE.read_text()).substitute(values)
    data = ModelCardData(
        language=[config.source_lang, config.target_lang], license="apache-2.0", library_name="transformers",
        pipeline_tag="translation", tags=["translation", "attnmt", "custom_code"], datasets=[dataset],
        metrics=["bleu", "chrf"], model_name=Path(model_id).name, eval_results=eval_results(results, config, dataset),
    )
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def _score(split_results: dict | None, key: str) -> str:
    return f"{split_results[key]:.2f}" if split_results and key in split_results else "–"


def render_ensemble_card(ensemble, summary: dict, model_id: str) -> str:
    """Return the README.md text for an ensemble export (ensemble.py): what it is, how to load it, and each
    member with the scores its own all_results.json records. The ensemble's own scores are added by
    `eval.py --update_model_card` (Hub model-index metadata)."""
    source_lang, target_lang = summary["config"]["source_lang"], summary["config"]["target_lang"]
    direction = f"{source_lang}→{target_lang}" if source_lang and target_lang else "translation"
    rows = []
    for index, member in enumerate(summary["members"]):
        c = ensemble.members[index].config
        hours = f"{member['train_seconds'] / 3600:.2f} h" if member.get("train_seconds") else "–"
        rows.append(
            f"| {index} | `{Path(member['folder']).parent.name}/{Path(member['folder']).name}` | {member.get('seed', '–')} | "
            f"{c.encoder_layers}+{c.decoder_layers} × {c.d_model} | {member['num_parameters']:,} | "
            f"{_score(member.get('validation'), 'bleu')} | {_score(member.get('test'), 'bleu')} | "
            f"{_score(member.get('test'), 'bleu_lowercase')} | {hours} |"
        )
    generation = ensemble.generation_config
    languages = [lang for lang in (source_lang, target_lang) if lang]
    data = ModelCardData(language=languages or None, license="apache-2.0", library_name="transformers",
                         pipeline_tag="translation", tags=["translation", "attnmt", "ensemble", "custom_code"],
                         model_name=model_id)
    body = f"""# {model_id}: {direction} ensemble of {len(rows)} AttnMT models

{len(rows)} independently trained AttnMT Transformers (the same tokenizer, different seeds) that translate
together: at every decoding step the next-token distribution is the average of the members'
distributions, p(y_t | y_<t, x) = 1/M · Σ_m p_m(y_t | y_<t, x). Beam search, the KV cache (one per
member) and the `translation` pipeline work as with a single model; decoding costs about {len(rows)}× a
single member's time.

## Members

| # | folder | seed | layers × d_model | parameters | val BLEU | test BLEU | test BLEU (lc) | training |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Member scores are those recorded by `train.py` (beam {generation.num_beams}); the ensemble's own scores
are in this card's metadata once `eval.py --update_model_card` has run on it.

## Use

```python
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

repo = "{model_id}"  # or a local folder
tokenizer = AutoTokenizer.from_pretrained(repo, trust_remote_code=True)
model = AutoModelForSeq2SeqLM.from_pretrained(repo, trust_remote_code=True)
batch = tokenizer(["A man is riding a bicycle."], return_tensors="pt")
print(tokenizer.batch_decode(model.generate(**batch), skip_special_tokens=True))
member = model.members[0]  # a complete single model, usable (and savable) on its own
```

Decoding: beam {generation.num_beams}, length penalty {generation.length_penalty} (`generation_config.json`).
Built with `ensemble.py --members ...` of the AttnMT repository; {summary['num_parameters']:,} parameters in all.
"""
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))
