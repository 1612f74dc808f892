"""Configuration of AttnMT, a from-scratch Transformer encoder-decoder for machine translation.

This file holds the configuration only. It ships to the Hugging Face Hub as remote code beside
`modeling_attnmt.py` and depends on `transformers` alone.
"""

from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

# The attention back-ends this model implements: "eager" is the readable formula in
# `modeling_attnmt.eager_attention_forward`, "sdpa" is torch's fused `scaled_dot_product_attention`.
SUPPORTED_ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")
POSITION_EMBEDDING_TYPES = ("sinusoidal", "learned")


class AttnMTConfig(PreTrainedConfig):
    r"""Configuration of an [`AttnMTForConditionalGeneration`] model.

    The defaults are the "base" Transformer of Vaswani et al. (2017) with pre-norm residual blocks and
    one embedding matrix shared by source, target and output projection.

    Args:
        vocab_size (`int`, defaults to 8000):
            Size of the joint source/target vocabulary.
        d_model (`int`, defaults to 512):
            Width of every hidden state (the paper's d_model).
        encoder_layers (`int`, defaults to 6):
            Number of encoder blocks.
        decoder_layers (`int`, defaults to 6):
            Number of decoder blocks. `num_hidden_layers` maps here: the KV cache has one entry per decoder block.
        encoder_attention_heads (`int`, defaults to 8):
            Heads in each encoder self-attention. `d_model` must be divisible by it.
        decoder_attention_heads (`int`, defaults to 8):
            Heads in each decoder self- and cross-attention. `d_model` must be divisible by it.
        encoder_ffn_dim (`int`, defaults to 2048):
            Inner width of the encoder feed-forward blocks.
        decoder_ffn_dim (`int`, defaults to 2048):
            Inner width of the decoder feed-forward blocks.
        activation_function (`str`, defaults to `"relu"`):
            Feed-forward non-linearity, any key of `transformers.activations.ACT2FN` ("relu", "gelu", ...).
        dropout (`float`, defaults to 0.1):
            Dropout on embeddings and on the output of every sub-layer before the residual sum.
        attention_dropout (`float`, defaults to 0.0):
            Dropout on the attention weights (after the softmax).
        activation_dropout (`float`, defaults to 0.0):
            Dropout inside the feed-forward block, after the activation.
        max_position_embeddings (`int`, defaults to 256):
            Longest sequence (in tokens) the position table covers, on either side.
        position_embedding_type (`str`, defaults to `"sinusoidal"`):
            `"sinusoidal"` (fixed, as in the paper) or `"learned"`.
        normalize_before (`bool`, defaults to `True`):
            Pre-norm (`x + f(LN(x))`, plus a final LayerNorm per stack) when True; the paper's post-norm
            (`LN(x + f(x))`) when False. Pre-norm trains stably without a long warm-up.
        scale_embedding (`bool`, defaults to `True`):
            Multiply token embeddings by `sqrt(d_model)` so they are not drowned by the position signal.
        tie_word_embeddings (`bool`, defaults to `True`):
            One matrix for source embeddings, target embeddings and the output projection (joint vocabulary).
            When False the three are separate.
        layer_norm_eps (`float`, defaults to 1e-5):
            Epsilon of every LayerNorm.
        label_smoothing (`float`, defaults to 0.0):
            Label smoothing of the cross-entropy computed when `labels` are given.
        pad_token_id / bos_token_id / eos_token_id / unk_token_id (`int`, defaults to 0 / 1 / 2 / 3):
            Special-token ids; they must equal the tokenizer's.
        decoder_start_token_id (`int`, defaults to 1):
            First decoder input; `bos_token_id` by default.
        use_cache (`bool`, defaults to `True`):
            Return the key/value cache so that generation runs incrementally.

    Example:

    ```python
    >>> from modeling import AttnMTConfig, AttnMTForConditionalGeneration
    >>> config = AttnMTConfig(vocab_size=8000, d_model=256, encoder_layers=4, decoder_layers=4)
    >>> model = AttnMTForConditionalGeneration(config)
    ```
    """

    model_type = "attnmt"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "decoder_attention_heads",
        "num_hidden_layers": "decoder_layers",
    }

    def __init__(
        self,
        vocab_size=8000,
        d_model=512,
        encoder_layers=6,
        decoder_layers=6,
        encoder_attention_heads=8,
        decoder_attention_heads=8,
        encoder_ffn_dim=2048,
        decoder_ffn_dim=2048,
        activation_function="relu",
        dropout=0.1,
        attention_dropout=0.0,
        activation_dropout=0.0,
        max_position_embeddings=256,
        position_embedding_type="sinusoidal",
        normalize_before=True,
        scale_embedding=True,
        tie_word_embeddings=True,
        layer_norm_eps=1e-5,
        label_smoothing=0.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        unk_token_id=3,
        decoder_start_token_id=1,
        use_cache=True,
        is_encoder_decoder=True,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.encoder_layers = encoder_layers
        self.decoder_layers = decoder_layers
        self.encoder_attention_heads = encoder_attention_heads
        self.decoder_attention_heads = decoder_attention_heads
        self.encoder_ffn_dim = encoder_ffn_dim
        self.decoder_ffn_dim = decoder_ffn_dim
        self.activation_function = activation_function
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.activation_dropout = activation_dropout
        self.max_position_embeddings = max_position_embeddings
        self.position_embedding_type = position_embedding_type
        self.normalize_before = normalize_before
        self.scale_embedding = scale_embedding
        self.tie_word_embeddings = tie_word_embeddings
        self.layer_norm_eps = layer_norm_eps
        self.label_smoothing = label_smoothing
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.unk_token_id = unk_token_id
        self.decoder_start_token_id = decoder_start_token_id
        self.use_cache = use_cache
        attn_implementation = kwargs.get("attn_implementation")
        if attn_implementation is not None and attn_implementation not in SUPPORTED_ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"attn_implementation={attn_implementation!r} is not supported by AttnMT; "
                f"use one of {SUPPORTED_ATTENTION_IMPLEMENTATIONS}."
            )
        super().__init__(is_encoder_decoder=is_encoder_decoder, **kwargs)
        self.validate()

    def validate(self):
        """Raise `ValueError` naming the field when a hyperparameter is out of range."""
        for name in (
            "vocab_size",
            "d_model",
            "encoder_layers",
            "decoder_layers",
            "encoder_attention_heads",
            "decoder_attention_heads",
            "encoder_ffn_dim",
            "decoder_ffn_dim",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        for side in ("encoder", "decoder"):
            heads = getattr(self, f"{side}_attention_heads")
            if self.d_model % heads != 0:
                raise ValueError(
                    f"d_model={self.d_model} must be divisible by {side}_attention_heads={heads} "
                    f"(each head gets d_model / heads dimensions)."
                )
        for name in ("dropout", "attention_dropout", "activation_dropout", "label_smoothing"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be a number in [0, 1), got {value!r}.")
        if not isinstance(self.layer_norm_eps, (int, float)) or self.layer_norm_eps <= 0:
            raise ValueError(f"layer_norm_eps must be a positive number, got {self.layer_norm_eps!r}.")
        if self.activation_function not in ACT2FN:
            raise ValueError(
                f"activation_function={self.activation_function!r} is unknown; use one of "
                f"'relu', 'gelu', 'gelu_new', 'silu' (any key of transformers.activations.ACT2FN)."
            )
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ValueError(
                f"position_embedding_type={self.position_embedding_type!r} is unknown; "
                f"use one of {POSITION_EMBEDDING_TYPES}."
            )
        for name in ("pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id", "decoder_start_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(f"{name}={value} lies outside the vocabulary [0, {self.vocab_size}).")


__all__ = ["AttnMTConfig"]
