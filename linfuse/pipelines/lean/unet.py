"""The lean forward of a ``UNet2DConditionModel``: one sample at a time, every block in bands and chunks.

The batch (the two classifier-free-guidance halves, and any images per prompt) runs one sample after another; for
each, the UNet's own embeddings, then its blocks with :mod:`.resnet`, :mod:`.transformer` and :mod:`.conv` on
activations held as :class:`~.parts.Parts`, the skips in a :class:`~.skips.SkipStore`. A module this does not cover
(another block type, FreeU, LoRA-wrapped convolutions, T2I-adapter residuals, masks) runs whole with its own
forward, so the result is the same and only the memory differs.
"""

import torch

from ...errors import InvalidArgumentError
from .conv import Joined, Upsampled, bandable, banded_conv, same_size
from .depth_first import depth_first_resnet
from .host_rows import HostRows
from .norm import group_stats, norm_act
from .parts import Parts
from .resnet import lean_resnet
from .skips import SkipStore
from .transformer import lean_transformer

BLOCKS_DOWN = ("CrossAttnDownBlock2D", "DownBlock2D")
BLOCKS_UP = ("CrossAttnUpBlock2D", "UpBlock2D")
BLOCKS_MID = ("UNetMidBlock2DCrossAttn",)
WHOLE_ONLY = ("attention_mask", "encoder_attention_mask", "down_intrablock_additional_residuals")


def split_batch(value, index: int, batch: int):
    """Sample ``index`` of a forward argument: tensors with the batch dimension are sliced, dicts and lists
    element-wise, everything else (scalars, a timestep shared by the batch) kept."""
    if isinstance(value, torch.Tensor):
        return value[index:index + 1] if value.ndim and value.shape[0] == batch and batch > 1 else value
    if isinstance(value, dict):
        return {key: split_batch(item, index, batch) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(split_batch(item, index, batch) for item in value)
    return value


def lean_forward(unet, settings, sample, timestep, encoder_hidden_states, return_dict: bool = True, **kwargs):
    """``unet(sample, timestep, encoder_hidden_states, …)`` as the lean mode runs it (see the module docstring)."""
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

    plain = type(unet).forward
    if torch.is_grad_enabled():  # training: in-place updates would break autograd
        return plain(unet, sample, timestep, encoder_hidden_states, return_dict=return_dict, **kwargs)
    _check_devices(sample, encoder_hidden_states)
    batch = sample.shape[0]
    # On the meta device (a memory trace) every sample allocates the same: the last one runs, with the outputs of
    # the others already held, and they are stand-ins of its output's shape.
    indices = [batch - 1] if sample.is_meta else range(batch)
    outputs = [sample.new_empty(1, unet.config.out_channels, *sample.shape[2:]) for _ in range(batch - 1)] \
        if sample.is_meta else []
    budget = settings.resolved(unet, sample)
    for index in indices:
        one = split_batch({"sample": sample, "timestep": timestep, "encoder_hidden_states": encoder_hidden_states,
                           **kwargs}, index, batch)
        if _runs_whole(unet, one):
            outputs.append(plain(unet, return_dict=False, **one)[0])
        else:
            outputs.append(_sample_forward(unet, budget, **one))
        del one
    out = torch.cat(outputs) if batch > 1 else outputs[0]
    return UNet2DConditionOutput(sample=out) if return_dict else (out,)


def _check_devices(sample: torch.Tensor, context) -> None:
    """The latent and the text embeddings on one device (the bands mix them; a 0-d timestep may be anywhere)."""
    if isinstance(context, torch.Tensor) and context.device != sample.device:
        raise InvalidArgumentError(f"the lean mode needs sample and encoder_hidden_states on one device; got "
                                   f"{sample.device} and {context.device}: move them with .to(unet.device) first")


def _runs_whole(unet, arguments: dict) -> bool:
    gligen = (arguments.get("cross_attention_kwargs") or {}).get("gligen") is not None
    return (gligen or any(arguments.get(name) is not None for name in WHOLE_ONLY)
            or unet.config.addition_embed_type == "image_hint" or not bandable(unet.conv_in)
            or not bandable(unet.conv_out))


def _embeddings(unet, sample, timestep, encoder_hidden_states, class_labels, timestep_cond, added_cond_kwargs):
    """(time embedding, text context) of one sample, by the UNet's own embedding methods."""
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), timestep_cond)
    class_emb = unet.get_class_embed(sample=sample, class_labels=class_labels)
    if class_emb is not None:
        emb = torch.cat([emb, class_emb], dim=-1) if unet.config.class_embeddings_concat else emb + class_emb
    aug_emb = unet.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states,
                                 added_cond_kwargs=added_cond_kwargs)
    emb = emb + aug_emb if aug_emb is not None else emb
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    context = unet.process_encoder_hidden_states(encoder_hidden_states=encoder_hidden_states,
                                                 added_cond_kwargs=added_cond_kwargs)
    return emb, context


def _sample_forward(unet, budget, sample, timestep, encoder_hidden_states, class_labels=None, timestep_cond=None,
                    cross_attention_kwargs=None, added_cond_kwargs=None, down_block_additional_residuals=None,
                    mid_block_additional_residual=None, attention_mask=None, encoder_attention_mask=None,
                    down_intrablock_additional_residuals=None):
    """One sample through the lean blocks (the arguments in WHOLE_ONLY are None here: _runs_whole routed them)."""
    if unet.config.center_input_sample:
        sample = 2 * sample - 1.0
    emb, context = _embeddings(unet, sample, timestep, encoder_hidden_states, class_labels, timestep_cond,
                               added_cond_kwargs)
    run = _Runner(unet, budget, emb, context, cross_attention_kwargs, down_block_additional_residuals)
    h = banded_conv(Parts.of(sample), unet.conv_in, budget.band_elements)
    run.skips.push(h)
    for block in unet.down_blocks:
        h = run.down(block, h)
    if unet.mid_block is not None:
        h = run.mid(unet.mid_block, h)
    if mid_block_additional_residual is not None:
        h.add_(mid_block_additional_residual)
    for index, block in enumerate(unet.up_blocks):
        h = run.up(block, h, run.upsample_size(sample, index))
    pre = None
    if unet.conv_norm_out is not None:
        pre = norm_act(group_stats(h, unet.conv_norm_out, budget.band_elements), unet.conv_act)
    return banded_conv(h, unet.conv_out, budget.band_elements, pre=pre).tensor()


class _Runner:
    """One sample's pass through the blocks, with its embeddings, budgets and skip store."""

    def __init__(self, unet, budget, emb, context, cross_attention_kwargs, controlnet_residuals):
        self.unet, self.budget, self.emb, self.context = unet, budget, emb, context
        self.cross_attention_kwargs = cross_attention_kwargs
        host_rows = budget.band_elements if budget.floor else None
        self.skips = SkipStore(budget.park_skips, emb.device, band_elements=host_rows, directory=budget.park_dir)
        self.residuals = list(controlnet_residuals) if controlnet_residuals is not None else None

    def resnet(self, resnet, x) -> Parts:
        """The block on ``x`` (:class:`Parts` or, on the floor, :class:`Joined` running activation and skip):
        depth-first over x's leading part on the floor unless a skip on the device shares it."""
        out = None
        if self.budget.floor:
            head = x.sources[0] if isinstance(x, Joined) else x
            writable = isinstance(head, Parts) and not self.skips.holds(head)
            out = depth_first_resnet(resnet, x, self.emb, self.budget.band_elements, writable=writable)
        if out is None:
            out = lean_resnet(resnet, x, self.emb, self.budget.band_elements)
        return out if out is not None else Parts.of(resnet(x.tensor(), self.emb))

    def attention(self, model, x: Parts) -> Parts:
        out = lean_transformer(model, x, self.context, self.budget, self.cross_attention_kwargs)
        if out is None:
            out = Parts.of(model(x.tensor(), encoder_hidden_states=self.context,
                                 cross_attention_kwargs=self.cross_attention_kwargs, return_dict=False)[0])
        return out

    def down(self, block, h: Parts) -> Parts:
        h = h.take()
        if type(block).__name__ not in BLOCKS_DOWN:
            h, skips = block(hidden_states=h.tensor(), temb=self.emb, **self._cross(block))
            for skip in skips:
                self.skips.push(Parts.of(skip))
            return Parts.of(h)
        attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
        for resnet, attention in zip(block.resnets, attentions, strict=True):
            h = self.resnet(resnet, h)
            if attention is not None:
                h = self.attention(attention, h)
            self.skips.push(h)
        for sampler in block.downsamplers or []:
            if _plain_downsampler(sampler):
                parked = self.skips.parked_top()  # on the floor: read h from the skip's host copy, h freed first
                if parked is not None:
                    h.release()
                h = banded_conv(parked or h, sampler.conv, self.budget.band_elements)
            else:
                h = Parts.of(sampler(h.tensor()))
            self.skips.push(h)
        return h

    def mid(self, block, h: Parts) -> Parts:
        h = h.take()
        if type(block).__name__ not in BLOCKS_MID:
            return Parts.of(block(h.tensor(), self.emb, **self._cross(block)))
        h = self.resnet(block.resnets[0], h)
        for attention, resnet in zip(block.attentions, block.resnets[1:], strict=True):
            h = self.resnet(resnet, self.attention(attention, h))
        return h

    def up(self, block, h: Parts, upsample_size) -> Parts:
        h = h.take()
        count = len(block.resnets)
        if type(block).__name__ not in BLOCKS_UP or _freeu(block):
            skips = [self._pop().tensor() for _ in range(count)][::-1]
            return Parts.of(block(hidden_states=h.tensor(), temb=self.emb, res_hidden_states_tuple=tuple(skips),
                                  upsample_size=upsample_size, **self._cross(block)))
        attentions = getattr(block, "attentions", None) or [None] * count
        for resnet, attention in zip(block.resnets, attentions, strict=True):
            joined = Joined([h, self._pop()]) if self.budget.floor else h + self._pop()
            h = self.resnet(resnet, joined)
            joined.release()
            self.skips.prefetch()
            if attention is not None:
                h = self.attention(attention, h)
        for sampler in block.upsamplers or []:
            size = tuple(upsample_size or (2 * h.height, 2 * h.width))
            if _plain_upsampler(sampler) and self.budget.fuse_upsampling and same_size(sampler.conv):
                if self.budget.floor and self.budget.park_skips:  # its source waits in host memory too
                    h = HostRows(h.take(), self.budget.band_elements, self.budget.park_dir)
                h = Upsampled(h, sampler.conv, size)  # read (recomputed) by the next block's first resnet
            elif _plain_upsampler(sampler):
                h = banded_conv(h, sampler.conv, self.budget.band_elements, upsample=size)
            else:
                h = Parts.of(sampler(h.tensor(), upsample_size))
        return h

    def upsample_size(self, sample: torch.Tensor, index: int):
        """The size up block ``index`` up-samples to: None (×2) when the latent is a multiple of 2^levels, else the
        size of the skip that follows this block's skips, as diffusers decides it."""
        factor = 2 ** self.unet.num_upsamplers
        if index == len(self.unet.up_blocks) - 1 or all(side % factor == 0 for side in sample.shape[-2:]):
            return None
        return self.skips.shapes[-(len(self.unet.up_blocks[index].resnets) + 1)][2:]

    def _pop(self) -> Parts:
        residual = self.residuals.pop() if self.residuals else None
        return self.skips.pop(residual)

    def _cross(self, block) -> dict:
        if not getattr(block, "has_cross_attention", False):
            return {}
        return {"encoder_hidden_states": self.context, "cross_attention_kwargs": self.cross_attention_kwargs}


def _plain_downsampler(sampler) -> bool:
    return (type(sampler).__name__ == "Downsample2D" and sampler.use_conv and sampler.padding != 0
            and sampler.norm is None and bandable(sampler.conv))


def _plain_upsampler(sampler) -> bool:
    return (type(sampler).__name__ == "Upsample2D" and sampler.interpolate and sampler.use_conv
            and not sampler.use_conv_transpose and sampler.norm is None and sampler.name == "conv"
            and bandable(sampler.conv))


def _freeu(block) -> bool:
    return all(getattr(block, name, None) for name in ("s1", "s2", "b1", "b2"))
