"""AttnMT: a from-scratch Transformer encoder-decoder packaged as a transformers model.

Importing this package registers the classes with the Auto API, in this process (`AutoConfig`,
`AutoModel`, `AutoModelForSeq2SeqLM` resolve "attnmt") and for export (`save_pretrained` writes
`auto_map` and copies the code so that a fresh process loads with `trust_remote_code=True`).
"""

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from .configuration_attnmt import AttnMTConfig
from .configuration_attnmt_ensemble import AttnMTEnsembleConfig
from .modeling_attnmt import (
    AttnMTForConditionalGeneration,
    AttnMTModel,
    AttnMTPreTrainedModel,
    build_attention_mask,
    eager_attention_forward,
)
from .modeling_attnmt_ensemble import AttnMTEnsembleForConditionalGeneration
from .pipeline_attnmt import AttnMTTranslationPipeline

AttnMTConfig.register_for_auto_class()
AttnMTModel.register_for_auto_class("AutoModel")
AttnMTForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")
AttnMTEnsembleConfig.register_for_auto_class()
AttnMTEnsembleForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")

AutoConfig.register(AttnMTConfig.model_type, AttnMTConfig, exist_ok=True)
AutoModel.register(AttnMTConfig, AttnMTModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(AttnMTConfig, AttnMTForConditionalGeneration, exist_ok=True)
AutoConfig.register(AttnMTEnsembleConfig.model_type, AttnMTEnsembleConfig, exist_ok=True)
AutoModelForSeq2SeqLM.register(AttnMTEnsembleConfig, AttnMTEnsembleForConditionalGeneration, exist_ok=True)

__all__ = [
    "AttnMTConfig",
    "AttnMTModel",
    "AttnMTPreTrainedModel",
    "AttnMTForConditionalGeneration",
    "AttnMTEnsembleConfig",
    "AttnMTEnsembleForConditionalGeneration",
    "AttnMTTranslationPipeline",
    "build_attention_mask",
    "eager_attention_forward",
]
