"""Parallel corpora for any language pair, as `datasets.Dataset`s with two string columns: source, target.

Three layouts are accepted (the same options in train.py and eval.py):

* `dataset_name`: a Hub id or a local dataset folder, loaded with `datasets.load_dataset`. Each example
  holds either a nested `translation` column ({"en": ..., "de": ...}, the WMT/opus layout) or flat
  per-language columns ("en", "de", the layout of the Hub's Multi30k copies).
* `train_file` / `validation_file` / `test_file`: JSON, JSON-lines or CSV files in either column layout.
* `data_dir`: line-aligned plain-text files `{split}.{lang}`, optionally gzipped (`train.en.gz`,
  `train.de.gz`, ...): the layout Multi30k, Moses and most MT corpora ship in.

Misaligned or empty input is an error; blank pairs are dropped and counted, never silently.
"""

import gzip
import logging
from dataclasses import dataclass
from pathlib import Path

import datasets

logger = logging.getLogger(__name__)

MULTI30K_HELP = (
    "Multi30k (task 1) ships as line-aligned files train.{en,de,fr,cs}.gz, val.*.gz, test_2016_flickr.*.gz. "
    "Point --data_dir at a folder holding them (download data/task1/raw from the multi30k/dataset "
    "repository on GitHub), or, online, use the Hub copy: --dataset_name bentrevett/multi30k "
    "--validation_split validation --test_split test."
)


@dataclass
class CorpusSpec:
    """Where a parallel corpus lives and which side is which; exactly one of the three layouts is set."""

    source_lang: str
    target_lang: str
    dataset_name: str | None = None
    dataset_config_name: str | None = None
    data_dir: str | None = None
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None

    def describe(self) -> str:
        where = self.dataset_name or self.data_dir or self.train_file or self.validation_file or self.test_file
        return f"{where} ({self.source_lang}->{self.target_lang})"


def load_split(spec: CorpusSpec, split: str) -> datasets.Dataset:
    """Load one split of a parallel corpus as a Dataset with columns `source` and `target`.

    Args:
        spec: the corpus.
        split: the split's name in that corpus ("train", "val", "validation", "test_2016_flickr", ...);
            for `*_file` layouts, "train", "validation" or "test" select the matching file.

    Raises:
        FileNotFoundError / ValueError with what was found and how to fix it.
    """
    layouts = [spec.dataset_name is not None, spec.data_dir is not None, _has_files(spec)]
    if sum(layouts) != 1:
        raise ValueError(
            "Give the corpus in exactly one way: --dataset_name (Hub id or dataset folder), --data_dir "
            "(line-aligned {split}.{lang} files) or --train_file/--validation_file/--test_file. " + MULTI30K_HELP
        )
    if spec.source_lang == spec.target_lang:
        raise ValueError(f"source_lang and target_lang are both {spec.source_lang!r}.")
    if spec.data_dir is not None:
        dataset = _load_text_split(Path(spec.data_dir), split, spec.source_lang, spec.target_lang)
    elif spec.dataset_name is not None:
        dataset = _load_hub_split(spec, split)
    else:
        dataset = _load_file_split(spec, split)
    if len(dataset) == 0:
        raise ValueError(f"Split {split!r} of {spec.describe()} is empty.")
    return dataset


def _has_files(spec: CorpusSpec) -> bool:
    return any(f is not None for f in (spec.train_file, spec.validation_file, spec.test_file))


def _read_lines(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [line.rstrip("\r\n") for line in handle]


def _find_text_file(data_dir: Path, split: str, lang: str) -> Path | None:
    for name in (f"{split}.{lang}", f"{split}.{lang}.gz"):
        if (data_dir / name).is_file():
            return data_dir / name
    return None


def _load_text_split(data_dir: Path, split: str, source_lang: str, target_lang: str) -> datasets.Dataset:
    if not data_dir.is_dir():
        raise FileNotFoundError(f"--data_dir {data_dir} does not exist. " + MULTI30K_HELP)
    paths = {}
    for lang in (source_lang, target_lang):
        path = _find_text_file(data_dir, split, lang)
        if path is None:
            available = sorted({p.name.split(".")[0] + "." + p.name.split(".")[1] for p in data_dir.iterdir()
                                if p.name.count(".") >= 1})
            raise FileNotFoundError(
                f"No file {split}.{lang} (or {split}.{lang}.gz) in {data_dir}. Available split.lang files: "
                f"{', '.join(available) or 'none'}. Check --source_lang/--target_lang and the split names "
                f"(--train_split/--validation_split/--test_split)."
            )
        paths[lang] = path
    source, target = _read_lines(paths[source_lang]), _read_lines(paths[target_lang])
    if len(source) != len(target):
        raise ValueError(
            f"{paths[source_lang]} has {len(source)} lines but {paths[target_lang]} has {len(target)}: the files are "
            "not line-aligned, and pairing them would silently mistranslate. Fix the corpus."
        )
    return datasets.Dataset.from_dict({"source": source, "target": target})


def _to_source_target(dataset: datasets.Dataset, source_lang: str, target_lang: str, where: str) -> datasets.Dataset:
    """Normalise a nested `translation` column or flat per-language columns to `source`/`target`."""
    columns = dataset.column_names
    if "translation" in columns:
        first = dataset[0]["translation"]
        missing = [lang for lang in (source_lang, target_lang) if lang not in first]
        if missing:
            raise ValueError(
                f"{where}: the translation column has languages {sorted(first)}, not {missing}. "
                "Check --source_lang/--target_lang."
            )
        return dataset.map(
            lambda batch: {
                "source": [pair[source_lang] for pair in batch["translation"]],
                "target": [pair[target_lang] for pair in batch["translation"]],
            },
            batched=True,
            remove_columns=columns,
        )
    missing = [lang for lang in (source_lang, target_lang) if lang not in columns]
    if missing:
        raise ValueError(
            f"{where}: no column for {missing}. Expected a nested 'translation' column or one column per "
            f"language; found columns {columns}. Check --source_lang/--target_lang."
        )
    dataset = dataset.select_columns([source_lang, target_lang])
    return dataset.rename_columns({source_lang: "source", target_lang: "target"})


def _load_hub_split(spec: CorpusSpec, split: str) -> datasets.Dataset:
    try:
        available = datasets.get_dataset_split_names(spec.dataset_name, spec.dataset_config_name)
    except Exception as error:  # noqa: BLE001 - datasets raises many types for an unreachable/missing dataset
        raise FileNotFoundError(
            f"Could not open dataset {spec.dataset_name!r} ({type(error).__name__}: {error}). Offline, give a local "
            "dataset folder, --data_dir with line-aligned files, or --train_file/--validation_file. " + MULTI30K_HELP
        ) from error
    if split not in available:
        raise ValueError(f"Dataset {spec.dataset_name!r} has splits {available}, not {split!r}.")
    dataset = datasets.load_dataset(spec.dataset_name, spec.dataset_config_name, split=split)
    return _to_source_target(dataset, spec.source_lang, spec.target_lang, f"{spec.dataset_name}[{split}]")


FILE_SPLITS = {"train": "train_file", "validation": "validation_file", "test": "test_file"}


def _load_file_split(spec: CorpusSpec, split: str) -> datasets.Dataset:
    if split not in FILE_SPLITS:
        raise ValueError(f"With --*_file inputs the split must be one of {list(FILE_SPLITS)}, got {split!r}.")
    path = getattr(spec, FILE_SPLITS[split])
    if path is None:
        raise ValueError(f"No --{FILE_SPLITS[split]} given for the {split} split.")
    if not Path(path).is_file():
        raise FileNotFoundError(f"--{FILE_SPLITS[split]} {path} does not exist.")
    suffixes = Path(path).suffixes
    extension = suffixes[-2] if suffixes and suffixes[-1] == ".gz" and len(suffixes) > 1 else (suffixes or [""])[-1]
    builder = {".json": "json", ".jsonl": "json", ".csv": "csv"}.get(extension)
    if builder is None:
        raise ValueError(f"{path}: unsupported extension {extension!r}; use .json, .jsonl or .csv (optionally .gz).")
    dataset = datasets.load_dataset(builder, data_files={split: path}, split=split)
    return _to_source_target(dataset, spec.source_lang, spec.target_lang, path)


def drop_blank_pairs(dataset: datasets.Dataset, split: str) -> datasets.Dataset:
    """Remove pairs whose source or target is empty or whitespace, logging how many went."""
    kept = dataset.filter(
        lambda batch: [bool(s and s.strip()) and bool(t and t.strip()) for s, t in zip(batch["source"], batch["target"])],
        batched=True,
    )
    removed = len(dataset) - len(kept)
    if removed:
        logger.warning("%s: dropped %d of %d pairs with an empty source or target line", split, removed, len(dataset))
    if len(kept) == 0:
        raise ValueError(f"Split {split!r} has no non-empty sentence pairs.")
    return kept
