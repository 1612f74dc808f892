"""Does the weight-first product of `AttnMTLinear` pay? A paired A/B inside one process, against Marian too.

`AttnMTLinear` computes x·Wᵀ + b as the transpose of W·xᵀ for a few rows and a large weight on a CPU (see its
docstring). This script measures it in two ways, alternating everything within each repetition:

1. the product alone, at the shapes of a decoding step (32 and 160 rows; the preset's LM head, the base size's
   feed-forward weights, a small weight that stays in the caches): `F.linear` against W·xᵀ, as the transposed view
   and made contiguous again;
2. greedy (or beam) `generate()` of the model, built as `speed_vs_marian.py` builds it, with the weight-first
   product on (the default) and off (`weight_first_max_rows = 0`: every product is `F.linear`), and Marian of the
   same size; outputs are checked identical.

    python benchmarks/weight_first_linear.py [--model_config configs/model/base.yaml] [--num_beams 5]
        [--repeats 7] [--gen_batches 2] [--gen_batch_size 32] [--train_between] [--json FILE]
        [--max_rows 64] [--min_weight 262144]

`--max_rows` and `--min_weight` set the "on" variant's thresholds (`AttnMTLinear.weight_first_max_rows` and
`weight_first_min_weight`; defaults: the model's), to measure other choices: `--num_beams 5 --max_rows 160` lets
beam search over 32 sentences take the weight-first LM head, `--min_weight 0` every linear layer of the preset.

`--train_between` runs the `speed_vs_marian.py` training steps before each generation, as that harness does (caches
and the allocator then start from a training step's state), on a copy of the model of the same kind, so that the
generating weights stay fixed and the on/off outputs stay comparable.
"""

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
sys.path.insert(0, str(REPO_ROOT))

import speed_vs_marian as harness  # noqa: E402
from modeling.modeling_attnmt import AttnMTLinear  # noqa: E402

PRODUCT_SHAPES = [  # (out_features, in_features, what)
    (8000, 128, "LM head, preset"),
    (128, 128, "attention projection, preset"),
    (2048, 512, "fc1, base size"),
    (512, 2048, "fc2, base size"),
    (512, 512, "attention projection, base size"),
]


def time_call(fn, calls: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def time_products(repeats: int) -> list[dict]:
    rows = []
    for out_features, in_features, what in PRODUCT_SHAPES:
        weight, bias = torch.randn(out_features, in_features) * 0.05, torch.randn(out_features)
        for n in (32, 160):
            x = torch.randn(n, in_features)
            variants = {
                "F.linear": lambda: F.linear(x, weight, bias),
                "W·xᵀ view": lambda: torch.addmm(bias.unsqueeze(1), weight, x.t()).t(),
                "W·xᵀ contiguous": lambda: torch.addmm(bias.unsqueeze(1), weight, x.t()).t().contiguous(),
            }
            calls = max(5, int(2e8 / (out_features * in_features * n)))
            times = {name: [] for name in variants}
            for _ in range(repeats):
                for name, fn in variants.items():
                    times[name].append(time_call(fn, calls))
            row = {"shape": f"{out_features}×{in_features}", "what": what, "rows": n,
                   **{f"{name} µs": statistics.median(t) * 1e6 for name, t in times.items()}}
            rows.append(row)
            print(f"{row['shape']:>10} ({what}), {n} rows: " + ", ".join(
                f"{name} {statistics.median(t) * 1e6:,.0f} µs" for name, t in times.items()), flush=True)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_config", default="configs/model/multi30k.yaml")
    parser.add_argument("--num_beams", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--gen_batches", type=int, default=2)
    parser.add_argument("--gen_batch_size", type=int, default=32)
    parser.add_argument("--max_rows", type=int, default=AttnMTLinear.weight_first_max_rows)
    parser.add_argument("--min_weight", type=int, default=AttnMTLinear.weight_first_min_weight)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train_between", action="store_true")
    parser.add_argument("--no_products", action="store_true", help="skip part 1")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    products = [] if args.no_products else time_products(args.repeats)

    hargs = harness.parse_args(["--model_config", args.model_config, "--threads", str(args.threads),
                                "--gen_batches", str(args.gen_batches), "--gen_batch_size", str(args.gen_batch_size),
                                "--num_beams", str(args.num_beams)])
    tokenizer = harness.build_tokenizer(hargs)
    train_batches = harness.build_train_batches(hargs, tokenizer)
    gen_batches = harness.build_generation_batches(hargs, tokenizer)
    config = harness.ours_config(hargs, len(tokenizer))
    models = {name: harness.build_model(name, config, hargs.seed, "cpu") for name in ("ours", "marian")}
    trainees = {name: copy.deepcopy(model) for name, model in models.items()}  # --train_between trains these
    optimizers = {name: harness.make_optimizer(model) for name, model in trainees.items()}
    gen_config = harness.generation_config(hargs, config, args.num_beams)
    defaults = AttnMTLinear.weight_first_max_rows, AttnMTLinear.weight_first_min_weight
    variants = {"weight-first": ("ours", args.max_rows), "F.linear": ("ours", 0), "marian": ("marian", None)}
    AttnMTLinear.weight_first_min_weight = args.min_weight

    def generate(variant: str) -> tuple[float, list[torch.Tensor]]:
        name, max_rows = variants[variant]
        if max_rows is not None:
            AttnMTLinear.weight_first_max_rows = max_rows
        if args.train_between:
            harness.time_training(trainees[name], optimizers[name], train_batches[hargs.warmup_steps:], hargs)
        models[name].eval()
        start = time.perf_counter()
        outputs = [harness.generate(models[name], batch, gen_config, hargs) for batch in gen_batches]
        return time.perf_counter() - start, outputs

    try:
        for variant in variants:  # warm-up
            generate(variant)
        seconds = {variant: [] for variant in variants}
        order = list(variants)
        for repetition in range(args.repeats):
            outputs = {}
            for variant in order if repetition % 2 == 0 else order[::-1]:
                elapsed, outputs[variant] = generate(variant)
                seconds[variant].append(elapsed)
            if not all(torch.equal(a, b) for a, b in zip(outputs["weight-first"], outputs["F.linear"])):
                raise RuntimeError("the weight-first product changed the generated tokens")
            print(f"repetition {repetition + 1}/{args.repeats}: " + ", ".join(
                f"{v} {seconds[v][-1]:.3f} s" for v in variants), flush=True)
    finally:
        AttnMTLinear.weight_first_max_rows, AttnMTLinear.weight_first_min_weight = defaults

    def paired(a: str, b: str) -> list[float]:  # speed of a ÷ speed of b, per repetition
        return [tb / ta for ta, tb in zip(seconds[a], seconds[b])]

    mode = "greedy" if args.num_beams == 1 else f"beam {args.num_beams}"
    summary = {
        "weight-first ÷ F.linear": paired("weight-first", "F.linear"),
        "weight-first ÷ Marian": paired("weight-first", "marian"),
        "F.linear ÷ Marian": paired("F.linear", "marian"),
    }
    print(f"{args.model_config}, {mode}, {args.gen_batches}×{args.gen_batch_size} sentences, 64 new tokens, "
          f"{args.repeats} repetitions, weight-first for ≤ {args.max_rows} rows and weights ≥ {args.min_weight:,} "
          f"elements{', training steps between' if args.train_between else ''} — speed ratios, median (range):")
    for label, ratios in summary.items():
        print(f"  {label:26s} {statistics.median(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f})")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": harness.machine_info(hargs), "args": vars(args), "products": products,
            "generate_seconds": seconds, "ratios": summary,
        }, indent=2) + "\n")
        print(f"written to {args.json}")


if __name__ == "__main__":
    main()
