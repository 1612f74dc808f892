"""benchmarks/reverse_rescoring.py: the per-token log-probabilities it ranks by, the λ rule, and the script end to
end on a tiny checkpoint (λ = 0 must be beam search itself)."""

import json
import sys

import pytest
import torch
from torch.nn import functional as F

from conftest import REPO_ROOT
from eval import evaluate_split, load_corpus
from eval_fixtures import MULTI30K, save_checkpoint
from mt.data import CorpusSpec
from mt.scoring import load_metrics

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import reverse_rescoring  # noqa: E402


def test_mean_log_probs_equal_one_pair_at_a_time(trained_model, tokenizer, sources):
    """Batched and padded, each pair's score is its own sum of log p(token) over the target tokens (end of sentence
    included) divided by their number, computed here alone, without padding, by F.cross_entropy."""
    targets = ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee auf einer Wiese.", "Hallo", ""]
    batched = reverse_rescoring.mean_log_probs(trained_model, tokenizer, sources, targets, batch_size=3)
    assert batched.shape == (4,)
    for source, target, score in zip(sources, targets, batched):
        encoded = tokenizer([source], text_target=[target], return_tensors="pt")
        labels = encoded.pop("labels")
        with torch.no_grad():
            logits = trained_model(**encoded, decoder_input_ids=trained_model.prepare_decoder_input_ids_from_labels(labels)).logits
        expected = -F.cross_entropy(logits[0], labels[0], reduction="mean")
        assert score.item() == pytest.approx(expected.item(), abs=1e-5)
    assert (batched < 0).all()


def test_rerank_weighs_the_two_directions():
    candidates = [["a", "b", "c"], ["x", "y"]]
    forward = [torch.tensor([-1.0, -1.2, -3.0]), torch.tensor([-0.5, -0.5])]
    reverse = [torch.tensor([-4.0, -1.0, -0.5]), torch.tensor([-2.0, -2.0])]
    assert reverse_rescoring.rerank(candidates, forward, reverse, 0.0) == ["a", "x"]  # beam order on ties
    assert reverse_rescoring.rerank(candidates, forward, reverse, 0.5) == ["b", "x"]  # -1.1 beats -2.5 and -1.75
    assert reverse_rescoring.rerank(candidates, forward, reverse, 1.0) == ["c", "x"]
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        reverse_rescoring.rerank(candidates, forward, reverse, 1.5)


def test_script_tunes_on_validation_and_reports_test(trained_model, tokenizer, tmp_path):
    folder = save_checkpoint(trained_model, tokenizer, tmp_path / "model")
    out = tmp_path / "rescoring.json"
    results = reverse_rescoring.main([str(folder), "--data_dir", str(MULTI30K), "--source_lang", "en",
                                      "--target_lang", "de", "--max_samples", "8", "--num_beams", "3",
                                      "--weights", "0.3", "0.6", "--max_new_tokens", "20", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert set(results["tuned"]) == {"0.0", "0.3", "0.6"}  # λ = 0 (beam search) is always in the grid
    chosen = results["chosen_weight"]
    assert results["tuned"][str(chosen)]["bleu"] == max(row["bleu"] for row in results["tuned"].values())
    assert set(results["test"]) == {"0.0", str(chosen)}

    # λ = 0 is the top of the n-best, i.e. plain beam search with the same settings.
    spec = CorpusSpec(source_lang="en", target_lang="de", data_dir=str(MULTI30K))
    baseline, _ = evaluate_split(trained_model, tokenizer, load_corpus(spec, "val", 8), load_metrics("local"),
                                 num_beams=3, max_new_tokens=20, progress=False)
    assert results["tuned"]["0.0"]["bleu"] == pytest.approx(baseline["bleu"])
    assert results["tuned"]["0.0"]["chrf"] == pytest.approx(baseline["chrf"])


def test_script_refuses_bad_weights_and_a_one_candidate_beam(tmp_path):
    with pytest.raises(SystemExit):
        reverse_rescoring.parse_args([str(tmp_path), "--source_lang", "en", "--target_lang", "de", "--weights", "1.2"])
    with pytest.raises(SystemExit):
        reverse_rescoring.parse_args([str(tmp_path), "--source_lang", "en", "--target_lang", "de", "--num_beams", "1"])
