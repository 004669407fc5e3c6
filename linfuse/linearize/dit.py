"""Finding the attention layers of diffusers DiTs: FLUX, SD3, PixArt and class-conditional DiT."""

from ..errors import InvalidArgumentError

CLEAR_MODELS = ("FluxTransformer2DModel", "SD3Transformer2DModel", "PixArtTransformer2DModel")
LIT_MODELS = ("DiTTransformer2DModel", "PixArtTransformer2DModel")


def window_attention_layers(transformer) -> list[tuple[str, object]]:
    """Every attention CLEAR restricts to local windows: all FLUX attentions (double- and single-stream), the
    joint attentions of SD3 (and SD3.5's extra image-only ``attn2``), PixArt's self-attentions (``attn1``)."""
    kind = _require(transformer, CLEAR_MODELS, "clear")
    if kind == "FluxTransformer2DModel":
        return [(n, m) for n, m in transformer.named_modules() if type(m).__name__ == "FluxAttention"]
    if kind == "SD3Transformer2DModel":
        return [(n, m) for n, m in transformer.named_modules() if _is_attention(m)
                and n.startswith("transformer_blocks.") and n.rsplit(".", 1)[-1] in ("attn", "attn2")]
    return dit_self_attention_layers(transformer)


def dit_self_attention_layers(transformer) -> list[tuple[str, object]]:
    """The ``attn1`` self-attention of every transformer block of a DiT or PixArt transformer."""
    _require(transformer, LIT_MODELS + CLEAR_MODELS[2:], "this method")
    return [(n, m) for n, m in transformer.named_modules()
            if _is_attention(m) and n.rsplit(".", 1)[-1] == "attn1" and not m.is_cross_attention]


def lit_layers(transformer) -> list[tuple[str, object]]:
    _require(transformer, LIT_MODELS, "lit")
    return dit_self_attention_layers(transformer)


def _is_attention(module) -> bool:
    from diffusers.models.attention_processor import Attention

    return isinstance(module, Attention)


def _require(transformer, classes: tuple[str, ...], method: str) -> str:
    name = type(transformer).__name__
    if name not in classes:
        raise InvalidArgumentError(
            f"method {method!r} converts {', '.join(classes)} (or a pipeline holding one as .transformer); "
            f"got {name}. UNets (SD-1.x/2.x, SDXL) use linfusion or the other kernel methods"
        )
    return name
