"""The speed benchmark runs end to end on a tiny preset and reports every figure issue 5 asks for.

Only the mechanics are checked (a timed test would be noise on these machines): both models train and
generate exactly max_new_tokens, each ratio is the paired ratio of the two measurements, memory comes from
the worker processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_speed_benchmark_smoke(tmp_path):
    out = tmp_path / "speed.json"
    command = [
        sys.executable, "benchmarks/speed_vs_marian.py", "--model_config", "configs/model/tiny.yaml", "--quick",
        "--vocab_size", "600", "--max_tokens", "512", "--gen_batch_size", "4", "--max_new_tokens", "6",
        "--threads", "1", "--cache_dir", str(tmp_path / "cache"), "--json", str(out),
    ]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(out.read_text())
    comparison = results["comparison"]
    for figure in ("train_tokens_per_s", "greedy_sentences_per_s", "beam_sentences_per_s"):
        row = comparison[figure]
        assert row["ours"] > 0 and row["marian"] > 0 and len(row["ratios"]) == 2
        assert min(row["ratios"]) <= row["ratio"] <= max(row["ratios"])
    memory = comparison["peak_train_memory"]
    assert memory["ours"] > 0 and memory["marian"] > 0
    assert abs(memory["ratio"] - memory["ours"] / memory["marian"]) < 1e-9
    assert set(results["eager_vs_sdpa"]) == {"train_tokens_per_s", "greedy_sentences_per_s", "beam_sentences_per_s"}
    assert results["machine"]["threads"] == 1 and "commit" in results["machine"]
    for name, row in results["flops"].items():
        assert row["achieved"] > 0 and 0 < row["fraction_of_peak"], name
    # The printed table carries the same ratios.
    table = run.stdout[run.stdout.index("ours÷Marian"):]
    for figure in ("training tokens/s", "greedy sentences/s", "beam-5 sentences/s", "peak training memory"):
        line = next(line for line in table.splitlines() if line.startswith(figure))
        key = {"training tokens/s": "train_tokens_per_s", "greedy sentences/s": "greedy_sentences_per_s",
               "beam-5 sentences/s": "beam_sentences_per_s", "peak training memory": "peak_train_memory"}[figure]
        assert f"{comparison[key]['ratio']:.3f}" in line


def test_decoding_step_overhead_smoke():
    command = [sys.executable, "benchmarks/decoding_step_overhead.py", "--repeats", "2", "--max_new_tokens", "4",
               "--layers", "1", "--no_preset"]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    line = next(line for line in run.stdout.splitlines() if line.startswith("ms per greedy step"))
    ours, marian = (float(line.split(name)[1].split(",")[0].split(";")[0]) for name in ("AttnMT ", "Marian "))
    ratio = float(line.split("(speed) ")[1].split(" ")[0])
    assert ours > 0 and marian > 0 and ratio > 0


def test_compiled_generation_benchmark_smoke(tmp_path):
    """The static-cache and compiled paths run for both models and generate, token for token, what the default
    dynamic cache generates (the script refuses to time a variant that does not)."""
    out = tmp_path / "compiled.json"
    command = [
        sys.executable, "benchmarks/compiled_generation.py", "--model_config", "configs/model/tiny.yaml",
        "--num_beams", "1", "2", "--repeats", "2", "--gen_batches", "1", "--gen_batch_size", "4",
        "--max_new_tokens", "6", "--vocab_size", "600", "--threads", "1", "--cache_dir", str(tmp_path / "cache"),
        "--json", str(out),
    ]
    # A cold compile cache of its own, as on a fresh CI machine.
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results["by_beam"]) == {"1", "2"}
    for block in results["by_beam"].values():
        assert set(block["rows"]) == {"dynamic", "static", "static+compile"}
        for variant, row in block["rows"].items():
            assert row["ours_sentences_per_s"] > 0 and row["marian_sentences_per_s"] > 0 and len(row["ratios"]) == 2
            assert min(row["ratios"]) <= row["ratio"] <= max(row["ratios"])
        assert block["rows"]["dynamic"]["ours_vs_own_dynamic"] == 1.0
    # Only greedy decoding runs the compiled forward (transformers compiles greedy and sampling, not beam search).
    assert results["by_beam"]["1"]["compiled"] == {"dynamic/ours": False, "dynamic/marian": False,
                                                  "static/ours": False, "static/marian": False,
                                                  "static+compile/ours": True, "static+compile/marian": True}
    assert not any(results["by_beam"]["2"]["compiled"].values())
    assert "generated the same tokens as `dynamic`" in run.stdout


def test_mbr_select_picks_the_consensus_candidate():
    """MBR returns the candidate with the highest expected utility: the consensus of the pseudo-references, or
    the one the weights favour; bad input is refused with a message."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from mbr_decoding import UTILITIES, mbr_select, softmax

    bleu = UTILITIES["bleu"]()
    close = ["a man rides a red bike down the street", "a man rides a red bike down a street",
             "a man rides a bike down the street"]
    outlier = "two dogs are playing in deep snow"
    candidates = [outlier] + close
    # Uniform weights: the sentence closest to the others wins, not the first or the outlier.
    assert mbr_select(candidates, candidates, bleu) == close[0]
    # All weight on the outlier as pseudo-reference: it agrees with itself best.
    assert mbr_select(candidates, candidates, bleu, weights=[1, 0, 0, 0]) == outlier
    assert mbr_select(["x y", "x y"], ["x y"], bleu) == "x y"
    weights = softmax([-1.0, -2.0, -3.0])
    assert weights.sum() == pytest.approx(1.0) and weights[0] > weights[1] > weights[2]
    with pytest.raises(ValueError, match="at least one candidate"):
        mbr_select([], ["a"], bleu)
    with pytest.raises(ValueError, match="2 weights for 1 pseudo-references"):
        mbr_select(["a"], ["a"], bleu, weights=[0.5, 0.5])


def test_keep_freed_memory_benchmark_smoke(tmp_path):
    """Every variant is timed in every repetition, and each ratio is the median of its per-repetition quotients."""
    out = tmp_path / "keep.json"
    command = [sys.executable, "benchmarks/keep_freed_memory.py", "--model_config", "configs/model/tiny.yaml",
               "--vocab_size", "600", "--max_tokens", "512", "--repeats", "2", "--steps", "1", "--warmup_steps", "1",
               "--threads", "1", "--cache_dir", str(tmp_path / "cache"), "--json", str(out)]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(out.read_text())
    variants = {"default/sdpa", "default/eager", "keep/sdpa", "keep/eager"}
    assert set(results["tokens_per_second"]) == set(results["raw_tokens_per_second"]) == variants
    raw = results["raw_tokens_per_second"]
    assert all(len(values) == 2 and min(values) > 0 for values in raw.values())
    row = results["ratios"]["keep ÷ default (eager)"]
    assert row["per_repetition"] == pytest.approx([k / d for k, d in zip(raw["keep/eager"], raw["default/eager"])])
    assert row["min"] <= row["median"] <= row["max"]
    assert results["machine"]["threads"] == 1
    assert f"{row['median']:.3f}" in run.stdout
