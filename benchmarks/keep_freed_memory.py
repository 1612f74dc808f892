"""Training steps with and without `keep_freed_memory()` (mt/cpu_memory.py), alternating in one process.

train.py keeps freed memory in the process on glibc (config `keep_freed_memory`, on by default) so that the
large per-step buffers (the LM head's logits over the vocabulary and their gradients) are not mapped, zero-filled
and unmapped again every step. This script measures what that is worth, at a preset's size on real Multi30k
batches of train.py's size (length-grouped, ~8k padded source + target tokens), under both attention paths:

    variants: {malloc default, keep_freed_memory} × {sdpa, eager}, run in turn within each repetition
    (the order rotates between repetitions), each variant timing the same `--steps` forward + backward + AdamW
    steps on one model per attention path.

It prints medians of tokens/s per variant and the paired per-repetition ratios keep ÷ default (per attention
path) and eager ÷ sdpa (with memory kept), plus the resident memory after the steps, which is what keeping
freed memory costs.

    python benchmarks/keep_freed_memory.py --repeats 7 --json benchmarks/results/keep_freed_memory_amd_s28.json
"""

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
for path in (REPO_ROOT, REPO_ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import speed_vs_marian as harness  # noqa: E402  (tokenizer cache, real batches, the model builders)
from mt.cpu_memory import glibc, keep_freed_memory, malloc_defaults  # noqa: E402

MALLOC = {"default": malloc_defaults, "keep": keep_freed_memory}
ATTENTION = ("sdpa", "eager")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_config", default="configs/model/multi30k.yaml", help="Architecture preset (YAML).")
    parser.add_argument("--repeats", type=int, default=7, help="Repetitions (each runs every variant once).")
    parser.add_argument("--steps", type=int, default=6, help="Timed training steps per variant and repetition.")
    parser.add_argument("--warmup_steps", type=int, default=2)
    parser.add_argument("--max_tokens", type=int, default=8192, help="Token budget of a batch (train.py's preset).")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch.set_num_threads.")
    parser.add_argument("--data_dir", default=str(REPO_ROOT.parent / "shared/data/multi30k"))
    parser.add_argument("--vocab_size", type=int, default=8000)
    parser.add_argument("--cache_dir", default=str(REPO_ROOT / "benchmarks/.cache"), help="Where the tokenizer is cached.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="Write all measurements to this JSON file.")
    args = parser.parse_args(argv)
    if min(args.repeats, args.steps, args.threads) < 1 or args.warmup_steps < 0:
        parser.error("--repeats, --steps and --threads must be positive, --warmup_steps not negative.")
    if glibc() is None:
        parser.error("keep_freed_memory() changes glibc's malloc; this C library is not glibc, so there is nothing "
                     "to compare.")
    # The harness's helpers read these names.
    args.source_lang, args.target_lang, args.device, args.dtype = "en", "de", "cpu", "float32"
    args.train_steps = args.steps
    return args


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    tokenizer = harness.build_tokenizer(args)
    batches = harness.build_train_batches(args, tokenizer)
    warmup, timed = batches[:args.warmup_steps], batches[args.warmup_steps:]
    tokens = sum(harness.count_tokens(b) for b in timed)
    config = harness.ours_config(args, len(tokenizer))
    models = {}
    for attention in ATTENTION:  # one model per path, same seed: the same weights at the start
        model = harness.build_model("ours", config, args.seed, "cpu")
        model.set_attn_implementation(attention)
        models[attention] = (model, harness.make_optimizer(model))
    variants = [(malloc, attention) for malloc in MALLOC for attention in ATTENTION]
    for malloc, attention in variants:  # allocator state, kernels, AdamW moments
        MALLOC[malloc]()
        harness.time_training(*models[attention], warmup or timed[:1], args)

    per_rep = {f"{m}/{a}": [] for m, a in variants}
    rss = {f"{m}/{a}": [] for m, a in variants}
    for rep in range(args.repeats):
        shift = rep % len(variants)
        for malloc, attention in variants[shift:] + variants[:shift]:
            MALLOC[malloc]()
            seconds = harness.time_training(*models[attention], timed, args)
            per_rep[f"{malloc}/{attention}"].append(tokens / seconds)
            rss[f"{malloc}/{attention}"].append(harness.current_rss_bytes() / 2**20)
        print(f"repetition {rep + 1}/{args.repeats}: " + ", ".join(
            f"{name} {values[-1]:,.0f} tok/s" for name, values in per_rep.items()), flush=True)
    malloc_defaults()

    def ratios(a: str, b: str) -> list[float]:
        return [x / y for x, y in zip(per_rep[a], per_rep[b])]

    paired = {f"keep ÷ default ({attention})": ratios(f"keep/{attention}", f"default/{attention}")
              for attention in ATTENTION}
    paired["eager ÷ sdpa (memory kept)"] = ratios("keep/eager", "keep/sdpa")
    paired["keep/eager ÷ default/sdpa (both changes)"] = ratios("keep/eager", "default/sdpa")
    return {
        "tokens_per_second": {name: statistics.median(v) for name, v in per_rep.items()},
        "ratios": {name: {"median": statistics.median(v), "min": min(v), "max": max(v), "per_repetition": v}
                   for name, v in paired.items()},
        "rss_mib_after_steps": {name: statistics.median(v) for name, v in rss.items()},
        "raw_tokens_per_second": per_rep,
        "tokens_per_step": tokens / len(timed),
        "machine": harness.machine_info(args),
        "args": vars(args),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    results = run(args)
    print(f"\n{args.model_config}, {results['tokens_per_step']:,.0f} tokens per step, {args.threads} threads, "
          f"{args.repeats} repetitions of {args.steps} steps")
    for name, value in results["tokens_per_second"].items():
        print(f"  {name:<14} {value:>9,.0f} tok/s   RSS after steps {results['rss_mib_after_steps'][name]:,.0f} MiB")
    for name, row in results["ratios"].items():
        print(f"  {name:<42} {row['median']:.3f} ({row['min']:.2f}-{row['max']:.2f})")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
