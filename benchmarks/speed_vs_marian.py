"""Speed and memory of AttnMT against transformers' own MarianMTModel, built with the same dimensions.

Both models get the same architecture preset (layers, d_model, heads, FFN, activation, dropout, max
positions), the same joint vocabulary (one tokenizer trained on the Multi30k training split), tied
embeddings, the same special-token ids, the same fresh-init seed, the same real batches and the same
thread count. Measurements alternate between the models on every repetition (the order flips each time, so
slow drift of a shared machine hits both), and the script prints medians and ours ÷ Marian ratios:

* training: source + target non-pad tokens per second over forward + backward + AdamW step (train mode,
  dropout as configured), on length-grouped token batches of the training split;
* generation: sentences per second, greedy and beam 5, batch 32 test sentences, exactly 64 new tokens
  (no end-of-sentence token, because random-init models would otherwise stop at different lengths);
* peak training memory, each model in its own subprocess: peak RSS (VmHWM, reset just before the model
  is built, after a throw-away warm-up model has paid the runtime's one-time costs) minus the RSS at that
  point, and on CUDA torch.cuda.max_memory_allocated;
* for information: eager ÷ sdpa inside AttnMT, and achieved training FLOP/s (FlopCounterMode) as a
  fraction of the measured float32 (or bf16) matmul peak.

Usage (from the repository root; see benchmarks/README.md):

    python benchmarks/speed_vs_marian.py                                   # multi30k preset, 5 repetitions
    python benchmarks/speed_vs_marian.py --model_config configs/model/base.yaml --json base.json
    python benchmarks/speed_vs_marian.py --quick                            # smoke run, a minute or two
    python benchmarks/speed_vs_marian.py --quick --profile                  # + torch.profiler top ops
"""

import argparse
import datetime
import hashlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import transformers
from transformers import GenerationConfig, MarianConfig, MarianMTModel

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from modeling import AttnMTConfig, AttnMTForConditionalGeneration  # noqa: E402
from mt.config import load_model_preset  # noqa: E402
from mt.tokenizer import SPECIAL_TOKEN_IDS  # noqa: E402

TARGETS = {  # figure -> (comparison, threshold); ratios are ours ÷ Marian
    "train_tokens_per_s": (">=", 1.2),
    "greedy_sentences_per_s": (">=", 1.2),
    "beam_sentences_per_s": (">=", 1.2),
    "peak_train_memory": ("<=", 1.0),
}


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_config", default="configs/model/multi30k.yaml", help="Architecture preset (YAML).")
    parser.add_argument("--repeats", type=int, default=5, help="Timed repetitions per model (medians are reported).")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch.set_num_threads.")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="bfloat16 = autocast (weights and optimizer stay float32).")
    parser.add_argument("--json", default=None, help="Write all measurements to this JSON file.")
    parser.add_argument("--quick", action="store_true", help="Short smoke run: 2 repetitions, fewer batches.")
    parser.add_argument("--profile", action="store_true",
                        help="Also print torch.profiler's top ops for a training step and a generation call.")
    parser.add_argument("--data_dir", default=str(REPO_ROOT.parent / "shared/data/multi30k"))
    parser.add_argument("--source_lang", default="en")
    parser.add_argument("--target_lang", default="de")
    parser.add_argument("--vocab_size", type=int, default=8000)
    parser.add_argument("--cache_dir", default=str(REPO_ROOT / "benchmarks/.cache"), help="Where the tokenizer is cached.")
    parser.add_argument("--max_tokens", type=int, default=4096, help="Token budget of a training batch (padded src+tgt).")
    parser.add_argument("--train_steps", type=int, default=8, help="Timed training steps per repetition.")
    parser.add_argument("--warmup_steps", type=int, default=3)
    parser.add_argument("--gen_batch_size", type=int, default=32)
    parser.add_argument("--gen_batches", type=int, default=2, help="Generation batches per repetition.")
    parser.add_argument("--num_beams", type=int, default=5)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--_memory_worker", choices=("ours", "marian"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_batches_file", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.train_steps, args.warmup_steps, args.gen_batches = 2, 3, 1, 1
    if args.repeats < 1 or args.threads < 1 or args.train_steps < 1 or args.gen_batches < 1:
        parser.error("--repeats, --threads, --train_steps and --gen_batches must be positive.")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False.")
    return args


# --------------------------------------------------------------------------------------------------
# Data: one joint tokenizer, real Multi30k batches
# --------------------------------------------------------------------------------------------------


def build_tokenizer(args):
    """Train the joint tokenizer on the training split once; later runs load it from the cache."""
    from transformers import AutoTokenizer

    # Keyed by the tokenizer code too, so a change to mt/tokenizer.py never reuses a stale vocabulary.
    code = hashlib.sha1((REPO_ROOT / "mt/tokenizer.py").read_bytes()).hexdigest()[:8]
    folder = Path(args.cache_dir) / f"tokenizer-multi30k-{args.source_lang}{args.target_lang}-bpe{args.vocab_size}-{code}"
    if not (folder / "tokenizer.json").is_file():
        from mt.tokenizer import train_tokenizer

        train = read_split(args, "train")
        tokenizer = train_tokenizer(train["source"] + train["target"], vocab_size=args.vocab_size)
        tokenizer.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def read_split(args, split: str) -> dict[str, list[str]]:
    from mt.data import CorpusSpec, drop_blank_pairs, load_split

    spec = CorpusSpec(source_lang=args.source_lang, target_lang=args.target_lang, data_dir=args.data_dir)
    return drop_blank_pairs(load_split(spec, split), split).to_dict()


def build_train_batches(args, tokenizer) -> list[dict[str, torch.Tensor]]:
    """Warm-up + timed training batches: length-grouped token batches (as train.py makes them), a seeded
    random draw of them so that short and long sentences are both represented."""
    from transformers import DataCollatorForSeq2Seq

    from mt.batching import LengthGroupedBatchSampler

    train = read_split(args, "train")
    encoded = tokenizer(train["source"], text_target=train["target"])
    pairs = [(s, t) for s, t in zip(encoded["input_ids"], encoded["labels"]) if len(s) <= 128 and len(t) <= 128]
    sampler = LengthGroupedBatchSampler([len(s) for s, _ in pairs], [len(t) for _, t in pairs],
                                        max_sentences=1024, max_tokens=args.max_tokens, shuffle=True, seed=args.seed)
    collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, pad_to_multiple_of=8)
    batches = []
    for indices in list(sampler)[: args.warmup_steps + args.train_steps]:
        batch = collator([{"input_ids": pairs[i][0], "labels": pairs[i][1]} for i in indices])
        batches.append({k: batch[k] for k in ("input_ids", "attention_mask", "labels")})
    return batches


def build_generation_batches(args, tokenizer) -> list[dict[str, torch.Tensor]]:
    """The first gen_batches × gen_batch_size test sentences, in corpus order, padded per batch."""
    sources = read_split(args, "test_2016_flickr")["source"]
    size = args.gen_batch_size
    return [dict(tokenizer(sources[i * size:(i + 1) * size], padding=True, return_tensors="pt"))
            for i in range(args.gen_batches)]


def count_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Source + target tokens that are not padding."""
    return int(batch["attention_mask"].sum()) + int((batch["labels"] != -100).sum())


# --------------------------------------------------------------------------------------------------
# The two models
# --------------------------------------------------------------------------------------------------


def ours_config(args, vocab_size: int) -> AttnMTConfig:
    preset = load_model_preset(args.model_config)
    preset.update(vocab_size=vocab_size, decoder_start_token_id=SPECIAL_TOKEN_IDS["bos_token_id"], **SPECIAL_TOKEN_IDS)
    return AttnMTConfig(**preset)


def marian_config(ours: AttnMTConfig) -> MarianConfig:
    """MarianConfig with our dimensions, tokens and embedding sharing. Marian is always post-norm without
    a final LayerNorm; a pre-norm AttnMT preset therefore has two more LayerNorms (negligible cost)."""
    return MarianConfig(
        vocab_size=ours.vocab_size,
        d_model=ours.d_model,
        encoder_layers=ours.encoder_layers,
        decoder_layers=ours.decoder_layers,
        encoder_attention_heads=ours.encoder_attention_heads,
        decoder_attention_heads=ours.decoder_attention_heads,
        encoder_ffn_dim=ours.encoder_ffn_dim,
        decoder_ffn_dim=ours.decoder_ffn_dim,
        activation_function=ours.activation_function,
        dropout=ours.dropout,
        attention_dropout=ours.attention_dropout,
        activation_dropout=ours.activation_dropout,
        max_position_embeddings=ours.max_position_embeddings,
        scale_embedding=ours.scale_embedding,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
        pad_token_id=ours.pad_token_id,
        bos_token_id=ours.bos_token_id,
        eos_token_id=ours.eos_token_id,
        decoder_start_token_id=ours.decoder_start_token_id,
        forced_eos_token_id=None,  # Marian's default (0) would add a logits processor AttnMT does not run
    )


def build_model(which: str, config: AttnMTConfig, seed: int, device: str) -> torch.nn.Module:
    torch.manual_seed(seed)
    if which == "ours":
        model = AttnMTForConditionalGeneration(config)
    else:
        model = MarianMTModel(marian_config(config))
    # generate() fills unset options from the model's own generation config: without this, its
    # end-of-sentence id would come back and random-init hypotheses would stop at different lengths.
    model.generation_config.eos_token_id = None
    model.generation_config.max_length = None  # the length is max_new_tokens (and this silences a warning)
    return model.to(device)


def describe_models(config: AttnMTConfig, ours, marian) -> str:
    def params(model):
        return sum(p.numel() for p in model.parameters()) / 1e6

    return (
        f"{config.encoder_layers}+{config.decoder_layers} layers, d_model {config.d_model}, "
        f"{config.encoder_attention_heads} heads, FFN {config.encoder_ffn_dim}, vocab {config.vocab_size}, "
        f"{config.activation_function}, dropout {config.dropout}, "
        f"{'pre' if config.normalize_before else 'post'}-norm (Marian: post-norm); "
        f"parameters ours {params(ours):.2f}M, Marian {params(marian):.2f}M"
    )


# --------------------------------------------------------------------------------------------------
# Timed work
# --------------------------------------------------------------------------------------------------


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def autocast(args):
    if args.dtype == "bfloat16":
        return torch.autocast(device_type=args.device, dtype=torch.bfloat16)
    return nullcontext()


def to_device(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def make_optimizer(model) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-8)


def train_step(model, optimizer, batch, args) -> None:
    optimizer.zero_grad(set_to_none=True)
    with autocast(args):
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()


def time_training(model, optimizer, batches, args) -> float:
    """Seconds for one forward + backward + AdamW step on each batch."""
    model.train()
    synchronize(args.device)
    start = time.perf_counter()
    for batch in batches:
        train_step(model, optimizer, batch, args)
    synchronize(args.device)
    return time.perf_counter() - start


def generation_config(args, config: AttnMTConfig, num_beams: int) -> GenerationConfig:
    """One explicit generation config for both models: exactly max_new_tokens new tokens each.

    Random-init models would stop at different lengths. Without an end-of-sentence token every hypothesis
    runs to max_new_tokens; forcing the length with min_new_tokens instead would add two logits processors
    (a full (batch × beams, vocab) `torch.where` each per step) that real decoding does not run and that
    would dilute the difference between the models."""
    return GenerationConfig(
        num_beams=num_beams,
        do_sample=False,
        max_new_tokens=args.max_new_tokens,
        use_cache=True,
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=None,
        decoder_start_token_id=config.decoder_start_token_id,
    )


def generate(model, batch, gen_config, args) -> torch.Tensor:
    with autocast(args):
        return model.generate(**batch, generation_config=gen_config)


def time_generation(model, batches, gen_config, args) -> float:
    model.eval()
    synchronize(args.device)
    start = time.perf_counter()
    for batch in batches:
        output = generate(model, batch, gen_config, args)
        if output.shape[1] != args.max_new_tokens + 1:
            raise RuntimeError(f"generate returned {output.shape[1]} positions, expected {args.max_new_tokens + 1}.")
    synchronize(args.device)
    return time.perf_counter() - start


def count_training_flops(model, batches, args) -> int:
    """FLOPs of one forward + backward over `batches` (matmuls and attention; the optimizer is elementwise)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    counter = FlopCounterMode(display=False)
    with counter:
        for batch in batches:
            with autocast(args):
                loss = model(**batch).loss
            loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def matmul_peak_flops(args) -> float:
    """Best FLOP/s of a large square torch.mm on the benchmark's device, threads and dtype."""
    n = 8192 if args.device == "cuda" else 2048
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    a = torch.randn(n, n, device=args.device, dtype=dtype)
    b = torch.randn(n, n, device=args.device, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(5):
        synchronize(args.device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(args.device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


# --------------------------------------------------------------------------------------------------
# Peak training memory, one subprocess per model
# --------------------------------------------------------------------------------------------------


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """The process's peak resident set size since the last `reset_peak_rss` (Linux VmHWM)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


def reset_peak_rss() -> None:
    """Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def memory_worker(args) -> None:
    """Run in a fresh process: train one model on the batches, print its peak memory as JSON.

    What is measured is the memory the model costs: weights, gradients, AdamW moments and the activations
    of the largest step. The one-time costs of the runtime (oneDNN kernels, thread pools, allocator arenas:
    ~200 MB on the first step, the same for any model) are paid by a throw-away warm-up model first, and
    the parent starts this process with a fixed `MALLOC_MMAP_THRESHOLD_`, so that freed tensors go back to
    the system and the resident set follows the live tensors.
    """
    import ctypes

    torch.set_num_threads(args.threads)
    saved = torch.load(args._batches_file)
    config = AttnMTConfig.from_dict(saved["config"])
    batches = [to_device(b, args.device) for b in saved["batches"]]
    warmup_model = build_model(args._memory_worker, config, args.seed, args.device)
    time_training(warmup_model, make_optimizer(warmup_model), batches[:1], args)
    del warmup_model
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    rss_before = current_rss_bytes()
    reset_peak_rss()
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        cuda_before = torch.cuda.memory_allocated()
    model = build_model(args._memory_worker, config, args.seed, args.device)
    optimizer = make_optimizer(model)
    time_training(model, optimizer, batches, args)
    result = {"rss_before_bytes": rss_before, "peak_rss_increase_bytes": peak_rss_bytes() - rss_before}
    if args.device == "cuda":
        result["cuda_peak_allocated_bytes"] = torch.cuda.max_memory_allocated() - cuda_before
    print("MEMORY_RESULT " + json.dumps(result))


def measure_memory(args, config: AttnMTConfig, batches, which: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        batches_file = os.path.join(tmp, "batches.pt")
        torch.save({"config": config.to_dict(), "batches": batches}, batches_file)
        command = [sys.executable, __file__, "--_memory_worker", which, "--_batches_file", batches_file,
                   "--threads", str(args.threads), "--device", args.device, "--dtype", args.dtype,
                   "--seed", str(args.seed)]
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}  # see memory_worker
        done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"memory worker for {which} failed:\n{done.stderr[-3000:]}")
    line = [x for x in done.stdout.splitlines() if x.startswith("MEMORY_RESULT ")][-1]
    return json.loads(line.split(" ", 1)[1])


# --------------------------------------------------------------------------------------------------
# Profiler
# --------------------------------------------------------------------------------------------------


def profile(name: str, model, optimizer, train_batches, gen_batch, gen_configs, args) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    sort_by = "self_cuda_time_total" if args.device == "cuda" else "self_cpu_time_total"
    model.train()
    with torch_profile(activities=activities) as prof:
        for batch in train_batches:
            train_step(model, optimizer, batch, args)
        synchronize(args.device)
    print(f"\n=== profiler: {name}, {len(train_batches)} training steps ===")
    print(prof.key_averages().table(sort_by=sort_by, row_limit=18))
    model.eval()
    for label, gen_config in gen_configs.items():
        with torch_profile(activities=activities) as prof:
            generate(model, gen_batch, gen_config, args)
            synchronize(args.device)
        print(f"\n=== profiler: {name}, generation {label}, batch {gen_batch['input_ids'].shape[0]} ===")
        print(prof.key_averages().table(sort_by=sort_by, row_limit=18))


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def machine_info(args) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "threads": args.threads,
        "device": args.device,
        "dtype": args.dtype,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    commit = subprocess.run(["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
                            capture_output=True, text=True)
    if commit.returncode == 0:
        info["commit"] = commit.stdout.strip()  # the model code that was measured
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def verdict(figure: str, ratio: float) -> str:
    comparison, threshold = TARGETS[figure]
    passed = ratio >= threshold if comparison == ">=" else ratio <= threshold
    return f"{comparison} {threshold:<4} {'PASS' if passed else 'FAIL'}"


def print_report(results: dict) -> None:
    m = results["machine"]
    print("\n" + "=" * 100)
    print(f"AttnMT vs MarianMTModel — {results['model_config']}: {results['models']}")
    print(f"{m['date']} | {m['cpu']}{' | ' + m['gpu'] if 'gpu' in m else ''} | {m['device']} {m['dtype']} | "
          f"{m['threads']} threads of {m['logical_cpus']} | torch {m['torch']} | transformers {m['transformers']}")
    print(f"{results['repeats']} repetitions (medians; ratios are medians of the per-repetition ratios) | "
          f"{results['train_steps']} train batches/rep (~{results['max_tokens']} tokens) | "
          f"{results['gen_batches']}×{results['gen_batch_size']} sentences, {results['max_new_tokens']} new tokens")
    print("-" * 100)
    print(f"{'figure':34}{'AttnMT':>14}{'Marian':>14}{'ours÷Marian':>13}   target")
    for figure, row in results["comparison"].items():
        print(f"{row['label']:34}{row['ours']:>14,.1f}{row['marian']:>14,.1f}{row['ratio']:>13.3f}   "
              f"{verdict(figure, row['ratio'])}")
    print("-" * 100)
    print("for information (AttnMT, eager attention ÷ sdpa):")
    for row in results["eager_vs_sdpa"].values():
        print(f"  {row['label']:32}{row['eager']:>14,.1f}{row['sdpa']:>14,.1f}{row['ratio']:>13.3f}")
    peak = results["matmul_peak_flops"]
    print(f"training FLOP/s vs. measured {m['dtype']} matmul peak ({peak / 1e9:,.1f} GFLOP/s):")
    for name, row in results["flops"].items():
        print(f"  {name:32}{row['flops_per_step'] / 1e9:>10,.1f} GFLOP/step {row['achieved'] / 1e9:>10,.1f} GFLOP/s"
              f"  = {row['fraction_of_peak']:.1%} of peak")
    print("=" * 100)


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


def run_benchmark(args) -> dict:
    torch.set_num_threads(args.threads)
    tokenizer = build_tokenizer(args)
    train_batches = build_train_batches(args, tokenizer)
    gen_batches = build_generation_batches(args, tokenizer)
    config = ours_config(args, len(tokenizer))
    warmup = [to_device(b, args.device) for b in train_batches[: args.warmup_steps]]
    timed = [to_device(b, args.device) for b in train_batches[args.warmup_steps:]]
    gen_batches = [to_device(b, args.device) for b in gen_batches]
    tokens = sum(count_tokens(b) for b in timed)
    sentences = sum(b["input_ids"].shape[0] for b in gen_batches)
    gen_configs = {"greedy": generation_config(args, config, 1), "beam": generation_config(args, config, args.num_beams)}

    models = {"ours": build_model("ours", config, args.seed, args.device),
              "marian": build_model("marian", config, args.seed, args.device)}
    optimizers = {name: make_optimizer(model) for name, model in models.items()}
    print(describe_models(config, models["ours"], models["marian"]), flush=True)

    # Variants: the two models under their default (sdpa) attention, and AttnMT's eager formula.
    variants = {"ours": ("ours", "sdpa"), "marian": ("marian", "sdpa"), "ours_eager": ("ours", "eager")}

    def activate(variant: str):
        name, attention = variants[variant]
        model = models[name]
        if model.config._attn_implementation != attention:
            model.set_attn_implementation(attention)
        return model, optimizers[name]

    for variant in variants:  # warm-up: allocator, kernels, lazily built state (AdamW moments)
        model, optimizer = activate(variant)
        time_training(model, optimizer, warmup, args)
        time_generation(model, gen_batches[:1], gen_configs["greedy"], args)

    flops = {}
    for name in ("ours", "marian"):
        model, _ = activate(name)
        flops[name] = count_training_flops(model, timed, args)

    raw = {v: {"train_s": [], "greedy_s": [], "beam_s": []} for v in variants}
    order = list(variants)
    for repetition in range(args.repeats):
        for variant in (order if repetition % 2 == 0 else order[::-1]):
            model, optimizer = activate(variant)
            raw[variant]["train_s"].append(time_training(model, optimizer, timed, args))
            raw[variant]["greedy_s"].append(time_generation(model, gen_batches, gen_configs["greedy"], args))
            raw[variant]["beam_s"].append(time_generation(model, gen_batches, gen_configs["beam"], args))
        print(f"repetition {repetition + 1}/{args.repeats}: " + ", ".join(
            f"{v} train {tokens / raw[v]['train_s'][-1]:,.0f} tok/s greedy {sentences / raw[v]['greedy_s'][-1]:.1f} "
            f"beam {sentences / raw[v]['beam_s'][-1]:.1f} sent/s" for v in variants), flush=True)

    if args.profile:
        for name in ("ours", "marian"):
            model, optimizer = activate(name)
            profile(name, model, optimizer, timed[:2], gen_batches[0], gen_configs, args)
    activate("ours")

    memory = {name: measure_memory(args, config, warmup + timed, name) for name in ("ours", "marian")}
    memory_key = "cuda_peak_allocated_bytes" if args.device == "cuda" else "peak_rss_increase_bytes"

    def per_second(amount, seconds):
        return [amount / s for s in seconds]

    def paired(a: str, b: str, key: str, amount: float) -> dict:
        ratios = [sb / sa for sa, sb in zip(raw[a][key], raw[b][key])]  # (amount/sa) / (amount/sb)
        return {"first": median(per_second(amount, raw[a][key])), "second": median(per_second(amount, raw[b][key])),
                "ratio": median(ratios), "ratios": ratios}

    labels = {"train_s": ("train_tokens_per_s", "training tokens/s", tokens),
              "greedy_s": ("greedy_sentences_per_s", "greedy sentences/s", sentences),
              "beam_s": ("beam_sentences_per_s", f"beam-{args.num_beams} sentences/s", sentences)}
    comparison, eager_vs_sdpa = {}, {}
    for key, (figure, label, amount) in labels.items():
        row = paired("ours", "marian", key, amount)
        comparison[figure] = {"label": label, "ours": row["first"], "marian": row["second"], "ratio": row["ratio"],
                              "ratios": row["ratios"]}
        row = paired("ours_eager", "ours", key, amount)
        eager_vs_sdpa[figure] = {"label": label, "eager": row["first"], "sdpa": row["second"], "ratio": row["ratio"],
                                 "ratios": row["ratios"]}
    mib = 2**20
    comparison["peak_train_memory"] = {
        "label": "peak training memory (MiB)" + (" CUDA" if args.device == "cuda" else " RSS"),
        "ours": memory["ours"][memory_key] / mib, "marian": memory["marian"][memory_key] / mib,
        "ratio": memory["ours"][memory_key] / memory["marian"][memory_key],
    }

    peak = matmul_peak_flops(args)
    flop_rows = {}
    for name in ("ours", "marian"):
        achieved = median([flops[name] / s for s in raw[name]["train_s"]])
        flop_rows[name] = {"flops_per_step": flops[name] / len(timed), "achieved": achieved,
                           "fraction_of_peak": achieved / peak}

    return {
        "machine": machine_info(args),
        "model_config": args.model_config,
        "models": describe_models(config, models["ours"], models["marian"]),
        "repeats": args.repeats,
        "train_steps": len(timed),
        "max_tokens": args.max_tokens,
        "train_tokens_per_rep": tokens,
        "gen_batches": len(gen_batches),
        "gen_batch_size": args.gen_batch_size,
        "max_new_tokens": args.max_new_tokens,
        "num_beams": args.num_beams,
        "comparison": comparison,
        "eager_vs_sdpa": eager_vs_sdpa,
        "memory": memory,
        "matmul_peak_flops": peak,
        "flops": flop_rows,
        "raw_seconds": raw,
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    if args._memory_worker is not None:
        memory_worker(args)
        return
    results = run_benchmark(args)
    print_report(results)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), **results}, indent=2) + "\n")
        print(f"measurements written to {args.json}")


if __name__ == "__main__":
    main()
