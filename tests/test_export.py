"""save_pretrained / from_pretrained round trips, mt.export.export_model, and loading an export in a
fresh Python process that cannot import this repository."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerFast

from modeling import AttnMTForConditionalGeneration
from modeling.modeling_attnmt import AttnMTSinusoidalPositionalEmbedding
from mt import export as export_module
from mt.export import export_model

from conftest import tiny_model

MAX_LENGTH = 40


def _load(folder, **kwargs):
    model, info = AttnMTForConditionalGeneration.from_pretrained(folder, output_loading_info=True, **kwargs)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    assert info["mismatched_keys"] == set() and info["error_msgs"] == []
    return model.eval()


def _assert_same_model(original, loaded, input_ids):
    original_state, loaded_state = original.state_dict(), loaded.state_dict()
    assert original_state.keys() == loaded_state.keys()
    for name, tensor in original_state.items():
        assert torch.equal(tensor, loaded_state[name]), name
    decoder_input_ids = torch.tensor([[1, 30, 31, 32, 33]] * input_ids.shape[0])
    with torch.no_grad():
        expected = original(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits
        actual = loaded(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits
    assert torch.equal(expected, actual)


def _assert_tied(model):
    shared = model.model.shared.weight
    for weight in (model.lm_head.weight, model.model.encoder.embed_tokens.weight, model.model.decoder.embed_tokens.weight):
        assert weight.data_ptr() == shared.data_ptr()


def _perturb(model, seed=5):
    """Move every weight away from its initial value (biases and LayerNorms start at 0 and 1)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model


INPUT_IDS = torch.tensor([[5, 6, 7, 8, 2], [9, 10, 2, 0, 0]])


# --------------------------------------------------------------------------------------------------
# save_pretrained / from_pretrained
# --------------------------------------------------------------------------------------------------


def test_round_trip_keeps_weights_logits_ties_and_position_tables(tmp_path):
    model = _perturb(tiny_model())
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    # The tied matrix is stored once; the sinusoidal tables are not stored at all.
    stored = load_file(tmp_path / "model.safetensors")
    assert "lm_head.weight" not in stored and not any("embed_positions" in key for key in stored)

    loaded = _load(tmp_path)
    _assert_same_model(model, loaded, INPUT_IDS)
    _assert_tied(loaded)
    expected_table = AttnMTSinusoidalPositionalEmbedding.create_weight(64, 32)
    for stack in (loaded.model.encoder, loaded.model.decoder):
        assert torch.equal(stack.embed_positions.weight, expected_table)
    # Still tied after loading: a training step moves all four names together.
    with torch.no_grad():
        loaded.model.shared.weight[7] += 1.0
    assert torch.equal(loaded.lm_head.weight[7], loaded.model.encoder.embed_tokens.weight[7])


def test_sharded_save_loads(tmp_path):
    model = _perturb(tiny_model())
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    shards = sorted(tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").is_file()
    assert not (tmp_path / "model.safetensors").exists()
    loaded = _load(tmp_path)
    _assert_same_model(model, loaded, INPUT_IDS)
    _assert_tied(loaded)


@pytest.mark.parametrize(
    "overrides",
    [{"position_embedding_type": "learned"}, {"normalize_before": False}, {"tie_word_embeddings": False}],
    ids=["learned-positions", "post-norm", "untied"],
)
def test_round_trip_of_architecture_variants(tmp_path, overrides):
    model = _perturb(tiny_model(**overrides))
    model.save_pretrained(tmp_path)
    loaded = _load(tmp_path)
    for name, value in overrides.items():
        assert getattr(loaded.config, name) == value
    _assert_same_model(model, loaded, INPUT_IDS)
    if overrides.get("tie_word_embeddings") is False:
        assert loaded.lm_head.weight.data_ptr() != loaded.model.shared.weight.data_ptr()
    else:
        _assert_tied(loaded)
    if overrides.get("position_embedding_type") == "learned":
        assert isinstance(loaded.model.encoder.embed_positions, torch.nn.Embedding)


# --------------------------------------------------------------------------------------------------
# export_model
# --------------------------------------------------------------------------------------------------


def _siblings(output_dir: Path) -> list[str]:
    return sorted(p.name for p in output_dir.parent.iterdir() if p.name != output_dir.name)


def test_export_writes_a_complete_folder(tmp_path, trained_model, tokenizer):
    output_dir = tmp_path / "export"
    trained_model.config.use_cache = False  # what Trainer leaves behind
    assert export_model(trained_model, tokenizer, output_dir, model_card="# Tiny AttnMT\n") == output_dir

    names = {p.name for p in output_dir.iterdir()}
    expected = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json", "README.md", "configuration_attnmt.py", "modeling_attnmt.py",
                "pipeline_attnmt.py"}
    assert expected <= names
    config = json.loads((output_dir / "config.json").read_text())
    assert config["use_cache"] is True and trained_model.config.use_cache is True
    assert config["auto_map"] == {
        "AutoConfig": "configuration_attnmt.AttnMTConfig",
        "AutoModelForSeq2SeqLM": "modeling_attnmt.AttnMTForConditionalGeneration",
    }
    assert config["custom_pipelines"]["translation"]["impl"] == "pipeline_attnmt.AttnMTTranslationPipeline"
    assert (output_dir / "README.md").read_text() == "# Tiny AttnMT\n"
    assert _siblings(output_dir) == []  # no .tmp-/.old- folder left behind
    _assert_same_model(trained_model, _load(output_dir), INPUT_IDS)


def test_export_replaces_previous_export(tmp_path, trained_model, tokenizer):
    output_dir = tmp_path / "export"
    export_model(trained_model, tokenizer, output_dir, model_card="v1")
    (output_dir / "stale.txt").write_text("from the first export")
    export_model(tiny_model(seed=9), tokenizer, output_dir, model_card="v2", max_shard_size="20KB")
    assert (output_dir / "README.md").read_text() == "v2"
    assert not (output_dir / "stale.txt").exists() and not (output_dir / "model.safetensors").exists()
    assert len(list(output_dir.glob("model-*.safetensors"))) > 1
    _assert_same_model(tiny_model(seed=9), _load(output_dir), INPUT_IDS)
    assert _siblings(output_dir) == []


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_failed_export_keeps_previous_export(tmp_path, trained_model, tokenizer, monkeypatch):
    output_dir = tmp_path / "export"
    export_model(trained_model, tokenizer, output_dir, model_card="v1")
    before = _snapshot(output_dir)

    # Fail midway: the weights and config are written, the tokenizer save blows up.
    def broken_save(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(PreTrainedTokenizerFast, "save_pretrained", broken_save)
    with pytest.raises(OSError, match="disk full"):
        export_model(tiny_model(seed=9), tokenizer, output_dir, model_card="v2")
    assert _snapshot(output_dir) == before
    assert _siblings(output_dir) == []


def test_failed_final_rename_restores_previous_export(tmp_path, trained_model, tokenizer, monkeypatch):
    output_dir = tmp_path / "export"
    export_model(trained_model, tokenizer, output_dir, model_card="v1")
    before = _snapshot(output_dir)
    original_rename = Path.rename

    def rename(self, target):
        if ".tmp-" in self.name:
            raise OSError("killed during rename")
        return original_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError, match="killed during rename"):
        export_model(tiny_model(seed=9), tokenizer, output_dir, model_card="v2")
    assert _snapshot(output_dir) == before
    assert _siblings(output_dir) == []


def test_export_rejects_mismatched_tokenizer(tmp_path, tokenizer):
    output_dir = tmp_path / "export"
    with pytest.raises(ValueError, match="pad_token_id: tokenizer 0 != config 5"):
        export_model(tiny_model(pad_token_id=5), tokenizer, output_dir)
    with pytest.raises(ValueError, match="vocabulary"):
        export_model(tiny_model(vocab_size=100), tokenizer, output_dir)
    assert list(tmp_path.iterdir()) == []


def test_export_checks_remote_code_entries(tmp_path, trained_model, tokenizer, monkeypatch):
    monkeypatch.setattr(export_module, "REQUIRED_CODE_FILES", (*export_module.REQUIRED_CODE_FILES, "missing.py"))
    with pytest.raises(RuntimeError, match="missing.py"):
        export_model(trained_model, tokenizer, tmp_path / "export")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------
# A fresh process, without this repository
# --------------------------------------------------------------------------------------------------

FRESH_PROCESS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    try:
        import modeling
    except ModuleNotFoundError:
        repo_importable = False
    else:
        repo_importable = True

    from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer, pipeline

    folder, sources = sys.argv[1], json.loads(sys.argv[2])
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True).eval()
    batch = tokenizer(sources, padding=True, return_tensors="pt")
    ids = model.generate(**batch, num_beams=3, max_length=40)
    translate = pipeline("translation", model=folder, trust_remote_code=True)
    print(json.dumps({
        "repo_importable": repo_importable,
        "model_type": config.model_type,
        "model_class": type(model).__name__,
        "model_module": type(model).__module__,
        "attn_implementation": model.config._attn_implementation,
        "use_cache": model.config.use_cache,
        "special_ids": [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id],
        "ids": ids.tolist(),
        "texts": tokenizer.batch_decode(ids, skip_special_tokens=True),
        "pipeline": translate(sources, num_beams=3, max_length=40),
        "pipeline_class": type(translate).__name__,
    }))
    """
)


def load_in_fresh_process(folder: Path, sources: list[str], tmp_path: Path) -> dict:
    """Run FRESH_PROCESS_SCRIPT on an exported folder in a new interpreter, outside the repo, offline."""
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    completed = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS_SCRIPT, str(folder), json.dumps(sources)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_export_loads_in_a_fresh_process_without_the_repo(tmp_path, trained_model, tokenizer, sources):
    folder = tmp_path / "exported-attnmt"
    export_model(trained_model, tokenizer, folder)
    result = load_in_fresh_process(folder, sources, tmp_path)

    assert result["repo_importable"] is False
    assert result["model_type"] == "attnmt"
    assert result["model_class"] == "AttnMTForConditionalGeneration"
    assert result["model_module"].startswith("transformers_modules.")  # the code copied into the export
    assert result["pipeline_class"] == "AttnMTTranslationPipeline"
    assert result["attn_implementation"] == "sdpa" and result["use_cache"] is True
    assert result["special_ids"] == [0, 1, 2]

    # The same translations as the model in this process.
    batch = tokenizer(sources, padding=True, return_tensors="pt")
    expected_ids = trained_model.generate(**batch, num_beams=3, max_length=MAX_LENGTH)
    expected_texts = tokenizer.batch_decode(expected_ids, skip_special_tokens=True)
    assert result["ids"] == expected_ids.tolist()
    assert result["texts"] == expected_texts and all(text.strip() for text in expected_texts)
    assert [record["translation_text"] for record in result["pipeline"]] == expected_texts
