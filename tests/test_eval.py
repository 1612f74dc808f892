"""mt.scoring.translate and eval.py end to end: our checkpoint, a Marian one, two processes, the model card, and
clear one-line errors for bad input."""

import json
import runpy
import sys

import pytest
import sacrebleu
import torch
from huggingface_hub import ModelCard

import eval as eval_script
from conftest import tiny_model
from eval_fixtures import (
    EVAL_SCRIPT,
    MULTI30K,
    SLICE_SIZE,
    accelerate_launcher,
    multi30k_lines,
    run_eval,
    save_bert_checkpoint,
    save_checkpoint,
    save_gpt2_checkpoint,
    tiny_marian,
    write_jsonl,
)
from mt.scoring import translate

DECODING = ["--num_beams", "2", "--max_new_tokens", "16"]
EXISTING_CARD = "---\nlicense: apache-2.0\n---\n\n# Tiny AttnMT\n\nA test checkpoint; this paragraph must survive.\n"


@pytest.fixture(scope="module")
def val_slice() -> dict[str, list[str]]:
    return {lang: multi30k_lines("val", lang, SLICE_SIZE) for lang in ("en", "de")}


@pytest.fixture(scope="module")
def attnmt_checkpoint(tmp_path_factory, _trained_state, tokenizer):
    """The briefly trained tiny AttnMT (conftest) exported with save_pretrained, plus an existing model card."""
    model = tiny_model(seed=1)
    model.load_state_dict(_trained_state)
    folder = save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("attnmt"))
    (folder / "README.md").write_text(EXISTING_CARD)
    return folder


def data_args(split: str = "val", source_lang: str = "en", target_lang: str = "de") -> list[str]:
    return ["--data_dir", str(MULTI30K), "--source_lang", source_lang, "--target_lang", target_lang, "--split", split]


def sacrebleu_scores(hypotheses: list[str], references: list[str]) -> dict:
    return {
        "bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
        "bleu_lowercase": sacrebleu.corpus_bleu(hypotheses, [references], lowercase=True).score,
        "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score,
    }


def read_hypotheses(output_dir) -> list[str]:
    return (output_dir / "hypotheses.txt").read_text(encoding="utf-8").split("\n")[:-1]


# --------------------------------------------------------------------------------------------------
# translate()
# --------------------------------------------------------------------------------------------------


def test_translate_restores_order_and_equals_per_sentence_generation(trained_model, tokenizer, val_slice):
    sources = val_slice["en"][:9]
    assert len({len(tokenizer(s).input_ids) for s in sources}) > 3  # lengths differ, so sorting reorders them
    calls = []
    original_generate = trained_model.generate

    def recording_generate(**kwargs):
        calls.append({"training": trained_model.training, "inference_mode": torch.is_inference_mode_enabled(),
                      "batch": kwargs["input_ids"].shape[0], "options": sorted(set(kwargs) - {"input_ids",
                                                                                          "attention_mask"})})
        return original_generate(**kwargs)

    trained_model.generate = recording_generate
    trained_model.train()
    hypotheses = translate(trained_model, tokenizer, sources, batch_size=4, num_beams=2, max_new_tokens=16,
                           progress=False)
    assert trained_model.training  # the previous mode is restored
    assert [call["batch"] for call in calls] == [4, 4, 1]
    assert all(not call["training"] and call["inference_mode"] for call in calls)
    assert all(call["options"] == ["max_new_tokens", "num_beams"] for call in calls)
    trained_model.generate = original_generate
    trained_model.eval()

    expected = []
    for source in sources:
        ids = trained_model.generate(**tokenizer([source], return_tensors="pt"), num_beams=2, max_new_tokens=16)
        expected.append(tokenizer.batch_decode(ids, skip_special_tokens=True)[0])
    assert hypotheses == expected
    assert len(set(hypotheses)) > 3  # distinct outputs: a wrong order would be seen
    assert not trained_model.training


def test_translate_leaves_unset_options_to_the_generation_config(trained_model, tokenizer, val_slice):
    sources = val_slice["en"][:3]
    seen = []
    original_generate = trained_model.generate

    def recording_generate(**kwargs):
        seen.append(sorted(set(kwargs) - {"input_ids", "attention_mask"}))
        return original_generate(**kwargs)

    trained_model.generate = recording_generate
    trained_model.generation_config.num_beams = 1
    trained_model.generation_config.max_length = 12
    default = translate(trained_model, tokenizer, sources, progress=False)
    assert seen == [[]]
    trained_model.generate = original_generate
    greedy = tokenizer.batch_decode(trained_model.generate(**tokenizer(sources, return_tensors="pt", padding=True)),
                                    skip_special_tokens=True)
    assert default == greedy
    assert translate(trained_model, tokenizer, [], progress=False) == []


# --------------------------------------------------------------------------------------------------
# eval.py end to end
# --------------------------------------------------------------------------------------------------


def test_eval_attnmt_checkpoint_end_to_end(attnmt_checkpoint, val_slice, tmp_path):
    output_dir = tmp_path / "eval"
    completed = run_eval(["--model_name_or_path", str(attnmt_checkpoint), *data_args(), "--max_samples",
                          str(SLICE_SIZE), *DECODING, "--batch_size", "8", "--output_dir", str(output_dir),
                          "--update_model_card", "--plot_attention", "1", "--no_progress"])
    assert completed.returncode == 0, completed.stderr[-4000:]

    hypotheses = read_hypotheses(output_dir)
    assert len(hypotheses) == SLICE_SIZE
    assert sum(bool(h.strip()) for h in hypotheses) >= SLICE_SIZE // 2  # the trained model says something

    # The same translations as translate() on the checkpoint loaded in this process, in corpus order.
    model, tokenizer = eval_script.load_model_and_tokenizer(str(attnmt_checkpoint))
    assert model.config.model_type == "attnmt" and type(model).__name__ == "AttnMTForConditionalGeneration"
    assert hypotheses == translate(model, tokenizer, val_slice["en"], batch_size=8, num_beams=2, max_new_tokens=16,
                                   progress=False)

    results = json.loads((output_dir / "results.json").read_text())
    expected = sacrebleu_scores(hypotheses, val_slice["de"])
    for key, value in expected.items():
        assert results[key] == pytest.approx(value, abs=1e-9)
    assert results["num_sentences"] == SLICE_SIZE
    assert results["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert "case:lc" in results["bleu_lowercase_signature"] and "nc:6|nw:0" in results["chrf_signature"]
    assert results["decoding"] == {"num_beams": 2, "length_penalty": model.generation_config.length_penalty,
                                   "max_new_tokens": 16, "max_length": None, "max_source_length": None, "batch_size": 8}
    assert (results["split"], results["source_lang"], results["target_lang"]) == ("val", "en", "de")
    assert results["num_processes"] == 1

    summary = [line for line in completed.stderr.splitlines() if "lowercased BLEU" in line]
    assert len(summary) == 1
    assert f"BLEU {results['bleu']:.2f}" in summary[0] and f"chrF {results['chrf']:.2f}" in summary[0]
    assert results["bleu_signature"] in summary[0] and results["chrf_signature"] in summary[0]

    # --update_model_card: model-index metadata, the card's text and other metadata kept.
    card = ModelCard.load(attnmt_checkpoint / "README.md")
    assert "this paragraph must survive" in card.text
    assert card.data.license == "apache-2.0"
    by_name = {r.metric_name: r for r in card.data.eval_results}
    assert set(by_name) == {"bleu (val)", "bleu_lowercase (val)", "chrf (val)"}
    assert [by_name[n].metric_type for n in ("bleu (val)", "bleu_lowercase (val)", "chrf (val)")] == [
        "bleu", "bleu", "chrf"]
    assert by_name["bleu (val)"].metric_value == round(results["bleu"], 2)
    assert by_name["chrf (val)"].metric_value == round(results["chrf"], 2)
    assert by_name["bleu (val)"].metric_config == results["bleu_signature"]
    assert all(r.task_type == "translation" and r.dataset_split == "val" and r.dataset_type == "Multi30k (task 1)"
               for r in card.data.eval_results)
    model_index = card.data.to_dict()["model-index"]
    assert model_index[0]["results"][0]["task"]["type"] == "translation"

    # --plot_attention 1: the first sentence's heatmaps, as PNG files.
    plots = sorted(p.name for p in (output_dir / "attention").iterdir())
    layers = model.config.decoder_layers
    assert plots == sorted([f"sentence00_cross_layer{i}.png" for i in range(layers)]
                           + [f"sentence00_encoder_layer{i}.png" for i in range(model.config.encoder_layers)]
                           + ["sentence00_average.png"])
    assert all((output_dir / "attention" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in plots)


def test_eval_marian_checkpoint(tokenizer, val_slice, tmp_path):
    checkpoint = save_checkpoint(tiny_marian(tokenizer), tokenizer, tmp_path / "marian")
    output_dir = tmp_path / "eval"
    completed = run_eval(["--model_name_or_path", str(checkpoint), *data_args(), "--max_samples", str(SLICE_SIZE),
                          "--output_dir", str(output_dir), "--no_progress", "--no-trust_remote_code"])
    assert completed.returncode == 0, completed.stderr[-4000:]
    results = json.loads((output_dir / "results.json").read_text())
    hypotheses = read_hypotheses(output_dir)
    assert results["model_type"] == "marian"
    assert results["num_sentences"] == len(hypotheses) == SLICE_SIZE
    assert results["bleu"] == pytest.approx(sacrebleu_scores(hypotheses, val_slice["de"])["bleu"], abs=1e-9)
    assert results["decoding"]["num_beams"] == 1 and results["decoding"]["max_length"] == 24

    model, marian_tokenizer = eval_script.load_model_and_tokenizer(str(checkpoint), trust_remote_code=False)
    assert type(model).__name__ == "MarianMTModel"
    assert hypotheses == translate(model, marian_tokenizer, val_slice["en"], progress=False)


def test_eval_two_processes_score_each_sentence_once(attnmt_checkpoint, tmp_path):
    """accelerate launch --multi_gpu --num_processes 2 ... --cpu: 19 sentences in batches of 4 are split unevenly
    (accelerate repeats some to even out the last round); each must be scored once, in corpus order."""
    size = SLICE_SIZE - 1
    output_dir = tmp_path / "eval"
    completed = run_eval(["--model_name_or_path", str(attnmt_checkpoint), *data_args(), "--max_samples", str(size),
                          *DECODING, "--batch_size", "4", "--output_dir", str(output_dir), "--cpu", "--no_progress"],
                         launcher=accelerate_launcher(2))
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "| 2 processes (DistributedType.MULTI_CPU)" in completed.stderr
    results = json.loads((output_dir / "results.json").read_text())
    hypotheses = read_hypotheses(output_dir)
    assert results["num_processes"] == 2
    assert results["num_sentences"] == len(hypotheses) == size

    sources = multi30k_lines("val", "en", size)
    references = multi30k_lines("val", "de", size)
    model, tokenizer = eval_script.load_model_and_tokenizer(str(attnmt_checkpoint))
    assert hypotheses == translate(model, tokenizer, sources, batch_size=4, num_beams=2, max_new_tokens=16,
                                   progress=False)
    assert results["bleu"] == pytest.approx(sacrebleu_scores(hypotheses, references)["bleu"], abs=1e-9)


# --------------------------------------------------------------------------------------------------
# The model card
# --------------------------------------------------------------------------------------------------


def card_results(split: str, bleu: float) -> dict:
    return {"dataset": "Multi30k (task 1)", "split": split, "source_lang": "en", "target_lang": "de",
            "bleu": bleu, "bleu_signature": "sig-bleu", "bleu_lowercase": bleu + 1,
            "bleu_lowercase_signature": "sig-lc", "chrf": 50.0, "chrf_signature": "sig-chrf"}


def test_update_model_card_replaces_same_split_and_keeps_others(tmp_path):
    (tmp_path / "README.md").write_text(EXISTING_CARD)
    eval_script.update_model_card(tmp_path, card_results("val", 10.0))
    eval_script.update_model_card(tmp_path, card_results("test_2016_flickr", 20.0))
    eval_script.update_model_card(tmp_path, card_results("val", 12.345))  # re-scored: replaces, not duplicates
    card = ModelCard.load(tmp_path / "README.md")
    values = {(r.dataset_split, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert values == {
        ("test_2016_flickr", "bleu (test_2016_flickr)"): 20.0,
        ("test_2016_flickr", "bleu_lowercase (test_2016_flickr)"): 21.0,
        ("test_2016_flickr", "chrf (test_2016_flickr)"): 50.0,
        ("val", "bleu (val)"): 12.35,
        ("val", "bleu_lowercase (val)"): 13.35,
        ("val", "chrf (val)"): 50.0,
    }
    assert "this paragraph must survive" in card.text and card.data.license == "apache-2.0"


def test_update_model_card_creates_a_card(tmp_path):
    readme = eval_script.update_model_card(tmp_path, card_results("val", 5.0))
    card = ModelCard.load(readme)
    assert card.data.model_name == tmp_path.name
    assert sorted(r.metric_type for r in card.data.eval_results) == ["bleu", "bleu", "chrf"]


# --------------------------------------------------------------------------------------------------
# Bad input: exit code 1 and one line "error: ..." naming the problem
# --------------------------------------------------------------------------------------------------


def test_cli_missing_checkpoint_exits_with_one_line_error(monkeypatch, capsys, tmp_path):
    """`python eval.py ...` as a script (run in this process with runpy): exit status 1, no traceback."""
    missing = tmp_path / "missing"
    monkeypatch.setattr(sys, "argv", ["eval.py", "--model_name_or_path", str(missing), *data_args()])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(EVAL_SCRIPT), run_name="__main__")
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == (
        f"error: checkpoint folder {missing} does not exist (--model_name_or_path takes a local folder or a Hub id).\n")


def test_unreachable_hub_id_gets_a_clear_error(monkeypatch, tmp_path):
    """A name that is no local folder is tried as a Hub id; offline that fails with a message saying so."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="not a local folder and could not be fetched from the Hub.*Offline"):
        eval_script.load_model_and_tokenizer("someone/no-such-model")


@pytest.fixture(scope="module")
def not_seq2seq_checkpoints(tmp_path_factory, tokenizer) -> dict:
    root = tmp_path_factory.mktemp("not_seq2seq")
    return {"gpt2": save_gpt2_checkpoint(tokenizer, root / "gpt2"), "bert": save_bert_checkpoint(tokenizer, root / "bert")}


def run_main(capsys, args: list[str]) -> tuple[int, str]:
    code = eval_script.main(args)
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("model_type", ["gpt2", "bert"])
def test_not_seq2seq_checkpoint_is_refused(capsys, not_seq2seq_checkpoints, model_type):
    folder = not_seq2seq_checkpoints[model_type]
    code, err = run_main(capsys, ["--model_name_or_path", str(folder), *data_args()])
    assert code == 1
    assert err.count("\n") == 1 and err.startswith(f"error: {folder}: config is {model_type}, not an encoder-decoder")


BAD_DATA = {
    "unknown split": (data_args(split="dev"), "No file dev.en (or dev.en.gz)"),
    "unknown target language": (data_args(target_lang="xx"), "No file val.xx (or val.xx.gz)"),
    "missing data_dir": (["--data_dir", "/nonexistent/multi30k", "--source_lang", "en", "--target_lang", "de"],
                         "--data_dir /nonexistent/multi30k does not exist"),
}


@pytest.mark.parametrize("problem", BAD_DATA)
def test_bad_data_arguments_give_one_line_errors(capsys, attnmt_checkpoint, problem):
    args, message = BAD_DATA[problem]
    code, err = run_main(capsys, ["--model_name_or_path", str(attnmt_checkpoint), *args])
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_json_corpus_without_the_language_or_split(capsys, attnmt_checkpoint, val_slice, tmp_path):
    test_file = write_jsonl(tmp_path / "test.jsonl", val_slice["en"][:3], val_slice["de"][:3])
    base = ["--model_name_or_path", str(attnmt_checkpoint), "--test_file", str(test_file), "--source_lang", "en"]
    code, err = run_main(capsys, [*base, "--target_lang", "fr"])
    assert code == 1 and "the translation column has languages ['de', 'en'], not ['fr']" in err
    code, err = run_main(capsys, [*base, "--target_lang", "de", "--split", "validation"])
    assert code == 1 and err == "error: No --validation_file given for the validation split.\n"
    dataset = eval_script.load_corpus(eval_script.corpus_spec(eval_script.parse_args([*base, "--target_lang", "de"])),
                                      "test", max_samples=2)
    assert dataset["source"] == val_slice["en"][:2] and dataset["target"] == val_slice["de"][:2]


def test_parse_args_types():
    args = eval_script.parse_args(["--model_name_or_path", "m", "--source_lang", "en", "--target_lang", "de",
                                   "--num_beams", "3", "--length_penalty", "0.6", "--plot_attention", "2", "--cpu"])
    assert (args.num_beams, args.length_penalty, args.plot_attention, args.cpu, args.split) == (3, 0.6, 2, True, "test")
    assert args.trust_remote_code is True and args.update_model_card is False and args.metric_source == "local"
    for bad in (["--num_beams", "0"], ["--batch_size", "-1"], ["--metric_source", "web"], ["--plot_attention", "x"]):
        with pytest.raises(SystemExit):
            eval_script.parse_args(["--model_name_or_path", "m", "--source_lang", "en", "--target_lang", "de", *bad])



def test_language_pair_defaults_to_the_one_the_checkpoint_was_trained_on(tmp_path, capsys):
    (tmp_path / "all_results.json").write_text(json.dumps({"config": {"source_lang": "en", "target_lang": "fr"}}))
    args = eval_script.parse_args(["--model_name_or_path", str(tmp_path)])
    assert (args.source_lang, args.target_lang) == ("en", "fr")
    args = eval_script.parse_args(["--model_name_or_path", str(tmp_path), "--target_lang", "de"])  # a flag wins
    assert (args.source_lang, args.target_lang) == ("en", "de")
    for folder in (tmp_path / "elsewhere", "Helsinki-NLP/opus-mt-en-de"):  # no record: the flags are needed
        with pytest.raises(SystemExit):
            eval_script.parse_args(["--model_name_or_path", str(folder), "--source_lang", "en"])
        assert "--source_lang and --target_lang are required" in capsys.readouterr().err


def test_multi_process_launch_without_a_process_group_is_refused(monkeypatch):
    """`accelerate launch --multi_gpu --num_processes 2` on a machine without GPUs and without --cpu starts two
    lone processes (hf5-notes §J): each would score the whole split. eval.py must refuse instead."""

    class LoneAccelerator:
        num_processes = 1

        def __init__(self, cpu: bool):
            self.cpu = cpu

    monkeypatch.setattr(eval_script, "Accelerator", LoneAccelerator)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="2 processes were launched but each one runs alone.*--cpu"):
        eval_script.build_accelerator(cpu=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert eval_script.build_accelerator(cpu=False).cpu is False
