"""Registry of linearisation methods: ``linearize(..., method=NAME)`` looks names up here."""

from dataclasses import dataclass

from ..errors import InvalidArgumentError
from .layers import LayerSpec
from .linfusion import LinFusionAttnProcessor


@dataclass(frozen=True)
class Method:
    name: str
    processor_class: type
    summary: str

    def build(self, spec: LayerSpec):
        return self.processor_class(dim=spec.dim, heads=spec.heads, mid_dim=spec.mid_dim)


METHODS = {
    "linfusion": Method(
        "linfusion",
        LinFusionAttnProcessor,
        "LinFusion: residual MLP mixers on q/k inputs, ELU+1 features, mean-normalised linear attention",
    ),
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise InvalidArgumentError(f"method must be one of {', '.join(sorted(METHODS))}; got {name!r}")
    return METHODS[name]


def processor_classes() -> tuple[type, ...]:
    return tuple(method.processor_class for method in METHODS.values())
