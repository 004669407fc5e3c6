"""Finding the attention layers of a diffusers denoiser (UNet or transformer) and describing it by them."""

from dataclasses import asdict, dataclass, field

from diffusers.models.attention_processor import Attention

from ..errors import InvalidArgumentError


@dataclass(frozen=True)
class LayerSpec:
    """One converted layer: its module path in the denoiser, width, head count, mixer width (LinFusion) and the
    method's other options (window radius, kernel size, …)."""

    name: str
    dim: int
    heads: int
    mid_dim: int | None = None
    options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_denoiser(model):
    """The UNet or transformer of a pipeline, or the model itself."""
    for part in ("unet", "transformer"):
        if getattr(model, part, None) is not None:
            return getattr(model, part)
    return model


def resolve_unet(model):
    """Return the UNet of a pipeline (anything with ``.unet``) or the model itself if it is a UNet."""
    from diffusers import UNet2DConditionModel

    unet = getattr(model, "unet", model)
    if not isinstance(unet, UNet2DConditionModel):
        raise InvalidArgumentError(
            f"expected a diffusers pipeline with a UNet2DConditionModel or the UNet itself; got {type(model).__name__}"
            " (DiT models are converted with other methods)"
        )
    return unet


def self_attention_layers(unet) -> list[tuple[str, Attention]]:
    """Every ``attn1`` self-attention of the UNet's transformer blocks, in ``named_modules`` order."""
    return [
        (name, module)
        for name, module in unet.named_modules()
        if isinstance(module, Attention) and name.rsplit(".", 1)[-1] == "attn1" and not module.is_cross_attention
    ]


def layer_specs(layers) -> list[LayerSpec]:
    return [LayerSpec(name, attn.to_q.in_features, attn.heads) for name, attn in layers]


def describe_architecture(layers: list[LayerSpec]) -> str:
    """A short human name for a UNet, recognising SD-1.x, SD-2.x and SDXL by their self-attention layers."""
    widths = sorted({layer.dim for layer in layers})
    head_counts = sorted({layer.heads for layer in layers})
    head_dims = {layer.dim // layer.heads for layer in layers}
    detail = (
        f"{len(layers)} self-attention layers, widths {'/'.join(map(str, widths))}, "
        f"heads {'/'.join(map(str, head_counts))}"
    )
    if len(layers) == 16 and widths == [320, 640, 1280]:
        family = "SD-1.x" if head_counts == [8] else "SD-2.x" if head_dims == {64} else None
        if family:
            return f"{family} UNet ({detail})"
    if len(layers) == 70 and widths == [640, 1280]:
        return f"SDXL UNet ({detail})"
    if layers and all(layer.name.startswith(("transformer_blocks.", "single_transformer_blocks.")) for layer in layers):
        return "transformer with " + detail.replace("self-attention", "attention")
    return f"UNet with {detail}"
