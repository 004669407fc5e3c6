"""Peak memory of a PyTorch computation, counted on the meta device: every tensor an operator allocates, until freed.

A ``TorchDispatchMode`` sees each aten operator's outputs. A storage is counted once, from the first operator that
returns it until the last tensor viewing it is garbage-collected (``weakref.finalize``); storages that existed before
the trace (weights, inputs) are not counted. Run on meta tensors this costs no memory and little time, and it counts
what eager PyTorch would hold at once; workspace inside a single kernel (cuDNN, oneDNN scratch) is not seen.

Code that moves tensors to host memory while it runs (the lean mode's parked skips) allocates its host copies
inside :func:`on_host`: the trace counts them apart (``host_peak``), not as device memory. ``max_elements`` is the
element count of the largest tensor the computation allocated (32-bit indexing fails at 2^31 in some kernels).

Most of a trace's time is PyTorch's meta kernels (several written in Python: a layer norm costs milliseconds), and a
UNet repeats the same operator on the same shapes many times (row bands, blocks, rungs). :class:`Recipes` remembers,
per operator and input metadata, what a meta call returns when its outputs are fresh tensors or its inputs
themselves (in-place operators), and replays that without the kernel: the same shapes, strides, dtypes and storage
sizes, so the counts are those of the kernel's run. Views and calls on other devices always run the kernel.
"""

import threading
import weakref
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..kernels.local_attention import output_only


def storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata


_SCALARS = {int, float, bool, str, type(None), torch.dtype, torch.device, torch.memory_format, torch.layout}
_TENSORS = {torch.Tensor, torch.nn.Parameter}
_RUN = object()  # a recipe: run the kernel (its outputs view its inputs, or are not plain meta tensors)


class Recipes:
    """Meta calls' outputs by (operator, input metadata): ``key(func, args, kwargs)`` → (key or None, input
    tensors); ``learn`` after a kernel's run, ``replay`` instead of the next one (see the module docstring)."""

    LIMIT = 200_000  # entries kept (a 16K trace adds about a thousand)

    def __init__(self):
        self.table: dict = {}
        self.views: dict = {}  # operator -> whether it returns a view of an input (never replayed: cheap anyway)

    def key(self, func, args, kwargs) -> tuple[tuple | None, list[torch.Tensor]]:
        inputs: list[torch.Tensor] = []
        view = self.views.get(func)
        if view is None:
            view = self.views[func] = any(r.alias_info is not None and not r.alias_info.is_write
                                          for r in func._schema.returns)
        if view:
            return None, inputs
        try:
            described = _describe(args, inputs), _describe(kwargs, inputs) if kwargs else None
            return (func, torch.get_default_dtype(), *described), inputs  # factories without a dtype use the default
        except _Unkeyable:
            return None, inputs

    def learn(self, key, out, inputs: list[torch.Tensor]) -> None:
        if len(self.table) >= self.LIMIT:
            self.table.clear()
        storages = {storage_key(t) for t in inputs}
        try:
            self.table[key] = _recipe(out, inputs, storages, set())
        except _Unkeyable:
            self.table[key] = _RUN

    def get(self, key):
        return self.table.get(key)


class _Unkeyable(Exception):
    pass


def _describe(value, inputs: list[torch.Tensor]):
    """A hashable description of a call's argument: a tensor's shape, strides, dtype (meta tensors only)."""
    kind = type(value)
    if kind in _TENSORS:
        if not value.is_meta:
            raise _Unkeyable
        inputs.append(value)
        return (value.shape, value.stride(), value.dtype)
    if kind in _SCALARS:
        return (kind, value)
    if kind is list or kind is tuple:
        return (kind, tuple([_describe(item, inputs) for item in value]))
    if kind is dict:
        return (dict, tuple([(name, _describe(item, inputs)) for name, item in value.items()]))
    raise _Unkeyable


def _recipe(out, inputs: list[torch.Tensor], storages: set, made: set):
    """How to rebuild ``out``: ("input", i) for an input tensor returned, ("new", shape, strides, dtype) for a fresh
    tensor of its own storage; _Unkeyable for anything else (a view, a shared storage)."""
    if isinstance(out, torch.Tensor):
        for index, tensor in enumerate(inputs):
            if out is tensor:
                return ("input", index)
        key = storage_key(out) if out.device.type == "meta" else None
        if (key is None or key in storages or key in made or type(out) is not torch.Tensor
                or out.layout != torch.strided or out.storage_offset() != 0 or out.requires_grad
                or out.untyped_storage().nbytes() != _storage_bytes(out)):
            raise _Unkeyable
        made.add(key)
        return ("new", tuple(out.shape), out.stride(), out.dtype)
    if isinstance(out, (list, tuple)):
        return (type(out), tuple(_recipe(item, inputs, storages, made) for item in out))
    if isinstance(out, (int, float, bool, type(None))):
        return ("value", out)
    raise _Unkeyable


def _storage_bytes(tensor: torch.Tensor) -> int:
    if tensor.numel() == 0:
        return 0
    span = 1 + sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride(), strict=True))
    return span * tensor.element_size()


def _replay(recipe, inputs: list[torch.Tensor]):
    kind = recipe[0]
    if kind == "input":
        return inputs[recipe[1]]
    if kind == "new":
        return torch.empty_strided(recipe[1], recipe[2], dtype=recipe[3], device="meta")
    if kind == "value":
        return recipe[1]
    items = tuple(_replay(item, inputs) for item in recipe[1])
    return items if kind is tuple else kind(items)


class LiveBytes(TorchDispatchMode):
    """``with LiveBytes(existing) as trace: …`` then ``trace.peak`` (device bytes), ``trace.host_peak`` and
    ``trace.max_elements``."""

    _local = threading.local()  # the traces running in this thread (dispatch modes are per thread too)
    recipes = Recipes()  # shared by every trace: meta outputs depend on the inputs' metadata only

    @classmethod
    def active(cls) -> list["LiveBytes"]:
        if not hasattr(cls._local, "traces"):
            cls._local.traces = []
        return cls._local.traces

    def __init__(self, existing=()):
        super().__init__()
        self.known = {storage_key(t) for t in existing}
        self.live: dict[int, list] = {}  # storage -> [bytes, tensors alive, on host]
        self.current = self.peak = 0
        self.host_current = self.host_peak = 0
        self.max_elements = 0
        self.host_block: int | None = None  # inside on_host: the bytes a new storage takes on the host (0: its own)
        self.replayed = 0  # calls answered by a recipe, without their kernel

    def __enter__(self):
        LiveBytes.active().append(self)
        return super().__enter__()

    def __exit__(self, *exc):
        LiveBytes.active().remove(self)
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        key, inputs = self.recipes.key(func, args, kwargs)
        recipe = self.recipes.get(key) if key is not None else None
        if recipe is None or recipe is _RUN:
            out = func(*args, **kwargs)
            if key is not None and recipe is None:
                self.recipes.learn(key, out, inputs)
        else:
            out = _replay(recipe, inputs)
            self.replayed += 1
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self._track(tensor)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        key = storage_key(tensor)
        if key in self.known:
            return
        entry = self.live.get(key)
        if entry is None:
            size = tensor.untyped_storage().nbytes()
            self.max_elements = max(self.max_elements, size // max(tensor.element_size(), 1))
            if self.host_block is not None:
                size = self.host_block or size
                entry = self.live[key] = [size, 0, True]
                self.host_current += size
                self.host_peak = max(self.host_peak, self.host_current)
            else:
                entry = self.live[key] = [size, 0, False]
                self.current += size
                self.peak = max(self.peak, self.current)
        entry[1] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            if entry[2]:
                self.host_current -= entry[0]
            else:
                self.current -= entry[0]
            del self.live[key]


@contextmanager
def on_host(nbytes: int | None = None):
    """Tensors allocated inside are host memory in the traces that are running, ``nbytes`` each (default: their
    size)."""
    traces = list(LiveBytes.active())
    for recorder in traces:
        recorder.host_block = nbytes or 0
    try:
        yield
    finally:
        for recorder in traces:
            recorder.host_block = None


class FusedAttention(TorchFunctionMode):
    """Count ``F.scaled_dot_product_attention`` as the fused kernels that run it on GPUs and CPUs: its output only.

    On the meta device SDPA falls back to the math path, which would count the N×N score matrix that flash and
    memory-efficient kernels never hold.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            query = args[0] if args else kwargs["query"]  # diffusers' attention dispatch passes keywords
            value = args[2] if len(args) > 2 else kwargs["value"]
            return query.new_empty((*query.shape[:-1], value.shape[-1]))
        return func(*args, **kwargs)


def trace(function, *inputs, existing=()) -> LiveBytes:
    """Run ``function(*inputs)`` under no_grad and :class:`LiveBytes` (beyond ``existing`` tensors and the inputs;
    the result freed) and return the finished trace. Attention counts as the fused kernels that run it: SDPA
    (:class:`FusedAttention`) and local attention (:func:`~linfuse.kernels.local_attention.output_only`) allocate
    only their outputs."""
    known = [*existing, *(t for t in tree_leaves(inputs) if isinstance(t, torch.Tensor))]
    with torch.no_grad(), FusedAttention(), output_only(), LiveBytes(known) as recorder:
        result = function(*inputs)
        del result
    return recorder


def traced_peak(function, *inputs, existing=()) -> int:
    """Device bytes ``function(*inputs)`` holds at its peak, beyond ``existing`` tensors and the inputs."""
    return trace(function, *inputs, existing=existing).peak
