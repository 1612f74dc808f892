"""Export a trained AttnMT model as a self-contained Hugging Face folder, atomically.

The folder holds config.json (with `auto_map` and `custom_pipelines`), the model code, the weights, the
tokenizer and generation_config.json, so that a fresh process with only `transformers` installed runs

    AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True)
    pipeline("translation", model=folder, trust_remote_code=True)

The export is written to a temporary sibling folder and renamed over `output_dir` only once complete: a
crash or an error half-way leaves the previous export untouched.
"""

import json
import os
import shutil
from pathlib import Path

from modeling import AttnMTEnsembleForConditionalGeneration, AttnMTTranslationPipeline
from mt.tokenizer import check_tokenizer_matches_config

REQUIRED_CODE_FILES = ("configuration_attnmt.py", "modeling_attnmt.py", "pipeline_attnmt.py")
# An ensemble's code imports the single model's, so its export carries both.
ENSEMBLE_CODE_FILES = ("configuration_attnmt_ensemble.py", "modeling_attnmt_ensemble.py")


def export_model(model, tokenizer, output_dir, model_card: str | None = None, max_shard_size=None) -> Path:
    """Save `model` and `tokenizer` into `output_dir`, replacing any previous export only on success.

    Args:
        model: an `AttnMTForConditionalGeneration` or an `AttnMTEnsembleForConditionalGeneration`.
        tokenizer: the tokenizer it was trained with; its special-token ids must equal the config's.
        output_dir: the folder to create or replace.
        model_card: text of README.md, written when given.
        max_shard_size: passed to `save_pretrained` (e.g. "200MB") to split the weights into shards.

    Returns:
        `output_dir` as a `Path`.

    Raises:
        ValueError: the tokenizer does not match the model config.
        RuntimeError: the saved folder lacks the remote-code entries (auto_map or a code file).
    """
    check_tokenizer_matches_config(tokenizer, model.config)
    # `Trainer` sets config.use_cache = False (its `use_cache` argument defaults to False); an exported
    # model is for inference, where the KV cache is what makes step-by-step decoding fast.
    model.config.use_cache = True

    output_dir = Path(output_dir)
    tmp_dir = output_dir.with_name(f"{output_dir.name}.tmp-{os.getpid()}")
    old_dir = output_dir.with_name(f"{output_dir.name}.old-{os.getpid()}")
    shutil.rmtree(tmp_dir, ignore_errors=True)  # left over by an earlier crash of this same pid
    try:
        _write_export(model, tokenizer, tmp_dir, model_card, max_shard_size)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise

    # Two renames: the previous export moves aside, the new one takes its name, then the old one goes.
    shutil.rmtree(old_dir, ignore_errors=True)
    if output_dir.exists():
        output_dir.rename(old_dir)
    try:
        tmp_dir.rename(output_dir)
    except BaseException:
        if old_dir.exists():
            old_dir.rename(output_dir)
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    shutil.rmtree(old_dir, ignore_errors=True)
    return output_dir


def _write_export(model, tokenizer, folder: Path, model_card: str | None, max_shard_size) -> None:
    save_kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    # The pipeline's save writes `custom_pipelines` into config.json and copies pipeline_attnmt.py, then
    # saves the model (config with auto_map, code, weights, generation config) and the tokenizer.
    AttnMTTranslationPipeline(model=model, tokenizer=tokenizer).save_pretrained(folder, **save_kwargs)

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    auto_map = config.get("auto_map", {})
    for auto_class in ("AutoConfig", "AutoModelForSeq2SeqLM"):
        if auto_class not in auto_map:
            raise RuntimeError(
                f"config.json has no auto_map entry for {auto_class}: importing `modeling` registers the "
                "classes for export (register_for_auto_class); was the model built from another module?"
            )
    if "translation" not in config.get("custom_pipelines", {}):
        raise RuntimeError("config.json has no custom_pipelines entry for the translation task.")
    required = REQUIRED_CODE_FILES
    if isinstance(model, AttnMTEnsembleForConditionalGeneration):
        required += ENSEMBLE_CODE_FILES
    missing = [name for name in required if not (folder / name).is_file()]
    if missing:
        raise RuntimeError(f"The export lacks the remote-code files {missing}.")
    if model_card is not None:
        (folder / "README.md").write_text(model_card, encoding="utf-8")


__all__ = ["export_model"]
