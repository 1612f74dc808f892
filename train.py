"""Train (or fine-tune) an AttnMT translation model with accelerate, and export it Hub-ready.

    python train.py --config configs/train/multi30k_en_de.yaml
    accelerate launch --multi_gpu --num_processes 2 train.py --config ... --cpu     # 2 CPU processes
    python train.py --config ... --resume_from_checkpoint latest                   # continue a stopped run
    python train.py --config ... --branch_from RUN/checkpoints/step_0005000 --seed 1 --output_dir RUN_s1
                                                          # continue another run with new randomness (ensembles)

Reads top to bottom: load_config -> build_tokenizer -> build_model -> build_dataloaders -> train
(with evaluate every eval_steps) -> finalize (best or averaged weights, test BLEU, model card, export,
optional push to the Hub). The output folder holds `checkpoints/`, `best/`, `model/` (the export),
`all_results.json`, `train_config.yaml` and the tracker logs.
"""

import dataclasses
import itertools
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path

import datasets
import torch
import transformers
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from safetensors.torch import load_file
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq, get_scheduler

import modeling  # noqa: F401  (registers AttnMT with the Auto classes)
from modeling import AttnMTConfig, AttnMTForConditionalGeneration
from mt.batching import LengthGroupedBatchSampler
from mt.bidirectional import BidirectionalTrainSet, check_tokenizer_encodes_both_sides_alike
from mt.bpe_dropout import BPEDropoutTrainSet
from mt.config import TrainingConfig, load_config, load_model_preset
from mt.cpu_memory import keep_freed_memory
from mt.data import CorpusSpec, drop_blank_pairs, load_split
from mt.export import export_model
from mt.model_card import render_model_card
from mt.rdrop import rdrop_loss
from mt.scoring import load_metrics, score_translations, translate
from mt.token_dropout import apply_token_dropout
from mt.tokenizer import SPECIAL_TOKEN_IDS, check_tokenizer_matches_config, train_tokenizer, unknown_token_share
from mt.training_curves import STATE_FILE, load_history, plot_training_curves

logger = get_logger(__name__)


# --------------------------------------------------------------------------------------------------
# Setup
# --------------------------------------------------------------------------------------------------


def corpus_spec(config: TrainingConfig) -> CorpusSpec:
    return CorpusSpec(
        source_lang=config.source_lang,
        target_lang=config.target_lang,
        dataset_name=config.dataset_name,
        dataset_config_name=config.dataset_config_name,
        data_dir=config.data_dir,
        train_file=config.train_file,
        validation_file=config.validation_file,
        test_file=config.test_file,
    )


def load_splits(config: TrainingConfig) -> dict:
    """{"train", "validation", "test": Dataset of "source"/"target" pairs (those the config names), and
    "extra_train": {language: Dataset of that language -> target pairs} for extra_source_langs (may be empty)}."""
    spec = corpus_spec(config)
    file_layout = spec.dataset_name is None and spec.data_dir is None
    names = {"train": config.train_split, "validation": config.validation_split, "test": config.test_split}
    splits = {}
    for role, name in names.items():
        if name is None or (role == "test" and file_layout and config.test_file is None):
            continue
        dataset = load_split(spec, role if file_layout else name)
        splits[role] = drop_blank_pairs(dataset, role) if role == "train" else dataset
    limits = {"train": config.max_train_samples, "validation": config.max_eval_samples, "test": config.max_test_samples}
    for role, limit in limits.items():
        if limit and role in splits:
            splits[role] = splits[role].select(range(min(limit, len(splits[role]))))
    # Other languages of a multi-way training split, into the target language (extra_source_langs).
    splits["extra_train"] = {}
    for lang in config.extra_sources():
        extra_spec = dataclasses.replace(spec, source_lang=lang)
        dataset = drop_blank_pairs(load_split(extra_spec, "train" if file_layout else config.train_split),
                                   f"train ({lang}->{config.target_lang})")
        if config.max_train_samples:
            dataset = dataset.select(range(min(config.max_train_samples, len(dataset))))
        splits["extra_train"][lang] = dataset
    return splits


def build_tokenizer(config: TrainingConfig, splits: dict, accelerator: Accelerator):
    """The checkpoint's own tokenizer when fine-tuning; otherwise a joint subword tokenizer trained on the
    training split, every language it trains on (by the main process, saved, then loaded by every process)."""
    if config.model_name_or_path:
        return AutoTokenizer.from_pretrained(config.model_name_or_path, trust_remote_code=True)
    folder = Path(config.output_dir) / "tokenizer"
    if config.branch_from and accelerator.is_main_process and not (folder / "tokenizer.json").is_file():
        # A branch reads the token ids its parent trained on: the parent's tokenizer, not a new one.
        shutil.copytree(branch_parent_tokenizer(config), folder, dirs_exist_ok=True)
    if accelerator.is_main_process and not (folder / "tokenizer.json").is_file():
        train, extra = splits["train"], splits.get("extra_train", {})
        texts = itertools.chain((text for column in ("source", "target") for text in train[column]),
                                (text for dataset in extra.values() for text in dataset["source"]))
        tokenizer = train_tokenizer(texts, vocab_size=config.vocab_size, model=config.tokenizer_type,
                                    model_max_length=max(config.max_source_length, config.max_target_length))
        tokenizer.save_pretrained(folder)
        logger.info(f"trained a {config.tokenizer_type} tokenizer with {len(tokenizer)} tokens -> {folder}")
    accelerator.wait_for_everyone()
    return AutoTokenizer.from_pretrained(folder)


UNKNOWN_TOKEN_WARNING_SHARE = 0.005  # above this share of <unk>, a tokenizer cannot spell the corpus


def warn_if_tokenizer_cannot_spell(tokenizer, splits: dict, config: TrainingConfig, sample: int = 1000) -> dict:
    """Log a warning for each training side whose first `sample` sentences the tokenizer maps more than
    UNKNOWN_TOKEN_WARNING_SHARE of the tokens to <unk> (a checkpoint's tokenizer fine-tuned on new letters,
    e.g. an en/de checkpoint with extra_source_langs cs). Returns the share per side."""
    sides = {config.source_lang: splits["train"]["source"][:sample],
             config.target_lang: splits["train"]["target"][:sample]}
    sides.update({lang: dataset["source"][:sample] for lang, dataset in splits.get("extra_train", {}).items()})
    shares = {lang: unknown_token_share(tokenizer, texts) for lang, texts in sides.items()}
    for lang, share in shares.items():
        if share > UNKNOWN_TOKEN_WARNING_SHARE:
            logger.warning(f"the tokenizer maps {share:.1%} of the {lang} training tokens to {tokenizer.unk_token}: "
                           f"the model cannot read or write those letters. Train from scratch (drop "
                           f"model_name_or_path) so that a new tokenizer learns {lang}, or leave {lang} out.")
    return shares


def build_model(config: TrainingConfig, tokenizer) -> transformers.PreTrainedModel:
    # Dropout overrides go into the config before the model is built: layers read their rates at init.
    overrides = {name: getattr(config, name) for name in ("dropout", "attention_dropout", "activation_dropout")
                 if getattr(config, name) is not None}
    if config.model_name_or_path:
        model = AutoModelForSeq2SeqLM.from_pretrained(config.model_name_or_path, trust_remote_code=True,
                                                      dtype=torch.float32, **overrides)
    else:
        preset = load_model_preset(config.model_config)
        preset.update(overrides)
        preset.update(vocab_size=len(tokenizer), decoder_start_token_id=SPECIAL_TOKEN_IDS["bos_token_id"],
                      **SPECIAL_TOKEN_IDS)
        model = AttnMTForConditionalGeneration(AttnMTConfig(**preset))
    if config.attn_implementation:
        model.set_attn_implementation(config.attn_implementation)
    if hasattr(model.config, "label_smoothing"):
        model.config.label_smoothing = config.label_smoothing
    check_tokenizer_matches_config(tokenizer, model.config)
    model.generation_config.num_beams = config.num_beams
    model.generation_config.length_penalty = config.length_penalty
    model.generation_config.max_new_tokens = config.max_new_tokens
    model.generation_config.max_length = None
    return model


def tokenize(dataset: datasets.Dataset, tokenizer, config: TrainingConfig, split: str,
             accelerator: Accelerator, keep_text: bool = False, description: str | None = None) -> datasets.Dataset:
    """Token ids for source and labels (plus the "source"/"target" texts with `keep_text`). Training pairs
    that are too long are dropped and counted (truncating them would teach the model to stop mid-sentence)."""
    description = description or split
    def encode(batch):
        encoded = tokenizer(batch["source"], text_target=batch["target"])
        return {"input_ids": encoded["input_ids"], "labels": encoded["labels"]}

    with accelerator.main_process_first():
        drop = [c for c in dataset.column_names if not (keep_text and c in ("source", "target"))]
        encoded = dataset.map(encode, batched=True, remove_columns=drop, desc=f"tokenizing {description}")
    if split == "train":
        keep = [len(s) <= config.max_source_length and len(t) <= config.max_target_length
                for s, t in zip(encoded["input_ids"], encoded["labels"])]
        dropped = len(keep) - sum(keep)
        if dropped:
            logger.warning(f"{description}: dropped {dropped} of {len(keep)} pairs longer than max_source_length="
                           f"{config.max_source_length} / max_target_length={config.max_target_length} tokens")
        encoded = encoded.select([i for i, k in enumerate(keep) if k])
        if len(encoded) == 0:
            raise ValueError("No training pair fits max_source_length/max_target_length.")
    return encoded


def build_dataloaders(config, tokenizer, model, splits, accelerator):
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100, pad_to_multiple_of=8)
    train = tokenize(splits["train"], tokenizer, config, "train", accelerator, keep_text=config.bpe_dropout > 0)
    validation = tokenize(splits["validation"], tokenizer, config, "validation", accelerator)

    def lengths(dataset):
        return [len(x) for x in dataset["input_ids"]], [len(x) for x in dataset["labels"]]

    train_lengths = lengths(train)
    if config.bpe_dropout > 0:
        # A new random segmentation per epoch (mt/bpe_dropout.py); this first one serves the first epoch.
        train = BPEDropoutTrainSet(train["source"], train["target"], train["input_ids"], train["labels"], tokenizer,
                                   config.bpe_dropout, config.max_source_length, config.max_target_length,
                                   config.max_tokens_per_batch)
        train_lengths = train.resegment(accelerator)
    if config.bidirectional_epochs > 0:
        # The first epochs also train target->source on the same pairs (mt/bidirectional.py); the training loop
        # switches the set to source->target only when they are over.
        check_tokenizer_encodes_both_sides_alike(tokenizer, splits["train"][:2]["source"] + splits["train"][:2]["target"])
        extra = [tokenize(dataset, tokenizer, config, "train", accelerator, description=f"train {lang}->{config.target_lang}")
                 for lang, dataset in splits.get("extra_train", {}).items()]
        train = BidirectionalTrainSet(train["input_ids"], train["labels"], config.max_source_length,
                                      config.max_target_length, bidirectional=True,
                                      extra_input_ids=[ids for e in extra for ids in e["input_ids"]],
                                      extra_labels=[ids for e in extra for ids in e["labels"]])
        train_lengths = train.lengths()
    train_sampler = LengthGroupedBatchSampler(*train_lengths, max_sentences=config.per_device_train_batch_size,
                                              max_tokens=config.max_tokens_per_batch, shuffle=True, seed=config.seed)
    validation_sampler = LengthGroupedBatchSampler(*lengths(validation), max_sentences=config.per_device_eval_batch_size,
                                                   shuffle=False)
    # Own generators: creating a DataLoader iterator otherwise draws from the global RNG, and the extra
    # iterator a resumed run creates would shift every later dropout mask.
    train_loader = DataLoader(train, batch_sampler=train_sampler, collate_fn=collator,
                              generator=torch.Generator().manual_seed(config.seed))
    validation_loader = DataLoader(validation, batch_sampler=validation_sampler, collate_fn=collator,
                                   generator=torch.Generator().manual_seed(config.seed))
    return train_loader, validation_loader, train_sampler, train


def build_optimizer(config: TrainingConfig, model) -> torch.optim.Optimizer:
    # No weight decay on biases and LayerNorm gains: decaying them only hurts.
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        (no_decay if parameter.ndim < 2 else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                             eps=config.adam_epsilon)


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


@torch.inference_mode()
def validation_loss(model, loader, accelerator) -> float:
    """Token-level cross-entropy (no label smoothing) over the whole validation split, all processes."""
    was_training = model.training
    model.eval()
    total, count = torch.zeros((), device=accelerator.device), torch.zeros((), device=accelerator.device)
    for batch in loader:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       decoder_input_ids=batch["decoder_input_ids"]).logits
        labels = batch["labels"]
        loss_sum = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
        tokens = (labels != -100).sum()
        total += accelerator.gather_for_metrics(loss_sum.reshape(1)).sum()
        count += accelerator.gather_for_metrics(tokens.reshape(1)).sum()
    model.train(was_training)
    return (total / count).item()


def evaluate(model, tokenizer, dataset, config, accelerator, metrics, loader=None, desc="validation") -> dict:
    """Loss (when a loader is given) and BLEU/chrF with beam search, using the same code as eval.py."""
    results = {}
    if loader is not None:
        results["loss"] = validation_loss(model, loader, accelerator)
    hypotheses = translate(model, tokenizer, list(dataset["source"]), batch_size=config.per_device_eval_batch_size,
                           num_beams=config.num_beams, length_penalty=config.length_penalty,
                           max_new_tokens=config.max_new_tokens, max_source_length=config.max_source_length,
                           accelerator=accelerator, desc=desc)
    results.update(score_translations(hypotheses, list(dataset["target"]), metrics))
    results["hypotheses"] = hypotheses
    return results


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------


def list_checkpoints(output_dir: str) -> list[Path]:
    folder = Path(output_dir) / "checkpoints"
    found = [p for p in folder.glob("step_*") if (p / STATE_FILE).is_file()] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def save_checkpoint(accelerator, state: dict, config: TrainingConfig) -> None:
    """accelerate's save_state into a temporary folder, renamed into place when complete, then the oldest
    checkpoints beyond keep_last_checkpoints are removed."""
    final = Path(config.output_dir) / "checkpoints" / f"step_{state['completed_steps']:07d}"
    temporary = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process and temporary.exists():
        shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    if accelerator.is_main_process:
        (temporary / STATE_FILE).write_text(json.dumps(state, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(temporary, final)
        for old in list_checkpoints(config.output_dir)[: -config.keep_last_checkpoints]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def resolve_resume(config: TrainingConfig) -> Path | None:
    if not config.resume_from_checkpoint:
        return None
    if config.resume_from_checkpoint == "latest":
        found = list_checkpoints(config.output_dir)
        if not found:
            logger.warning(f"--resume_from_checkpoint latest: no checkpoint in {config.output_dir}/checkpoints; "
                           + (f"branching from {config.branch_from}" if config.branch_from else "starting from scratch"))
            return None
        return found[-1]
    path = Path(config.resume_from_checkpoint)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint of this script (no {STATE_FILE}).")
    return path


def resolve_branch(config: TrainingConfig) -> Path:
    """The checkpoint folder a branch starts from (--branch_from), checked before any work is done."""
    path = Path(config.branch_from)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--branch_from {path}: not a checkpoint of this script (no {STATE_FILE}); give one "
                                f"of the parent run's checkpoint folders, e.g. PARENT/checkpoints/step_0004000.")
    return path


def branch_parent_tokenizer(config: TrainingConfig) -> Path:
    """The tokenizer of the run a checkpoint belongs to (PARENT/checkpoints/step_N -> PARENT/tokenizer)."""
    folder = resolve_branch(config).resolve().parents[1] / "tokenizer"
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"--branch_from {config.branch_from}: the parent run's tokenizer is not at {folder}; "
                                "branch from a checkpoint inside the parent's output_dir (PARENT/checkpoints/step_N).")
    return folder


def average_checkpoints(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the model weights of several checkpoints (fairseq's average_checkpoints)."""
    average = None
    for path in paths:
        weights = load_file(str(path / "model.safetensors"))
        if average is None:
            average = {k: v.double() for k, v in weights.items()}
        else:
            for k, v in weights.items():
                average[k] += v.double()
    return {k: (v / len(paths)).float() for k, v in average.items()}


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def plan_updates(config, train_loader, train_sampler, train_set, num_processes: int) -> tuple[int, int, int, int]:
    """Updates per epoch (source->target), per bidirectional epoch (0 without bidirectional training), the
    total number of updates and the number of epochs they span."""
    def updates(batches: int) -> int:
        return math.ceil(batches / num_processes / config.gradient_accumulation_steps)

    updates_per_epoch, bidirectional_epochs, bidirectional_updates = updates(len(train_loader)), 0, 0
    if isinstance(train_set, BidirectionalTrainSet):
        # The set starts in both directions; count those epochs, then leave it source->target only until the
        # training loop switches it at the start of each epoch.
        bidirectional_epochs, bidirectional_updates = config.bidirectional_epochs, updates_per_epoch
        train_sampler.set_lengths(*train_set.set_bidirectional(False))
        updates_per_epoch = updates(len(train_sampler))
    bidirectional_steps = bidirectional_updates * min(bidirectional_epochs, config.num_train_epochs)
    max_steps = config.max_train_steps or (
        bidirectional_steps + updates_per_epoch * max(0, config.num_train_epochs - bidirectional_epochs))
    if max_steps <= bidirectional_steps:
        num_epochs = math.ceil(max_steps / bidirectional_updates)
    else:
        num_epochs = min(bidirectional_epochs, config.num_train_epochs) + math.ceil(
            (max_steps - bidirectional_steps) / updates_per_epoch)
    return updates_per_epoch, bidirectional_updates, max_steps, num_epochs


def train(config, model, tokenizer, splits, accelerator, metrics) -> dict:
    train_loader, validation_loader, train_sampler, train_set = build_dataloaders(config, tokenizer, model, splits,
                                                                                   accelerator)
    optimizer = build_optimizer(config, model)
    updates_per_epoch, bidirectional_updates, max_steps, num_epochs = plan_updates(
        config, train_loader, train_sampler, train_set, accelerator.num_processes)
    scheduler = get_scheduler(config.lr_scheduler_type, optimizer, num_warmup_steps=config.num_warmup_steps,
                              num_training_steps=max_steps)
    model, optimizer, train_loader, validation_loader = accelerator.prepare(model, optimizer, train_loader,
                                                                           validation_loader)
    # The scheduler is stepped by hand once per optimizer update (not per process), and saved with the state.
    accelerator.register_for_checkpointing(scheduler)

    state = {"completed_steps": 0, "epoch": 0, "batches_in_epoch": 0, "best_bleu": -1.0, "best_step": None,
             "evaluations_without_improvement": 0, "train_seconds": 0.0, "history": []}
    resume = resolve_resume(config)
    if resume is not None:
        accelerator.load_state(str(resume))
        state = json.loads((resume / STATE_FILE).read_text())
        logger.info(f"resumed from {resume} at step {state['completed_steps']} (epoch {state['epoch']})")
    elif config.branch_from:
        parent = resolve_branch(config)
        accelerator.load_state(str(parent))
        state = json.loads((parent / STATE_FILE).read_text())
        # load_state put back the parent's random streams; from here on this run's own seed draws the dropout
        # masks, and the sampler (seeded with it) orders the rest of this epoch and every later one. The
        # parent's validations stay in the history; the best checkpoint is chosen among the branch's own.
        set_seed(config.seed)
        state.update(best_bleu=-1.0, best_step=None, evaluations_without_improvement=0,
                     branched_from={"checkpoint": str(parent), "step": state["completed_steps"], "seed": config.seed})
        logger.info(f"branched from {parent} at step {state['completed_steps']} (epoch {state['epoch']}) with "
                    f"seed {config.seed}")

    every = int(config.checkpointing_steps) if str(config.checkpointing_steps).isdigit() else None
    bidirectional_note = (f" (the first {config.bidirectional_epochs} in both directions: {bidirectional_updates} "
                          "updates each)" if bidirectional_updates else "")
    extra_pairs = "".join(f" + {len(d)} {lang}->{config.target_lang}"
                          for lang, d in splits.get("extra_train", {}).items())
    logger.info(f"{len(splits['train'])}{extra_pairs} training pairs, {len(train_loader)} batches/epoch/process, "
                f"{updates_per_epoch} updates/epoch, {max_steps} updates over {num_epochs} epochs{bidirectional_note}, "
                f"{accelerator.num_processes} process(es) on {accelerator.device}")
    progress = tqdm(total=max_steps, initial=state["completed_steps"], desc="training",
                    disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    model.train()
    window_loss, window_batches, window_tokens, window_start, stop = 0.0, 0, 0, time.perf_counter(), False
    session_start, seconds_before = time.perf_counter(), state["train_seconds"]

    def run_validation():
        # Validation leaves the training's random stream as it found it (generation's data loader draws a seed
        # from it): the trained weights do not depend on how often, or whether, a run validated before a
        # checkpoint, and a run stopped between two validations resumes exactly.
        cuda = [accelerator.device] if accelerator.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            results = evaluate(model, tokenizer, splits["validation"], config, accelerator, metrics, validation_loader)
        improved = results["bleu"] > state["best_bleu"]
        record = {"step": state["completed_steps"], "loss": results["loss"], "bleu": results["bleu"],
                  "bleu_lowercase": results["bleu_lowercase"], "chrf": results["chrf"]}
        state["history"].append(record)
        logger.info(f"validation @ step {record['step']} | loss {record['loss']:.3f} | BLEU {record['bleu']:.2f} "
                    f"| lc-BLEU {record['bleu_lowercase']:.2f} | chrF {record['chrf']:.2f}"
                    + (" | new best" if improved else ""))
        accelerator.log({f"validation/{k}": v for k, v in record.items() if k != "step"}, step=record["step"])
        if improved:
            state.update(best_bleu=results["bleu"], best_step=record["step"], evaluations_without_improvement=0)
            if accelerator.is_main_process:
                export_model(accelerator.unwrap_model(model), tokenizer, Path(config.output_dir) / "best")
        else:
            state["evaluations_without_improvement"] += 1
        accelerator.wait_for_everyone()
        patience = config.early_stopping_patience
        return patience is not None and state["evaluations_without_improvement"] >= patience

    # Token dropout (mt/token_dropout.py) replaces input tokens with <unk>; the decoder starts from its own start id.
    token_dropout = config.source_token_dropout > 0 or config.target_token_dropout > 0
    special_ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
                   "unk_token_id": tokenizer.unk_token_id,
                   "bos_token_id": accelerator.unwrap_model(model).config.decoder_start_token_id}
    if token_dropout and tokenizer.unk_token_id is None:
        raise ValueError("source_token_dropout/target_token_dropout replace tokens with <unk>, but this tokenizer "
                         "has no unk_token; set both to 0.")

    first_epoch = True
    # With max_train_steps the step count decides (BPE-dropout epochs vary by a few batches); otherwise epochs do.
    # A run resumed from its last checkpoint (a crash or a cut-off during the final evaluation) trains no further.
    stop = state["completed_steps"] >= max_steps

    def pause_here() -> bool:  # --stop_at_step: exit as if interrupted, the schedule left as it is
        return config.stop_at_step is not None and state["completed_steps"] >= config.stop_at_step

    stop = stop or pause_here()
    while not stop and (config.max_train_steps is not None or state["epoch"] < num_epochs):
        if isinstance(train_set, BPEDropoutTrainSet) and not first_epoch:
            train_sampler.set_lengths(*train_set.resegment(accelerator))
        first_epoch = False
        if isinstance(train_set, BidirectionalTrainSet):
            both_directions = state["epoch"] < config.bidirectional_epochs
            if both_directions != train_set.bidirectional:
                train_sampler.set_lengths(*train_set.set_bidirectional(both_directions))
            extra = "".join(f" + {lang}->{config.target_lang}" for lang in config.extra_sources())
            logger.info(f"epoch {state['epoch'] + 1}: " + (f"both directions{extra}" if both_directions else
                        f"{config.source_lang}->{config.target_lang} only") + f", {len(train_sampler)} batches")
        train_sampler.set_epoch(state["epoch"])
        # accelerate's loader also sets its sampler's epoch, to the number of times it has been iterated, which a
        # resumed run counts from 0: give it the run's epoch, or a resumed run would replay another epoch's batches.
        train_loader.set_epoch(state["epoch"])
        loader = train_loader
        if state["batches_in_epoch"]:
            loader = accelerator.skip_first_batches(train_loader, state["batches_in_epoch"])
        for batch in loader:
            if token_dropout:
                batch = apply_token_dropout(batch, config.source_token_dropout, config.target_token_dropout,
                                            special_ids)
            with accelerator.accumulate(model):
                if config.rdrop_alpha > 0:
                    loss = rdrop_loss(model, batch, config.rdrop_alpha)
                else:
                    loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            state["batches_in_epoch"] += 1
            window_loss += loss.item()
            window_batches += 1
            window_tokens += int(batch["attention_mask"].sum() + (batch["labels"] != -100).sum())
            if not accelerator.sync_gradients:
                continue
            if not accelerator.optimizer_step_was_skipped:
                scheduler.step()
            state["completed_steps"] += 1
            step = state["completed_steps"]
            progress.update(1)
            if step % config.logging_steps == 0 or step == max_steps:
                elapsed = time.perf_counter() - window_start
                mean_loss = window_loss / max(1, window_batches)
                tokens_per_second = window_tokens * accelerator.num_processes / max(elapsed, 1e-9)
                lr = scheduler.get_last_lr()[0]
                logger.info(f"step {step:>6} | loss {mean_loss:.4f} | lr {lr:.3e} | {tokens_per_second:,.0f} tok/s "
                            f"| epoch {state['epoch'] + 1}")
                accelerator.log({"train/loss": mean_loss, "train/lr": lr, "train/tokens_per_second": tokens_per_second},
                                step=step)
                progress.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.1e}")
                window_loss, window_batches, window_tokens, window_start = 0.0, 0, 0, time.perf_counter()
            state["train_seconds"] = seconds_before + time.perf_counter() - session_start
            if config.eval_steps and step % config.eval_steps == 0:
                stop = run_validation()
            if every and step % every == 0:
                save_checkpoint(accelerator, state, config)
            if step >= max_steps or stop or pause_here():
                stop = True
                break
        else:
            state["epoch"] += 1
            state["batches_in_epoch"] = 0
            if not config.eval_steps:
                stop = run_validation()
            if config.checkpointing_steps == "epoch":
                save_checkpoint(accelerator, state, config)
    progress.close()

    def save_unless_saved():  # the loop saves on its own schedule; the last update must be in a checkpoint too
        if not list_checkpoints(config.output_dir) or list_checkpoints(config.output_dir)[-1].name != \
                f"step_{state['completed_steps']:07d}":
            save_checkpoint(accelerator, state, config)

    if pause_here() and state["completed_steps"] < max_steps:
        save_unless_saved()
        state["paused"] = True
        return state
    if not state["history"] or state["history"][-1]["step"] != state["completed_steps"]:
        run_validation()
    save_unless_saved()
    return state


# --------------------------------------------------------------------------------------------------
# Final model, export, Hub
# --------------------------------------------------------------------------------------------------


def finalize(config, state, tokenizer, splits, accelerator, metrics, started: float) -> dict:
    """Pick the final weights on validation BLEU (best checkpoint, or the average of the last N when it is
    better), score the test split, export model + tokenizer + model card, and write all_results.json."""
    output_dir = Path(config.output_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(output_dir / "best", trust_remote_code=True, dtype=torch.float32)
    model.generation_config.max_length = None  # decoding length comes from max_new_tokens
    model.to(accelerator.device)
    selection = {"selected": "best", "best_step": state["best_step"], "best_validation_bleu": state["best_bleu"]}
    if config.average_last_checkpoints > 1:
        paths = list_checkpoints(config.output_dir)[-config.average_last_checkpoints:]
        candidate = AutoModelForSeq2SeqLM.from_pretrained(output_dir / "best", trust_remote_code=True,
                                                          dtype=torch.float32)
        candidate.generation_config.max_length = None
        candidate.load_state_dict(average_checkpoints(paths), strict=False)
        candidate.tie_weights()
        candidate.to(accelerator.device)
        averaged = evaluate(candidate, tokenizer, splits["validation"], config, accelerator, metrics,
                            desc="validation (averaged)")
        selection["averaged_checkpoints"] = [p.name for p in paths]
        selection["averaged_validation_bleu"] = averaged["bleu"]
        logger.info(f"average of {len(paths)} checkpoints: validation BLEU {averaged['bleu']:.2f} "
                    f"(best single: {state['best_bleu']:.2f})")
        if averaged["bleu"] > state["best_bleu"]:
            model, selection["selected"] = candidate, "average"
    validation = evaluate(model, tokenizer, splits["validation"], config, accelerator, metrics, desc="validation")
    results = {"validation": {k: v for k, v in validation.items() if k != "hypotheses"}, "selection": selection,
               "example": {"source": splits["validation"][0]["source"], "translation": validation["hypotheses"][0]}}
    if "test" in splits:
        test = evaluate(model, tokenizer, splits["test"], config, accelerator, metrics, desc="test")
        results["test"] = {k: v for k, v in test.items() if k != "hypotheses"}
        if accelerator.is_main_process:
            (output_dir / "test_hypotheses.txt").write_text("\n".join(test["hypotheses"]) + "\n")
    results.update(
        train_seconds=round(state["train_seconds"], 1),
        wall_seconds=round(time.time() - started, 1),
        completed_steps=state["completed_steps"],
        num_parameters=sum(p.numel() for p in model.parameters()),
        num_train_pairs=len(splits["train"]),
        num_extra_source_pairs={lang: len(d) for lang, d in splits.get("extra_train", {}).items()},
        hardware=describe_hardware(accelerator),
        config=config.to_dict(),
        history=state["history"],
    )
    if "branched_from" in state:
        results["branched_from"] = state["branched_from"]
    if accelerator.is_main_process:
        # The measured figures first: a failure while exporting (a model card template edited during the run,
        # a full disk) then loses nothing that took hours, and a resumed run only repeats the final evaluation.
        write_json_atomic(output_dir / "all_results.json", results)
        card = render_model_card(model, config, results)
        export_dir = output_dir / "model"
        export_model(model, tokenizer, export_dir, model_card=card)
        write_json_atomic(export_dir / "all_results.json", results)
        logger.info(f"exported to {export_dir}")
        if state["history"]:
            curves = plot_training_curves([load_history(output_dir / "all_results.json", label=output_dir.name)],
                                          output_dir / "training_curves.png")
            logger.info(f"validation curves: {curves}")
        if config.push_to_hub:
            push_to_hub(export_dir, config.hub_model_id)
    accelerator.wait_for_everyone()
    return results


def describe_hardware(accelerator: Accelerator) -> str:
    if accelerator.device.type == "cuda":
        return f"{accelerator.num_processes} x {torch.cuda.get_device_name(accelerator.device)}"
    return f"{accelerator.num_processes} process(es), CPU with {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def write_json_atomic(path: Path, data: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, ensure_ascii=False))
    os.replace(temporary, path)


def push_to_hub(folder: Path, repo_id: str) -> None:
    """Upload the export folder (never the checkpoints). The token comes from HF_TOKEN or `hf auth login`;
    it is never logged or written."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload AttnMT translation model")
    except Exception as error:  # noqa: BLE001 - network, auth and HTTP errors all end here
        raise RuntimeError(
            f"Push to the Hub failed ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). "
            f"The export is complete at {folder}; upload it later with `hf upload {repo_id} {folder}` "
            "once online and logged in (HF_TOKEN or `hf auth login`)."
        ) from None
    logger.info(f"pushed {folder} to https://huggingface.co/{repo_id}")


def main(argv: list[str] | None = None) -> dict:
    config = load_config(argv)
    if config.keep_freed_memory:
        keep_freed_memory()  # before the first large tensor: see mt/cpu_memory.py
    # accelerate keeps its settings (mixed precision, cpu) in a process-wide singleton; a second main() in the
    # same process (tests, notebooks) must be allowed other settings. The process group itself is kept.
    AcceleratorState._reset_state()
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        cpu=config.cpu,
        log_with=config.report_to if config.with_tracking else None,
        project_dir=config.output_dir,
    )
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    if not accelerator.is_local_main_process:
        logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # per-call gather notices drown the log
    datasets.utils.logging.set_verbosity_warning()
    transformers.utils.logging.set_verbosity_warning()
    set_seed(config.seed)
    started = time.time()

    output_dir = Path(config.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "train_config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    logger.info("resolved config:\n" + yaml.safe_dump(config.to_dict(), sort_keys=False))
    if config.with_tracking:
        accelerator.init_trackers("attnmt", config={k: v for k, v in config.to_dict().items() if v is not None})

    splits = load_splits(config)
    tokenizer = build_tokenizer(config, splits, accelerator)
    warn_if_tokenizer_cannot_spell(tokenizer, splits, config)
    model = build_model(config, tokenizer)
    metrics = load_metrics()
    state = train(config, model, tokenizer, splits, accelerator, metrics)
    if state.get("paused"):
        checkpoint = list_checkpoints(config.output_dir)[-1]
        logger.info(f"paused at update {state['completed_steps']} (--stop_at_step) -> {checkpoint}; continue with "
                    f"--resume_from_checkpoint latest, or branch with --branch_from {checkpoint}")
        if config.with_tracking:
            accelerator.end_training()
        return {"paused_at_step": state["completed_steps"], "checkpoint": str(checkpoint), "history": state["history"],
                "train_seconds": round(state["train_seconds"], 1)}
    results = finalize(config, state, tokenizer, splits, accelerator, metrics, started)
    summary = " | ".join(f"{split} BLEU {results[split]['bleu']:.2f} (lc {results[split]['bleu_lowercase']:.2f}, "
                         f"chrF {results[split]['chrf']:.2f})" for split in ("validation", "test") if split in results)
    logger.info(f"done in {results['wall_seconds']:.0f}s | {summary}")
    if config.with_tracking:
        accelerator.end_training()
    return results


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
