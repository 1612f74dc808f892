"""How much of a greedy decoding step is framework overhead? AttnMT against MarianMTModel with almost no arithmetic.

Both models are built as in `speed_vs_marian.py` (same layers, heads, dropout, special tokens; Marian post-norm) but
with d_model 8, FFN 16 and a 32-token vocabulary, and decode one 10-token sentence for exactly 64 new tokens. The
matrix products are then a few hundred multiply-adds each, so a step's time is what every step pays whatever the
model's size: Python, module calls, tensor dispatch, generate()'s own loop. Comparing it with a step at the real size
(`speed_vs_marian.py`) tells how much of a greedy step is overhead, and this script's ratio tells how lean each
model's overhead is (ours ÷ Marian, as sentences per second: > 1 means less overhead than Marian).

    python benchmarks/decoding_step_overhead.py [--repeats 15] [--layers 4] [--no_preset]

It then times, in the same run, a greedy step of both models at the Multi30k preset's size (batch 32 test
sentences, as `speed_vs_marian.py` does), so the two can be set side by side: overhead ÷ full step.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
sys.path.insert(0, str(REPO_ROOT))

import speed_vs_marian as harness  # noqa: E402
from modeling import AttnMTConfig  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--layers", type=int, default=4, help="encoder and decoder layers (the preset has 4)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--preset_threads", type=int, default=2, help="threads for the preset-size step")
    parser.add_argument("--no_preset", action="store_true", help="skip the preset-size step")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = AttnMTConfig(
        vocab_size=32, d_model=8, encoder_layers=args.layers, decoder_layers=args.layers, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16, dropout=0.3, max_position_embeddings=256,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
    )
    generation_config = harness.generation_config(
        argparse.Namespace(max_new_tokens=args.max_new_tokens), config, num_beams=1
    )
    generator = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(3, 32, (1, 10), generator=generator),
             "attention_mask": torch.ones(1, 10, dtype=torch.long)}
    batch["attention_mask"][0, -1] = 0  # one padded position, as in a batch
    ours, marian, ratio = time_steps(config, batch, generation_config, args)
    print(f"{args.layers}+{args.layers} layers, d_model 8, vocabulary 32, 1 sentence, {args.threads} thread(s), "
          f"{args.repeats} repetitions")
    print(f"ms per greedy step (median): AttnMT {ours:.3f}, Marian {marian:.3f}; ours ÷ Marian (speed) {ratio}")
    if args.no_preset:
        return
    torch.set_num_threads(args.preset_threads)
    bench = harness.parse_args(["--max_new_tokens", str(args.max_new_tokens)])
    tokenizer = harness.build_tokenizer(bench)
    preset = harness.ours_config(bench, len(tokenizer))
    preset_batch = harness.build_generation_batches(bench, tokenizer)[0]
    preset_ours, preset_marian, ratio = time_steps(preset, preset_batch, harness.generation_config(bench, preset, 1), args)
    print(f"Multi30k preset, batch {preset_batch['input_ids'].shape[0]}, {args.preset_threads} thread(s): ms per greedy "
          f"step AttnMT {preset_ours:.3f}, Marian {preset_marian:.3f}; ours ÷ Marian (speed) {ratio}")
    print(f"overhead ÷ full step: AttnMT {ours / preset_ours:.0%}, Marian {marian / preset_marian:.0%} "
          f"(overhead measured with {args.threads} thread(s))")


def time_steps(config, batch, generation_config, args) -> tuple[float, float, str]:
    """Median ms per greedy step of AttnMT and Marian built with `config`, alternating, and their speed ratio."""
    models = {which: harness.build_model(which, config, seed=0, device="cpu").eval() for which in ("ours", "marian")}
    for model in models.values():
        model.generate(**batch, generation_config=generation_config)  # warm-up
    step_ms = {which: [] for which in models}
    for repetition in range(args.repeats):
        order = list(models) if repetition % 2 else list(models)[::-1]
        for which in order:
            start = time.perf_counter()
            models[which].generate(**batch, generation_config=generation_config)
            step_ms[which].append((time.perf_counter() - start) / args.max_new_tokens * 1e3)
    ratios = [m / o for o, m in zip(step_ms["ours"], step_ms["marian"])]
    ratio = f"{statistics.median(ratios):.3f} (per repetition {min(ratios):.3f}–{max(ratios):.3f})"
    return statistics.median(step_ms["ours"]), statistics.median(step_ms["marian"]), ratio


if __name__ == "__main__":
    main()
