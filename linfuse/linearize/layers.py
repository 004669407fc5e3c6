"""Finding the self-attention layers of a diffusers UNet and describing an architecture by them."""

from dataclasses import asdict, dataclass

from diffusers.models.attention_processor import Attention

from ..errors import InvalidArgumentError


@dataclass(frozen=True)
class LayerSpec:
    """One self-attention layer: its module path in the UNet, width, head count and mixer width."""

    name: str
    dim: int
    heads: int
    mid_dim: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


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


def layer_specs(unet) -> list[LayerSpec]:
    return [LayerSpec(name, attn.to_q.in_features, attn.heads) for name, attn in self_attention_layers(unet)]


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
    return f"UNet with {detail}"
