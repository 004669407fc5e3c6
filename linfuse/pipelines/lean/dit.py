"""The lean memory mode for DiTs (FLUX, SD3, PixArt): a transformer run so that no activation is 4·d wide over all
tokens at once.

``enable_dit_lean(transformer, DiTLeanSettings(...))`` sets instance ``forward`` methods on the transformer, its
feed-forward MLPs and FLUX's single-stream blocks; ``disable_dit_lean`` deletes them, leaving the model exactly as
it was; ``with dit_lean_mode(transformer, settings): …`` does both. While installed, with autograd off:

* the batch runs one sample at a time (SD3's and PixArt's classifier-free-guidance halves one after the other;
  FLUX's true CFG already calls the transformer once per half);
* every ``FeedForward`` runs over chunks of tokens: its N × 4d hidden activation exists a chunk at a time;
* a FLUX single-stream block computes ``x + gate · proj_out([attention ‖ MLP])`` chunk by chunk into x: the
  N × (d + 4d) concatenation (4·10⁹ elements for FLUX at 8192², beyond 32-bit indexing) is never whole.

Chunks hold at most ``chunk_elements`` elements of the widest tensor (a meta-device trace runs three of them, as
:func:`.parts.spans` says). Attention is the processors' own (CLEAR's
windows run as they are). With autograd on (training) the model's own forwards run.
"""

import functools
import inspect
from dataclasses import dataclass

import torch

from ...errors import InvalidArgumentError
from .forwards import install_forward, remove_forward
from .parts import spans

BATCHED_ARGUMENTS = ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "guidance",
                     "encoder_attention_mask")


@dataclass(frozen=True)
class DiTLeanSettings:
    """``chunk_elements``: the most elements of one chunk's widest tensor; ``offload``: the pipeline's text encoders
    and VAE wait in host memory while the transformer runs (:mod:`..offload`; the DiT ladder's last rung on CUDA)."""

    chunk_elements: int = 2**26
    offload: bool = False

    def __post_init__(self):
        if isinstance(self.chunk_elements, bool) or not isinstance(self.chunk_elements, int) or \
                self.chunk_elements < 1:
            raise InvalidArgumentError(f"chunk_elements must be a positive integer; got {self.chunk_elements!r}")

    def describe(self) -> str:
        return "lean (one sample at a time, chunked MLPs" + (", text encoders and VAE off the device)" if self.offload
                                                              else ")")

    def rows(self, width: int) -> int:
        """Tokens per chunk when the widest tensor of a chunk is ``width`` wide."""
        return max(1, self.chunk_elements // width)


def _check_transformer(transformer) -> None:
    from ..families import TRANSFORMER_FAMILIES

    if type(transformer).__name__ not in TRANSFORMER_FAMILIES:
        raise InvalidArgumentError(f"the DiT lean mode runs {', '.join(TRANSFORMER_FAMILIES)}; got "
                                   f"{type(transformer).__name__}")


def enable_dit_lean(transformer, settings: DiTLeanSettings | None = None) -> None:
    from diffusers.models.attention import FeedForward
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock

    _check_transformer(transformer)
    disable_dit_lean(transformer)
    settings = settings or DiTLeanSettings()
    for module in transformer.modules():
        if isinstance(module, FeedForward):
            _install(module, chunked_feed_forward, settings)
        elif isinstance(module, FluxSingleTransformerBlock):
            _install(module, lean_single_block, settings)
    _install(transformer, one_sample_at_a_time, settings)
    transformer._linfuse_lean = settings


def disable_dit_lean(transformer) -> None:
    """Remove every lean forward (a no-op when none is installed)."""
    for module in transformer.modules():
        remove_forward(module)
    transformer.__dict__.pop("_linfuse_lean", None)


def dit_lean_settings_of(transformer) -> DiTLeanSettings | None:
    return transformer.__dict__.get("_linfuse_lean")


def dit_lean_mode(transformer, settings: DiTLeanSettings | None):
    """Run the block with the lean forwards (``settings`` None: the plain ones), then restore what was before."""
    from . import installed_mode

    return installed_mode(transformer, settings, enable_dit_lean, disable_dit_lean, dit_lean_settings_of)


def _install(module, lean, settings: DiTLeanSettings) -> None:
    own = type(module).forward.__get__(module)
    forward = functools.partial(lean, module, own, settings)
    forward.__signature__ = inspect.signature(own)
    install_forward(module, forward)  # beneath an accelerate hook (enable_model_cpu_offload) when there is one


def one_sample_at_a_time(transformer, own, settings, *args, **kwargs):
    """The transformer called per sample of the batch, outputs concatenated (as its own return type)."""
    bound = inspect.signature(own).bind(*args, **kwargs)
    batch = bound.arguments["hidden_states"].shape[0]
    if torch.is_grad_enabled() or batch == 1:
        return own(*args, **kwargs)
    outputs = []
    for index in range(batch):
        call = dict(bound.arguments)
        for name in BATCHED_ARGUMENTS:
            value = call.get(name)
            if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == batch:
                call[name] = value[index:index + 1]
        extra = call.pop("kwargs", {})
        outputs.append(own(**call, **extra))
    first = outputs[0]
    if isinstance(first, tuple):
        return (torch.cat([o[0] for o in outputs]),)
    return type(first)(sample=torch.cat([o.sample for o in outputs]))


def chunked_feed_forward(ff, own, settings, hidden_states, *args, **kwargs):
    """``FeedForward`` over chunks of tokens (dim −2) into one output tensor."""
    if torch.is_grad_enabled() or hidden_states.dim() != 3:
        return own(hidden_states, *args, **kwargs)
    batch, tokens, _ = hidden_states.shape
    last = ff.net[-1]
    rows = settings.rows(batch * last.in_features)
    if rows >= tokens:
        return own(hidden_states)
    out = hidden_states.new_empty(batch, tokens, last.out_features)
    for start, stop in spans(tokens, rows, hidden_states.is_meta):
        out[:, start:stop] = own(hidden_states[:, start:stop])
    return out


def lean_single_block(block, own, settings, hidden_states, encoder_hidden_states, temb, image_rotary_emb=None,
                      joint_attention_kwargs=None):
    """FLUX's single-stream block with its MLP and output projection per chunk of tokens:
    x ← x + gate · proj_out([attn(norm x) ‖ act(proj_mlp(norm x))]), x = [text; image]."""
    if torch.is_grad_enabled():
        return own(hidden_states, encoder_hidden_states, temb, image_rotary_emb, joint_attention_kwargs)
    text = encoder_hidden_states.shape[1]
    joint = torch.cat([encoder_hidden_states, hidden_states], dim=1)
    normed, gate = block.norm(joint, emb=temb)
    attention = block.attn(hidden_states=normed, image_rotary_emb=image_rotary_emb, **(joint_attention_kwargs or {}))
    gate = gate.unsqueeze(1)
    rows = settings.rows(joint.shape[0] * (block.proj_mlp.out_features + attention.shape[-1]))
    for start, stop in spans(joint.shape[1], rows, joint.is_meta):
        part = slice(start, stop)
        mlp = block.act_mlp(block.proj_mlp(normed[:, part]))
        joint[:, part] += gate * block.proj_out(torch.cat([attention[:, part], mlp], dim=2))
    if joint.dtype == torch.float16:
        joint.clamp_(-65504, 65504)
    return joint[:, :text], joint[:, text:]
