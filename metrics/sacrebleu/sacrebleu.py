"""SacreBLEU as a local `evaluate` metric: the Hub's `sacrebleu` module plus the sacreBLEU signature.

Load it offline by path, from the repository root:

    >>> import evaluate
    >>> bleu = evaluate.load("metrics/sacrebleu")
    >>> bleu.compute(predictions=["a dog runs ."], references=[["a dog runs ."]])["score"]
    100.0

The numbers are those of `sacrebleu.corpus_bleu` (and of the Hub module `evaluate.load("sacrebleu")`, which
wraps the same function); the extra `signature` key tells how they were computed, e.g.
`nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0`. Report it beside every score: BLEU values
computed with another tokenizer, casing or smoothing are not comparable.

This file is self-contained on purpose: `evaluate` copies the module file alone into its cache.
"""

import datasets
import evaluate
from sacrebleu.metrics import BLEU

_CITATION = """\
@inproceedings{post-2018-call,
    title = "A Call for Clarity in Reporting {BLEU} Scores",
    author = "Post, Matt",
    booktitle = "Proceedings of the Third Conference on Machine Translation: Research Papers",
    year = "2018",
    address = "Belgium, Brussels",
    publisher = "Association for Computational Linguistics",
    url = "https://www.aclweb.org/anthology/W18-6319",
    pages = "186--191",
}
"""

_DESCRIPTION = """\
Corpus BLEU computed by sacreBLEU on detokenized text, with sacreBLEU's own tokenization, so that scores are
comparable across papers and toolkits. Returns the score, its sufficient statistics and the sacreBLEU signature.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): detokenized system outputs, one per segment.
    references (`list` of `list` of `str`, or `list` of `str`): the references of each prediction; every
        prediction needs the same number of references. A flat list means one reference per prediction.
    smooth_method (`str`): "exp" (default), "floor", "add-k" or "none".
    smooth_value (`float`): the value for "floor" (default 0.1) or "add-k" (default 1).
    tokenize (`str`): sacreBLEU tokenizer: "13a" (default), "intl", "zh", "ja-mecab", "ko-mecab", "char",
        "flores101", "flores200" or "none".
    lowercase (`bool`): case-insensitive BLEU. Defaults to False.
    force (`bool`): do not warn when the input looks already tokenized. Defaults to False.
    use_effective_order (`bool`): leave out n-gram orders with no match (for sentence-level BLEU). Defaults to False.

Returns:
    score (`float`, 0-100), counts, totals, precisions (`list`s over n-gram orders 1-4), bp (brevity penalty),
    sys_len, ref_len, signature (`str`).

Example:
    >>> bleu = evaluate.load("metrics/sacrebleu")
    >>> result = bleu.compute(predictions=["hello there general kenobi", "foo bar foobar"],
    ...                       references=[["hello there general kenobi"], ["foo bar foobar"]])
    >>> result["score"]
    100.0
"""


def _references_by_stream(references: list) -> list[list[str]]:
    """Turn per-prediction references ([[r1a, r1b], [r2a, r2b]] or [r1, r2]) into sacreBLEU's reference
    streams ([[r1a, r2a], [r1b, r2b]])."""
    if not references:
        return []
    if isinstance(references[0], str):
        references = [[reference] for reference in references]
    per_prediction = len(references[0])
    if any(len(refs) != per_prediction for refs in references):
        raise ValueError("sacreBLEU needs the same number of references for every prediction.")
    return [[refs[i] for refs in references] for i in range(per_prediction)]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Sacrebleu(evaluate.Metric):
    """Corpus BLEU with sacreBLEU, identical to the Hub's `sacrebleu` module, plus the signature."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            homepage="https://github.com/mjpost/sacrebleu",
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Sequence(datasets.Value("string", id="sequence"), id="references"),
                    }
                ),
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Value("string", id="sequence"),
                    }
                ),
            ],
            codebase_urls=["https://github.com/mjpost/sacrebleu"],
            reference_urls=["https://aclanthology.org/W18-6319"],
        )

    def _compute(
        self,
        predictions,
        references,
        smooth_method: str = "exp",
        smooth_value: float | None = None,
        force: bool = False,
        lowercase: bool = False,
        tokenize: str | None = None,
        use_effective_order: bool = False,
    ):
        bleu = BLEU(
            lowercase=lowercase,
            force=force,
            tokenize=tokenize,
            smooth_method=smooth_method,
            smooth_value=smooth_value,
            effective_order=use_effective_order,
        )
        output = bleu.corpus_score(list(predictions), _references_by_stream(list(references)))
        return {
            "score": output.score,
            "counts": output.counts,
            "totals": output.totals,
            "precisions": output.precisions,
            "bp": output.bp,
            "sys_len": output.sys_len,
            "ref_len": output.ref_len,
            "signature": str(bleu.get_signature()),
        }
