"""Registry of conversion methods: ``linearize(..., method=NAME)`` looks names up here.

A method is a processor class (what replaces a layer's attention) and a layer selection (which layers of which
denoisers it converts). ``hybrid`` is not a method of its own but a policy over one: see :mod:`.hybrid`.
"""

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import InvalidArgumentError
from .dit import lit_layers, window_attention_layers
from .layers import LayerSpec, resolve_unet, self_attention_layers
from .linfusion import LinFusionAttnProcessor
from .options import Option, check_options, integer

HYBRID = "hybrid"
HEADS_OPTION = integer(1, "a positive integer that divides the layer width")


def unet_self_attention(denoiser):
    return self_attention_layers(resolve_unet(denoiser))


@dataclass(frozen=True)
class Method:
    name: str
    processor_class: type
    summary: str
    targets: Callable = unet_self_attention  # denoiser -> [(name, Attention)] it converts
    heads_option: bool = False  # True: the processor may use another head count than the layer
    inference_options: tuple[str, ...] = ()  # options that change no weight: allowed with loaded weights

    def options(self) -> list[str]:
        """Keyword options the processor takes beyond (dim, heads)."""
        params = inspect.signature(self.processor_class.__init__).parameters
        return [name for name in params if name not in ("self", "dim", "heads")] + (
            ["heads"] if self.heads_option else [])

    def option_specs(self) -> dict[str, Option]:
        """Each option's kind and range (the processor class's ``option_specs``), in :meth:`options` order."""
        declared = {**self.processor_class.option_specs, **({"heads": HEADS_OPTION} if self.heads_option else {})}
        return {name: declared[name] for name in self.options()}

    def build(self, spec: LayerSpec):
        kwargs = dict(spec.options)
        if spec.mid_dim is not None:
            kwargs["mid_dim"] = spec.mid_dim
        check_options(self.name, self.option_specs(), kwargs)
        return self.processor_class(dim=spec.dim, heads=spec.heads, **kwargs)


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    undeclared = [name for name in method.options()
                  if name not in method.processor_class.option_specs and not (name == "heads" and method.heads_option)]
    if undeclared:  # every option is checked at conversion: a new one needs its Option declared
        raise TypeError(f"{method.processor_class.__name__}.option_specs does not declare {', '.join(undeclared)}")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in METHODS and name != HYBRID:
        raise InvalidArgumentError(f"method must be one of {', '.join(method_names())}; got {name!r}")
    return METHODS.get(name)


def method_names() -> list[str]:
    return sorted([*METHODS, HYBRID])


def hybrid_option_specs() -> dict[str, Option]:
    """hybrid's own options; the base method's come on top."""
    return {"base": Option("choice", f"one of {', '.join(map(repr, METHODS))}", choices=tuple(METHODS)),
            "softmax_layers": Option("int_or_names", "an integer >= 0 or a list of layer names", minimum=0)}


def check_method_options(method: str, options: dict) -> dict:
    """Check every option of a ``linearize(model, method, **options)`` call against the method's declarations
    (hybrid: its own and its base method's), before anything is built; InvalidArgumentError names the method, the
    option, the value and what is allowed. Returns the options with plain Python numbers."""
    get_method(method)
    if method != HYBRID:
        return check_options(method, METHODS[method].option_specs(), options)
    hybrid = hybrid_option_specs()
    check_options(HYBRID, hybrid, {name: value for name, value in options.items() if name == "base"})
    base = METHODS[options.get("base", "linfusion")]
    return check_options(HYBRID, {**hybrid, **base.option_specs()}, options, base=base.name)


def processor_classes() -> tuple[type, ...]:
    return tuple(method.processor_class for method in METHODS.values())


def _register_builtin() -> None:
    from .clear import ClearAttnProcessor
    from .lit import LiTAttnProcessor

    register(Method("linfusion", LinFusionAttnProcessor,
                    "LinFusion: residual MLP mixers on q/k inputs, ELU+1 features, mean-normalised linear attention"))
    register(Method("clear", ClearAttnProcessor,
                    "CLEAR: softmax attention in a circular window around each image token, plus all text tokens "
                    "and optional learned pooled tokens (FLUX, SD3, PixArt)", targets=window_attention_layers,
                    inference_options=("proportional_attention", "train_tokens")))
    register(Method("lit", LiTAttnProcessor,
                    "LiT: ReLU linear attention plus a depth-wise convolution, fewer heads, attention weights "
                    "re-initialised (DiT, PixArt)", targets=lit_layers, heads_option=True))
    from .variants import VARIANTS

    for name, processor_class, summary in VARIANTS:
        register(Method(name, processor_class, summary))


_register_builtin()
