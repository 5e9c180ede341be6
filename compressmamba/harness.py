"""The ``compressmamba`` model type for EleutherAI's lm-evaluation-harness.

Importing this module registers it (lm-eval's public ``register_model``). lm-eval 0.4 discovers
no model types from other packages, so the stock ``lm_eval`` command cannot know it; this module
is that command with the type registered:

    python -m compressmamba.harness --model compressmamba --model_args pretrained=RUN_DIR/model \\
        --tasks lambada_openai,piqa --device cuda --batch_size 16

or, in Python, ``import compressmamba.harness`` and then
``lm_eval.simple_evaluate(model="compressmamba", model_args="pretrained=...", ...)``.

``pretrained`` is anything ``compressmamba evaluate`` takes (a run folder, a model folder of any
family :func:`compressmamba.models.load_pretrained` reads, a hub id); ``tokenizer`` (optional) is
``byte``, a tokenizer.json, a folder or a hub name. Every other model argument is lm-eval's ``hf``
type's (``batch_size``, ``device``, ``dtype``, ``max_length`` ...): this type is that one with our
loader, our byte tokenizer, and generation that never feeds padding into a recurrent state.
"""

from __future__ import annotations

import torch

from .inputs import require_lm_eval

require_lm_eval()

import lm_eval.models  # noqa: E402, F401  (lm-eval's own types first: get_model fills an empty registry only)
from lm_eval.api.registry import register_model  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402


@register_model("compressmamba")
class CompressMambaLM(HFLM):
    """lm-eval's ``hf`` model type over :func:`compressmamba.inputs.load_for_eval`."""

    def __init__(self, pretrained, tokenizer=None, backend: str = "causal", **kwargs):
        if backend != "causal":
            raise ValueError(f"backend={backend!r}: compressmamba models are causal language models")
        from .inputs import load_for_eval, load_tokenizer

        given = None if isinstance(tokenizer, str) else tokenizer  # a transformers tokenizer object
        spec = tokenizer if isinstance(tokenizer, str) else None
        if isinstance(pretrained, str):
            # a tokenizer object wins; "byte" then only spares looking one up
            self._loaded, tok = load_for_eval(pretrained, spec or ("byte" if given is not None else None))
        else:  # a model in memory: HFLM's own path for a PreTrainedModel
            if spec is None and given is None and pretrained.config.vocab_size != 256:
                raise ValueError(
                    f"tokenizer=None: a model in memory with {pretrained.config.vocab_size} ids needs its tokenizer "
                    "(only a byte-level model, 256 ids, gets the byte tokenizer)"
                )
            tok = None if given is not None else load_tokenizer(spec or "byte")
        super().__init__(pretrained=pretrained, tokenizer=given or tok, backend="causal", **kwargs)

    # HFLM's loading hooks, called from its __init__ with a string `pretrained`: the model is ours.
    def _get_config(self, pretrained, **kwargs) -> None:
        self._config = self._loaded.config

    def _create_model(self, pretrained, dtype="auto", parallelize=False, **kwargs) -> None:
        if parallelize:
            raise ValueError("parallelize=True: compressmamba models run on one device per process")
        model = self._loaded.to(self._device)  # HFLM moves a model itself only on some paths
        del self._loaded
        if dtype not in (None, "auto"):
            model = model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
        self._model = model

    def get_model_info(self) -> dict:
        """What lm-eval records about the model, with each layer's state size (no hub lookup)."""
        model = self._model
        return {
            "model_num_parameters": sum(p.numel() for p in model.parameters()),
            "model_dtype": str(next(model.parameters()).dtype),
            "state_sizes": list(getattr(model, "state_sizes", [])),
        }

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        """HFLM left-pads a batch of prompts; a recurrent state has no attention mask to skip the
        padding, so each group of prompts of one length is generated unpadded and written back
        in HFLM's layout (the padded prompt, then the continuation, then padding)."""
        mask = generation_kwargs.pop("attention_mask", None)
        if mask is None or bool(mask.all()):
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        n_pad = (mask == 0).sum(1)
        out = torch.full((context.shape[0], max_length), self.tokenizer.pad_token_id, dtype=context.dtype)
        out = out.to(context.device)
        for p in n_pad.unique().tolist():
            rows = (n_pad == p).nonzero().flatten()
            gen = super()._model_generate(context[rows, p:], max_length - p, stop, **dict(generation_kwargs))
            out[rows, p : p + gen.shape[1]] = gen
        out[:, : context.shape[1]] = context
        return out


def main() -> None:
    """``python -m compressmamba.harness ...``: lm-eval's command line with this type registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
