"""``linearize`` / ``unlinearize``: install and remove linear-attention processors on a diffusers UNet."""

import os
from dataclasses import dataclass, field, replace

import torch

from ..errors import ArchitectureMismatchError, InvalidArgumentError, WeightsError
from .layers import LayerSpec, describe_architecture, layer_specs, resolve_unet, self_attention_layers
from .registry import get_method, processor_classes
from .weights import LinearCheckpoint, read_linear_weights, write_linear_weights

SDXL_MID_DIM_DIVISOR = 16


@dataclass
class LinearizeReport:
    """What a conversion did."""

    method: str
    architecture: str
    layers: list[str] = field(default_factory=list)
    parameters_added: int = 0
    weights: str | None = None
    restored: bool = False

    @property
    def layers_replaced(self) -> int:
        return len(self.layers)

    def __str__(self) -> str:
        if self.restored:
            return f"{self.layers_replaced} self-attention layers restored to their original processors"
        source = f" from {self.weights}" if self.weights else " (mixers zero-initialised)"
        return (
            f"{self.method}: {self.layers_replaced} self-attention layers converted on {self.architecture}, "
            f"{self.parameters_added:,} parameters added{source}"
        )


def linearize(model, method: str = "linfusion", weights: str | os.PathLike | None = None, *,
              mid_dim: int | None = None) -> LinearizeReport:
    """Replace every self-attention (``attn1``) of a UNet, or of a pipeline's UNet, by linear attention.

    Args:
        model: a diffusers pipeline with a ``UNet2DConditionModel`` (StableDiffusion, SDXL, img2img, …) or the UNet.
        method: a name from ``linfuse.linearize.METHODS`` ("linfusion").
        weights: None to start from the teacher (projections kept, mixers output zero, i.e. plain ELU+1 linear
            attention on the teacher's q/k/v); or a directory / Hub id in linfuse or LinFusion format, whose
            projections replace the layer's own (the originals are kept on the CPU for :func:`unlinearize`).
        mid_dim: mixer width when no weights are given; default the layer width, or width/16 for SDXL UNets.

    Cross-attention (``attn2``) is untouched. Raises before changing anything if an argument or the weights are bad.
    """
    unet = resolve_unet(model)
    method_spec = get_method(method)
    if mid_dim is not None and (not isinstance(mid_dim, int) or mid_dim < 1):
        raise InvalidArgumentError(f"mid_dim must be a positive integer or None; got {mid_dim!r}")
    if mid_dim is not None and weights is not None:
        raise InvalidArgumentError("mid_dim applies only without weights: a checkpoint fixes its own mixer width")
    layers = self_attention_layers(unet)
    if not layers:
        raise InvalidArgumentError(f"{type(unet).__name__} has no self-attention (attn1) layers to convert")
    if any(isinstance(attn.processor, processor_classes()) for _, attn in layers):
        raise InvalidArgumentError("this model is already linearized; call linfuse.unlinearize(model) first")

    specs = layer_specs(unet)
    checkpoint = None
    if weights is not None:
        checkpoint = read_linear_weights(weights)
        _check_checkpoint(checkpoint, method, unet, specs)
        specs = checkpoint.layers
    else:
        specs = [replace(spec, mid_dim=mid_dim or _default_mid_dim(unet, spec.dim)) for spec in specs]

    processors = [method_spec.build(spec) for spec in specs]
    if checkpoint is not None:
        _load_checkpoint(checkpoint, layers, processors)
    report = LinearizeReport(method, describe_architecture(specs), weights=str(weights) if weights else None)
    for (name, attn), processor in zip(layers, processors, strict=True):
        if checkpoint is None:
            processor.zero_mixers()
        processor.to(device=attn.to_q.weight.device, dtype=attn.to_q.weight.dtype)
        processor.__dict__["_original_processor"] = attn.processor  # a plain attribute: not a submodule
        attn.set_processor(processor)
        report.layers.append(name)
        report.parameters_added += sum(p.numel() for p in processor.parameters())
    return report


def unlinearize(model) -> LinearizeReport:
    """Put back the processors (and projection weights) that :func:`linearize` replaced, bit for bit."""
    unet = resolve_unet(model)
    report = LinearizeReport("softmax", describe_architecture(layer_specs(unet)), restored=True)
    for name, attn in self_attention_layers(unet):
        processor = attn.processor
        if not isinstance(processor, processor_classes()):
            continue
        originals = processor.__dict__.get("_original_projections")
        if originals:
            with torch.no_grad():
                for key, value in _projection_state(attn).items():
                    value.copy_(originals[key])
        attn.set_processor(processor.__dict__["_original_processor"])
        report.layers.append(name)
    if not report.layers:
        raise InvalidArgumentError("this model has no linearized layers; nothing to restore")
    return report


def linearized_layers(model) -> list[tuple[str, object]]:
    """(name, Attention) of every layer that currently runs a linfuse processor."""
    layers = self_attention_layers(resolve_unet(model))
    return [(name, attn) for name, attn in layers if isinstance(attn.processor, processor_classes())]


def save_linear_weights(model, directory: str | os.PathLike, *, dtype: torch.dtype | None = None):
    """Save every converted layer's mixers and projections as safetensors plus a JSON config (atomic writes)."""
    unet = resolve_unet(model)
    layers = linearized_layers(unet)
    if not layers:
        raise InvalidArgumentError("the model is not linearized; call linfuse.linearize(model) before saving")
    methods = {attn.processor.method for _, attn in layers}
    if len(methods) != 1:
        raise InvalidArgumentError(f"layers use several methods ({', '.join(sorted(methods))}); save one at a time")
    tensors, specs = {}, []
    for name, attn in layers:
        processor = attn.processor
        specs.append(LayerSpec(name, processor.dim, processor.heads, processor.mid_dim))
        for key, value in processor.state_dict().items():
            tensors[f"{name}.processor.{key}"] = value
        for key, value in _projection_state(attn).items():
            tensors[f"{name}.{key}"] = value
    if dtype is not None:
        tensors = {key: value.to(dtype) for key, value in tensors.items()}
    extra = {"base_model": unet.config.get("_name_or_path", ""), "architecture": describe_architecture(specs)}
    return write_linear_weights(directory, method=methods.pop(), base_model_class=type(unet).__name__,
                                layers=specs, tensors=tensors, extra=extra)


def _default_mid_dim(unet, dim: int) -> int:
    is_sdxl = unet.config.get("addition_embed_type") == "text_time"
    return max(1, dim // SDXL_MID_DIM_DIVISOR) if is_sdxl else dim


def _projection_state(attn) -> dict[str, torch.Tensor]:
    """The layer's own q/k/v/out parameters, keyed as in the Attention module's state dict."""
    params = dict(attn.named_parameters())
    return {key: value for key, value in params.items() if key.startswith(("to_q.", "to_k.", "to_v.", "to_out."))}


def _check_checkpoint(checkpoint: LinearCheckpoint, method: str, unet, specs: list[LayerSpec]) -> None:
    if checkpoint.method != method:
        raise WeightsError(
            f"weights in {checkpoint.source} are for method {checkpoint.method!r}, not {method!r}; "
            f"pass method={checkpoint.method!r}"
        )
    model_signature = [(s.name, s.dim, s.heads) for s in specs]
    ckpt_signature = [(s.name, s.dim, s.heads) for s in checkpoint.layers]
    if checkpoint.base_model_class != type(unet).__name__ or model_signature != ckpt_signature:
        raise ArchitectureMismatchError(
            f"weights in {checkpoint.source} were made for a {checkpoint.base_model_class} "
            f"{describe_architecture(checkpoint.layers)}, but the model is a {type(unet).__name__} "
            f"{describe_architecture(specs)}. Use weights made for this model (LinFusion-1-5 for SD-1.x, "
            "LinFusion-2-1 for SD-2.x, LinFusion-XL for SDXL) or linearize without weights and distill."
        )


def _load_checkpoint(checkpoint: LinearCheckpoint, layers, processors) -> None:
    """Check every expected tensor is present with the right shape, then copy (originals kept on the CPU)."""
    expected = {}
    for (name, attn), processor in zip(layers, processors, strict=True):
        expected.update({f"{name}.processor.{k}": v for k, v in processor.state_dict().items()})
        expected.update({f"{name}.{k}": v for k, v in _projection_state(attn).items()})
    missing = sorted(set(expected) - set(checkpoint.tensors))
    unexpected = sorted(set(checkpoint.tensors) - set(expected))
    if missing or unexpected:
        raise WeightsError(
            f"weights in {checkpoint.source} do not fit the model: {len(missing)} missing tensors "
            f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}"
        )
    wrong = [k for k, v in expected.items() if tuple(v.shape) != tuple(checkpoint.tensors[k].shape)]
    if wrong:
        raise ArchitectureMismatchError(
            f"weights in {checkpoint.source} have other shapes than the model for {len(wrong)} tensors, e.g. "
            f"{wrong[0]}: {tuple(checkpoint.tensors[wrong[0]].shape)} vs {tuple(expected[wrong[0]].shape)}"
        )
    with torch.no_grad():
        for (name, attn), processor in zip(layers, processors, strict=True):
            projections = _projection_state(attn)
            processor.__dict__["_original_projections"] = {k: v.detach().to("cpu", copy=True)
                                                          for k, v in projections.items()}
            for key, value in projections.items():
                value.copy_(checkpoint.tensors[f"{name}.{key}"])
            processor.load_state_dict({k: checkpoint.tensors[f"{name}.processor.{k}"]
                                       for k in processor.state_dict()})
