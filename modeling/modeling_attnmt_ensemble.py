"""An ensemble of AttnMT models that translate together, packaged as one transformers model.

Each member is a complete `AttnMTForConditionalGeneration` (trained on its own, typically with another
seed). At every decoding step the members read the same source and the same target prefix, and the
ensemble's next-token distribution is the average of theirs:

    p(y_t | y_<t, x) = 1/M · Σ_m p_m(y_t | y_<t, x)

(fairseq's `EnsembleModel` and Marian's `--models` do the same). The forward returns the logarithm of that
average as `logits`, so `generate()` — greedy, beam search, sampling, the KV cache — runs unchanged: the
encoder output is the members' encoder outputs side by side (one tensor, which generate() repeats for the
beams like any other), and the cache is one `EncoderDecoderCache` per member inside an
`AttnMTEnsembleCache`, reordered member by member after every beam-search step.

This file ships to the Hugging Face Hub as remote code beside `modeling_attnmt.py`.
"""

import math

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_attnmt_ensemble import AttnMTEnsembleConfig
from .modeling_attnmt import AttnMTForConditionalGeneration, AttnMTPreTrainedModel, cross_entropy, shift_tokens_right


class AttnMTEnsembleCache(Cache):
    """One decoding cache per member (each an `EncoderDecoderCache`), kept and reordered together."""

    is_compileable = False

    def __init__(self, member_caches: list[Cache | None]):
        # Like `EncoderDecoderCache`, a container of caches rather than of layers: Cache.__init__ is not called.
        self.member_caches = list(member_caches)

    def __len__(self) -> int:
        return len(self.member_caches[0]) if self.member_caches and self.member_caches[0] is not None else 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.member_caches!r})"

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Target tokens already cached (the same for every member)."""
        first = self.member_caches[0] if self.member_caches else None
        return 0 if first is None else first.get_seq_length(layer_idx)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for cache in self.member_caches:
            if cache is not None:
                cache.reorder_cache(beam_idx)

    def reset(self) -> None:
        for cache in self.member_caches:
            if cache is not None:
                cache.reset()


class AttnMTEnsembleEncoder:
    """What `generate()` calls as the encoder: every member's encoder on the same source, their outputs
    concatenated along the hidden dimension, (B, S, Σ d_model). Not a module: it holds no weights of its own
    (the members own them), so nothing is registered or saved twice."""

    main_input_name = "input_ids"

    def __init__(self, ensemble: "AttnMTEnsembleForConditionalGeneration"):
        self.ensemble = ensemble

    def __call__(self, *args, **kwargs) -> BaseModelOutput:
        return self.forward(*args, **kwargs)

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, output_attentions=False,
                output_hidden_states=False, return_dict=True) -> BaseModelOutput:
        if inputs_embeds is not None:
            raise ValueError(
                "an ensemble's members each embed the source with their own embeddings: pass input_ids, "
                "not inputs_embeds."
            )
        if output_attentions or output_hidden_states:
            raise ValueError(
                "output_attentions / output_hidden_states are per member: call a member, "
                "e.g. ensemble.members[0], to inspect its attention."
            )
        states = [
            member.get_encoder()(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state
            for member in self.ensemble.members
        ]
        return BaseModelOutput(last_hidden_state=torch.cat(states, dim=-1))


class AttnMTEnsembleForConditionalGeneration(AttnMTPreTrainedModel, GenerationMixin):
    """Several AttnMT models decoding together; what `AutoModelForSeq2SeqLM` loads for an ensemble folder.

    Build one from trained members with `from_members([model_a, model_b])`, save it with `save_pretrained`
    (or `mt.export.export_model`), and load it back like a single model. `members[i]` is a complete
    `AttnMTForConditionalGeneration` that can be used (or saved) on its own.
    """

    config_class = AttnMTEnsembleConfig
    base_model_prefix = "members"
    _no_split_modules = ["AttnMTForConditionalGeneration"]

    def __init__(self, config: AttnMTEnsembleConfig):
        super().__init__(config)
        if not config.members:
            raise ValueError("AttnMTEnsembleConfig has no members: build it with members=[config.to_dict(), ...].")
        implementation = getattr(config, "_attn_implementation_internal", None)
        member_configs = config.member_configs
        if implementation is not None:
            for member_config in member_configs:
                member_config._attn_implementation = implementation
        self.members = nn.ModuleList(AttnMTForConditionalGeneration(member) for member in member_configs)
        # Each member ties its embeddings and LM head (one matrix); transformers does not look for ties inside a
        # ModuleList of models, so name them here, with the members' prefixes, for saving and loading.
        self._tied_weights_keys = {
            f"members.{index}.{target}": f"members.{index}.{source}"
            for index, member in enumerate(self.members)
            for target, source in member.get_expanded_tied_weights_keys(all_submodels=True).items()
        }
        self.post_init()
        self.generation_config.max_length = config.max_position_embeddings
        self.generation_config.num_beams = 5

    @classmethod
    def from_members(cls, members: list[AttnMTForConditionalGeneration]) -> "AttnMTEnsembleForConditionalGeneration":
        """An ensemble holding copies of the weights of `members` (trained `AttnMTForConditionalGeneration`s
        that share one tokenizer). Raises `ValueError` when fewer than two are given or their vocabularies or
        special tokens differ."""
        for index, member in enumerate(members):
            if not isinstance(member, AttnMTForConditionalGeneration):
                raise ValueError(
                    f"member {index} is a {type(member).__name__}; an AttnMT ensemble combines "
                    "AttnMTForConditionalGeneration models."
                )
        config = AttnMTEnsembleConfig(members=[member.config.to_dict() for member in members])
        ensemble = cls(config)
        for target, source in zip(ensemble.members, members):
            target.load_state_dict(source.state_dict())
        # The first member's decoding settings (beam, length penalty, ...) become the ensemble's.
        ensemble.generation_config = members[0].generation_config
        return ensemble.to(dtype=members[0].dtype, device=members[0].device)

    def get_encoder(self, modality: str | None = None) -> AttnMTEnsembleEncoder:
        return AttnMTEnsembleEncoder(self)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.members[0].get_input_embeddings()

    def get_output_embeddings(self):
        return None  # each member has its own LM head; there is no single one to resize or tie

    def _init_weights(self, module: nn.Module):
        """Nothing of the ensemble's own: transformers initialises each member (a PreTrainedModel) with its own
        `_init_weights`, including the sinusoidal tables rebuilt after a load."""

    def _prepare_cache_for_generation(self, generation_config, model_kwargs: dict, *args, **kwargs):
        """generate() asks for one cache; give it one per member, each prepared by the member itself."""
        if model_kwargs.get("cache") is not None or generation_config.use_cache is False:
            return super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        if generation_config.cache_implementation not in (None, "dynamic"):
            raise ValueError(
                f"cache_implementation={generation_config.cache_implementation!r} is not supported by an "
                "ensemble; leave it unset (a dynamic cache per member)."
            )
        caches = []
        for member in self.members:
            member_kwargs = {}
            member._prepare_cache_for_generation(generation_config, member_kwargs, *args, **kwargs)
            caches.append(member_kwargs.get("cache"))
        model_kwargs["cache"] = AttnMTEnsembleCache(caches)

    def _reorder_cache(self, cache: Cache, beam_idx: torch.LongTensor) -> Cache:
        if isinstance(cache, AttnMTEnsembleCache):
            for member, member_cache in zip(self.members, cache.member_caches):
                if member_cache is not None:
                    member._reorder_cache(member_cache, beam_idx)
        else:
            cache.reorder_cache(beam_idx)
        return cache

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, *args, **kwargs) -> dict:
        return self.members[0].prepare_inputs_for_generation(input_ids, *args, **kwargs)

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")  # the name generate() and older code use
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        cache: Cache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> Seq2SeqLMOutput | tuple:
        r"""
        Args:
            input_ids / attention_mask: (B, S) source ids and padding mask, as for a single model.
            decoder_input_ids: (B, T); built from `labels` by shifting right when omitted.
            encoder_outputs: what `get_encoder()` returned, (B, S, Σ d_model); computed when omitted.
            cache: an `AttnMTEnsembleCache` (generate() creates and passes it).
            labels: (B, T) target ids, -100 = left out; the loss is the cross-entropy of the averaged
                distribution (no label smoothing: an ensemble is for decoding and scoring, not training).

        Returns:
            `Seq2SeqLMOutput` whose `logits` (B, T, V) are log(1/M Σ_m softmax(logits_m)).
        """
        unsupported = sorted(key for key, value in kwargs.items() if value not in (None, False))
        if unsupported:
            raise ValueError(
                f"{unsupported} are not supported by an ensemble (they are per member): call a member, "
                "e.g. ensemble.members[0], for attentions, hidden states or input embeddings."
            )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if labels is not None:
            if decoder_input_ids is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
            use_cache = False
        if encoder_outputs is None:
            encoder_outputs = self.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)
        encoder_states = encoder_outputs[0] if isinstance(encoder_outputs, tuple) else encoder_outputs.last_hidden_state
        widths = [member.config.d_model for member in self.members]
        if encoder_states.shape[-1] != sum(widths):
            raise ValueError(
                f"encoder_outputs have width {encoder_states.shape[-1]}, but the members' encoders give "
                f"{' + '.join(map(str, widths))}: pass what this ensemble's get_encoder() returned."
            )
        member_caches = cache.member_caches if isinstance(cache, AttnMTEnsembleCache) else [None] * len(self.members)
        if cache is not None and not isinstance(cache, AttnMTEnsembleCache):
            raise ValueError(f"cache must be an AttnMTEnsembleCache (one cache per member), got {type(cache).__name__}.")

        log_probs, new_caches = [], []
        for member, states, member_cache in zip(self.members, encoder_states.split(widths, dim=-1), member_caches):
            output = member(
                attention_mask=attention_mask,
                decoder_input_ids=decoder_input_ids,
                decoder_attention_mask=decoder_attention_mask,
                encoder_outputs=BaseModelOutput(last_hidden_state=states),
                cache=member_cache,
                use_cache=use_cache,
                return_dict=True,
            )
            log_probs.append(torch.log_softmax(output.logits.float(), dim=-1))
            new_caches.append(output.cache)
        # log of the mean probability, computed stably: logsumexp over members minus log M.
        logits = torch.logsumexp(torch.stack(log_probs), dim=0) - math.log(len(self.members))

        loss = None
        if labels is not None:
            labelled = labels != -100
            loss = cross_entropy(logits[labelled], labels[labelled].to(logits.device))
        if cache is None and any(c is not None for c in new_caches):
            cache = AttnMTEnsembleCache(new_caches)
        output = Seq2SeqLMOutput(loss=loss, logits=logits, cache=cache if use_cache is not False else None,
                                 encoder_last_hidden_state=encoder_states)
        return output if return_dict else output.to_tuple()


__all__ = ["AttnMTEnsembleCache", "AttnMTEnsembleForConditionalGeneration"]
