"""A diffusers ``ResnetBlock2D`` run lean: band by band, with no full-size temporary but conv1's output.

    h   = conv1(act(GN1(x))) + proj(act(temb))        (GN1 and the activation applied per band of conv1's input)
    out = (shortcut(x) + conv2(act(GN2(h)))) / s      (GN2, act and the shortcut per band; written over h)

x may be a skip concatenation held as parts (:class:`~.parts.Parts`); GroupNorm then normalises over the joined
channels as over the concatenated tensor. Blocks this does not cover (up/down-sampling inside the resnet,
scale-shift time embedding) return None and run whole.
"""

import torch

from .conv import bandable, banded_conv
from .norm import group_stats, norm_act
from .parts import Parts


def supported(resnet) -> bool:
    convs = [resnet.conv1, resnet.conv2] + ([resnet.conv_shortcut] if resnet.conv_shortcut is not None else [])
    return (resnet.upsample is None and resnet.downsample is None and resnet.time_embedding_norm == "default"
            and all(bandable(conv) for conv in convs))


def time_projection(resnet, temb: torch.Tensor | None) -> torch.Tensor | None:
    if resnet.time_emb_proj is None or temb is None:
        return None
    if not resnet.skip_time_act:
        temb = resnet.nonlinearity(temb)
    return resnet.time_emb_proj(temb)[:, :, None, None]


def lean_resnet(resnet, x: Parts, temb: torch.Tensor | None, band_elements: int) -> Parts | None:
    """The block's output as parts, or None when the block is not one this covers (see the module docstring)."""
    if not supported(resnet):
        return None
    act = resnet.nonlinearity
    h = banded_conv(x, resnet.conv1, band_elements, pre=norm_act(group_stats(x, resnet.norm1, band_elements), act))
    projected = time_projection(resnet, temb)
    if projected is not None:
        h.add_(projected)
    normalise = norm_act(group_stats(h, resnet.norm2, band_elements), act)

    def shortcut(y: torch.Tensor, top: int, bottom: int) -> torch.Tensor:
        return add_shortcut(resnet, y, x.rows(top, bottom))

    def pre(band: torch.Tensor) -> torch.Tensor:
        return resnet.dropout(normalise(band))

    return banded_conv(h, resnet.conv2, band_elements, pre=pre, post=shortcut,
                       in_place=resnet.conv2.in_channels == resnet.conv2.out_channels)


def add_shortcut(resnet, y: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(shortcut(rows) + y) / output scale for a band of output rows ``y`` and the block's input rows."""
    residual = rows if resnet.conv_shortcut is None else resnet.conv_shortcut(rows)
    y = residual.add_(y) if residual is not rows else y.add_(rows)  # input + hidden, as diffusers adds them
    return y.div_(resnet.output_scale_factor) if resnet.output_scale_factor != 1 else y
