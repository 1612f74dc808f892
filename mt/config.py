"""Typed, strict training configuration: dataclass defaults < YAML preset < command-line flags.

Every field is a command-line flag with the same name (`--learning_rate 1e-3`); booleans take
`--flag` / `--no-flag`. A preset key or flag that is not a field, or a value of the wrong type, is an
error, never silently ignored. Flag names follow transformers' `run_translation_no_trainer.py`.
"""

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
)


@dataclass
class TrainingConfig:
    # --- what to train -------------------------------------------------------------------------
    model_config: str | None = field(default=None, metadata={"help": "Model preset YAML (configs/model/*.yaml) for training from scratch."})
    model_name_or_path: str | None = field(default=None, metadata={"help": "Fine-tune this seq2seq checkpoint (local folder or Hub id) and keep its tokenizer."})
    tokenizer_type: str = field(default="bpe", metadata={"help": "Subword model trained from scratch: bpe or unigram."})
    vocab_size: int = field(default=8000, metadata={"help": "Joint vocabulary size when training the tokenizer."})
    bpe_dropout: float = field(default=0.0, metadata={"help": "BPE-dropout on the training pairs: each merge is skipped with this probability, a new segmentation every epoch (0 = off)."})
    bidirectional_epochs: int = field(default=0, metadata={"help": "Train the first N epochs on the pairs in both directions (source->target and target->source, one joint vocabulary), then source->target only (0 = off)."})
    extra_source_langs: str | None = field(default=None, metadata={"help": "Comma-separated languages (e.g. fr,cs) of a multi-way corpus such as Multi30k: their sentences in the training split also train into target_lang during the bidirectional epochs, next to the reversed pairs; the tokenizer learns them too."})
    # --- data ----------------------------------------------------------------------------------
    dataset_name: str | None = field(default=None, metadata={"help": "Hub id or local dataset folder (datasets.load_dataset)."})
    dataset_config_name: str | None = None
    data_dir: str | None = field(default=None, metadata={"help": "Folder of line-aligned {split}.{lang}[.gz] files (Multi30k, Moses)."})
    train_file: str | None = field(default=None, metadata={"help": "JSON/JSONL/CSV training file."})
    validation_file: str | None = None
    test_file: str | None = None
    train_split: str = "train"
    validation_split: str = "validation"
    test_split: str | None = field(default="test", metadata={"help": "Split scored after training; empty to skip."})
    source_lang: str = "en"
    target_lang: str = "de"
    max_source_length: int = field(default=128, metadata={"help": "Training pairs with a longer tokenized side are dropped (and counted)."})
    max_target_length: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = field(default=None, metadata={"help": "Validate on the first N validation pairs only."})
    max_test_samples: int | None = field(default=None, metadata={"help": "Score the first N test pairs only."})
    # --- batching and optimisation -------------------------------------------------------------
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Sentences per batch (upper bound when max_tokens_per_batch is set)."})
    max_tokens_per_batch: int | None = field(default=None, metadata={"help": "Batch by token count (source+target, padded) instead of sentences."})
    per_device_eval_batch_size: int = 64
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-4
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_epsilon: float = 1e-8
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm; 0 disables clipping."})
    lr_scheduler_type: str = field(default="inverse_sqrt", metadata={"help": f"One of {', '.join(SCHEDULERS)}."})
    num_warmup_steps: int = 1000
    num_train_epochs: int = 10
    max_train_steps: int | None = field(default=None, metadata={"help": "Stop after this many optimizer updates (overrides epochs)."})
    stop_at_step: int | None = field(default=None, metadata={"help": "Pause after this update as if interrupted: save a checkpoint and exit without the final evaluation or export, the learning-rate schedule unchanged (it still runs to max_train_steps). Continue with --resume_from_checkpoint latest, or start ensemble members from the checkpoint with --branch_from."})
    label_smoothing: float = 0.1
    rdrop_alpha: float = field(default=0.0, metadata={"help": "R-Drop: run each batch twice and penalise disagreement between the two passes' predictions by the KL weight alpha, as in Liang et al. 2021 (0 = off; 5 in the paper; about 2× the compute per update)."})
    source_token_dropout: float = field(default=0.0, metadata={"help": "Token dropout: replace each source token of a training batch with <unk> with this probability (mt/token_dropout.py; 0 = off)."})
    target_token_dropout: float = field(default=0.0, metadata={"help": "Token dropout on the decoder's inputs (the labels shifted right; the labels themselves are kept), with this probability (0 = off)."})
    dropout: float | None = field(default=None, metadata={"help": "Override the model's residual/embedding dropout."})
    attention_dropout: float | None = field(default=None, metadata={"help": "Override the model's dropout on attention weights."})
    activation_dropout: float | None = field(default=None, metadata={"help": "Override the model's dropout inside the feed-forward block."})
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16."})
    attn_implementation: str | None = field(default=None, metadata={"help": "eager (the attention formula written out, to read or step through in a debugger) or sdpa (torch's fused kernel); default: the model's own (sdpa)."})
    seed: int = 42
    cpu: bool = field(default=False, metadata={"help": "Force the CPU (needed for multi-process runs on a machine without GPU)."})
    keep_freed_memory: bool = field(default=True, metadata={"help": "glibc only: serve large allocations from malloc's heap and keep freed memory for reuse, so that each training step does not fault its logits and gradients in again (mt/cpu_memory.py; +11% training tokens/s with sdpa, +26% with eager attention on a 2-core CPU at the Multi30k preset's size, ~400 MiB more resident memory)."})
    # --- validation, checkpoints, output -------------------------------------------------------
    output_dir: str = "outputs/run"
    eval_steps: int | None = field(default=None, metadata={"help": "Validate every N updates (default: every epoch)."})
    early_stopping_patience: int | None = field(default=None, metadata={"help": "Stop after N validations without a better BLEU."})
    checkpointing_steps: str | None = field(default="epoch", metadata={"help": "'epoch', an integer N (every N updates), or empty for none."})
    keep_last_checkpoints: int = 3
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "A checkpoint folder, or 'latest'."})
    branch_from: str | None = field(default=None, metadata={"help": "Continue another run from one of its checkpoint folders (weights, optimizer moments, learning-rate schedule, update count, validation history) with this run's --seed for everything random from there on (dropout masks, the order of the remaining batches) and this run's --output_dir: ensemble members that share their first updates (ensemble.py; benchmarks/RESULTS.md, run 29). The parent's tokenizer is copied. With --resume_from_checkpoint latest, checkpoints the branch has written itself take precedence, so the same command resumes it."})
    average_last_checkpoints: int = field(default=0, metadata={"help": "Also try the average of the last N checkpoints; keep it if its validation BLEU is higher."})
    num_beams: int = 5
    length_penalty: float = 1.0
    max_new_tokens: int = 128
    logging_steps: int = 50
    with_tracking: bool = False
    report_to: str = field(default="tensorboard", metadata={"help": "accelerate tracker(s): tensorboard, wandb, all, ..."})
    push_to_hub: bool = False
    hub_model_id: str | None = None

    def validate(self) -> None:
        """Reject values that cannot work, naming the field and the fix."""
        def fail(message: str):
            raise ValueError(f"Invalid training config: {message}")

        if (self.model_config is None) == (self.model_name_or_path is None):
            fail("give exactly one of model_config (train from scratch) or model_name_or_path (fine-tune); to "
                 "fine-tune with a preset that names a model_config, add --model_config \"\".")
        if self.tokenizer_type not in ("bpe", "unigram"):
            fail(f"tokenizer_type={self.tokenizer_type!r}; use bpe or unigram.")
        if self.lr_scheduler_type not in SCHEDULERS:
            fail(f"lr_scheduler_type={self.lr_scheduler_type!r}; use one of {SCHEDULERS}.")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            fail(f"mixed_precision={self.mixed_precision!r}; use no, fp16 or bf16.")
        if self.attn_implementation not in (None, "eager", "sdpa"):
            fail(f"attn_implementation={self.attn_implementation!r}; use eager or sdpa.")
        for name in ("vocab_size", "max_source_length", "max_target_length", "per_device_train_batch_size",
                     "per_device_eval_batch_size", "gradient_accumulation_steps", "num_beams", "max_new_tokens",
                     "logging_steps"):
            if getattr(self, name) <= 0:
                fail(f"{name} must be positive, got {getattr(self, name)}.")
        for name in ("max_train_samples", "max_eval_samples", "max_test_samples", "max_tokens_per_batch", "max_train_steps",
                     "stop_at_step", "eval_steps", "early_stopping_patience"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                fail(f"{name} must be positive when set, got {value}.")
        if self.stop_at_step is not None and self.max_train_steps is not None and self.stop_at_step >= self.max_train_steps:
            fail(f"stop_at_step={self.stop_at_step} is not before max_train_steps={self.max_train_steps}: the run would "
                 "end there anyway; drop stop_at_step, or give a smaller one to pause the run.")
        if self.learning_rate <= 0:
            fail(f"learning_rate must be positive, got {self.learning_rate}.")
        if self.num_warmup_steps < 0 or self.num_train_epochs <= 0 or self.keep_last_checkpoints < 1:
            fail("num_warmup_steps must be >= 0, num_train_epochs > 0 and keep_last_checkpoints >= 1.")
        if self.lr_scheduler_type == "inverse_sqrt" and self.num_warmup_steps == 0:
            fail("lr_scheduler_type=inverse_sqrt needs num_warmup_steps > 0 (it is the schedule's time scale).")
        if not 0.0 <= self.bpe_dropout < 1.0:
            fail(f"bpe_dropout must lie in [0, 1), got {self.bpe_dropout}; 0.1 is the usual value.")
        if self.bpe_dropout > 0 and self.tokenizer_type != "bpe" and self.model_name_or_path is None:
            fail(f"bpe_dropout needs tokenizer_type: bpe (got {self.tokenizer_type!r}).")
        if self.bidirectional_epochs < 0:
            fail(f"bidirectional_epochs must be >= 0, got {self.bidirectional_epochs}.")
        if self.bidirectional_epochs > 0 and self.bpe_dropout > 0:
            fail("bidirectional_epochs and bpe_dropout cannot be combined yet; set one of them to 0.")
        extra = self.extra_sources()
        if self.extra_source_langs is not None and not extra:
            fail(f"extra_source_langs={self.extra_source_langs!r} names no language; use e.g. fr,cs or leave it unset.")
        if extra:
            if len(set(extra)) != len(extra) or {self.source_lang, self.target_lang} & set(extra):
                fail(f"extra_source_langs={self.extra_source_langs!r} must name distinct languages other than "
                     f"source_lang ({self.source_lang}) and target_lang ({self.target_lang}).")
            if self.bidirectional_epochs == 0:
                fail("extra_source_langs trains during the bidirectional epochs (then source->target only); set "
                     "bidirectional_epochs > 0, e.g. 5.")
        if not 0.0 <= self.label_smoothing < 1.0:
            fail(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}.")
        for name in ("source_token_dropout", "target_token_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                fail(f"{name} must lie in [0, 1), got {getattr(self, name)}; 0.1 is a usual value (0 = off).")
        if self.rdrop_alpha < 0:
            fail(f"rdrop_alpha must be >= 0 (0 = off), got {self.rdrop_alpha}; the R-Drop paper uses 5 on IWSLT14.")
        if self.checkpointing_steps not in (None, "", "epoch") and not str(self.checkpointing_steps).isdigit():
            fail(f"checkpointing_steps={self.checkpointing_steps!r}; use 'epoch', an integer, or leave it empty.")
        if self.average_last_checkpoints > self.keep_last_checkpoints:
            fail(f"average_last_checkpoints={self.average_last_checkpoints} needs keep_last_checkpoints >= it.")
        if self.push_to_hub and not self.hub_model_id:
            fail("push_to_hub needs hub_model_id (e.g. your-name/attnmt-multi30k-en-de).")

    def extra_sources(self) -> list[str]:
        """The languages of extra_source_langs as a list ([] when unset)."""
        return [lang.strip() for lang in (self.extra_source_langs or "").split(",") if lang.strip()]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _field_type(f: dataclasses.Field) -> type:
    """The concrete type of a field: `int | None` -> int."""
    annotation = f.type
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    return annotation


def _coerce(name: str, value, kind: type):
    """Check a YAML value against the field type (ints are accepted for floats, nothing else is converted)."""
    if value is None:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # e.g. checkpointing_steps: 500
    if kind is bool and not isinstance(value, bool) or kind is not bool and isinstance(value, bool):
        raise ValueError(f"Config key {name!r} must be {kind.__name__}, got {value!r}.")
    if not isinstance(value, kind):
        raise ValueError(f"Config key {name!r} must be {kind.__name__}, got {value!r} ({type(value).__name__}).")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train or fine-tune an AttnMT translation model with accelerate.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", help="Training preset YAML (configs/train/*.yaml); flags override it.")
    for f in dataclasses.fields(TrainingConfig):
        kind = _field_type(f)
        help_text = f.metadata.get("help", "")
        if kind is bool:
            parser.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            # default=None marks "not given", so that the preset value is not overwritten by the dataclass default.
            parser.add_argument(f"--{f.name}", type=kind, default=None, metavar=kind.__name__.upper(), help=help_text)
    return parser


def resolve_path(path: str | None) -> str | None:
    """Paths in presets are relative to the working directory, or else to the repository root."""
    if path is None or Path(path).is_absolute() or Path(path).exists():
        return path
    candidate = REPO_ROOT / path
    return str(candidate) if candidate.exists() else path


def load_config(argv: list[str] | None = None) -> TrainingConfig:
    """Parse flags, read the preset they name, and return the validated config."""
    args = build_parser().parse_args(argv)
    values = {}
    if args.config:
        preset_path = Path(resolve_path(args.config))
        if not preset_path.is_file():
            raise FileNotFoundError(f"Training preset {args.config} not found.")
        preset = yaml.safe_load(preset_path.read_text()) or {}
        known = {f.name: f for f in dataclasses.fields(TrainingConfig)}
        unknown = sorted(set(preset) - set(known))
        if unknown:
            raise ValueError(f"Unknown key(s) {unknown} in {preset_path}; valid keys are the flags of train.py --help.")
        values = {name: _coerce(name, value, _field_type(known[name])) for name, value in preset.items()}
    for name, value in vars(args).items():
        if name != "config" and value is not None:
            values[name] = value
    for name in ("model_config", "data_dir", "train_file", "validation_file", "test_file"):
        if values.get(name):
            values[name] = resolve_path(values[name])
    # An empty flag clears a preset value: `--test_split ""`, `--data_dir ""` to use another corpus source, or
    # `--model_config ""` to fine-tune (`--model_name_or_path`) with a from-scratch preset's other settings.
    for name in ("model_config", "test_split", "checkpointing_steps", "resume_from_checkpoint", "branch_from", "data_dir",
                 "dataset_name", "dataset_config_name", "train_file", "validation_file", "test_file"):
        if values.get(name) == "":
            values[name] = None
    config = TrainingConfig(**values)
    config.validate()
    return config


def load_model_preset(path: str) -> dict:
    """Read a model preset (keyword arguments of AttnMTConfig)."""
    preset_path = Path(resolve_path(path))
    if not preset_path.is_file():
        raise FileNotFoundError(f"Model preset {path} not found (see configs/model/).")
    preset = yaml.safe_load(preset_path.read_text()) or {}
    if not isinstance(preset, dict):
        raise ValueError(f"Model preset {path} must be a mapping of AttnMTConfig arguments.")
    return preset
