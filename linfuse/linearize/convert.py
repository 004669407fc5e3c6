"""``linearize`` / ``unlinearize``: install and remove linfuse attention processors on a diffusers denoiser."""

import os
from dataclasses import dataclass, field, replace

import torch

from ..errors import ArchitectureMismatchError, InvalidArgumentError, WeightsError
from .grid import attach_token_grid, detach_token_grid
from .hybrid import softmax_layer_names
from .layers import LayerSpec, describe_architecture, layer_specs, resolve_denoiser
from .registry import HYBRID, Method, check_method_options, get_method, processor_classes
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

    @property
    def kind(self) -> str:
        return "self-attention" if all(name.endswith("attn1") for name in self.layers) else "attention"

    def __str__(self) -> str:
        if self.restored:
            return f"{self.layers_replaced} {self.kind} layers restored to their original processors"
        source = f" from {self.weights}" if self.weights else " (initialised from the teacher)"
        return (
            f"{self.method}: {self.layers_replaced} {self.kind} layers converted on {self.architecture}, "
            f"{self.parameters_added:,} parameters added{source}"
        )


def linearize(model, method: str = "linfusion", weights: str | os.PathLike | None = None, *,
              mid_dim: int | None = None, **options) -> LinearizeReport:
    """Replace the attention of a denoiser's layers by a linfuse method (linear, local or hybrid attention).

    Args:
        model: a diffusers pipeline (anything with ``.unet`` or ``.transformer``) or the UNet / transformer itself.
        method: a name from ``linfuse.linearize.METHODS`` — UNet self-attention: linfusion, sana, slab, inline,
            rala, nalaformer, l2vit, transnormer; DiTs: clear (FLUX, SD3, PixArt), lit (DiT, PixArt); or "hybrid",
            which converts all but ``softmax_layers`` layers with the method ``base`` (default linfusion).
        weights: None to start from the teacher (its projections, new parts initialised so that the layer starts
            close to it; lit re-initialises the attention weights); or a directory / Hub id in linfuse or LinFusion
            format, or a CLEAR ``.safetensors`` file (local, or "owner/name/file.safetensors" on the Hub).
            Projections in the weights replace the layer's own (the originals are kept on the CPU for
            :func:`unlinearize`).
        mid_dim: LinFusion mixer width when no weights are given; default the layer width, or width/16 for SDXL.
        **options: the method's options, e.g. ``radius=8, pool=4`` for clear, ``heads=2`` for lit,
            ``softmax_layers=2, base="sana"`` for hybrid; ``Method.options()`` lists them.

    Layers the method does not select (cross-attention, for the UNet methods) are untouched. Raises before changing
    anything if an argument or the weights are bad: every option is checked against the method's declared kind and
    range (``Method.option_specs()``; finite numbers, known names, integers that are not bools nor 2.5).
    """
    denoiser = resolve_denoiser(model)
    # every option's kind and range, before anything is built (an unknown method or option is refused here too)
    options = check_method_options(method, {**options, **({"mid_dim": mid_dim} if mid_dim is not None else {})})
    mid_dim = options.pop("mid_dim", None)
    method_name, softmax_layers, options = split_hybrid(method, options)
    method_spec = get_method(method_name)
    if method == HYBRID and weights is None and softmax_layers is None:
        raise InvalidArgumentError("method='hybrid' needs softmax_layers: how many layers keep softmax attention "
                                   "(an integer) or their names (a list)")
    if mid_dim is not None and weights is not None:
        raise InvalidArgumentError("mid_dim applies only without weights: a checkpoint fixes its own mixer width")
    candidates = method_spec.targets(denoiser)
    if not candidates:
        raise InvalidArgumentError(f"{type(denoiser).__name__} has no attention layers that {method_name} converts")
    if any(isinstance(attn.processor, processor_classes()) for _, attn in candidates):
        raise InvalidArgumentError("this model is already linearized; call linfuse.unlinearize(model) first")

    checkpoint = read_linear_weights(weights) if weights is not None else None
    specs = _layer_specs(method_spec, denoiser, candidates, checkpoint, options, mid_dim, softmax_layers)
    layers = [(name, attn) for name, attn in candidates if name in {spec.name for spec in specs}]
    processors = [method_spec.build(spec) for spec in specs]
    if checkpoint is not None:
        _load_checkpoint(checkpoint, layers, processors)
    label = f"{HYBRID} ({method_name})" if len(layers) < len(candidates) else method_name
    report = LinearizeReport(label, describe_architecture(specs), weights=str(weights) if weights else None)
    grid = attach_token_grid(denoiser)
    for (name, attn), processor in zip(layers, processors, strict=True):
        if checkpoint is None:
            if getattr(processor, "changes_projections", False):
                _keep_original_projections(attn, processor)
            processor.initialize(attn)
        processor.to(device=attn.to_q.weight.device, dtype=attn.to_q.weight.dtype)
        processor.__dict__["_original_processor"] = attn.processor  # a plain attribute: not a submodule
        processor.__dict__["_token_grid"] = grid
        attn.set_processor(processor)
        report.layers.append(name)
        report.parameters_added += sum(p.numel() for p in processor.parameters())
    return report


def unlinearize(model) -> LinearizeReport:
    """Put back the processors (and projection weights) that :func:`linearize` replaced, bit for bit."""
    denoiser = resolve_denoiser(model)
    layers = linearized_layers(denoiser)
    if not layers:
        raise InvalidArgumentError("this model has no linearized layers; nothing to restore")
    report = LinearizeReport("softmax", describe_architecture(_specs_of(layers)), restored=True)
    for name, attn in layers:
        processor = attn.processor
        originals = processor.__dict__.get("_original_projections")
        if originals:
            with torch.no_grad():
                for key, value in _projection_state(attn).items():
                    value.copy_(originals[key])
        attn.set_processor(processor.__dict__["_original_processor"])
        report.layers.append(name)
    detach_token_grid(denoiser)
    return report


def linearized_layers(model) -> list[tuple[str, object]]:
    """(name, Attention) of every layer that currently runs a linfuse processor."""
    denoiser = resolve_denoiser(model)
    return [(name, module) for name, module in denoiser.named_modules()
            if isinstance(getattr(module, "processor", None), processor_classes())]


def trainable_parameters(model, train_projections: bool | None = None) -> list[torch.nn.Parameter]:
    """What distillation trains: every processor's parameters, plus the converted layers' q/k/v/out projections
    when ``train_projections`` is true (None: the method's default, true for every method, LinFusion included as its
    own recipe does)."""
    params = []
    for _, attn in linearized_layers(model):
        params += list(attn.processor.parameters())
        if attn.processor.trains_projections if train_projections is None else train_projections:
            params += list(_projection_state(attn).values())
    return params


def save_linear_weights(model, directory: str | os.PathLike, *, dtype: torch.dtype | None = None):
    """Save every converted layer's processor and projections as safetensors plus a JSON config (atomic writes)."""
    denoiser = resolve_denoiser(model)
    layers = linearized_layers(denoiser)
    if not layers:
        raise InvalidArgumentError("the model is not linearized; call linfuse.linearize(model) before saving")
    methods = {attn.processor.method for _, attn in layers}
    if len(methods) != 1:
        raise InvalidArgumentError(f"layers use several methods ({', '.join(sorted(methods))}); save one at a time")
    method = methods.pop()
    tensors = {}
    for name, attn in layers:
        for key, value in attn.processor.state_dict().items():
            tensors[f"{name}.processor.{key}"] = value
        for key, value in _projection_state(attn).items():
            tensors[f"{name}.{key}"] = value
    if dtype is not None:
        tensors = {key: value.to(dtype) if value.is_floating_point() else value for key, value in tensors.items()}
    specs = _specs_of(layers)
    converted = {name for name, _ in layers}
    extra = {"base_model": denoiser.config.get("_name_or_path", ""), "architecture": describe_architecture(specs),
             "softmax_layers": [n for n, _ in get_method(method).targets(denoiser) if n not in converted]}
    return write_linear_weights(directory, method=method, base_model_class=type(denoiser).__name__,
                                layers=specs, tensors=tensors, extra=extra)


def _specs_of(layers) -> list[LayerSpec]:
    return [LayerSpec(name, attn.processor.dim, attn.processor.heads, getattr(attn.processor, "mid_dim", None),
                      attn.processor.layer_config()) for name, attn in layers]


def split_hybrid(method: str, options: dict) -> tuple[str, object, dict]:
    """(method to build, softmax_layers or None, remaining options), of options that
    :func:`~.registry.check_method_options` accepted."""
    options = dict(options)
    if method != HYBRID:
        return method, None, options
    return options.pop("base", "linfusion"), options.pop("softmax_layers", None), options


def _layer_specs(method: Method, denoiser, candidates, checkpoint, options, mid_dim, softmax_layers):
    """The specs of the layers to convert: from the checkpoint, or from the model and the options."""
    if checkpoint is not None:
        inference = {name: options.pop(name) for name in list(options) if name in method.inference_options}
        if options or softmax_layers is not None:
            given = sorted([*options, *(["softmax_layers"] if softmax_layers is not None else [])])
            allowed = f" (with weights, only {', '.join(method.inference_options)})" if method.inference_options \
                else ""
            raise InvalidArgumentError(f"options {', '.join(given)} apply only without weights: "
                                       f"a checkpoint fixes its own configuration{allowed}")
        specs = _check_checkpoint(checkpoint, method, denoiser, candidates)
        return [replace(spec, options={**spec.options, **inference}) for spec in specs] if inference else specs
    heads = options.pop("heads", None) if method.heads_option else None
    specs = []
    for spec in layer_specs(candidates):
        if method.name == "linfusion":
            spec = replace(spec, mid_dim=mid_dim or _default_mid_dim(denoiser, spec.dim))
        default_heads = getattr(method.processor_class, "default_heads", None)
        layer_heads = heads or (default_heads(spec.heads, spec.dim) if default_heads else spec.heads)
        specs.append(replace(spec, heads=layer_heads, options=dict(options)))
    if softmax_layers is not None:  # hybrid: leave some layers softmax
        keep = softmax_layer_names(specs, softmax_layers)
        specs = [spec for spec in specs if spec.name not in keep]
    return specs


def _default_mid_dim(unet, dim: int) -> int:
    is_sdxl = unet.config.get("addition_embed_type") == "text_time"
    return max(1, dim // SDXL_MID_DIM_DIVISOR) if is_sdxl else dim


def _projection_state(attn) -> dict[str, torch.Tensor]:
    """The layer's own q/k/v/out parameters, keyed as in the Attention module's state dict."""
    params = dict(attn.named_parameters())
    return {key: value for key, value in params.items() if key.startswith(("to_q.", "to_k.", "to_v.", "to_out."))}


def _check_checkpoint(checkpoint: LinearCheckpoint, method: Method, denoiser, candidates) -> list[LayerSpec]:
    """The checkpoint's layer specs, after checking they fit this model; CLEAR files list no layers: all of them."""
    if checkpoint.method != method.name:
        raise WeightsError(
            f"weights in {checkpoint.source} are for method {checkpoint.method!r}, not {method.name!r}; "
            f"pass method={checkpoint.method!r}"
        )
    model_specs = {spec.name: spec for spec in layer_specs(candidates)}
    model_class = type(denoiser).__name__
    if checkpoint.layers is None and checkpoint.base_model_class == model_class:
        return [replace(spec, options=dict(checkpoint.options)) for spec in model_specs.values()]
    partial = bool(checkpoint.extra.get("softmax_layers"))
    fits = checkpoint.base_model_class == model_class and all(
        spec.name in model_specs and spec.dim == model_specs[spec.name].dim
        and (method.heads_option or spec.heads == model_specs[spec.name].heads) for spec in checkpoint.layers)
    if not partial and fits:
        fits = fits and [spec.name for spec in checkpoint.layers] == list(model_specs)
    if not fits:
        raise ArchitectureMismatchError(
            f"weights in {checkpoint.source} were made for a {checkpoint.base_model_class} "
            f"{describe_architecture(checkpoint.layers or [])}, but the model is a {model_class} "
            f"{describe_architecture(list(model_specs.values()))}. Use weights made for this model (LinFusion-1-5 "
            "for SD-1.x, LinFusion-2-1 for SD-2.x, LinFusion-XL for SDXL) or linearize without weights and distill."
        )
    return checkpoint.layers


def _keep_original_projections(attn, processor) -> None:
    processor.__dict__["_original_projections"] = {k: v.detach().to("cpu", copy=True)
                                                  for k, v in _projection_state(attn).items()}


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
            _keep_original_projections(attn, processor)
            for key, value in projections.items():
                value.copy_(checkpoint.tensors[f"{name}.{key}"])
            processor.load_state_dict({k: checkpoint.tensors[f"{name}.processor.{k}"]
                                       for k in processor.state_dict()})
