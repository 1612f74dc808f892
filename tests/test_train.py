"""train.py end to end on a slice of the real Multi30k, plus its configuration and data checks."""

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train
from conftest import read_lines
from mt.config import load_config
from mt.data import CorpusSpec, drop_blank_pairs, load_split

REPO = Path(__file__).resolve().parents[1]
MULTI30K = REPO.parent / "shared" / "data" / "multi30k"

# A few seconds of training: enough to exercise every stage, not to learn anything.
TINY = [
    "--config", "configs/train/tiny.yaml", "--max_train_samples", "200", "--max_eval_samples", "12",
    "--max_test_samples", "12", "--max_train_steps", "8", "--eval_steps", "4", "--checkpointing_steps", "4",
    "--per_device_train_batch_size", "16", "--max_new_tokens", "12", "--num_beams", "2", "--logging_steps", "2",
    "--vocab_size", "600",
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("run") / "out"
    results = train.main(TINY + ["--output_dir", str(output_dir)])
    return output_dir, results


def test_end_to_end_export_and_results(trained_run):
    output_dir, results = trained_run
    export = output_dir / "model"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "README.md",
                 "all_results.json", "configuration_attnmt.py", "modeling_attnmt.py", "pipeline_attnmt.py"):
        assert (export / name).is_file(), name
    config = json.loads((export / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSeq2SeqLM"] == "modeling_attnmt.AttnMTForConditionalGeneration"
    assert config["use_cache"] is True
    generation = json.loads((export / "generation_config.json").read_text())
    assert generation["num_beams"] == 2 and generation["max_new_tokens"] == 12

    saved = json.loads((output_dir / "all_results.json").read_text())
    assert saved["completed_steps"] == 8
    assert saved["validation"]["num_sentences"] == 12 and saved["test"]["num_sentences"] == 12
    assert [h["step"] for h in saved["history"]] == [4, 8]
    assert (output_dir / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert saved["validation"]["bleu"] == pytest.approx(results["validation"]["bleu"])
    card = (export / "README.md").read_text()
    assert f"{saved['test']['bleu']:.2f}" in card and saved["test"]["bleu_signature"] in card
    assert "model-index" in card and "pipeline_tag: translation" in card
    assert "| directions | en→de |" in card
    assert yaml_roundtrip(output_dir / "train_config.yaml")["max_train_steps"] == 8
    # keep_last_checkpoints=2 of the tiny preset: steps 4 and 8 remain, no temporary folders.
    assert sorted(p.name for p in (output_dir / "checkpoints").iterdir()) == ["step_0000004", "step_0000008"]


def test_eval_update_replaces_the_cards_own_entries(trained_run, tmp_path):
    """train.py's card and eval.py --update_model_card write the same model-index entries: re-scoring the
    validation split replaces its three entries instead of adding three more."""
    import shutil

    from huggingface_hub import ModelCard

    import eval as eval_script

    export = tmp_path / "model"
    shutil.copytree(trained_run[0] / "model", export)
    before = ModelCard.load(export / "README.md").data.eval_results
    assert len(before) == 6  # cased BLEU, lowercased BLEU, chrF on val and test_2016_flickr
    validation = json.loads((trained_run[0] / "all_results.json").read_text())["validation"]
    rescored = {**validation, "bleu": 12.34, "split": "val", "dataset": "Multi30k (task 1)", "source_lang": "en",
                "target_lang": "de"}
    eval_script.update_model_card(export, rescored)
    after = ModelCard.load(export / "README.md").data.eval_results
    assert len(after) == 6
    assert [r.metric_value for r in after if r.dataset_split == "val" and r.metric_name == "bleu (val)"] == [12.34]


def yaml_roundtrip(path):
    import yaml

    return yaml.safe_load(Path(path).read_text())


def test_export_loads_in_fresh_process_and_translates(trained_run, tmp_path):
    export = trained_run[0] / "model"
    script = (
        "import sys\n"
        "try:\n    import modeling\n    sys.exit('modeling must not be importable here')\nexcept ImportError:\n    pass\n"
        "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, pipeline\n"
        f"folder = {str(export)!r}\n"
        "tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)\n"
        "model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True)\n"
        "out = model.generate(**tok(['A man is riding a bike.'], return_tensors='pt'), num_beams=2, max_new_tokens=8)\n"
        "print('TRANSLATION', type(model).__name__, out.shape[1] > 1)\n"
        "print('PIPELINE', pipeline('translation', model=folder, trust_remote_code=True)('A dog.', max_new_tokens=5))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "TRANSLATION AttnMTForConditionalGeneration True" in done.stdout
    assert "PIPELINE {'translation_text':" in done.stdout


def test_resume_reaches_the_same_weights(trained_run, tmp_path, monkeypatch):
    """Stop after 4 updates, resume to 8: identical weights to the uninterrupted run of the fixture."""
    output_dir = tmp_path / "resumed"
    train.main(TINY + ["--output_dir", str(output_dir), "--max_train_steps", "4"])
    train.main(TINY + ["--output_dir", str(output_dir), "--resume_from_checkpoint", "latest"])
    uninterrupted = load_file(str(trained_run[0] / "checkpoints" / "step_0000008" / "model.safetensors"))
    resumed = load_file(str(output_dir / "checkpoints" / "step_0000008" / "model.safetensors"))
    assert uninterrupted.keys() == resumed.keys()
    for name in uninterrupted:
        torch.testing.assert_close(resumed[name], uninterrupted[name], rtol=0, atol=0, msg=name)
    history = json.loads((output_dir / "all_results.json").read_text())["history"]
    reference = trained_run[1]["history"]
    assert [h["step"] for h in history] == [4, 8]
    assert history[-1]["loss"] == pytest.approx(reference[-1]["loss"], abs=1e-6)

    # Resuming the finished run (as after a crash during the final evaluation) only finalizes: no update 9.
    results = train.main(TINY + ["--output_dir", str(output_dir), "--resume_from_checkpoint", "latest"])
    assert results["completed_steps"] == 8 and [h["step"] for h in results["history"]] == [4, 8]
    assert sorted(p.name for p in (output_dir / "checkpoints").iterdir())[-1] == "step_0000008"
    again = load_file(str(output_dir / "checkpoints" / "step_0000008" / "model.safetensors"))
    for name in uninterrupted:
        torch.testing.assert_close(again[name], uninterrupted[name], rtol=0, atol=0, msg=name)

    # An export that fails (here the model card) keeps the measured figures; resuming then completes the export.
    (output_dir / "all_results.json").unlink()
    shutil.rmtree(output_dir / "model")

    def failing_card(*args, **kwargs):
        raise RuntimeError("model card template broken")

    monkeypatch.setattr(train, "render_model_card", failing_card)
    with pytest.raises(RuntimeError, match="template broken"):
        train.main(TINY + ["--output_dir", str(output_dir), "--resume_from_checkpoint", "latest"])
    kept = json.loads((output_dir / "all_results.json").read_text())
    assert kept["test"]["num_sentences"] == 12 and kept["completed_steps"] == 8
    assert not (output_dir / "model").exists()
    monkeypatch.undo()
    train.main(TINY + ["--output_dir", str(output_dir), "--resume_from_checkpoint", "latest"])
    assert (output_dir / "model" / "README.md").is_file() and (output_dir / "model" / "all_results.json").is_file()


def test_branch_continues_the_parents_state_with_its_own_randomness(trained_run, tmp_path):
    """--branch_from: the parent's weights, AdamW moments, schedule, update count and history, then this run's
    seed; the parent's folder is left alone, and the branch, stopped and run again, resumes its own checkpoint."""
    parent_dir, parent_results = trained_run
    start = parent_dir / "checkpoints" / "step_0000004"
    parent_checkpoints = sorted(p.name for p in (parent_dir / "checkpoints").iterdir())
    flags = TINY + ["--branch_from", str(start), "--seed", "7", "--checkpointing_steps", "2"]
    branch = tmp_path / "branch"
    results = train.main(flags + ["--output_dir", str(branch)])

    assert (branch / "tokenizer" / "tokenizer.json").read_bytes() == \
        (parent_dir / "tokenizer" / "tokenizer.json").read_bytes()
    assert results["completed_steps"] == 8 and [h["step"] for h in results["history"]] == [4, 8]
    assert results["history"][0] == parent_results["history"][0]  # the shared part's validation
    assert results["branched_from"] == {"checkpoint": str(start), "step": 4, "seed": 7}
    assert sorted(p.name for p in (branch / "checkpoints").iterdir())[0] == "step_0000006"  # its own only
    # AdamW continued the parent's moments: 8 steps taken, not the 4 of a fresh optimizer.
    optimizer = torch.load(branch / "checkpoints" / "step_0000008" / "optimizer.bin", weights_only=False)
    assert {int(s["step"]) for s in optimizer["state"].values()} == {8}
    parent_at_8 = load_file(str(parent_dir / "checkpoints" / "step_0000008" / "model.safetensors"))
    branch_at_8 = load_file(str(branch / "checkpoints" / "step_0000008" / "model.safetensors"))
    changed = [name for name in parent_at_8 if not torch.equal(parent_at_8[name], branch_at_8[name])]
    assert len(changed) == len(parent_at_8), "the branch drew the parent's batches or dropout masks"
    # ... yet it started from the parent's weights: four updates from them, not from a new initialisation.
    parent_at_4 = load_file(str(start / "model.safetensors"))
    name = "model.shared.weight" if "model.shared.weight" in parent_at_4 else next(iter(parent_at_4))
    moved_from_parent = (branch_at_8[name] - parent_at_4[name]).norm()
    moved_parent = (parent_at_8[name] - parent_at_4[name]).norm()
    assert moved_from_parent < 2 * moved_parent
    assert sorted(p.name for p in (parent_dir / "checkpoints").iterdir()) == parent_checkpoints
    # With the parent's own seed the batch order is the parent's; the branch still draws new dropout masks
    # (its random streams restart from the seed instead of continuing the parent's).
    same_seed = tmp_path / "same_seed"
    train.main(TINY + ["--branch_from", str(start), "--seed", "42", "--output_dir", str(same_seed)])
    same_seed_at_8 = load_file(str(same_seed / "checkpoints" / "step_0000008" / "model.safetensors"))
    assert not torch.equal(same_seed_at_8[name], parent_at_8[name])

    # Stopped at update 6 and started again with the same command plus --resume_from_checkpoint latest: the
    # branch's own checkpoint wins over --branch_from, and the weights at 8 are the uninterrupted branch's.
    again = tmp_path / "again"
    train.main(flags + ["--output_dir", str(again), "--max_train_steps", "6"])
    resumed = train.main(flags + ["--output_dir", str(again), "--resume_from_checkpoint", "latest"])
    assert resumed["branched_from"]["step"] == 4 and resumed["completed_steps"] == 8
    again_at_8 = load_file(str(again / "checkpoints" / "step_0000008" / "model.safetensors"))
    for name in branch_at_8:
        torch.testing.assert_close(again_at_8[name], branch_at_8[name], rtol=0, atol=0, msg=name)

    with pytest.raises(FileNotFoundError, match="not a checkpoint of this script.*PARENT/checkpoints/step_"):
        train.main(TINY + ["--branch_from", str(parent_dir), "--output_dir", str(tmp_path / "wrong")])


def test_stop_at_step_pauses_without_changing_the_schedule(tmp_path):
    """--stop_at_step 5 on a cosine schedule over 8 updates: a checkpoint at 5 and no export; resumed, the run ends
    with the weights of the uninterrupted run (--max_train_steps 5 instead would have decayed to zero at 5)."""
    flags = TINY + ["--lr_scheduler_type", "cosine", "--num_warmup_steps", "2", "--eval_steps", "8",
                    "--checkpointing_steps", "8", "--test_split", ""]
    reference, paused = tmp_path / "reference", tmp_path / "paused"
    train.main(flags + ["--output_dir", str(reference)])
    result = train.main(flags + ["--output_dir", str(paused), "--stop_at_step", "5"])
    assert result["paused_at_step"] == 5 and result["checkpoint"].endswith("step_0000005")
    assert sorted(p.name for p in (paused / "checkpoints").iterdir()) == ["step_0000005"]
    assert not (paused / "model").exists() and not (paused / "all_results.json").exists()
    # Run again with the same flags: already there, nothing more to do.
    assert train.main(flags + ["--output_dir", str(paused), "--stop_at_step", "5",
                               "--resume_from_checkpoint", "latest"])["paused_at_step"] == 5
    resumed = train.main(flags + ["--output_dir", str(paused), "--resume_from_checkpoint", "latest"])
    assert resumed["completed_steps"] == 8 and (paused / "model" / "model.safetensors").is_file()
    expected = load_file(str(reference / "checkpoints" / "step_0000008" / "model.safetensors"))
    got = load_file(str(paused / "checkpoints" / "step_0000008" / "model.safetensors"))
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)
    with pytest.raises(ValueError, match="stop_at_step=8 is not before max_train_steps=8"):
        train.main(flags + ["--output_dir", str(tmp_path / "no"), "--stop_at_step", "8"])


def test_resume_after_an_epoch_boundary_and_between_validations_is_exact(trained_run, tmp_path):
    """40 pairs in batches of 16 are 3 batches per epoch. A run stopped at update 5 (epoch 2, not a validation
    step: the stopped run validates once more before its last checkpoint) resumes to the uninterrupted weights,
    and validating twice as often leaves the weights unchanged: validation never draws from the training's
    random stream, and accelerate's loader is told the run's epoch rather than its own iteration count."""
    flags = TINY + ["--max_train_samples", "40", "--test_split", ""]
    reference, resumed, validated_more = (tmp_path / name for name in ("reference", "resumed", "validated_more"))
    train.main(flags + ["--output_dir", str(reference)])
    train.main(flags + ["--output_dir", str(resumed), "--max_train_steps", "5"])
    train.main(flags + ["--output_dir", str(resumed), "--resume_from_checkpoint", "latest"])
    train.main(flags + ["--output_dir", str(validated_more), "--eval_steps", "2"])
    expected = load_file(str(reference / "checkpoints" / "step_0000008" / "model.safetensors"))
    for run in (resumed, validated_more):
        weights = load_file(str(run / "checkpoints" / "step_0000008" / "model.safetensors"))
        for name in expected:
            torch.testing.assert_close(weights[name], expected[name], rtol=0, atol=0, msg=f"{run.name}: {name}")


def _write_jsonl(path: Path, split: str, count: int, nested: bool):
    english = [line.strip() for line in gzip.open(MULTI30K / f"{split}.en.gz", "rt")][:count]
    french = [line.strip() for line in gzip.open(MULTI30K / f"{split}.fr.gz", "rt")][:count]
    with path.open("w") as handle:
        for en, fr in zip(english, french):
            row = {"translation": {"en": en, "fr": fr}} if nested else {"en": en, "fr": fr}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def test_fine_tune_export_on_another_pair_from_jsonl(trained_run, tmp_path):
    _write_jsonl(tmp_path / "train.jsonl", "train", 120, nested=True)
    _write_jsonl(tmp_path / "val.jsonl", "val", 10, nested=False)
    output_dir = tmp_path / "finetuned"
    results = train.main([
        "--model_name_or_path", str(trained_run[0] / "model"), "--train_file", str(tmp_path / "train.jsonl"),
        "--validation_file", str(tmp_path / "val.jsonl"), "--source_lang", "en", "--target_lang", "fr",
        "--output_dir", str(output_dir), "--max_train_steps", "3", "--num_warmup_steps", "1", "--cpu",
        "--per_device_train_batch_size", "16", "--max_new_tokens", "8", "--num_beams", "1",
        "--checkpointing_steps", "", "--learning_rate", "1e-3",
    ])
    assert results["completed_steps"] == 3 and "test" not in results
    assert results["validation"]["num_sentences"] == 10
    original, tuned = trained_run[0] / "model", output_dir / "model"
    assert (tuned / "tokenizer.json").read_text() == (original / "tokenizer.json").read_text()
    before, after = load_file(str(original / "model.safetensors")), load_file(str(tuned / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before), "fine-tuning changed no weight"


def test_two_cpu_processes_score_each_example_once(tmp_path):
    output_dir = tmp_path / "ddp"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "train.py", *TINY,
               "--output_dir", str(output_dir), "--max_eval_samples", "11", "--max_test_samples", "7", "--cpu"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es) on cpu" in done.stderr + done.stdout
    results = json.loads((output_dir / "all_results.json").read_text())
    # Odd sizes: gather_for_metrics must drop the padding duplicates of the last shard.
    assert results["validation"]["num_sentences"] == 11 and results["test"]["num_sentences"] == 7
    assert len((output_dir / "test_hypotheses.txt").read_text().splitlines()) == 7
    assert results["hardware"].startswith("2 process(es)")
    assert sorted(p.name for p in output_dir.iterdir() if p.name.startswith("model")) == ["model"]


def test_push_to_hub_uploads_exactly_the_export(trained_run, monkeypatch):
    import huggingface_hub

    calls = {}
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: calls.update(create=repo_id))

    def fake_upload(self, folder_path, repo_id, **kwargs):
        calls["upload"] = (folder_path, repo_id, sorted(p.name for p in Path(folder_path).iterdir()))

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", fake_upload)
    export = trained_run[0] / "model"
    train.push_to_hub(export, "someone/attnmt-test")
    folder, repo_id, files = calls["upload"]
    assert calls["create"] == "someone/attnmt-test" and repo_id == "someone/attnmt-test"
    assert Path(folder) == export and "checkpoints" not in files and "model.safetensors" in files


def test_push_to_hub_offline_message_is_clear(trained_run, monkeypatch):
    import huggingface_hub

    def offline(self, *args, **kwargs):
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", offline)
    with pytest.raises(RuntimeError, match="export is complete at .*hf upload someone/x"):
        train.push_to_hub(trained_run[0] / "model", "someone/x")


# ---------------------------------------------------------------------------------------------------
# Configuration: strict and typed
# ---------------------------------------------------------------------------------------------------


def test_flags_override_preset_and_types_are_checked(tmp_path):
    config = load_config(["--config", "configs/train/tiny.yaml", "--learning_rate", "0.01", "--no-cpu"])
    assert config.learning_rate == 0.01 and config.cpu is False and config.max_train_steps == 40
    with pytest.raises(SystemExit):
        load_config(["--config", "configs/train/tiny.yaml", "--learning_rate", "fast"])
    with pytest.raises(SystemExit):
        load_config(["--config", "configs/train/tiny.yaml", "--no_such_flag", "1"])
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text("model_config: configs/model/tiny.yaml\nlearning_rte: 0.1\n")
    with pytest.raises(ValueError, match="learning_rte"):
        load_config(["--config", str(bad_key)])
    bad_type = tmp_path / "type.yaml"
    bad_type.write_text("model_config: configs/model/tiny.yaml\ncpu: 'yes'\n")
    with pytest.raises(ValueError, match="'cpu' must be bool"):
        load_config(["--config", str(bad_type)])
    for flags, field in ((["--lr_scheduler_type", "cosinus"], "lr_scheduler_type"),
                         (["--mixed_precision", "fp8"], "mixed_precision"),
                         (["--per_device_train_batch_size", "0"], "per_device_train_batch_size"),
                         (["--push_to_hub"], "hub_model_id")):
        with pytest.raises(ValueError, match=field):
            load_config(["--config", "configs/train/tiny.yaml", *flags])


@pytest.mark.parametrize("from_export", [False, True])
def test_dropout_flags_reach_every_layer(trained_run, from_export):
    """--dropout/--attention_dropout/--activation_dropout change the rates the layers actually use, for a
    preset and for a saved model being fine-tuned (layers read their rates when they are built)."""
    from transformers import AutoTokenizer

    export = trained_run[0] / "model"
    flags = ["--config", "configs/train/tiny.yaml", "--dropout", "0.25", "--attention_dropout", "0.15",
             "--activation_dropout", "0.05"]
    if from_export:
        flags += ["--model_config", "", "--model_name_or_path", str(export)]
    model = train.build_model(load_config(flags), AutoTokenizer.from_pretrained(export))
    assert (model.config.dropout, model.config.attention_dropout, model.config.activation_dropout) == (0.25, 0.15, 0.05)
    for layer in (*model.model.encoder.layers, *model.model.decoder.layers):
        assert layer.dropout == 0.25 and layer.ffn.activation_dropout == 0.05
        assert layer.self_attn.dropout == 0.15
    assert all(layer.encoder_attn.dropout == 0.15 for layer in model.model.decoder.layers)


def test_attn_implementation_flag_selects_the_formula_for_training(trained_run, monkeypatch):
    """--attn_implementation eager trains through eager_attention_forward (the formula), sdpa does not."""
    import modeling.modeling_attnmt as modeling_attnmt
    from transformers import AutoTokenizer

    calls = []
    real = modeling_attnmt.eager_attention_forward
    monkeypatch.setattr(modeling_attnmt, "eager_attention_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    tokenizer = AutoTokenizer.from_pretrained(trained_run[0] / "model")
    batch = tokenizer(["A man rides a bike."], text_target=["Ein Mann fährt Rad."], return_tensors="pt")
    for implementation, expected_calls in (("eager", 6), ("sdpa", 0)):  # tiny: 2 encoder + 2×2 decoder attentions
        calls.clear()
        flags = ["--config", "configs/train/tiny.yaml", "--attn_implementation", implementation]
        model = train.build_model(load_config(flags), tokenizer).train()
        assert model.config._attn_implementation == implementation
        model(**batch).loss.backward()
        assert len(calls) == expected_calls, implementation
    with pytest.raises(ValueError, match="attn_implementation='flash'; use eager or sdpa"):
        load_config(["--config", "configs/train/tiny.yaml", "--attn_implementation", "flash"])


# ---------------------------------------------------------------------------------------------------
# Data: every bad input gets a clear error or a counted filter
# ---------------------------------------------------------------------------------------------------


def _corpus(tmp_path, files: dict[str, list[str]]) -> Path:
    for name, lines in files.items():
        (tmp_path / name).write_text("".join(line + "\n" for line in lines))
    return tmp_path


def test_text_corpus_errors(tmp_path):
    folder = _corpus(tmp_path, {"train.en": ["a", "b", "c"], "train.de": ["x", "y"], "val.en": [], "val.de": []})
    spec = CorpusSpec("en", "de", data_dir=str(folder))
    with pytest.raises(ValueError, match="3 lines but .* has 2"):
        load_split(spec, "train")
    with pytest.raises(FileNotFoundError, match="No file test.en"):
        load_split(spec, "test")
    with pytest.raises(FileNotFoundError, match="No file train.fr"):
        load_split(CorpusSpec("en", "fr", data_dir=str(folder)), "train")
    with pytest.raises(ValueError, match="empty"):
        load_split(spec, "val")
    with pytest.raises(FileNotFoundError, match="does not exist.*Multi30k"):
        load_split(CorpusSpec("en", "de", data_dir=str(tmp_path / "nowhere")), "train")
    with pytest.raises(ValueError, match="exactly one way"):
        load_split(CorpusSpec("en", "de", data_dir=str(folder), train_file="x.jsonl"), "train")


def test_blank_lines_are_dropped_and_counted(tmp_path, caplog):
    folder = _corpus(tmp_path, {"train.en": ["a", "", "c", "d"], "train.de": ["x", "y", "  ", "w"]})
    dataset = load_split(CorpusSpec("en", "de", data_dir=str(folder)), "train")
    assert len(dataset) == 4
    with caplog.at_level("WARNING"):
        kept = drop_blank_pairs(dataset, "train")
    assert kept["source"] == ["a", "d"] and kept["target"] == ["x", "w"]
    assert "dropped 2 of 4" in caplog.text


def test_gzip_and_json_layouts_and_missing_language(tmp_path):
    with gzip.open(tmp_path / "train.en.gz", "wt") as handle:
        handle.write("hello\nworld\n")
    with gzip.open(tmp_path / "train.de.gz", "wt") as handle:
        handle.write("hallo\nwelt\n")
    dataset = load_split(CorpusSpec("en", "de", data_dir=str(tmp_path)), "train")
    assert dataset["source"] == ["hello", "world"] and dataset["target"] == ["hallo", "welt"]
    flat = tmp_path / "flat.csv"
    flat.write_text("en,de\nhello,hallo\n")
    assert load_split(CorpusSpec("en", "de", train_file=str(flat)), "train")["target"] == ["hallo"]
    with pytest.raises(ValueError, match=r"no column for \['fr'\]"):
        load_split(CorpusSpec("en", "fr", train_file=str(flat)), "train")
    nested = tmp_path / "nested.jsonl"
    nested.write_text(json.dumps({"translation": {"en": "hi", "de": "hallo"}}) + "\n")
    with pytest.raises(ValueError, match="languages \\['de', 'en'\\], not \\['cs'\\]"):
        load_split(CorpusSpec("cs", "en", train_file=str(nested)), "train")


def test_overlong_training_pairs_are_filtered_and_counted(tmp_path, caplog):
    output_dir = tmp_path / "short"
    with caplog.at_level("WARNING"):
        results = train.main(TINY + ["--output_dir", str(output_dir), "--max_source_length", "12",
                                     "--max_target_length", "12", "--max_train_steps", "1", "--eval_steps", "1",
                                     "--test_split", "", "--checkpointing_steps", ""])
    assert "pairs longer than max_source_length=12" in caplog.text
    assert results["completed_steps"] == 1


def test_bpe_dropout_resegments_every_epoch_and_resumes(tmp_path, monkeypatch):
    """40 pairs in batches of 16 are 3 batches per epoch: 8 updates span 3 epochs, each with its own
    segmentation; a run stopped at update 4 resumes (with a fresh draw for its epoch) and ends at 8. The
    exported tokenizer has no dropout."""
    draws = []
    real_resegment = train.BPEDropoutTrainSet.resegment

    def resegment(self, accelerator=None):
        draws.append(sum(real_resegment(self, accelerator)[0]))
        return self.lengths()

    monkeypatch.setattr(train.BPEDropoutTrainSet, "resegment", resegment)
    output_dir = tmp_path / "bpe_dropout"
    flags = TINY + ["--output_dir", str(output_dir), "--bpe_dropout", "0.1", "--max_train_samples", "40",
                    "--test_split", ""]
    results = train.main(flags)
    assert results["completed_steps"] == 8 and len(draws) == 3 and len(set(draws)) > 1, draws
    exported = json.loads((output_dir / "model" / "tokenizer.json").read_text())
    assert exported["model"]["type"] == "BPE" and exported["model"]["dropout"] is None

    resumed = tmp_path / "bpe_dropout_resumed"
    flags[flags.index(str(output_dir))] = str(resumed)
    train.main(flags + ["--max_train_steps", "4"])
    results = train.main(flags + ["--resume_from_checkpoint", "latest"])
    assert results["completed_steps"] == 8 and [h["step"] for h in results["history"]] == [4, 8]

    with pytest.raises(ValueError, match="bpe_dropout needs tokenizer_type: bpe"):
        load_config(TINY + ["--bpe_dropout", "0.1", "--tokenizer_type", "unigram"])
    with pytest.raises(ValueError, match=r"bpe_dropout must lie in \[0, 1\)"):
        load_config(TINY + ["--bpe_dropout", "1.5"])


def test_bidirectional_epochs_then_one_direction_and_exact_resume(tmp_path, monkeypatch, caplog):
    """40 pairs in batches of 16: a bidirectional epoch is 5 batches (80 examples), a forward one 3. With one
    bidirectional epoch, 8 updates are 5 + 3 and every reversed pair is served exactly once. A run stopped in the
    forward epoch (update 6) resumes in forward mode and ends with the uninterrupted run's weights."""
    served_reversed = []
    real_getitem = train.BidirectionalTrainSet.__getitem__

    def getitem(self, index):
        if index >= len(self.input_ids):
            served_reversed.append(index)
        return real_getitem(self, index)

    monkeypatch.setattr(train.BidirectionalTrainSet, "__getitem__", getitem)
    flags = TINY + ["--bidirectional_epochs", "1", "--max_train_samples", "40", "--test_split", "",
                    "--lr_scheduler_type", "constant_with_warmup"]
    output_dir = tmp_path / "bidirectional"
    with caplog.at_level("INFO"):
        results = train.main(flags + ["--output_dir", str(output_dir)])
    assert results["completed_steps"] == 8
    assert sorted(served_reversed) == list(range(40, 80)), served_reversed
    assert "epoch 1: both directions, 5 batches" in caplog.text and "epoch 2: en->de only, 3 batches" in caplog.text
    assert "8 updates over 2 epochs (the first 1 in both directions: 5 updates each)" in caplog.text
    card = (output_dir / "model" / "README.md").read_text()
    assert "| directions | en→de and de→en for the first 1 epoch (bidirectional training" in card

    resumed = tmp_path / "bidirectional_resumed"
    train.main(flags + ["--output_dir", str(resumed), "--max_train_steps", "6"])
    served_reversed.clear()
    train.main(flags + ["--output_dir", str(resumed), "--resume_from_checkpoint", "latest"])
    assert served_reversed == []  # the resumed part lies in the forward epoch
    uninterrupted = load_file(str(output_dir / "checkpoints" / "step_0000008" / "model.safetensors"))
    again = load_file(str(resumed / "checkpoints" / "step_0000008" / "model.safetensors"))
    for name in uninterrupted:
        torch.testing.assert_close(again[name], uninterrupted[name], rtol=0, atol=0, msg=name)

    with pytest.raises(ValueError, match="bidirectional_epochs and bpe_dropout cannot be combined"):
        load_config(TINY + ["--bidirectional_epochs", "2", "--bpe_dropout", "0.1"])
    with pytest.raises(ValueError, match="bidirectional_epochs must be >= 0"):
        load_config(TINY + ["--bidirectional_epochs", "-1"])


def test_extra_source_languages_train_into_the_target_during_the_bidirectional_epochs(tmp_path, monkeypatch, caplog):
    """--extra_source_langs fr,cs on 40 pairs: the bidirectional epoch serves 40 en->de, 40 de->en, 40 fr->de and
    40 cs->de examples, each once; the later epochs serve en->de only. The tokenizer learns the extra languages
    (Czech letters are not <unk>), and the results and model card name the directions."""
    served = []
    real_getitem = train.BidirectionalTrainSet.__getitem__

    def getitem(self, index):
        served.append(index)
        return real_getitem(self, index)

    monkeypatch.setattr(train.BidirectionalTrainSet, "__getitem__", getitem)
    flags = TINY + ["--bidirectional_epochs", "1", "--extra_source_langs", "fr,cs", "--max_train_samples", "40",
                    "--test_split", "", "--max_train_steps", "14"]
    output_dir = tmp_path / "multi_source"
    with caplog.at_level("INFO"):
        results = train.main(flags + ["--output_dir", str(output_dir)])
    assert "40 + 40 fr->de + 40 cs->de training pairs" in caplog.text
    assert "epoch 1: both directions + fr->de + cs->de, 10 batches" in caplog.text
    assert "epoch 2: en->de only, 3 batches" in caplog.text
    assert sorted(served[:160]) == list(range(160))  # epoch 1: every example of the four kinds once
    assert served[160:] and max(served[160:]) < 40  # then en->de only
    assert results["num_extra_source_pairs"] == {"fr": 40, "cs": 40}

    tokenizer = train.AutoTokenizer.from_pretrained(output_dir / "tokenizer")
    (czech,) = read_lines("train", "cs", 1)
    assert tokenizer.unk_token_id not in tokenizer(czech)["input_ids"]
    assert tokenizer.decode(tokenizer(czech)["input_ids"], skip_special_tokens=True) == czech
    card = (output_dir / "model" / "README.md").read_text()
    assert "| directions | en→de and de→en, fr→de, cs→de for the first 1 epoch (bidirectional training" in card

    with pytest.raises(ValueError, match="set bidirectional_epochs > 0"):
        load_config(TINY + ["--extra_source_langs", "fr"])
    with pytest.raises(ValueError, match="distinct languages other than source_lang"):
        load_config(TINY + ["--bidirectional_epochs", "1", "--extra_source_langs", "fr,de"])
    with pytest.raises(ValueError, match="distinct languages"):
        load_config(TINY + ["--bidirectional_epochs", "1", "--extra_source_langs", "fr, fr"])
    with pytest.raises(ValueError, match="names no language"):
        load_config(TINY + ["--bidirectional_epochs", "1", "--extra_source_langs", " , "])
    with pytest.raises(FileNotFoundError, match=r"No file train\.xx"):
        train.main(TINY + ["--bidirectional_epochs", "1", "--extra_source_langs", "xx", "--output_dir",
                           str(tmp_path / "missing")])


def test_a_tokenizer_that_cannot_spell_a_training_language_is_warned_about(trained_run, caplog):
    """Fine-tuning the tiny en/de checkpoint with Czech as an extra source: its tokenizer spells every en and de
    training token (it learned them) but not Czech letters such as ř and ě, and the log says so and what to do."""
    checkpoint = trained_run[0] / "model"
    config = load_config(TINY + ["--model_name_or_path", str(checkpoint), "--model_config", "",
                                 "--bidirectional_epochs", "1", "--extra_source_langs", "cs"])
    splits = train.load_splits(config)
    tokenizer = train.AutoTokenizer.from_pretrained(checkpoint)
    with caplog.at_level("WARNING"):
        shares = train.warn_if_tokenizer_cannot_spell(tokenizer, splits, config, sample=200)
    assert shares["en"] == 0.0 and shares["de"] == 0.0
    assert shares["cs"] > train.UNKNOWN_TOKEN_WARNING_SHARE
    ids = tokenizer(splits["extra_train"]["cs"]["source"][:200], add_special_tokens=False)["input_ids"]
    assert shares["cs"] == pytest.approx(sum(x.count(tokenizer.unk_token_id) for x in ids) / sum(map(len, ids)))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "of the cs training tokens to <unk>" in warnings[0]
    assert "drop model_name_or_path" in warnings[0]


# ---------------------------------------------------------------------------------------------------
# Model selection, early stopping, averaging, tracking, datasets folders, bf16
# ---------------------------------------------------------------------------------------------------


def test_best_checkpoint_early_stopping_and_tracking(tmp_path, monkeypatch):
    """Validation BLEU scripted as 5, 7, 6, 6.5: with patience 2 training stops after step 4, the best
    export holds the step-2 weights, the average of the last 3 checkpoints is scored and rejected, and
    TensorBoard receives the logs."""
    real_evaluate, scripted = train.evaluate, iter([5.0, 7.0, 6.0, 6.5])

    def evaluate(model, tokenizer, dataset, config, accelerator, metrics, loader=None, desc="validation"):
        results = real_evaluate(model, tokenizer, dataset, config, accelerator, metrics, loader, desc)
        if loader is not None:  # the in-training validation; finalize scores without a loader
            results["bleu"] = next(scripted)
        return results

    monkeypatch.setattr(train, "evaluate", evaluate)
    output_dir = tmp_path / "selection"
    results = train.main(TINY + ["--output_dir", str(output_dir), "--eval_steps", "1", "--checkpointing_steps", "1",
                                 "--early_stopping_patience", "2", "--keep_last_checkpoints", "10",
                                 "--average_last_checkpoints", "3", "--with_tracking", "--report_to", "tensorboard"])
    assert results["completed_steps"] == 4
    assert [h["bleu"] for h in results["history"]] == [5.0, 7.0, 6.0, 6.5]
    selection = results["selection"]
    assert selection["best_step"] == 2 and selection["best_validation_bleu"] == 7.0
    assert selection["averaged_checkpoints"] == ["step_0000002", "step_0000003", "step_0000004"]
    assert selection["selected"] == "best"  # the real BLEU of a 4-step model is far below the scripted 7

    step_two = load_file(str(output_dir / "checkpoints" / "step_0000002" / "model.safetensors"))
    for folder in ("best", "model"):
        exported = load_file(str(output_dir / folder / "model.safetensors"))
        for name in exported.keys() & step_two.keys():
            torch.testing.assert_close(exported[name], step_two[name], rtol=0, atol=0, msg=f"{folder}/{name}")

    events = list(output_dir.rglob("events.out.tfevents*"))
    assert events, "no TensorBoard event file"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    assert {"train/loss", "validation/bleu"} <= set(accumulator.Tags()["scalars"])
    assert [e.value for e in accumulator.Scalars("validation/bleu")] == [5.0, 7.0, 6.0, 6.5]


def test_average_checkpoints_is_the_elementwise_mean(tmp_path):
    from safetensors.torch import save_file

    first, second = tmp_path / "a", tmp_path / "b"
    for folder, value in ((first, 1.0), (second, 4.0)):
        folder.mkdir()
        save_file({"w": torch.full((2, 3), value), "b": torch.arange(3.0) * value}, str(folder / "model.safetensors"))
    averaged = train.average_checkpoints([first, second])
    torch.testing.assert_close(averaged["w"], torch.full((2, 3), 2.5))
    torch.testing.assert_close(averaged["b"], torch.arange(3.0) * 2.5)


def test_local_dataset_folder_through_load_dataset_with_bf16(tmp_path):
    """--dataset_name takes a local dataset folder (what load_dataset reads offline); bf16 autocast on CPU."""
    data = tmp_path / "corpus"
    data.mkdir()
    for split, source_split, count in (("train", "train", 150), ("validation", "val", 6), ("test", "test_2016_flickr", 5)):
        english = [line.strip() for line in gzip.open(MULTI30K / f"{source_split}.en.gz", "rt")][:count]
        german = [line.strip() for line in gzip.open(MULTI30K / f"{source_split}.de.gz", "rt")][:count]
        with (data / f"{split}.jsonl").open("w") as handle:
            for en, de in zip(english, german):
                handle.write(json.dumps({"translation": {"en": en, "de": de}}, ensure_ascii=False) + "\n")
    common = ["--config", "configs/train/tiny.yaml", "--data_dir", "", "--dataset_name", str(data),
              "--validation_split", "validation", "--test_split", "test", "--max_train_steps", "2",
              "--eval_steps", "2", "--checkpointing_steps", "", "--max_new_tokens", "6", "--num_beams", "1",
              "--vocab_size", "500"]
    results = train.main(common + ["--output_dir", str(tmp_path / "out"), "--mixed_precision", "bf16"])
    assert results["num_train_pairs"] == 150
    assert results["validation"]["num_sentences"] == 6 and results["test"]["num_sentences"] == 5
    assert results["config"]["mixed_precision"] == "bf16"
    with pytest.raises(ValueError, match="has splits .* not 'dev'"):
        train.main(common + ["--output_dir", str(tmp_path / "bad"), "--validation_split", "dev"])


def test_checkpoint_averaging_windows_reproduces_the_run_and_selects_on_validation(trained_run, tmp_path):
    """benchmarks/checkpoint_averaging_windows.py: best/ scores what the run recorded, each window averages the
    last k checkpoints, and only the validation winner is translated on test."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import checkpoint_averaging_windows

    output_dir, _ = trained_run
    out = tmp_path / "windows.json"
    results = checkpoint_averaging_windows.main([str(output_dir), "--windows", "2", "--test_split",
                                                 "test_2016_flickr", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    saved = json.loads((output_dir / "all_results.json").read_text())
    best = results["candidates"]["best single"]
    assert best["bleu"] == pytest.approx(saved["selection"]["best_validation_bleu"], abs=1e-9)
    # Eight updates leave BLEU at 0, so chrF (> 0) is what shows the decoding is the run's own.
    assert best["chrf"] > 0 and best["chrf"] == pytest.approx(saved["validation"]["chrf"], abs=1e-9)
    assert results["candidates"]["average of last 2"]["checkpoints"] == ["step_0000004", "step_0000008"]
    scores = {name: row["bleu"] for name, row in results["candidates"].items()}
    assert results["winner"] == max(scores, key=scores.get)
    # The tiny preset exports best/ (no averaging); when best/ also wins here, test must match the run's test.
    assert saved["selection"]["selected"] == "best"
    if results["winner"] == "best single":
        assert results["winner_test"]["chrf"] == pytest.approx(saved["test"]["chrf"], abs=1e-9)
    else:
        assert results["winner_test"]["chrf"] > 0
    with pytest.raises(SystemExit, match="keeps 2 checkpoints"):
        checkpoint_averaging_windows.main([str(output_dir), "--windows", "3"])


def test_mbr_decoding_benchmark_reproduces_the_runs_beam_search(trained_run, tmp_path):
    """benchmarks/mbr_decoding.py: its beam-search row is the run's own validation score, the n-best list and the
    samples have the asked sizes, and every MBR rule returns one of its candidates for each sentence."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import mbr_decoding

    output_dir, _ = trained_run
    out = tmp_path / "mbr.json"
    results = mbr_decoding.main([str(output_dir / "model"), "--data_dir", str(MULTI30K), "--max_samples", "12",
                                 "--max_new_tokens", "12", "--num_candidates", "3", "--num_samples", "2",
                                 "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    saved = json.loads((output_dir / "all_results.json").read_text())
    baseline = results["rows"]["beam 2 (the checkpoint's decoding)"]
    assert baseline["chrf"] > 0 and baseline["chrf"] == pytest.approx(saved["validation"]["chrf"], abs=1e-9)
    assert len(results["rows"]) == 2 + 7 and results["num_sentences"] == 12
    assert all(0 <= row[k] <= 100 for row in results["rows"].values() for k in ("bleu", "bleu_lowercase", "chrf"))

    model, tokenizer = mbr_decoding.load_model_and_tokenizer(str(output_dir / "model"))
    sources = ["A man is riding a bike.", "Two dogs play in the snow."]
    drawn = mbr_decoding.draw_candidates(model, tokenizer, sources, num_candidates=3, num_samples=2, epsilon=0.02,
                                         batch_size=2, max_new_tokens=8, length_penalty=1.0)
    assert [(len(d["beam"]), len(d["beam_scores"]), len(d["samples"])) for d in drawn] == [(3, 3, 2)] * 2
    for name, candidates, pseudo, utility, weighting in mbr_decoding.variants(2):
        chosen = mbr_decoding.apply_variant(drawn, candidates, pseudo, utility, weighting)
        for d, text in zip(drawn, chosen):
            pools = {"beam": d["beam"], "samples": d["samples"], "all": d["beam"] + d["samples"]}
            assert text in pools[candidates], name
