"""AttnMTEnsembleForConditionalGeneration and ensemble.py: the averaged distribution against a hand-written
reference, generate() with and without the per-member cache, save/load with every member's tied embeddings,
an export that loads in a fresh process, eval.py on an ensemble folder, and clear errors for bad members."""

import json

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM

import ensemble as ensemble_script
from conftest import tiny_model
from eval_fixtures import MULTI30K, multi30k_lines, run_eval, save_checkpoint
from modeling import AttnMTEnsembleConfig, AttnMTEnsembleForConditionalGeneration, AttnMTForConditionalGeneration
from modeling.modeling_attnmt_ensemble import AttnMTEnsembleCache
from mt.export import export_model
from mt.scoring import translate
from test_export import load_in_fresh_process

INPUT_IDS = torch.tensor([[5, 6, 7, 8, 2], [9, 10, 2, 0, 0]])
DECODER_INPUT_IDS = torch.tensor([[1, 30, 31, 32, 33], [1, 40, 41, 42, 43]])


def perturbed_copy(model: AttnMTForConditionalGeneration, seed: int, scale: float = 0.05) -> AttnMTForConditionalGeneration:
    """Another member: the same architecture with every weight moved a little (a stand-in for another seed)."""
    other = AttnMTForConditionalGeneration(model.config).eval()
    other.load_state_dict(model.state_dict())
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in other.parameters():
            param.add_(scale * torch.randn_like(param))
    return other


@pytest.fixture
def members(trained_model):
    return [trained_model, perturbed_copy(trained_model, seed=7)]


@pytest.fixture
def ensemble(members):
    return AttnMTEnsembleForConditionalGeneration.from_members(members).eval()


def mean_probability_greedy(members, input_ids, attention_mask, max_new_tokens: int) -> torch.Tensor:
    """Reference greedy decoding, written independently of the ensemble class: no cache, every step runs each
    member on the whole prefix and takes the argmax of the members' mean probability."""
    eos, start = members[0].config.eos_token_id, members[0].config.decoder_start_token_id
    pad = members[0].config.pad_token_id
    prefix = torch.full((input_ids.shape[0], 1), start)
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
    for _ in range(max_new_tokens):
        with torch.no_grad():
            probs = torch.stack([
                m(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=prefix).logits[:, -1].softmax(-1)
                for m in members
            ]).mean(0)
        next_token = probs.argmax(-1).masked_fill(done, pad)
        prefix = torch.cat([prefix, next_token[:, None]], dim=1)
        done |= next_token == eos
        if done.all():
            break
    return prefix


# --------------------------------------------------------------------------------------------------
# The averaged distribution
# --------------------------------------------------------------------------------------------------


def test_logits_are_the_log_of_the_members_mean_probability(members, ensemble):
    with torch.no_grad():
        actual = ensemble(input_ids=INPUT_IDS, decoder_input_ids=DECODER_INPUT_IDS).logits
        probs = [m(input_ids=INPUT_IDS, decoder_input_ids=DECODER_INPUT_IDS).logits.softmax(-1) for m in members]
    expected = torch.log((probs[0] + probs[1]) / 2)
    assert actual.shape == (2, 5, members[0].config.vocab_size)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(actual.exp().sum(-1), torch.ones(2, 5), atol=1e-5, rtol=0)
    # The members really differ, so the test above is not comparing one model with itself.
    assert (probs[0] - probs[1]).abs().max() > 1e-2


def test_loss_is_the_cross_entropy_of_the_mean_distribution(ensemble):
    labels = torch.tensor([[30, 31, 32, 2, -100], [40, 41, 2, -100, -100]])
    with torch.no_grad():
        output = ensemble(input_ids=INPUT_IDS, labels=labels)
    log_probs = output.logits[labels != -100]
    expected = -log_probs.gather(-1, labels[labels != -100][:, None]).mean()
    torch.testing.assert_close(output.loss, expected)


def test_two_copies_of_one_model_translate_like_that_model(trained_model, tokenizer, sources):
    twin = AttnMTEnsembleForConditionalGeneration.from_members([trained_model, trained_model]).eval()
    with torch.no_grad():
        single = trained_model(input_ids=INPUT_IDS, decoder_input_ids=DECODER_INPUT_IDS).logits.log_softmax(-1)
        doubled = twin(input_ids=INPUT_IDS, decoder_input_ids=DECODER_INPUT_IDS).logits
    torch.testing.assert_close(doubled, single, atol=1e-5, rtol=1e-5)
    batch = tokenizer(sources, padding=True, return_tensors="pt")
    expected = trained_model.generate(**batch, num_beams=4, max_new_tokens=20)
    assert torch.equal(twin.generate(**batch, num_beams=4, max_new_tokens=20), expected)


# --------------------------------------------------------------------------------------------------
# generate()
# --------------------------------------------------------------------------------------------------


def test_greedy_generate_equals_a_reference_loop_without_cache(members, ensemble, tokenizer, sources):
    batch = tokenizer(sources, padding=True, return_tensors="pt")
    generated = ensemble.generate(**batch, num_beams=1, do_sample=False, max_new_tokens=20)
    reference = mean_probability_greedy(members, batch["input_ids"], batch["attention_mask"], max_new_tokens=20)
    assert generated.tolist() == reference[:, : generated.shape[1]].tolist()
    # The ensemble's greedy output is neither member's (otherwise the reference comparison proves little).
    alone = [m.generate(**batch, num_beams=1, max_new_tokens=20).tolist() for m in members]
    assert generated.tolist() != alone[0] or generated.tolist() != alone[1]


@pytest.mark.parametrize("num_beams", [1, 4])
def test_the_per_member_cache_changes_nothing(ensemble, tokenizer, sources, num_beams):
    batch = tokenizer(sources, padding=True, return_tensors="pt")
    cached = ensemble.generate(**batch, num_beams=num_beams, max_new_tokens=20, use_cache=True)
    uncached = ensemble.generate(**batch, num_beams=num_beams, max_new_tokens=20, use_cache=False)
    assert cached.tolist() == uncached.tolist()
    assert cached.shape[1] > 3


def test_step_by_step_decoding_with_the_cache_equals_the_full_forward(ensemble):
    """One token at a time through the per-member cache, passed under the old name `past_key_values` as
    well as `cache`, gives the logits of one forward over the whole target."""
    T = DECODER_INPUT_IDS.shape[1]
    with torch.no_grad():
        full = ensemble(input_ids=INPUT_IDS, decoder_input_ids=DECODER_INPUT_IDS, use_cache=False).logits
        encoder_outputs = ensemble.get_encoder()(input_ids=INPUT_IDS)
        first = ensemble(encoder_outputs=encoder_outputs, decoder_input_ids=DECODER_INPUT_IDS[:, :1], use_cache=True)
        cache, steps = first.cache, [first.logits]
        assert isinstance(cache, AttnMTEnsembleCache) and cache.get_seq_length() == 1
        for t in range(1, T):
            name = "past_key_values" if t % 2 else "cache"
            out = ensemble(encoder_outputs=encoder_outputs, decoder_input_ids=DECODER_INPUT_IDS[:, t:t + 1],
                           use_cache=True, **{name: cache})
            assert out.cache is cache and cache.get_seq_length() == t + 1
            steps.append(out.logits)
    incremental = torch.cat(steps, dim=1)
    assert incremental.shape == full.shape
    torch.testing.assert_close(incremental, full, atol=1e-4, rtol=1e-4)


def test_beam_scores_are_the_ensemble_sequence_log_probabilities(ensemble, tokenizer, sources):
    """Beam search ranks by the ensemble's own log-probabilities: re-scoring the returned sequence with a
    forward pass gives the reported score (length penalty 1: the sum divided by the length)."""
    batch = tokenizer(sources[:1], return_tensors="pt")
    out = ensemble.generate(**batch, num_beams=4, max_new_tokens=20, length_penalty=1.0,
                            output_scores=True, return_dict_in_generate=True)
    sequence = out.sequences[0]
    targets = sequence[1:]
    with torch.no_grad():
        logits = ensemble(**batch, decoder_input_ids=sequence[None, :-1]).logits[0]
    token_log_probs = logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
    keep = targets != tokenizer.pad_token_id
    expected = token_log_probs[keep].sum() / keep.sum()
    assert out.sequences_scores[0].item() == pytest.approx(expected.item(), abs=1e-4)


# --------------------------------------------------------------------------------------------------
# Saving, loading, exporting
# --------------------------------------------------------------------------------------------------


def test_save_and_load_keep_every_members_weights_and_ties(ensemble, tmp_path):
    ensemble.save_pretrained(tmp_path)
    loaded, info = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, trust_remote_code=True, output_loading_info=True)
    loaded.eval()
    assert type(loaded).__name__ == "AttnMTEnsembleForConditionalGeneration"
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set() and info["mismatched_keys"] == set()
    for member in loaded.members:
        shared = member.model.shared.weight
        for weight in (member.lm_head.weight, member.model.encoder.embed_tokens.weight,
                       member.model.decoder.embed_tokens.weight):
            assert weight.data_ptr() == shared.data_ptr()
        assert member.config._attn_implementation == "sdpa"
    original, reloaded = ensemble.state_dict(), loaded.state_dict()
    assert original.keys() == reloaded.keys()
    for name, tensor in original.items():
        assert torch.equal(tensor, reloaded[name]), name
    with torch.no_grad():
        expected = ensemble(input_ids=INPUT_IDS, decoder_input_ids=DECODER_INPUT_IDS).logits
        actual = loaded(input_ids=INPUT_IDS, decoder_input_ids=DECODER_INPUT_IDS).logits
    assert torch.equal(expected, actual)
    code = {p.name for p in tmp_path.glob("*.py")}
    assert {"configuration_attnmt.py", "modeling_attnmt.py", "configuration_attnmt_ensemble.py",
            "modeling_attnmt_ensemble.py"} <= code


def test_export_loads_in_a_fresh_process_without_the_repo(ensemble, tokenizer, sources, tmp_path):
    folder = tmp_path / "exported-ensemble"
    export_model(ensemble, tokenizer, folder)
    result = load_in_fresh_process(folder, sources, tmp_path)
    assert result["repo_importable"] is False
    assert (result["model_type"], result["model_class"]) == ("attnmt_ensemble", "AttnMTEnsembleForConditionalGeneration")
    assert result["model_module"].startswith("transformers_modules.")
    batch = tokenizer(sources, padding=True, return_tensors="pt")
    expected = ensemble.generate(**batch, num_beams=3, max_length=40)
    texts = tokenizer.batch_decode(expected, skip_special_tokens=True)
    assert result["ids"] == expected.tolist()
    assert [record["translation_text"] for record in result["pipeline"]] == texts


# --------------------------------------------------------------------------------------------------
# ensemble.py and eval.py
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def member_folders(members, tokenizer, tmp_path):
    folders = []
    for index, (member, seed) in enumerate(zip(members, (42, 1))):
        folder = save_checkpoint(member, tokenizer, tmp_path / f"seed{seed}" / "model")
        results = {"config": {"source_lang": "en", "target_lang": "de", "seed": seed},
                   "validation": {"bleu": 10.0 + index, "bleu_lowercase": 11.0 + index},
                   "test": {"bleu": 9.0 + index, "bleu_lowercase": 9.5 + index}, "train_seconds": 3600.0}
        (folder / "all_results.json").write_text(json.dumps(results))
        folders.append(folder)
    return folders


def test_ensemble_script_builds_a_folder_that_eval_scores(member_folders, members, tokenizer, tmp_path):
    output_dir = tmp_path / "ensemble"
    code = ensemble_script.main(["--members", *map(str, member_folders), "--output_dir", str(output_dir),
                                 "--num_beams", "3"])
    assert code == 0
    summary = json.loads((output_dir / "all_results.json").read_text())
    assert summary["config"] == {"source_lang": "en", "target_lang": "de"}
    assert [m["seed"] for m in summary["members"]] == [42, 1]
    assert summary["num_parameters"] == sum(sum(p.numel() for p in m.parameters()) for m in members)
    card = (output_dir / "README.md").read_text()
    assert "ensemble of 2 AttnMT models" in card and "| 1 | `seed1/model` | 1 |" in card and "| 10.00 | 9.00 |" in card

    # eval.py takes the language pair from all_results.json and decodes with the saved beam (3).
    eval_dir = tmp_path / "eval"
    completed = run_eval(["--model_name_or_path", str(output_dir), "--data_dir", str(MULTI30K), "--split", "val",
                          "--max_samples", "12", "--max_new_tokens", "16", "--batch_size", "4",
                          "--output_dir", str(eval_dir), "--update_model_card", "--no_progress"])
    assert completed.returncode == 0, completed.stderr[-4000:]
    results = json.loads((eval_dir / "results.json").read_text())
    assert results["model_type"] == "attnmt_ensemble" and results["decoding"]["num_beams"] == 3
    hypotheses = (eval_dir / "hypotheses.txt").read_text(encoding="utf-8").split("\n")[:-1]
    reference = AttnMTEnsembleForConditionalGeneration.from_members(members).eval()
    expected = translate(reference, tokenizer, multi30k_lines("val", "en", 12), batch_size=4, num_beams=3,
                         max_new_tokens=16, progress=False)
    assert hypotheses == expected
    assert "bleu (val)" in (output_dir / "README.md").read_text()


def test_ensemble_script_refuses_members_with_different_tokenizers(member_folders, tmp_path, capsys, corpus):
    from mt.tokenizer import train_tokenizer

    other_tokenizer = train_tokenizer(corpus["de"][:200] + corpus["en"][:200], vocab_size=400)
    stranger = save_checkpoint(tiny_model(seed=3), other_tokenizer, tmp_path / "stranger")
    capsys.readouterr()  # the progress bar of saving the stranger
    code = ensemble_script.main(["--members", str(member_folders[0]), str(stranger), "--output_dir",
                                 str(tmp_path / "out")])
    assert code == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: member") and "different vocabulary" in error and "share one tokenizer" in error
    assert not (tmp_path / "out").exists()


def test_ensemble_script_refuses_one_member_a_repeated_member_and_a_non_attnmt_folder(member_folders, tmp_path, capsys):
    with pytest.raises(SystemExit):
        ensemble_script.parse_args(["--members", str(member_folders[0]), "--output_dir", str(tmp_path / "out")])
    assert "at least two folders" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ensemble_script.parse_args(["--members", str(member_folders[0]), str(member_folders[0]), "--output_dir", "x"])
    assert "same folder twice" in capsys.readouterr().err
    assert ensemble_script.main(["--members", str(member_folders[0]), str(tmp_path / "nothing"), "--output_dir",
                                 str(tmp_path / "out")]) == 1
    assert "no config.json" in capsys.readouterr().err


def test_config_refuses_a_single_member_and_a_vocabulary_mismatch():
    member = tiny_model().config.to_dict()
    with pytest.raises(ValueError, match="at least two members"):
        AttnMTEnsembleConfig(members=[member])
    with pytest.raises(ValueError, match="vocab_size.*share one tokenizer"):
        AttnMTEnsembleConfig(members=[member, {**member, "vocab_size": member["vocab_size"] + 8}])
    config = AttnMTEnsembleConfig(members=[member, {**member, "max_position_embeddings": 32}])
    assert config.max_position_embeddings == 32 and config.vocab_size == member["vocab_size"]
    assert config.tie_word_embeddings is True


def test_from_members_refuses_other_models(trained_model):
    with pytest.raises(ValueError, match="AttnMTForConditionalGeneration"):
        AttnMTEnsembleForConditionalGeneration.from_members([trained_model, torch.nn.Linear(2, 2)])
