"""The lean memory mode: a UNet run so that what is live at once approaches the floor of its activations.

``enable_lean(unet, LeanSettings(...))`` installs the lean forward on a ``UNet2DConditionModel`` (the instance's
``forward``; nothing else of the model changes) and ``disable_lean(unet)`` removes it, leaving the model exactly as
it was; ``with lean_mode(unet, settings): …`` does both. While installed, with autograd off:

* the batch runs one sample at a time (the classifier-free-guidance halves one after the other);
* convolutions, up-sampling and skip concatenations run in bands of rows with halos (:mod:`.conv`), on activations
  kept in channel parts of at most 2^29 elements each (:mod:`.parts`), so no tensor reaches 2^31 elements;
* GroupNorm statistics are accumulated over bands and applied per band, activations and residual adds in place
  (:mod:`.norm`, :mod:`.resnet`);
* transformer blocks run in chunks of token rows: feed-forward, cross-attention, projections, and self-attention in
  two passes (:mod:`.transformer`);
* with ``park_skips`` on CUDA the skip activations wait in pinned host memory (:mod:`.skips`);
* with ``fuse_upsampling`` each up-sampler is computed band by band inside the resnet that reads it
  (:class:`.conv.Upsampled`): the up-sampled activation never exists whole, for about four times that
  convolution's work;
* with ``floor`` (the last rung) each resnet runs depth-first and writes its output over its input
  (:mod:`.depth_first`: conv1 recomputed, no stored hidden activation), and with ``park_skips`` the skips and each
  transformer block's input wait in host memory as :class:`.host_rows.HostRows`, read back one band at a time: the
  finest level holds about one activation of its size.

With autograd on (training) the UNet's own forward runs.

No step reads a tensor's value on the host: band and chunk bounds come from shapes, up-sampling takes rows by slicing
(:func:`.conv.upsampled_rows`), and attention keeps an fp32 state while q, k, v stay in the model's precision (a
dispatch trace of a bf16 UNet holds no fp32 tensor larger than one band). It is still not a forward for
``torch.compile``: its loops run once per band, hundreds of bands at 16K, which dynamo would unroll into one graph
per band count, and parked skips move tensors to host memory by design. Compile the plain forward; use the lean one
where memory, not launch overhead, is the limit. (The DiT lean mode, :mod:`.dit`, has few chunks per layer and
compiles whole: tiny FLUX with CLEAR gives one graph, no break.)
"""

import functools
import inspect
import os
from contextlib import contextmanager
from dataclasses import dataclass, replace

from ...errors import InvalidArgumentError
from .forwards import install_forward, remove_forward
from .unet import lean_forward

MIN_BUDGET, MAX_BUDGET = 2**20, 2**26  # elements of one band or chunk tensor


@dataclass(frozen=True)
class LeanSettings:
    """``park_skips``: skips in pinned host memory (CUDA only); ``fuse_upsampling``: up-samplers recomputed inside
    their consumer instead of stored; ``floor``: resnets depth-first, their output over their input
    (:mod:`.depth_first`), and with ``park_skips`` the skips and the transformer blocks' residuals read back from
    host memory band by band (:mod:`.host_rows`; on any device), or with ``park_dir`` in temporary files there (the
    CPU's floor, whose host memory is its device memory); ``band_elements`` / ``chunk_elements``: the most
    elements of one band
    (convolutions, GroupNorm) or token chunk (transformer blocks) tensor; None picks 1/8 of the finest activation
    within [2^20, 2^26] (the floor: 1/16 within [2^20, 2^25]); ``offload``: the pipeline's text encoders and VAE
    wait in host memory while the UNet runs (:mod:`..offload`; the floor's on CUDA)."""

    park_skips: bool = False
    fuse_upsampling: bool = False
    floor: bool = False
    park_dir: str | None = None
    offload: bool = False
    band_elements: int | None = None
    chunk_elements: int | None = None

    def __post_init__(self):
        if self.park_dir is not None and not (self.floor and self.park_skips and os.path.isdir(self.park_dir)):
            raise InvalidArgumentError(f"park_dir must be an existing directory, with floor=True and park_skips=True; "
                                       f"got {self.park_dir!r}")
        for name in ("band_elements", "chunk_elements"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InvalidArgumentError(f"{name} must be a positive integer or None; got {value!r}")

    def resolved(self, unet, sample) -> "LeanSettings":
        finest = unet.config.block_out_channels[0] * sample.shape[-2] * sample.shape[-1]
        share = 16 if self.floor else 8  # the floor's bands are a larger part of what it holds
        auto = min(MAX_BUDGET // (share // 8), max(MIN_BUDGET, finest // share))
        return replace(self, band_elements=self.band_elements or auto, chunk_elements=self.chunk_elements or auto)

    def describe(self) -> str:
        where = "on disk" if self.park_dir else "in host memory"
        parts = ["floor" if self.floor else "lean"] + ([f"skips parked {where}"] if self.park_skips else []) + \
            (["up-sampling fused"] if self.fuse_upsampling else []) + \
            (["resnets depth-first"] if self.floor else []) + (["text encoders and VAE off the device"] if self.offload
                                                               else [])
        return ", ".join(parts)


def _check_unet(unet) -> None:
    from diffusers import UNet2DConditionModel

    if not isinstance(unet, UNet2DConditionModel):
        raise InvalidArgumentError(f"the lean memory mode runs a UNet2DConditionModel; got {type(unet).__name__}")


def enable_lean(unet, settings: LeanSettings | None = None) -> None:
    """Install the lean forward on ``unet`` (replacing an earlier lean installation's settings)."""
    _check_unet(unet)
    settings = settings or LeanSettings()
    forward = functools.partial(lean_forward, unet, settings)
    forward.__signature__ = inspect.signature(type(unet).forward.__get__(unet))
    remove_forward(unet)
    install_forward(unet, forward)  # beneath diffusers' enable_model_cpu_offload hook when there is one
    unet._linfuse_lean = settings


def disable_lean(unet) -> None:
    """Remove the lean forward; the UNet runs its own again (a no-op when none is installed)."""
    if "_linfuse_lean" in unet.__dict__:
        remove_forward(unet)
        del unet._linfuse_lean


def lean_settings_of(unet) -> LeanSettings | None:
    return unet.__dict__.get("_linfuse_lean")


def lean_mode(unet, settings: LeanSettings | None):
    """Run the block with the lean forward (``settings`` None: the plain forward), then restore what was before."""
    return installed_mode(unet, settings, enable_lean, disable_lean, lean_settings_of)


@contextmanager
def denoiser_lean_mode(pipe, settings):
    """A pipeline's denoiser in its lean mode for the block: :func:`lean_mode` on a UNet, the DiT lean mode
    (:func:`.dit.dit_lean_mode`) on a transformer; ``settings`` None: the plain forwards. Settings with
    ``offload`` also keep the text encoders and VAE in host memory while the denoiser runs
    (:func:`..offload.component_offload`)."""
    from ..families import is_dit
    from ..offload import component_offload

    if is_dit(pipe):
        from .dit import dit_lean_mode

        mode = dit_lean_mode(pipe.transformer, settings)
    else:
        mode = lean_mode(pipe.unet, settings)
    with component_offload(pipe, enabled=getattr(settings, "offload", False)), mode:
        yield pipe


@contextmanager
def installed_mode(model, settings, enable, disable, settings_of):
    """``enable(model, settings)`` (``disable(model)`` for None) for the block; then what ``settings_of`` said
    was installed before is installed again."""
    before = settings_of(model)
    if settings is None:
        disable(model)
    else:
        enable(model, settings)
    try:
        yield model
    finally:
        if before is None:
            disable(model)
        else:
            enable(model, before)


__all__ = ["LeanSettings", "denoiser_lean_mode", "disable_lean", "enable_lean", "lean_mode", "lean_settings_of"]
