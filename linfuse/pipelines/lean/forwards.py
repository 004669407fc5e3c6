"""Instance forwards that compose with accelerate's hooks.

The lean modes install a module's forward on the instance. diffusers' ``enable_model_cpu_offload`` (accelerate's
``add_hook_to_module``) does the same: its wrapper is the instance ``forward`` and calls the module's
``_old_forward`` after moving the module to its device. ``install_forward`` therefore puts a lean forward beneath
such a wrapper (as ``_old_forward``), so the hook still runs, and ``remove_forward`` takes it out from wherever it
is (an instance ``forward``, or an ``_old_forward`` that a hook added later wrapped), leaving the wrapper in place.
"""

MARK = "_linfuse_lean_forward"  # the installed forward, kept on the module: found by identity (accelerate's
# wrapper copies the wrapped function's attributes, so a flag on the forward itself would mark the wrapper too)


def install_forward(module, forward) -> None:
    """``forward`` as the module's forward: beneath an accelerate hook's wrapper when one is there."""
    module.__dict__[MARK] = forward
    if "_old_forward" in module.__dict__ and hasattr(module, "_hf_hook"):
        module._old_forward = forward
    else:
        module.forward = forward


def remove_forward(module) -> bool:
    """Remove a forward :func:`install_forward` set; the module's own forward runs again (through its hook, if it
    has one). Returns whether one was installed."""
    forward = module.__dict__.pop(MARK, None)
    if forward is None:
        return False
    if module.__dict__.get("forward") is forward:
        del module.forward
    elif module.__dict__.get("_old_forward") is forward:
        module._old_forward = type(module).forward.__get__(module)
    return True


def installed_forward(module):
    """The lean forward installed on ``module`` (as its forward or beneath a hook), or None."""
    forward = module.__dict__.get(MARK)
    return forward if forward is not None and forward in (module.__dict__.get("forward"),
                                                          module.__dict__.get("_old_forward")) else None
