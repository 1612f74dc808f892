"""Token dropout: the replacement rate, what is never replaced, and train.py's use of it (resumed exactly)."""

import pytest
import torch
from safetensors.torch import load_file

import train
from mt.config import load_config
from mt.token_dropout import apply_token_dropout, drop_tokens
from mt.tokenizer import SPECIAL_TOKEN_IDS
from test_train import TINY

SPECIAL = dict(SPECIAL_TOKEN_IDS)  # pad 0, bos 1 (the decoder start), eos 2, unk 3
KEEP = torch.tensor([0, 1, 2])


def test_tokens_are_replaced_at_the_rate_asked_and_specials_never():
    torch.manual_seed(0)
    ids = torch.randint(4, 8000, (400, 250))
    ids[:, 0], ids[:, -1], ids[:, -20:-1] = 1, 2, 0  # start, end and padding in every row
    dropped = drop_tokens(ids, 0.1, unk_token_id=3, keep_ids=KEEP)
    replaced = dropped != ids
    assert torch.all(dropped[replaced] == 3)
    assert not replaced[:, 0].any() and not replaced[:, -20:].any()
    words = ids >= 4
    rate = replaced[words].float().mean().item()
    assert rate == pytest.approx(0.1, abs=0.004)  # 92,000 draws: 0.004 is about 4 standard deviations
    # The replaced positions are independent of the row and of the position (no lane or stride repeats).
    assert replaced[:, 1:-20].float().mean(dim=0).std() < 0.05 and replaced[:, 1:-20].float().mean(dim=1).std() < 0.05
    assert drop_tokens(ids, 0.0, 3, KEEP) is ids
    torch.manual_seed(0)
    torch.randint(4, 8000, (400, 250))
    assert torch.equal(drop_tokens(ids, 0.1, 3, KEEP), dropped)  # the global seed decides the draw


def test_a_batch_keeps_its_labels_and_is_not_modified_in_place():
    torch.manual_seed(1)
    labels = torch.randint(4, 100, (8, 12))
    labels[:, -1] = 2
    decoder_input_ids = torch.cat([torch.ones(8, 1, dtype=torch.long), labels[:, :-1]], dim=1)
    batch = {"input_ids": torch.randint(4, 100, (8, 10)), "attention_mask": torch.ones(8, 10, dtype=torch.long),
             "labels": labels, "decoder_input_ids": decoder_input_ids}
    original = {k: v.clone() for k, v in batch.items()}
    dropped = apply_token_dropout(batch, 0.5, 0.5, SPECIAL)
    for name in batch:
        assert torch.equal(batch[name], original[name]), f"{name} modified in place"
    assert dropped["labels"] is batch["labels"] and dropped["attention_mask"] is batch["attention_mask"]
    assert (dropped["input_ids"] == 3).any() and (dropped["decoder_input_ids"] == 3).any()
    assert torch.all(dropped["decoder_input_ids"][:, 0] == 1)  # the start token stays
    only_source = apply_token_dropout(batch, 0.5, 0.0, SPECIAL)
    assert only_source["decoder_input_ids"] is batch["decoder_input_ids"]
    with pytest.raises(ValueError, match="needs decoder_input_ids"):
        apply_token_dropout({"input_ids": batch["input_ids"], "labels": labels}, 0.0, 0.1, SPECIAL)


def test_train_py_drops_tokens_in_training_batches_only_and_resumes_exactly(tmp_path, monkeypatch):
    """Every training batch reaches the model through token dropout (source 0.2, target 0.2): <unk> appears in
    its inputs at about that rate, the labels are the collator's. A run stopped at update 4 and resumed ends with
    the weights of the uninterrupted run, so the draws are restored with the checkpoint."""
    seen = []
    real = train.apply_token_dropout

    def recording(batch, source_p, target_p, special_ids):
        dropped = real(batch, source_p, target_p, special_ids)
        seen.append((batch, dropped))
        return dropped

    monkeypatch.setattr(train, "apply_token_dropout", recording)
    flags = TINY + ["--source_token_dropout", "0.2", "--target_token_dropout", "0.2", "--test_split", ""]
    output_dir = tmp_path / "token_dropout"
    results = train.main(flags + ["--output_dir", str(output_dir)])
    assert results["completed_steps"] == 8 and len(seen) == 8
    unk = SPECIAL_TOKEN_IDS["unk_token_id"]
    for side in ("input_ids", "decoder_input_ids"):
        words = torch.cat([(b[side] > 3).flatten() for b, _ in seen])
        replaced = torch.cat([((d[side] != b[side])).flatten() for b, d in seen])
        assert torch.all(torch.cat([d[side].flatten() for b, d in seen])[replaced] == unk)
        assert replaced[words].float().mean().item() == pytest.approx(0.2, abs=0.03), side
    assert all(torch.equal(b["labels"], d["labels"]) for b, d in seen)

    resumed = tmp_path / "token_dropout_resumed"
    train.main(flags + ["--output_dir", str(resumed), "--max_train_steps", "4"])
    train.main(flags + ["--output_dir", str(resumed), "--resume_from_checkpoint", "latest"])
    uninterrupted = load_file(str(output_dir / "checkpoints" / "step_0000008" / "model.safetensors"))
    again = load_file(str(resumed / "checkpoints" / "step_0000008" / "model.safetensors"))
    for name in uninterrupted:
        torch.testing.assert_close(again[name], uninterrupted[name], rtol=0, atol=0, msg=name)
    card = (output_dir / "model" / "README.md").read_text()
    assert "token dropout 0.2 (source) and 0.2 (target inputs)" in card

    with pytest.raises(ValueError, match=r"source_token_dropout must lie in \[0, 1\)"):
        load_config(TINY + ["--source_token_dropout", "1.0"])
    with pytest.raises(ValueError, match=r"target_token_dropout must lie in \[0, 1\)"):
        load_config(TINY + ["--target_token_dropout", "-0.1"])
