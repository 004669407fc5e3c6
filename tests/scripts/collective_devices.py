"""For the patch-parallel jobs: the devices of every tensor handed to a collective, and forwards run with the
default device set to ``meta``, so that a tensor made without a device inside them (a CPU tensor that an NCCL
collective would refuse) cannot pass unseen on a CPU-only run: it lands on meta and fails or shows here."""

import torch
import torch.distributed as dist

DEVICES: set[str] = set()


def _recording(collective):
    def call(tensor_or_list, *args, **kwargs):
        for tensor in [*args[:1], *(tensor_or_list if isinstance(tensor_or_list, list) else [tensor_or_list])]:
            if isinstance(tensor, torch.Tensor):
                DEVICES.add(str(tensor.device))
            elif isinstance(tensor, list):
                DEVICES.update(str(t.device) for t in tensor)
        return collective(tensor_or_list, *args, **kwargs)

    return call


def record_collectives() -> None:
    dist.all_reduce, dist.all_gather = _recording(dist.all_reduce), _recording(dist.all_gather)


def forwards_without_a_default_device(model):
    """Hooks that make ``meta`` the default device during the model's forward (after every other hook)."""
    previous = []

    def enter(module, args, kwargs):
        previous.append(torch.get_default_device())
        torch.set_default_device("meta")

    def leave(module, args, kwargs, output):
        torch.set_default_device(previous.pop())

    return [model.register_forward_pre_hook(enter, with_kwargs=True, prepend=True),
            model.register_forward_hook(leave, with_kwargs=True)]
