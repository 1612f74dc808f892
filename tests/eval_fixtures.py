"""Helpers for the evaluation tests: tiny checkpoints on disk (AttnMT, Marian, and non-seq2seq ones for the error
paths), a Multi30k slice as JSON lines, and running eval.py in a subprocess."""

import gzip
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, MarianConfig, MarianMTModel

import modeling  # noqa: F401  (registers AttnMT: save_pretrained then writes auto_map and the code files)

REPO_ROOT = Path(__file__).resolve().parents[1]
MULTI30K = REPO_ROOT.parent / "shared/data/multi30k"
EVAL_SCRIPT = REPO_ROOT / "eval.py"
SLICE_SIZE = 20


def multi30k_lines(split: str, lang: str, n: int) -> list[str]:
    with gzip.open(MULTI30K / f"{split}.{lang}.gz", "rt", encoding="utf-8") as handle:
        return [line.rstrip("\n") for _, line in zip(range(n), handle)]


def save_checkpoint(model, tokenizer, folder: Path) -> Path:
    """`save_pretrained` of model and tokenizer into one folder, as an export would."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_marian(tokenizer, seed: int = 0) -> MarianMTModel:
    """A randomly initialised 1+1-layer MarianMTModel whose special ids match our joint tokenizer
    (Marian starts decoding from the pad token)."""
    torch.manual_seed(seed)
    config = MarianConfig(
        vocab_size=len(tokenizer),
        decoder_vocab_size=len(tokenizer),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        forced_eos_token_id=None,
        scale_embedding=True,
    )
    model = MarianMTModel(config).eval()
    model.generation_config.max_length = 24
    model.generation_config.num_beams = 1
    model.generation_config.bad_words_ids = None
    return model


def save_gpt2_checkpoint(tokenizer, folder: Path) -> Path:
    """A decoder-only checkpoint: eval.py must refuse it."""
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2, n_positions=32,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return save_checkpoint(GPT2LMHeadModel(config), tokenizer, folder)


def save_bert_checkpoint(tokenizer, folder: Path) -> Path:
    """An encoder-only checkpoint: eval.py must refuse it."""
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    return save_checkpoint(BertModel(config), tokenizer, folder)


def write_jsonl(path: Path, sources: list[str], targets: list[str], source_lang: str = "en",
                target_lang: str = "de") -> Path:
    """Pairs in the nested `translation` layout (the WMT/opus one), one JSON object per line."""
    with open(path, "w", encoding="utf-8") as handle:
        for source, target in zip(sources, targets):
            handle.write(json.dumps({"translation": {source_lang: source, target_lang: target}}, ensure_ascii=False) + "\n")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env() -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    env.pop("ACCELERATE_USE_CPU", None)
    return env


def run_eval(args: list[str], launcher: list[str] | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run eval.py (optionally under a launcher such as `accelerate launch ...`) from the repository root."""
    command = (launcher or [sys.executable]) + [str(EVAL_SCRIPT), *args]
    return subprocess.run(command, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


def accelerate_launcher(num_processes: int = 2) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port())]
