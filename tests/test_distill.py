"""distill.py: the distilled corpus folder (translations in corpus order, the union with --keep_original, copied
splits, distillation.json), resuming after an interruption, two processes, and one-line errors for bad input."""

import json

import pytest
import sacrebleu

import distill
import eval as eval_script
from conftest import tiny_model
from eval_fixtures import MULTI30K, accelerate_launcher, multi30k_lines, save_checkpoint, subprocess_env
from mt.data import CorpusSpec, load_split
from mt.scoring import translate

SIZE = 20
DECODING = ["--num_beams", "2", "--max_new_tokens", "16", "--batch_size", "4"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, _trained_state, tokenizer):
    """The briefly trained tiny AttnMT (conftest), exported with save_pretrained."""
    model = tiny_model(seed=1)
    model.load_state_dict(_trained_state)
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def expected_translations(teacher) -> list[str]:
    """The teacher's translations of the first SIZE validation sources, from one translate() call."""
    model, tokenizer = eval_script.load_model_and_tokenizer(str(teacher))
    hypotheses = translate(model, tokenizer, multi30k_lines("val", "en", SIZE), batch_size=4, num_beams=2,
                           max_new_tokens=16, progress=False)
    return [" ".join(h.split()) for h in hypotheses]


def distill_args(teacher, output_dir, *extra: str) -> list[str]:
    return ["--model_name_or_path", str(teacher), "--data_dir", str(MULTI30K), "--source_lang", "en",
            "--target_lang", "de", "--split", "val", "--max_samples", str(SIZE), "--chunk_size", "7", *DECODING,
            "--output_dir", str(output_dir), "--no_progress", *extra]


def read_lines(path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def test_distilled_corpus_folder(teacher, expected_translations, tmp_path):
    output_dir = tmp_path / "distilled"
    assert distill.main(distill_args(teacher, output_dir, "--keep_original", "--copy_splits",
                                     "test_2016_flickr")) == 0

    sources, references = multi30k_lines("val", "en", SIZE), multi30k_lines("val", "de", SIZE)
    kept = [i for i, t in enumerate(expected_translations) if t]
    assert len(kept) >= SIZE // 2  # the trained teacher says something
    # The union: the original pairs, then each source with the teacher's translation (corpus order, 3 chunks).
    assert read_lines(output_dir / "val.en") == sources + [sources[i] for i in kept]
    assert read_lines(output_dir / "val.de") == references + [expected_translations[i] for i in kept]
    # Copied splits are the originals, line for line.
    for lang in ("en", "de"):
        assert read_lines(output_dir / f"test_2016_flickr.{lang}") == multi30k_lines("test_2016_flickr", lang, 10_000)
    # train.py and eval.py read the folder like any --data_dir corpus.
    dataset = load_split(CorpusSpec(source_lang="en", target_lang="de", data_dir=str(output_dir)), "val")
    assert len(dataset) == SIZE + len(kept)

    record = json.loads((output_dir / "distillation.json").read_text())
    assert (record["split"], record["source_lang"], record["target_lang"]) == ("val", "en", "de")
    assert record["num_sentences"] == SIZE and record["keep_original"] is True
    assert record["num_distilled_pairs"] == len(kept)
    assert record["num_empty_translations_dropped"] == SIZE - len(kept)
    assert record["num_pairs_written"] == SIZE + len(kept)
    assert record["copied_splits"] == {"test_2016_flickr": 1000}
    assert record["chunks_resumed"] == 0
    assert record["decoding"]["num_beams"] == 2 and record["decoding"]["max_new_tokens"] == 16
    scores = record["teacher_scores_against_references"]
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(expected_translations, [references]).score, abs=1e-9)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(expected_translations, [references]).score, abs=1e-9)
    assert record["identical_to_reference"] == sum(t == r for t, r in zip(expected_translations, references))
    assert not (output_dir / distill.PARTS_DIR).exists()  # the chunks are cleaned up once the corpus is written


class Interrupted(Exception):
    pass


def test_an_interrupted_run_resumes_after_its_last_chunk(teacher, expected_translations, tmp_path, monkeypatch,
                                                         capsys):
    output_dir = tmp_path / "distilled"
    calls = []

    def translate_then_stop(*args, **kwargs):
        if calls:
            raise Interrupted
        calls.append(len(args[2]))
        return translate(*args, **kwargs)

    monkeypatch.setattr(distill, "translate", translate_then_stop)
    with pytest.raises(Interrupted):
        distill.main(distill_args(teacher, output_dir))
    parts = output_dir / distill.PARTS_DIR
    assert sorted(p.name for p in parts.iterdir()) == ["manifest.json", "part-00000.jsonl"]
    assert not (output_dir / "val.de").exists() and not (output_dir / "distillation.json").exists()

    # Other settings would mix two kinds of translations: refused, and the saved chunk is kept.
    capsys.readouterr()
    assert distill.main(distill_args(teacher, output_dir, "--num_beams", "3")) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "num_beams" in error and "interrupted run" in error
    assert (parts / "part-00000.jsonl").is_file()

    translated = []

    def counting(*args, **kwargs):
        translated.append(len(args[2]))
        return translate(*args, **kwargs)

    monkeypatch.setattr(distill, "translate", counting)
    assert distill.main(distill_args(teacher, output_dir)) == 0
    assert calls == [7] and translated == [7, 6]  # chunks 2 and 3 only
    kept = [t for t in expected_translations if t]
    assert read_lines(output_dir / "val.de") == kept
    assert read_lines(output_dir / "val.en") == [s for s, t in zip(multi30k_lines("val", "en", SIZE),
                                                                   expected_translations) if t]
    assert json.loads((output_dir / "distillation.json").read_text())["chunks_resumed"] == 1
    assert not parts.exists()


def test_two_processes_write_the_same_corpus(teacher, expected_translations, tmp_path):
    import subprocess

    output_dir = tmp_path / "distilled"
    command = accelerate_launcher(2) + [str(distill.__file__), *distill_args(teacher, output_dir, "--cpu")]
    completed = subprocess.run(command, cwd=distill.Path(distill.__file__).parent, env=subprocess_env(),
                               capture_output=True, text=True, timeout=240)
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "| 2 processes, device cpu" in completed.stderr
    assert read_lines(output_dir / "val.de") == [t for t in expected_translations if t]
    assert json.loads((output_dir / "distillation.json").read_text())["num_processes"] == 2


def test_bad_output_folders_and_splits_give_one_line_errors(teacher, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for lang in ("en", "de"):
        (corpus / f"val.{lang}").write_text("".join(line + "\n" for line in multi30k_lines("val", lang, 5)))
    over_input = distill_args(teacher, corpus)
    over_input[over_input.index("--data_dir") + 1] = str(corpus)
    assert distill.main(over_input) == 1
    assert "would overwrite the original corpus" in capsys.readouterr().err
    assert read_lines(corpus / "val.de") == multi30k_lines("val", "de", 5)

    output_dir = tmp_path / "distilled"
    output_dir.mkdir()
    (output_dir / "val.de").write_text("a corpus of the user's\n")
    assert distill.main(distill_args(teacher, output_dir)) == 1
    error = capsys.readouterr().err
    assert "already holds val.de" in error and "--overwrite" in error
    assert (output_dir / "val.de").read_text() == "a corpus of the user's\n"

    assert distill.main(distill_args(teacher, tmp_path / "other", "--copy_splits", "tset_2016")) == 1
    assert "No file tset_2016.en" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()  # checked before anything is translated or written

    with pytest.raises(SystemExit) as exit_info:
        distill.parse_args(distill_args(teacher, tmp_path / "other", "--copy_splits", "val"))
    assert exit_info.value.code == 2
    assert "the split being distilled" in capsys.readouterr().err
