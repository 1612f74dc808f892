"""Configuration of an ensemble of AttnMT models that translate together.

An ensemble is several independently trained AttnMT models (different seeds, same tokenizer) whose
next-token distributions are averaged at every decoding step. This file ships to the Hugging Face Hub as
remote code beside `modeling_attnmt_ensemble.py` and depends on `transformers` and `configuration_attnmt.py`.
"""

from transformers import PreTrainedConfig

from .configuration_attnmt import AttnMTConfig

# The fields every member must agree on: one tokenizer, one vocabulary, one set of special tokens.
SHARED_FIELDS = ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id", "decoder_start_token_id")


class AttnMTEnsembleConfig(PreTrainedConfig):
    r"""Configuration of an [`AttnMTEnsembleForConditionalGeneration`].

    Args:
        members (`list[dict]`):
            The `AttnMTConfig` of every member, as dictionaries (`AttnMTConfig.to_dict()`). At least two; they
            may differ in size, but must share the vocabulary and the special-token ids (one tokenizer).
        max_position_embeddings (`int`, *optional*):
            Longest sequence the ensemble accepts: the members' smallest by default.

    The vocabulary size and the special-token ids are copied from the members, so that `generate()` and the
    tokenizer checks read them from the ensemble's config as from a single model's.

    Example:

    ```python
    >>> from modeling import AttnMTConfig, AttnMTEnsembleConfig
    >>> member = AttnMTConfig(vocab_size=8000, d_model=128, encoder_layers=4, decoder_layers=4)
    >>> config = AttnMTEnsembleConfig(members=[member.to_dict(), member.to_dict()])
    ```
    """

    model_type = "attnmt_ensemble"
    attribute_map = {"num_hidden_layers": "decoder_layers"}

    def __init__(self, members: list[dict] | None = None, max_position_embeddings: int | None = None,
                 use_cache: bool = True, is_encoder_decoder: bool = True, **kwargs):
        members = [m.to_dict() if isinstance(m, AttnMTConfig) else dict(m) for m in (members or [])]
        # A config built without members (transformers does so to read the class defaults) stays empty.
        member_configs = [AttnMTConfig(**member) for member in members]
        self.members = [config.to_dict() for config in member_configs]
        if member_configs:
            first = member_configs[0]
            for name in SHARED_FIELDS:
                kwargs[name] = getattr(first, name)
            self.decoder_layers = first.decoder_layers
            # transformers reads the ties of the top-level model from this flag: the ensemble's own
            # `_tied_weights_keys` (each member's embedding/LM-head tie, prefixed) apply when a member ties.
            kwargs["tie_word_embeddings"] = any(config.tie_word_embeddings for config in member_configs)
            shortest = min(config.max_position_embeddings for config in member_configs)
            max_position_embeddings = shortest if max_position_embeddings is None else max_position_embeddings
        for name in SHARED_FIELDS:
            setattr(self, name, kwargs.pop(name, None))
        self.max_position_embeddings = max_position_embeddings
        self.tie_word_embeddings = kwargs.pop("tie_word_embeddings", False)
        self.use_cache = use_cache
        super().__init__(is_encoder_decoder=is_encoder_decoder, **kwargs)
        self.validate()

    @property
    def member_configs(self) -> list[AttnMTConfig]:
        """The members' configurations as `AttnMTConfig` objects."""
        return [AttnMTConfig(**member) for member in self.members]

    def validate(self):
        """Raise `ValueError` when the members cannot translate together."""
        if not self.members:
            return
        if len(self.members) < 2:
            raise ValueError(
                f"an ensemble needs at least two members, got {len(self.members)}; "
                "a single model is an AttnMTForConditionalGeneration."
            )
        for index, member in enumerate(self.members[1:], start=1):
            for name in SHARED_FIELDS:
                if member.get(name) != self.members[0].get(name):
                    raise ValueError(
                        f"member {index} has {name}={member.get(name)!r} but member 0 has "
                        f"{self.members[0].get(name)!r}: the members of an ensemble must share one tokenizer "
                        "(train them with the same tokenizer folder or the same data and vocabulary settings)."
                    )
        if self.max_position_embeddings > min(m["max_position_embeddings"] for m in self.members):
            raise ValueError(
                f"max_position_embeddings={self.max_position_embeddings} exceeds a member's position table "
                f"({min(m['max_position_embeddings'] for m in self.members)})."
            )


__all__ = ["AttnMTEnsembleConfig"]
