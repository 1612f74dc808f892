"""chrF / chrF++ as a local `evaluate` metric: the Hub's `chrf` module plus the sacreBLEU signature.

Load it offline by path, from the repository root:

    >>> import evaluate
    >>> chrf = evaluate.load("metrics/chrf")
    >>> chrf.compute(predictions=["a dog runs ."], references=[["a dog runs ."]])["score"]
    100.0

The numbers are those of `sacrebleu.corpus_chrf` (and of the Hub module `evaluate.load("chrf")`); the extra
`signature` key, e.g. `nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0`, tells how they were computed.

This file is self-contained on purpose: `evaluate` copies the module file alone into its cache.
"""

import datasets
import evaluate
from sacrebleu.metrics import CHRF

_CITATION = """\
@inproceedings{popovic-2015-chrf,
    title = "chr{F}: character n-gram {F}-score for automatic {MT} evaluation",
    author = "Popovi{\\'c}, Maja",
    booktitle = "Proceedings of the Tenth Workshop on Statistical Machine Translation",
    year = "2015",
    address = "Lisbon, Portugal",
    url = "https://aclanthology.org/W15-3049",
    pages = "392--395",
}
"""

_DESCRIPTION = """\
chrF: the F-score of character n-gram matches between detokenized hypotheses and references (chrF++ when word
n-grams are added with word_order=2), computed by sacreBLEU. Robust to morphology and needs no tokenizer.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): detokenized system outputs, one per segment.
    references (`list` of `list` of `str`, or `list` of `str`): the references of each prediction; every
        prediction needs the same number of references. A flat list means one reference per prediction.
    char_order (`int`): character n-gram order. Defaults to 6.
    word_order (`int`): word n-gram order; 2 gives chrF++. Defaults to 0.
    beta (`int`): weight of recall relative to precision. Defaults to 2.
    lowercase (`bool`): case-insensitive scoring. Defaults to False.
    whitespace (`bool`): keep whitespace in character n-grams. Defaults to False.
    eps_smoothing (`bool`): epsilon smoothing as in chrF++.py, NLTK and Moses. Defaults to False.

Returns:
    score (`float`, 0-100), char_order, word_order, beta, signature (`str`).

Example:
    >>> chrf = evaluate.load("metrics/chrf")
    >>> chrf.compute(predictions=["The cat sat."], references=[["The cat sat."]])["score"]
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
        raise ValueError("chrF needs the same number of references for every prediction.")
    return [[refs[i] for refs in references] for i in range(per_prediction)]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ChrF(evaluate.Metric):
    """chrF(++) with sacreBLEU, identical to the Hub's `chrf` module, plus the signature."""

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
            reference_urls=["https://aclanthology.org/W15-3049", "https://aclanthology.org/W17-4770"],
        )

    def _compute(
        self,
        predictions,
        references,
        char_order: int = CHRF.CHAR_ORDER,
        word_order: int = CHRF.WORD_ORDER,
        beta: int = CHRF.BETA,
        lowercase: bool = False,
        whitespace: bool = False,
        eps_smoothing: bool = False,
    ):
        chrf = CHRF(
            char_order=char_order,
            word_order=word_order,
            beta=beta,
            lowercase=lowercase,
            whitespace=whitespace,
            eps_smoothing=eps_smoothing,
        )
        output = chrf.corpus_score(list(predictions), _references_by_stream(list(references)))
        return {
            "score": output.score,
            "char_order": output.char_order,
            "word_order": output.word_order,
            "beta": output.beta,
            "signature": str(chrf.get_signature()),
        }
