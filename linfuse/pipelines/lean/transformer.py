"""A diffusers ``Transformer2DModel`` (continuous input, as in SD UNets) run lean: in chunks of token rows.

The tokens T (N × C) are the one full-size tensor; every sub-layer adds to them in place, chunk by chunk::

    T ← proj_in(GN(x))                      (GroupNorm statistics over bands, applied per chunk)
    T += attn1(LN1(T))                      (see below)
    T += attn2(LN2(T), text)                (token-wise: exact per chunk)
    T += FF(LN3(T))                         (token-wise: exact per chunk; the 8C-wide GEGLU never exists whole)
    x += proj_out(T)                        (into the block input, which nothing else holds)

On the floor rung with parked skips x waits in host memory (:class:`~.host_rows.HostRows`) before T is made from
it, and x + proj_out(T) is written band by band over T's own rows, read as a channels-last activation: one
activation of the block's size is on the device, not two.

Self-attention couples all tokens, so it runs in two passes. For a linfuse processor with a normalised linear
attention (``chunk_form``): pass 1 sums the keys' state [Σ φ(k) vᵀ ‖ Σ φ(k)] over chunks, pass 2 reads it out for
each chunk's queries, plus the method's local term (SLAB's depth-wise convolution of V) from the chunk's rows and
``local_rows`` rows of halo (the halo above taken before the rows above were updated). For softmax
(``AttnProcessor2_0``): pass 1 stores K and V, pass 2 attends each chunk of queries to them. Other processors run
on the whole sequence.
"""

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import nn

from ...kernels import linear_attention_readout, linear_attention_state
from ...linearize.processor import SelfAttentionProcessor
from .host_rows import HostRows
from .norm import group_stats, norm_act
from .parts import Parts, rows_per_band, spans


def supported(model) -> bool:
    return (model.is_input_continuous and isinstance(model.norm, nn.GroupNorm)
            and all(block_supported(block) for block in model.transformer_blocks))


def block_supported(block) -> bool:
    return block.norm_type == "layer_norm" and block.pos_embed is None and not block.only_cross_attention


def token_rows(model, width: int, chunk_elements: int, at_least: int = 1, context_tokens: int = 0) -> int:
    """Grid rows per chunk, so that a chunk of the widest per-token tensor holds at most ``chunk_elements``: the
    widest of the model's linear layers' outputs and of its cross-attention score rows (heads × ``context_tokens``
    per token, as an attention that is not fused holds them)."""
    widest = max((m.out_features for m in model.modules() if isinstance(m, nn.Linear)), default=1)
    scores = max((block.attn2.heads * context_tokens for block in model.transformer_blocks
                  if getattr(block, "attn2", None) is not None), default=0)
    return max(at_least, rows_per_band(width * max(widest, scores), chunk_elements))


def lean_transformer(model, x: Parts, context, settings, cross_attention_kwargs=None,
                     encoder_attention_mask=None) -> Parts | None:
    """model(x) + x, written into ``x`` (consumed); None when the model is not one this covers."""
    if not supported(model):
        return None
    height, width = x.height, x.width
    halo = max((_local_rows(block.attn1) for block in model.transformer_blocks), default=0)
    text = context.shape[1] if isinstance(context, torch.Tensor) else 0
    step = token_rows(model, width, settings.chunk_elements, at_least=halo, context_tokens=text)
    bands = spans(height, step, x.first.is_meta)
    residual = x
    if settings.floor and settings.park_skips:  # the floor: x waits in host memory while T exists
        residual = HostRows(x.take(), settings.band_elements, settings.park_dir)
    tokens = _tokens_in(model, residual, bands, settings.band_elements)
    for block in model.transformer_blocks:
        _self_attention_(block, tokens, (height, width), bands)
        for top, bottom in bands:
            rows = tokens[:, top * width:bottom * width]
            if block.attn2 is not None:
                rows.add_(block.attn2(block.norm2(rows), encoder_hidden_states=context,
                                      attention_mask=encoder_attention_mask, **(cross_attention_kwargs or {})))
            rows.add_(block.ff(block.norm3(rows)))
    if residual is x:
        for top, bottom in bands:
            x.add_rows_(top, _projected_out(model, tokens, top, bottom, width))
        return x
    return _out_over_tokens(model, tokens, residual, bands, (height, width))


def _projected_out(model, tokens: torch.Tensor, top: int, bottom: int, width: int) -> torch.Tensor:
    """proj_out of the token rows [top, bottom) as (1, C, rows, W)."""
    rows = tokens[:, top * width:bottom * width]
    if model.use_linear_projection:
        return model.proj_out(rows).reshape(1, bottom - top, width, -1).permute(0, 3, 1, 2)
    return model.proj_out(rows.reshape(1, bottom - top, width, rows.shape[-1]).permute(0, 3, 1, 2).contiguous())


def _out_over_tokens(model, tokens: torch.Tensor, residual: HostRows, bands, grid: tuple[int, int]) -> Parts:
    """x + proj_out(T) with x in host memory, each band written over its own token rows when the widths agree:
    the tokens (1, H·W, C) viewed as a channels-last (1, C, H, W) activation (else into a new one)."""
    (height, width), channels = grid, residual.channels
    if tokens.shape[-1] == channels:
        out = Parts.of(tokens.view(1, height, width, channels).permute(0, 3, 1, 2))
    else:
        out = Parts.empty(channels, height, width, like=tokens)
    for top, bottom in bands:
        band = _projected_out(model, tokens, top, bottom, width)
        out.write_rows(top, band.add_(residual.rows(top, bottom)))  # input + hidden: commutative, exact either way
    residual.release()
    return out


def _tokens_in(model, x: Parts, bands, band_elements: int) -> torch.Tensor:
    """T = proj_in(GN(x)) as (1, H·W, C), filled band by band."""
    normalise = norm_act(group_stats(x, model.norm, band_elements))
    linear = model.use_linear_projection
    inner = model.proj_in.out_features if linear else model.proj_in.out_channels
    width = x.width
    tokens = x.first.new_empty(1, x.height * width, inner)
    for top, bottom in bands:
        band = normalise(x.rows(top, bottom))
        if not linear:
            band = model.proj_in(band)
        rows = band.permute(0, 2, 3, 1).reshape(1, (bottom - top) * width, band.shape[1])
        tokens[:, top * width:bottom * width] = model.proj_in(rows) if linear else rows
    return tokens


def _local_rows(attn) -> int:
    processor = getattr(attn, "processor", None)
    return processor.local_rows if isinstance(processor, SelfAttentionProcessor) else 0


def _plain_layer(attn) -> bool:
    """No spatial or group norm, residual or rescaling inside the attention layer: chunking may bypass them."""
    return (attn.spatial_norm is None and attn.group_norm is None and not attn.residual_connection
            and attn.rescale_output_factor == 1.0 and not attn.is_cross_attention)


def _self_attention_(block, tokens: torch.Tensor, grid: tuple[int, int], bands) -> None:
    attn = block.attn1
    processor = attn.processor
    if _plain_layer(attn) and isinstance(processor, SelfAttentionProcessor) and processor.chunk_form():
        _linear_attention_(block, processor, tokens, grid, bands)
    elif _plain_layer(attn) and type(processor) is AttnProcessor2_0 and attn.norm_q is None and attn.norm_k is None:
        _softmax_attention_(block, tokens, grid, bands)
    else:
        tokens.add_(attn(block.norm1(tokens)))


def _out(attn, out: torch.Tensor, dtype) -> torch.Tensor:
    return attn.to_out[1](attn.to_out[0](out.flatten(2).to(dtype)))


def _linear_attention_(block, processor, tokens, grid, bands) -> None:
    attn, (height, width) = block.attn1, grid
    feature_map, eps = processor.chunk_form()
    state = key_sum = None
    for top, bottom in bands:
        keys, values = processor.project_keys(attn, block.norm1(tokens[:, top * width:bottom * width]))
        partial_state, partial_sum = linear_attention_state(keys, values, feature_map=feature_map)
        state = partial_state if state is None else state + partial_state
        key_sum = partial_sum if key_sum is None else key_sum + partial_sum
    count = height * width
    state, key_sum = state / count, key_sum / count
    halo, carry = processor.local_rows, None
    for top, bottom in bands:
        first, last = max(top - halo, 0), min(bottom + halo, height)
        normed = block.norm1(tokens[:, top * width:last * width])
        if first < top:
            normed = torch.cat([carry, normed], dim=1)
        own = normed[:, (top - first) * width:(bottom - first) * width]
        q = processor.project_queries(attn, own)
        out = linear_attention_readout(q, state, key_sum, feature_map=feature_map, eps=eps)  # q's dtype
        if halo:
            values = processor.project_keys(attn, normed)[1]
            local = processor.local_term(values, (last - first, width))
            out = out + local[:, (top - first) * width:(bottom - first) * width].to(out.dtype)
            carry = normed[:, (bottom - first - halo) * width:(bottom - first) * width]
        tokens[:, top * width:bottom * width].add_(_out(attn, out, tokens.dtype))


def _softmax_attention_(block, tokens, grid, bands) -> None:
    attn, width = block.attn1, grid[1]
    count, heads = tokens.shape[1], attn.heads
    keys = tokens.new_empty(1, count, attn.to_k.out_features)
    values = tokens.new_empty(1, count, attn.to_v.out_features)
    for top, bottom in bands:
        normed = block.norm1(tokens[:, top * width:bottom * width])
        keys[:, top * width:bottom * width] = attn.to_k(normed)
        values[:, top * width:bottom * width] = attn.to_v(normed)
    keys, values = (t.view(1, count, heads, -1).transpose(1, 2) for t in (keys, values))
    for top, bottom in bands:
        rows = tokens[:, top * width:bottom * width]
        q = attn.to_q(block.norm1(rows))
        q = q.view(1, -1, heads, q.shape[-1] // heads).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, keys, values, scale=attn.scale)
        rows.add_(_out(attn, out.transpose(1, 2), tokens.dtype))
