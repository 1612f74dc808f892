"""How finely does a joint tokenizer cut each language? Tokens per sentence and <unk> rate, per vocabulary.

Trains train.py's joint tokenizer (`mt.tokenizer.train_tokenizer`, the same pre-tokenization) on the training
split of some languages of a line-aligned corpus, at each vocabulary size, and encodes the first sentences
of every language of interest. Use it to choose `--vocab_size` when a run adds languages
(`--extra_source_langs`): pick the size at which the main pair is cut as finely as before.

    python benchmarks/tokenizer_granularity.py --train_langs en,de --vocab_sizes 8000
    python benchmarks/tokenizer_granularity.py --train_langs en,de,fr,cs --vocab_sizes 8000 12000 16000

Prints one row per (training languages, vocabulary size) and tokens per sentence (</s> included) per language.
"""

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from mt.data import CorpusSpec, load_split  # noqa: E402
from mt.tokenizer import train_tokenizer  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=str(REPO_ROOT.parent / "shared" / "data" / "multi30k"),
                        help="folder of line-aligned {split}.{lang}[.gz] files (default: ../shared/data/multi30k)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--train_langs", default="en,de", help="comma-separated languages the tokenizer learns")
    parser.add_argument("--measure_langs", default="en,de,fr,cs", help="comma-separated languages to encode")
    parser.add_argument("--vocab_sizes", type=int, nargs="+", default=[8000])
    parser.add_argument("--tokenizer_type", default="bpe", choices=("bpe", "unigram"))
    parser.add_argument("--sentences", type=int, default=3000, help="encode the first N sentences of each language")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def read_language(data_dir: str, split: str, lang: str, other: str) -> list[str]:
    """One language's side of a split (load_split reads pairs; `other` is any second language of the corpus)."""
    pairs = load_split(CorpusSpec(source_lang=lang, target_lang=other, data_dir=data_dir), split)
    return list(pairs["source"])


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    train_langs = [lang.strip() for lang in args.train_langs.split(",") if lang.strip()]
    measure_langs = [lang.strip() for lang in args.measure_langs.split(",") if lang.strip()]
    languages = list(dict.fromkeys(train_langs + measure_langs))
    if len(languages) < 2:
        raise SystemExit("name at least two languages in all (load_split reads pairs)")
    text = {lang: read_language(args.data_dir, args.split, lang, next(o for o in languages if o != lang))
            for lang in languages}
    rows = []
    for vocab_size in args.vocab_sizes:
        tokenizer = train_tokenizer((s for lang in train_langs for s in text[lang]), vocab_size=vocab_size,
                                    model=args.tokenizer_type)
        row = {"train_langs": train_langs, "vocab_size": vocab_size, "tokens_per_sentence": {}, "unk_per_sentence": {}}
        for lang in measure_langs:
            ids = tokenizer(text[lang][:args.sentences])["input_ids"]
            row["tokens_per_sentence"][lang] = sum(map(len, ids)) / len(ids)
            row["unk_per_sentence"][lang] = sum(x.count(tokenizer.unk_token_id) for x in ids) / len(ids)
        rows.append(row)
        cells = " | ".join(f"{lang} {row['tokens_per_sentence'][lang]:.1f}"
                           + (f" ({row['unk_per_sentence'][lang]:.2f} <unk>)" if row["unk_per_sentence"][lang] else "")
                           for lang in measure_langs)
        print(f"{args.tokenizer_type} {vocab_size:>6} over {'+'.join(train_langs):<12} tokens/sentence: {cells}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
