"""Training: overfitting a handful of pairs, DataCollatorForSeq2Seq, and Seq2SeqTrainer fine-tuning a saved
model with predict_with_generate."""

import json

import numpy as np
import torch
from datasets import Dataset
from transformers import AutoModelForSeq2SeqLM, DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

from modeling import AttnMTForConditionalGeneration
from mt.export import export_model

from conftest import encode_pairs, tiny_model, train_steps

MAX_LENGTH = 40


def test_overfits_a_handful_of_pairs_and_translates_them_exactly(tokenizer, short_pairs):
    sources, targets = short_pairs
    model = tiny_model(seed=0)
    batch = encode_pairs(tokenizer, sources, targets)
    losses = train_steps(model, batch, steps=300, lr=3e-3, stop_below=0.03)
    assert losses[0] > 5.0  # about ln(400) at initialisation
    assert losses[-1] < 0.1, f"loss only fell to {losses[-1]:.3f} after {len(losses)} steps"

    source_batch = tokenizer(sources, padding=True, return_tensors="pt")
    for num_beams in (1, 3):
        output = model.generate(**source_batch, num_beams=num_beams, max_length=MAX_LENGTH)
        assert tokenizer.batch_decode(output, skip_special_tokens=True) == targets, num_beams


def _tokenized_dataset(tokenizer, sources, targets) -> Dataset:
    def tokenize(examples):
        return tokenizer(examples["en"], text_target=examples["de"], truncation=True, max_length=60)

    return Dataset.from_dict({"en": sources, "de": targets}).map(tokenize, batched=True, remove_columns=["en", "de"])


def test_collator_pads_labels_with_minus_100_and_builds_decoder_inputs(tokenizer, short_pairs):
    model = tiny_model()
    dataset = _tokenized_dataset(tokenizer, *short_pairs)
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
    batch = collator([dataset[i] for i in range(4)])
    label_lengths = [len(dataset[i]["labels"]) for i in range(4)]
    assert batch["labels"].shape == (4, max(label_lengths))
    for row, length in zip(batch["labels"], label_lengths):
        assert (row[length:] == -100).all() and (row[:length] != -100).all() and row[length - 1] == 2
    assert torch.equal(batch["decoder_input_ids"], model.prepare_decoder_input_ids_from_labels(batch["labels"]))
    assert (batch["attention_mask"] == 0).any()  # sources are padded too


def _training_args(output_dir, **overrides) -> Seq2SeqTrainingArguments:
    kwargs = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        max_steps=12,
        learning_rate=3e-3,
        warmup_steps=0,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        predict_with_generate=True,
        generation_num_beams=3,
        generation_max_length=MAX_LENGTH,
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    kwargs.update(overrides)
    return Seq2SeqTrainingArguments(**kwargs)


def test_seq2seq_trainer_fine_tunes_a_saved_model(tmp_path, tokenizer, corpus):
    start = export_model(tiny_model(seed=2), tokenizer, tmp_path / "start")
    model = AutoModelForSeq2SeqLM.from_pretrained(start)
    assert isinstance(model, AttnMTForConditionalGeneration)

    train = _tokenized_dataset(tokenizer, corpus["en"][:32], corpus["de"][:32])
    evaluation = _tokenized_dataset(tokenizer, corpus["en"][:8], corpus["de"][:8])

    def exact_match(prediction):
        predictions = np.where(prediction.predictions < 0, tokenizer.pad_token_id, prediction.predictions)
        labels = np.where(prediction.label_ids < 0, tokenizer.pad_token_id, prediction.label_ids)
        hypotheses = tokenizer.batch_decode(predictions, skip_special_tokens=True)
        references = tokenizer.batch_decode(labels, skip_special_tokens=True)
        return {"exact_match": float(np.mean([h == r for h, r in zip(hypotheses, references)]))}

    trainer = Seq2SeqTrainer(
        model=model,
        # use_cache=True: Trainer copies args.use_cache (default False) into model.config, and the saved
        # config.json would otherwise disable the KV cache for everyone who loads the checkpoint.
        args=_training_args(tmp_path / "out", use_cache=True, label_smoothing_factor=0.1),
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        processing_class=tokenizer,
        compute_metrics=exact_match,
    )
    result = trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert result.global_step == 12 and len(losses) == 12
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5

    prediction = trainer.predict(evaluation)
    # predict_with_generate: the predictions are generated token ids (starting with <s>), not logits.
    assert prediction.predictions.ndim == 2 and (prediction.predictions[:, 0] == 1).all()
    assert 0.0 <= prediction.metrics["test_exact_match"] <= 1.0
    assert np.isfinite(prediction.metrics["test_loss"])

    final = tmp_path / "final"
    trainer.save_model(final)
    saved_config = json.loads((final / "config.json").read_text())
    assert saved_config["use_cache"] is True
    assert saved_config["auto_map"]["AutoModelForSeq2SeqLM"] == "modeling_attnmt.AttnMTForConditionalGeneration"
    reloaded, info = AttnMTForConditionalGeneration.from_pretrained(final, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    assert reloaded.config.use_cache is True
    trained_state = trainer.model.state_dict()
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, trained_state[name].cpu()), name
    started = AttnMTForConditionalGeneration.from_pretrained(start)
    assert not torch.equal(started.model.shared.weight, reloaded.model.shared.weight)  # it did train


def test_trainer_default_disables_cache_and_export_restores_it(tmp_path, tokenizer, short_pairs):
    # transformers 5 Trainer writes args.use_cache (default False) into model.config at init.
    model = tiny_model()
    train = _tokenized_dataset(tokenizer, *short_pairs)
    trainer = Seq2SeqTrainer(
        model=model,
        args=_training_args(tmp_path / "out", max_steps=1),
        train_dataset=train,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
    )
    assert trainer.model.config.use_cache is False
    folder = export_model(trainer.model, tokenizer, tmp_path / "export")
    assert json.loads((folder / "config.json").read_text())["use_cache"] is True
