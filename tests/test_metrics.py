"""The local `evaluate` modules in metrics/ and mt.scoring.score_translations give sacreBLEU's numbers exactly."""

import json
import subprocess
import sys

import pytest
import sacrebleu
from sacrebleu.metrics import BLEU, CHRF

from eval_fixtures import subprocess_env
from mt.scoring import METRICS_DIR, load_metrics, score_translations

HYPOTHESES = ["The cat sat on the mat.", "A man is riding a bicycle down the street.", "Two dogs play in snow"]
REFERENCES = ["The cat sat on the mat.", "A man rides his bike along the road.", "Two dogs are playing in the snow."]


@pytest.fixture(scope="module")
def metrics():
    return load_metrics("local")


def signature(metric, hypotheses: list[str], references: list[str]) -> str:
    """sacreBLEU's own signature for `metric` (BLEU(...) or CHRF(...)) on one reference stream."""
    metric.corpus_score(hypotheses, [references])
    return str(metric.get_signature())


def bleu_stats(result) -> dict:
    """sacreBLEU's BLEUScore (or a module's dict) as the dict the Hub module returns, without the signature."""
    if isinstance(result, dict):
        return {key: result[key] for key in ("score", "counts", "totals", "precisions", "bp", "sys_len", "ref_len")}
    return {"score": result.score, "counts": result.counts, "totals": result.totals, "precisions": result.precisions,
            "bp": result.bp, "sys_len": result.sys_len, "ref_len": result.ref_len}


BLEU_CASES = {
    "typical": (HYPOTHESES, REFERENCES, {}),
    "identical": (REFERENCES, REFERENCES, {}),
    "empty_hypotheses": (["", "", ""], REFERENCES, {}),
    "one_empty_hypothesis": (["", HYPOTHESES[1], HYPOTHESES[2]], REFERENCES, {}),
    "unicode": (["Ein Mädchen läuft über die Straße 🚲.", "Zwei Hunde spielen im Schnee"],
                ["Ein Mädchen rennt über die Straße 🚲.", "Zwei Hunde spielen im Schnee."], {}),
    "chinese_zh_tokenizer": (["猫坐在垫子上。", "今天天气很好"], ["猫坐在垫子上。", "今天的天气很好。"], {"tokenize": "zh"}),
    "lowercase": (["THE CAT SAT ON THE MAT.", "a MAN is riding"], ["The cat sat on the mat.", "A man is riding"],
                  {"lowercase": True}),
    "char_tokenizer_floor_smoothing": (HYPOTHESES, REFERENCES, {"tokenize": "char", "smooth_method": "floor",
                                                                "smooth_value": 0.2}),
    "no_smoothing_effective_order": (["a b c"], ["a b d"], {"smooth_method": "none", "use_effective_order": True}),
    "add_k": (HYPOTHESES, REFERENCES, {"smooth_method": "add-k", "smooth_value": 2, "tokenize": "intl"}),
}


@pytest.mark.parametrize("case", BLEU_CASES)
def test_sacrebleu_module_equals_corpus_bleu(metrics, case):
    hypotheses, references, options = BLEU_CASES[case]
    result = metrics["sacrebleu"].compute(predictions=hypotheses, references=[[r] for r in references], **options)
    expected = sacrebleu.corpus_bleu(hypotheses, [references], **options)
    assert bleu_stats(result) == bleu_stats(expected)
    signature_options = {("effective_order" if k == "use_effective_order" else k): v for k, v in options.items()}
    assert result["signature"] == signature(BLEU(**signature_options), hypotheses, references)


def test_sacrebleu_edge_values(metrics):
    bleu = metrics["sacrebleu"]
    assert bleu.compute(predictions=REFERENCES, references=REFERENCES)["score"] == pytest.approx(100.0)
    empty = bleu.compute(predictions=["", "", ""], references=REFERENCES)
    assert (empty["score"], empty["sys_len"], empty["bp"]) == (0.0, 0, 0.0)
    cased = bleu.compute(predictions=["the cat sat on the mat ."], references=["The Cat sat on the mat ."])
    lowercased = bleu.compute(predictions=["the cat sat on the mat ."], references=["The Cat sat on the mat ."],
                              lowercase=True)
    assert cased["score"] < 99.0
    assert lowercased["score"] == pytest.approx(100.0)
    assert "case:lc" in lowercased["signature"] and "case:mixed" in cased["signature"]


def test_sacrebleu_hub_example_and_multiple_references(metrics):
    """The example of the Hub module's card (two references per prediction): 39.8."""
    predictions = ["hello there general kenobi", "on our way to ankh morpork"]
    references = [["hello there general kenobi", "hello there !"], ["goodbye ankh morpork", "ankh morpork"]]
    result = metrics["sacrebleu"].compute(predictions=predictions, references=references)
    assert round(result["score"], 1) == 39.8
    assert result["counts"] == [6, 4, 2, 1] and result["totals"] == [10, 8, 6, 4]
    assert result["signature"].startswith("nrefs:2|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    with pytest.raises(ValueError, match="same number of references"):
        metrics["sacrebleu"].compute(predictions=predictions, references=[["a", "b"], ["c"]])


def test_flat_references_equal_nested(metrics):
    for name in ("sacrebleu", "chrf"):
        flat = metrics[name].compute(predictions=HYPOTHESES, references=REFERENCES)
        nested = metrics[name].compute(predictions=HYPOTHESES, references=[[r] for r in REFERENCES])
        assert flat == nested


CHRF_CASES = {
    "default": {},
    "chrf_plus_plus": {"word_order": 2},
    "lowercase": {"lowercase": True, "word_order": 2},
    "beta_1": {"beta": 1, "char_order": 4},
    "whitespace": {"whitespace": True},
    "eps_smoothing": {"eps_smoothing": True},
}


@pytest.mark.parametrize("case", CHRF_CASES)
def test_chrf_module_equals_sacrebleu(metrics, case):
    options = CHRF_CASES[case]
    hypotheses = HYPOTHESES + ["", "Ein Mädchen läuft über die Straße."]
    references = REFERENCES + ["Something", "Ein Mädchen rennt über die Straße."]
    result = metrics["chrf"].compute(predictions=hypotheses, references=references, **options)
    chrf = CHRF(**options)
    expected = chrf.corpus_score(hypotheses, [references])
    assert result["score"] == expected.score
    assert (result["char_order"], result["word_order"], result["beta"]) == (
        expected.char_order, expected.word_order, expected.beta)
    assert result["signature"] == str(chrf.get_signature())
    if not options.get("lowercase"):
        functional = sacrebleu.corpus_chrf(
            hypotheses, [references], char_order=chrf.char_order, word_order=chrf.word_order, beta=chrf.beta,
            remove_whitespace=not chrf.whitespace, eps_smoothing=chrf.eps_smoothing)
        assert result["score"] == functional.score


def test_chrf_hub_card_examples(metrics):
    """The numbers printed in the Hub `chrf` module's card."""
    predictions = ["The relationship between cats and dogs is not exactly friendly.",
                   "a good bookshop is just a genteel black hole that knows how to read."]
    references = [["The relationship between dogs and cats is not exactly friendly."],
                  ["A good bookshop is just a genteel Black Hole that knows how to read."]]
    chrf = metrics["chrf"]
    assert chrf.compute(predictions=predictions, references=references)["score"] == pytest.approx(84.64214891738334)
    assert chrf.compute(predictions=predictions, references=references, word_order=2)["score"] == pytest.approx(
        82.87263732906315)
    assert chrf.compute(predictions=predictions, references=references, word_order=2, lowercase=True)[
        "score"] == pytest.approx(92.12853119829202)
    assert chrf.compute(predictions=REFERENCES, references=REFERENCES)["score"] == pytest.approx(100.0)


def test_modules_load_by_path_offline_in_a_fresh_process(tmp_path):
    """`evaluate.load(<path>)` with the Hub switched off, from another working directory."""
    code = (
        "import json, evaluate\n"
        f"bleu = evaluate.load({str(METRICS_DIR / 'sacrebleu')!r})\n"
        f"chrf = evaluate.load({str(METRICS_DIR / 'chrf')!r})\n"
        f"args = dict(predictions={HYPOTHESES!r}, references={REFERENCES!r})\n"
        "print(json.dumps({'bleu': bleu.compute(**args), 'chrf': chrf.compute(**args)}))\n"
    )
    env = subprocess_env()
    env.update(HF_EVALUATE_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    completed = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                               timeout=120)
    assert completed.returncode == 0, completed.stderr[-3000:]
    scores = json.loads(completed.stdout.strip().splitlines()[-1])
    assert scores["bleu"]["score"] == sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES]).score
    assert scores["chrf"]["score"] == sacrebleu.corpus_chrf(HYPOTHESES, [REFERENCES]).score
    assert scores["bleu"]["signature"] == signature(BLEU(), HYPOTHESES, REFERENCES)


def test_score_translations_matches_sacrebleu(metrics):
    scores = score_translations(HYPOTHESES, REFERENCES, metrics)
    assert scores == {
        "bleu": sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES]).score,
        "bleu_signature": signature(BLEU(), HYPOTHESES, REFERENCES),
        "bleu_lowercase": sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES], lowercase=True).score,
        "bleu_lowercase_signature": signature(BLEU(lowercase=True), HYPOTHESES, REFERENCES),
        "chrf": sacrebleu.corpus_chrf(HYPOTHESES, [REFERENCES]).score,
        "chrf_signature": signature(CHRF(), HYPOTHESES, REFERENCES),
        "num_sentences": 3,
    }
    assert 0.0 < scores["bleu"] < 100.0
    # The default (metrics=None) loads the same local modules.
    assert score_translations(HYPOTHESES, REFERENCES) == scores


def test_score_translations_lowercase_differs_from_cased(metrics):
    scores = score_translations(["a man is riding a bike ."], ["A Man is riding a bike ."], metrics)
    assert scores["bleu_lowercase"] == pytest.approx(100.0)
    assert scores["bleu"] < 100.0


def test_score_translations_with_modules_without_signature(metrics):
    """The Hub modules return no signature: score_translations fills in sacreBLEU's for the same settings."""

    class WithoutSignature:
        def __init__(self, module):
            self.module = module

        def compute(self, **kwargs):
            result = self.module.compute(**kwargs)
            result.pop("signature")
            return result

    hub_like = {name: WithoutSignature(module) for name, module in metrics.items()}
    assert score_translations(HYPOTHESES, REFERENCES, hub_like) == score_translations(HYPOTHESES, REFERENCES, metrics)


def test_score_translations_rejects_bad_input(metrics):
    with pytest.raises(ValueError, match="3 hypotheses but 2 references"):
        score_translations(HYPOTHESES, REFERENCES[:2], metrics)
    with pytest.raises(ValueError, match="nothing to score"):
        score_translations([], [], metrics)
    with pytest.raises(ValueError, match="metric source"):
        load_metrics("nowhere")

