"""Paired A/B inside one process: what the CPU dropout mask and the decoding-step changes of session 11 buy.

On a noisy shared machine two separate benchmark runs differ by more than these changes; alternating the old and
the new code in one process, on the same model and batches, does not. The old behaviour is put back by swapping
the functions in place, nothing else changes:

* training (forward + backward + AdamW on ~8k-token Multi30k batches, the preset's model): `F.dropout` (a
  `bernoulli_` mask) against `apply_dropout` (16-bit masks, four per 64-bit draw);
* greedy decoding (batch 32, exactly 64 new tokens): transformers' generic `prepare_inputs_for_generation`, a
  cross-attention mask rebuilt every step and `F.dropout` called in eval mode, against the model's own code.

    python benchmarks/ab_dropout_and_decoding_step.py [--repeats 7] [--greedy_repeats 11]

Prints medians and the median of the per-repetition ratios new ÷ old (speed; > 1 = the new code is faster).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F
from transformers.generation.utils import GenerationMixin

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
sys.path.insert(0, str(REPO_ROOT))

import speed_vs_marian as harness  # noqa: E402
import modeling.modeling_attnmt as modeling  # noqa: E402


def old_dropout(hidden_states, p, training):
    return F.dropout(hidden_states, p=p, training=training)


def old_cross_attention_mask(encoder_attention_mask, S, dtype, cache):
    return modeling.build_attention_mask(encoder_attention_mask, 1, S, dtype)


NEW = {
    "apply_dropout": modeling.apply_dropout,
    "prepare_inputs_for_generation": modeling.AttnMTForConditionalGeneration.__dict__["prepare_inputs_for_generation"],
    "_cross_attention_mask": modeling.AttnMTDecoder.__dict__["_cross_attention_mask"],
}
OLD = {
    "apply_dropout": old_dropout,
    "prepare_inputs_for_generation": GenerationMixin.prepare_inputs_for_generation,
    "_cross_attention_mask": staticmethod(old_cross_attention_mask),
}


def use(code: dict) -> None:
    modeling.apply_dropout = code["apply_dropout"]
    modeling.AttnMTForConditionalGeneration.prepare_inputs_for_generation = code["prepare_inputs_for_generation"]
    modeling.AttnMTDecoder._cross_attention_mask = code["_cross_attention_mask"]


def paired(run, repeats: int) -> tuple[dict, list[float]]:
    """Seconds of `run()` under the old and the new code, alternating (order flipped every repetition)."""
    seconds = {"old": [], "new": []}
    for repetition in range(repeats):
        for name in (("old", "new") if repetition % 2 else ("new", "old")):
            use(OLD if name == "old" else NEW)
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    use(NEW)
    return seconds, [o / n for o, n in zip(seconds["old"], seconds["new"])]


def report(label: str, unit: str, amount: float, seconds: dict, ratios: list[float]) -> None:
    old, new = (amount / statistics.median(seconds[k]) for k in ("old", "new"))
    print(f"{label}: old {old:,.1f} {unit}, new {new:,.1f} {unit}; new ÷ old {statistics.median(ratios):.3f} "
          f"(per repetition {min(ratios):.3f}–{max(ratios):.3f})")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="training repetitions")
    parser.add_argument("--greedy_repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    bench = harness.parse_args(["--max_tokens", "8192", "--train_steps", "4", "--warmup_steps", "1"])
    tokenizer = harness.build_tokenizer(bench)
    config = harness.ours_config(bench, len(tokenizer))

    batches = harness.build_train_batches(bench, tokenizer)
    model = harness.build_model("ours", config, seed=0, device="cpu").train()
    optimizer = harness.make_optimizer(model)

    def train():
        for batch in batches[1:]:
            harness.train_step(model, optimizer, batch, bench)

    harness.train_step(model, optimizer, batches[0], bench)
    seconds, ratios = paired(train, args.repeats)
    report("training", "tokens/s", sum(harness.count_tokens(b) for b in batches[1:]), seconds, ratios)

    model.eval()
    generation_batch = harness.build_generation_batches(bench, tokenizer)[0]
    generation_config = harness.generation_config(bench, config, num_beams=1)
    outputs = {}
    for name, code in (("old", OLD), ("new", NEW)):
        use(code)
        outputs[name] = model.generate(**generation_batch, generation_config=generation_config)
    use(NEW)
    if not torch.equal(outputs["old"], outputs["new"]):
        raise RuntimeError("old and new decoding code generated different tokens")
    seconds, ratios = paired(lambda: model.generate(**generation_batch, generation_config=generation_config),
                             args.greedy_repeats)
    report("greedy (identical outputs)", "sentences/s", generation_batch["input_ids"].shape[0], seconds, ratios)


if __name__ == "__main__":
    main()
