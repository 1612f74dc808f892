"""A `translation` pipeline for AttnMT checkpoints, shipped beside the model as Hub remote code.

transformers 5 removed its built-in `translation` task. An exported AttnMT folder declares this class in
`config.json` (`custom_pipelines`), so that

    pipeline("translation", model=folder, trust_remote_code=True)("A dog runs.")

returns `[{"translation_text": "..."}]` as the old pipeline did.
"""

from transformers import AutoModelForSeq2SeqLM, Pipeline


class AttnMTTranslationPipeline(Pipeline):
    """Tokenize source sentences, `generate()` with the checkpoint's generation config (overridable per
    call: `num_beams=`, `max_new_tokens=`, ...), and decode.

    Args at call time:
        inputs: a sentence or a list of sentences.
        truncation: truncate sources longer than the tokenizer's `model_max_length` (default True).
        return_tensors: return the generated token ids instead of text.
        **generate_kwargs: passed to `model.generate`.
    """

    _pipeline_calls_generate = True

    def _sanitize_parameters(self, truncation=None, return_tensors=None, **generate_kwargs):
        preprocess_params = {} if truncation is None else {"truncation": truncation}
        postprocess_params = {} if return_tensors is None else {"return_tensors": return_tensors}
        return preprocess_params, generate_kwargs, postprocess_params

    def preprocess(self, text, truncation=True):
        if not isinstance(text, str):
            raise TypeError(f"The translation pipeline takes a string or a list of strings, got {type(text).__name__}.")
        return self.tokenizer(text, truncation=truncation, return_tensors="pt")

    def _forward(self, model_inputs, **generate_kwargs):
        output_ids = self.model.generate(**model_inputs, **generate_kwargs)
        return {"output_ids": output_ids}

    def postprocess(self, model_outputs, return_tensors=False):
        records = []
        for ids in model_outputs["output_ids"]:
            if return_tensors:
                records.append({"translation_token_ids": ids})
            else:
                text = self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
                records.append({"translation_text": text})
        return records if len(records) > 1 else records[0]


# What `Pipeline.save_pretrained` writes into config.json as `custom_pipelines` (the same entry that
# `PIPELINE_REGISTRY.register_pipeline("translation", ...)` would create, without touching the global registry).
AttnMTTranslationPipeline._registered_impl = {
    "translation": {"impl": AttnMTTranslationPipeline, "pt": (AutoModelForSeq2SeqLM,)}
}

__all__ = ["AttnMTTranslationPipeline"]
