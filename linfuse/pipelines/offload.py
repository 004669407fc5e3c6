"""Component offload: the text encoders and the VAE wait in host memory while the denoiser runs.

``enable_component_offload(pipe)`` moves the pipeline's text encoders and VAE that sit on the denoiser's device to
host memory and gives each accelerate's offload hook (``cpu_offload_with_hook``): a text encoder comes back to the
device when the pipeline encodes a prompt, the VAE when it encodes or decodes (diffusers' ``AutoencoderKL`` runs
the hook from ``encode`` and ``decode``). A forward pre-hook on the denoiser sends them back to host memory before
each call, so every denoising step runs with only the denoiser's weights on the device; the denoiser itself never
moves (its lean forward, :mod:`.lean`, is an instance ``forward`` and composes with a torch hook, not with
accelerate's). ``disable_component_offload(pipe)`` removes the hooks and puts every component back on the device,
leaving the pipeline as it was; ``with component_offload(pipe): …`` does both.

The memory preflight counts it (:mod:`.preflight`): while the denoiser runs, the device holds the denoiser's
weights only; when a stage's prompt is encoded, the denoiser's and the text encoders' weights, the VAE still on the
host. On the CPU the device is the host, so there is nothing to gain and nothing is moved: the rungs that offload
(:func:`~.preflight.rung_ladder`) do so on CUDA only.

``torch.compile(denoiser, fullgraph=True)`` traces the denoiser's pre-hook with it. Where the hook has nothing to
move it compiles (tiny FLUX with CLEAR under the offload, on the CPU: one graph); on CUDA the first call after a
prompt encoding moves the text encoders, which has not been compiled on a GPU yet: compile without the offloading
rungs (they are the last resort of ``memory="auto"``).
"""

from contextlib import contextmanager

import torch

from ..linearize.layers import resolve_denoiser

OFFLOADED = ("text_encoder", "text_encoder_2", "text_encoder_3", "vae")
_STATE = "_linfuse_component_offload"


def offloadable(pipe, device: torch.device | None = None) -> dict[str, torch.nn.Module]:
    """The components :func:`enable_component_offload` would move: text encoders and VAE on ``device`` (default:
    the denoiser's), not already under an accelerate hook of their own (``enable_model_cpu_offload``)."""
    device = device or resolve_denoiser(pipe).device
    found = {}
    for name in OFFLOADED:
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module) and not hasattr(module, "_hf_hook") and weights_device(module) == device:
            found[name] = module
    return found


def weights_device(module: torch.nn.Module) -> torch.device | None:
    """Where the module's weights are now (None for a module without parameters)."""
    first = next(module.parameters(), None)
    return None if first is None else first.device


def enable_component_offload(pipe, device: torch.device | None = None) -> None:
    """Move the text encoders and the VAE to host memory, to come back to ``device`` (default: the denoiser's) only
    while they run (see the module docstring). On the CPU, or when already enabled, nothing happens unless
    ``device`` is given (the hooks then run, moving nothing: how the tests check them on a CPU machine)."""
    from accelerate import cpu_offload_with_hook

    denoiser = resolve_denoiser(pipe)
    if _STATE in denoiser.__dict__ or (device is None and denoiser.device.type == "cpu"):
        return
    device = device or denoiser.device
    parts = []
    for module in offloadable(pipe, device).values():
        had_forward = "forward" in module.__dict__
        _, hook = cpu_offload_with_hook(module, device)
        parts.append((module, hook, had_forward))

    def send_back(_module, _args):
        for module, hook, _ in parts:
            if weights_device(module).type != "cpu":
                hook.offload()

    handle = denoiser.register_forward_pre_hook(send_back)
    denoiser.__dict__[_STATE] = (parts, handle, device)


def disable_component_offload(pipe) -> None:
    """Remove the hooks and put every offloaded component back on the device (a no-op when not enabled)."""
    from accelerate.hooks import remove_hook_from_module

    denoiser = resolve_denoiser(pipe)
    state = denoiser.__dict__.pop(_STATE, None)
    if state is None:
        return
    parts, handle, device = state
    handle.remove()
    for module, _, had_forward in parts:
        remove_hook_from_module(module)
        if not had_forward:  # accelerate leaves the bound method as an instance attribute
            module.__dict__.pop("forward", None)
        module.to(device)


def execution_device(module: torch.nn.Module) -> torch.device:
    """Where ``module`` computes: its offload hook's device while it waits in host memory, else its weights'."""
    hook = getattr(module, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    return torch.device(device) if device is not None else weights_device(module)


def offload_enabled(pipe) -> bool:
    return _STATE in resolve_denoiser(pipe).__dict__


@contextmanager
def component_offload(pipe, enabled: bool = True, device: torch.device | None = None):
    """The block with the components offloaded (``enabled``; ``device`` as :func:`enable_component_offload` takes
    it), then as before."""
    if not enabled or offload_enabled(pipe):
        yield pipe
        return
    enable_component_offload(pipe, device)
    try:
        yield pipe
    finally:
        disable_component_offload(pipe)
