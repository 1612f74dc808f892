"""Generation with a static cache and `torch.compile`, AttnMT against MarianMTModel of identical size.

`speed_vs_marian.py` times generate() as it runs by default: a dynamic cache, eager PyTorch. transformers'
other decoding path preallocates the self-attention cache for every step (`cache_implementation="static"`)
so that the shapes never change, and then compiles the model's forward (automatically on a GPU; on a CPU when
the `CompileConfig` asks for it). This script times both paths for both models, with the same harness
(tokenizer, real test batches, exactly `max_new_tokens` new tokens, same threads, alternating order):

* `dynamic`: the default path;
* `static`: a static cache, eager;
* `static+compile`: a static cache and a compiled forward (inductor, `CompileConfig(mode="default")`;
  the default "reduce-overhead" mode means CUDA graphs, which a CPU does not have).

Before timing, every variant's output is checked to be token for token that of `dynamic` (a static cache whose
unwritten positions are not masked decodes differently). The first call of a compiled variant, which compiles,
is reported apart and not timed. Printed: sentences/s per model and variant, ours ÷ Marian per variant, and each
model's variant ÷ its own default.

    python benchmarks/compiled_generation.py                     # the Multi30k preset, greedy and beam 5
    python benchmarks/compiled_generation.py --num_beams 1 --json benchmarks/results/compiled_generation_cpu.json
    python benchmarks/compiled_generation.py --device cuda --dtype bfloat16
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import CompileConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed_vs_marian as harness  # noqa: E402  (same folder: tokenizer, batches, the two models)

VARIANTS = ("dynamic", "static", "static+compile")
MODELS = ("ours", "marian")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_config", default="configs/model/multi30k.yaml")
    parser.add_argument("--num_beams", type=int, nargs="+", default=[1, 5], help="Beam sizes to time (1 = greedy).")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gen_batches", type=int, default=2)
    parser.add_argument("--gen_batch_size", type=int, default=32)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--vocab_size", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--cache_dir", default=None)
    parser.add_argument("--json", default=None, help="Write all measurements to this JSON file.")
    args = parser.parse_args(argv)
    if "dynamic" not in args.variants:
        parser.error("--variants must include dynamic: the other variants are checked against it.")
    # The harness's own arguments (data, tokenizer, seed) with ours laid over them.
    harness_argv = ["--model_config", args.model_config, "--vocab_size", str(args.vocab_size),
                    "--device", args.device, "--dtype", args.dtype, "--gen_batches", str(args.gen_batches),
                    "--gen_batch_size", str(args.gen_batch_size), "--max_new_tokens", str(args.max_new_tokens)]
    harness_argv += ["--threads", str(args.threads)] if args.threads else []
    harness_argv += ["--cache_dir", args.cache_dir] if args.cache_dir else []
    args.harness = harness.parse_args(harness_argv)
    return args


def variant_config(args, config, num_beams: int, variant: str):
    gen_config = harness.generation_config(args.harness, config, num_beams)
    if variant != "dynamic":
        gen_config.cache_implementation = "static"
    if variant == "static+compile":
        compile_config = CompileConfig(mode="default")
        compile_config._compile_all_devices = True  # transformers compiles on GPUs only unless told otherwise
        gen_config.compile_config = compile_config
    return gen_config


def count_compiled_calls(model) -> list:
    """Record every generate() that runs the compiled forward: transformers 5 compiles greedy and sampling only, and
    runs beam search eagerly even when asked to compile."""
    calls, original = [], model.get_compiled_call
    model.get_compiled_call = lambda *a, **k: calls.append(1) or original(*a, **k)
    return calls


def run(args) -> dict:
    torch.set_num_threads(args.harness.threads)
    tokenizer = harness.build_tokenizer(args.harness)
    batches = [harness.to_device(b, args.device) for b in harness.build_generation_batches(args.harness, tokenizer)]
    config = harness.ours_config(args.harness, len(tokenizer))
    models = {which: harness.build_model(which, config, args.harness.seed, args.device).eval() for which in MODELS}
    compiled_calls = {which: count_compiled_calls(model) for which, model in models.items()}
    sentences = sum(batch["input_ids"].shape[0] for batch in batches)
    results = {"machine": harness.machine_info(args.harness), "model_config": args.model_config,
               "sentences_per_repetition": sentences, "max_new_tokens": args.max_new_tokens, "by_beam": {}}

    for num_beams in args.num_beams:
        configs = {v: variant_config(args, config, num_beams, v) for v in args.variants}
        first_call_s, compiled, reference = {}, {}, {}
        for variant, gen_config in configs.items():
            for which, model in models.items():
                compiled_calls[which].clear()
                start = time.perf_counter()
                outputs = [harness.generate(model, batch, gen_config, args.harness) for batch in batches]
                harness.synchronize(args.device)
                first_call_s[f"{variant}/{which}"] = time.perf_counter() - start
                compiled[f"{variant}/{which}"] = bool(compiled_calls[which])
                if variant == "dynamic":
                    reference[which] = outputs
                elif not all(torch.equal(a, b) for a, b in zip(outputs, reference[which])):
                    raise RuntimeError(f"{which}, beam {num_beams}: {variant} generated other tokens than dynamic.")
        seconds = {f"{variant}/{which}": [] for variant in configs for which in MODELS}
        for repetition in range(args.repeats):
            for variant, gen_config in configs.items():
                for which in MODELS if repetition % 2 == 0 else MODELS[::-1]:
                    seconds[f"{variant}/{which}"].append(
                        harness.time_generation(models[which], batches, gen_config, args.harness))
        rows = {}
        for variant in configs:
            ours, marian = seconds[f"{variant}/ours"], seconds[f"{variant}/marian"]
            rows[variant] = {
                "ours_sentences_per_s": sentences / statistics.median(ours),
                "marian_sentences_per_s": sentences / statistics.median(marian),
                "ratio": statistics.median(m / o for o, m in zip(ours, marian)),  # ours ÷ Marian in speed
                "ratios": [m / o for o, m in zip(ours, marian)],
            }
        for variant in configs:
            for which in MODELS:
                key = f"{which}_sentences_per_s"
                rows[variant][f"{which}_vs_own_dynamic"] = rows[variant][key] / rows["dynamic"][key]
        results["by_beam"][str(num_beams)] = {"rows": rows, "first_call_s": first_call_s, "compiled": compiled,
                                              "seconds": seconds}
    return results


def print_report(results: dict) -> None:
    machine = results["machine"]
    print(f"\n{machine['cpu']}, {machine['threads']} threads, {machine['device']} {machine['dtype']}, "
          f"torch {machine['torch']}, transformers {machine['transformers']}, {machine.get('commit', '')}")
    print(f"{results['model_config']}: {results['sentences_per_repetition']} test sentences per repetition, "
          f"{results['max_new_tokens']} new tokens each; every variant generated the same tokens as `dynamic`.")
    for num_beams, block in results["by_beam"].items():
        print(f"\n{'greedy' if num_beams == '1' else f'beam {num_beams}'}: sentences/s (medians)")
        print(f"{'variant':16s} {'AttnMT':>8s} {'Marian':>8s} {'ours÷Marian':>12s} {'AttnMT÷own dynamic':>19s} "
              f"{'Marian÷own dynamic':>19s} {'first call s (ours/Marian)':>27s}")
        for variant, row in block["rows"].items():
            first = block["first_call_s"]
            print(f"{variant:16s} {row['ours_sentences_per_s']:8.1f} {row['marian_sentences_per_s']:8.1f} "
                  f"{row['ratio']:12.3f} {row['ours_vs_own_dynamic']:19.3f} {row['marian_vs_own_dynamic']:19.3f} "
                  f"{first[f'{variant}/ours']:13.1f} / {first[f'{variant}/marian']:.1f}")
        if "static+compile/ours" in block["compiled"] and not any(block["compiled"].values()):
            print("(generate() ran static+compile eagerly here: transformers compiles greedy and sampling only)")


def main(argv=None) -> None:
    args = parse_args(argv)
    results = run(args)
    print_report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
