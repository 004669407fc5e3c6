"""``method="hybrid"``: keep softmax attention in k of the n layers a method selects, convert the rest.

Softmax is cheapest where there are fewest tokens, so an integer k keeps the k widest layers (in UNets the widest
layers work at the lowest resolution; among equally wide layers, the later ones). A list keeps the named layers.
"""

from ..errors import InvalidArgumentError
from .layers import LayerSpec


def softmax_layer_names(specs: list[LayerSpec], softmax_layers) -> set[str]:
    """Names of the layers that keep softmax attention."""
    names = [spec.name for spec in specs]
    if isinstance(softmax_layers, bool) or not isinstance(softmax_layers, (int, list, tuple)):
        raise InvalidArgumentError(
            f"softmax_layers must be an integer or a list of layer names; got {softmax_layers!r}")
    if isinstance(softmax_layers, int):
        if not 0 <= softmax_layers < len(specs):
            raise InvalidArgumentError(f"softmax_layers must be in [0, {len(specs) - 1}] (the model has {len(specs)} "
                                       f"layers and at least one is converted); got {softmax_layers}")
        order = sorted(range(len(specs)), key=lambda i: (-specs[i].dim, -i))
        return {names[i] for i in order[:softmax_layers]}
    unknown = [name for name in softmax_layers if name not in names]
    if unknown:
        raise InvalidArgumentError(f"softmax_layers names layers the method does not convert: {unknown[:3]}; "
                                   f"candidates are e.g. {names[:3]}")
    if len(set(softmax_layers)) >= len(names):
        raise InvalidArgumentError("softmax_layers keeps every layer; leave at least one to convert")
    return set(softmax_layers)
