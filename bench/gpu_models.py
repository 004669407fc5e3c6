"""The model sections of bench/gpu_check.py: full-width SD-1.5 UNet (linfusion vs SDPA), the compiled UNet
(bench/compile.py, when present), the 16K lean UNet call, and the FLUX.1-dev transformer (SDPA vs CLEAR).

Sizes run smallest first, both methods at each size, so a run cut short still has ratios. Before a size runs, the
planner's trace of that call (memory_trace.trace on a meta twin) is checked as the preflight checks it: a tensor of
2^31 elements or more, or more device memory than the cap, and the size is skipped with that reason; then the time
measured at the previous size, grown by the method's scaling, must fit what is left of the section's deadline.
diffusers, linfuse's converters and bench/full_width are imported inside the sections that need them.
"""

import importlib
import json
import time
from pathlib import Path

import gpu_budget
import torch

SMALL_UNET = {"block_out_channels": [32, 64, 64, 64], "cross_attention_dim": 32, "layers_per_block": 1}
# Time of one forward ∝ tokens^power: linear attention and convolutions grow with the tokens, SDPA's attention
# (at large sizes) with their square. Per doubling of the side: ×4, ×16.
TOKEN_POWER = {"linfusion": 1, "clear": 1, "sdpa": 2}
# Seconds to build a section's models before any case runs (imports, random init, conversion, the copy to the
# device): a section starts building only when that much is left. Full width on a GPU host; tiny configs on the CPU.
BUILD_S = {"unet_sd15": {"cuda": 30.0, "cpu": 5.0}, "lean_16k": {"cuda": 15.0, "cpu": 3.0},
           "flux_clear": {"cuda": 20.0, "cpu": 3.0}, "compiled_unet": {"cuda": 60.0, "cpu": 5.0}}
LEAN_PARKING_FACTOR = 1.5  # the 16K call parks its skips over PCIe, more than the warm-up at 512² does


def speedups_over_sdpa(rows: list[dict], method: str, size_key: str) -> dict:
    """{size: SDPA ms / ``method`` ms} for every size both were timed at."""
    sdpa = {row[size_key]: row["ms"] for row in rows if row["method"] == "sdpa" and "ms" in row}
    return {str(row[size_key]): sdpa[row[size_key]] / row["ms"] for row in rows
            if row["method"] == method and "ms" in row and row[size_key] in sdpa}


def calls(check) -> int:
    """Forwards one timed case makes (forward_ms): a warm-up and three on CUDA, one in a dry run."""
    return 1 if check.dry_run else 4


def forward_ms(check, fn) -> float:
    """ms of one forward: the median of the calls after the first (a warm-up), or of the first alone when it is
    the only one (a dry run) or when a forward takes over ten seconds (then two calls in all)."""
    times = []
    for _ in range(calls(check)):
        times.append(1e3 * gpu_budget.timed(fn)[1])
        if len(times) >= 2 and times[-1] > 10_000:
            break
    measured = times[1:] or times
    return sorted(measured)[len(measured) // 2]


def traced_call(twin, inputs: dict, lean=None) -> dict:
    """The planner's trace of ``twin(**inputs)`` on the meta device: device bytes (× the CUDA allocator overhead),
    the raw peak, host bytes and the largest tensor's elements."""
    from linfuse.pipelines.lean import lean_mode
    from linfuse.pipelines.memory_trace import trace
    from linfuse.pipelines.preflight import ALLOCATOR_OVERHEAD

    meta = {k: torch.empty_like(v, device="meta") if v.is_floating_point() else v for k, v in inputs.items()}
    with lean_mode(twin, lean), gpu_budget.backends("auto"):  # as the planner traces: meta runs the reference
        traced = trace(lambda m: twin(**m).sample, meta, existing=[*twin.parameters(), *twin.buffers()])
    return {"device_bytes": int(ALLOCATOR_OVERHEAD["cuda"] * traced.peak), "trace_bytes": int(traced.peak),
            "host_bytes": traced.host_peak, "max_elements": traced.max_elements}


def refusal(estimate: dict, cap: int) -> str | None:
    """Why the preflight would refuse a call with this trace, or None."""
    from linfuse.pipelines.preflight import INDEX_LIMIT

    if estimate["max_elements"] >= INDEX_LIMIT:
        return (f"refused by the preflight: a tensor of {estimate['max_elements']:.3g} elements reaches 2^31 "
                "(int32 indexing)")
    if estimate["device_bytes"] > cap:
        return f"refused: needs {estimate['device_bytes'] / 2**30:.1f} GiB, above the cap of {cap / 2**30:.1f} GiB"
    return None


def _unet_inputs(check, unet, latent: int, batch: int = 1) -> dict:
    import full_width

    dtype = next(unet.parameters()).dtype
    one = {k: v.to(check.device, dtype) if v.is_floating_point() else v.to(check.device)
           for k, v in full_width.inputs(unet, latent).items()}
    return {k: torch.cat([v] * batch) if k != "timestep" else v for k, v in one.items()}


def _build_unet(check, method: str, dtype):
    import full_width

    import linfuse

    unet = full_width.build("sd15", **(SMALL_UNET if check.dry_run else {}))
    if method == "linfusion":
        linfuse.linearize(unet)
    return unet.to(check.device, dtype).eval()


def unet_sd15(check, budget: gpu_budget.Budget) -> dict:
    latents = (8, 16) if check.dry_run else (128, 256, 512, 1024)
    dtype = torch.float32 if check.dry_run else torch.float16
    cap = gpu_budget.memory_cap(check.device)
    if not budget.allows("building the UNets", BUILD_S["unet_sd15"][check.device]):
        return {}
    began = time.perf_counter()
    from linfuse.linearize.twin import meta_twin

    unets = {method: _build_unet(check, method, dtype) for method in ("linfusion", "sdpa")}
    twins = {method: meta_twin(unet) for method, unet in unets.items()}
    setup = time.perf_counter() - began  # the first case's prediction: no forward was timed yet
    rows, previous = budget.rows(), {}
    for latent in latents:
        for method, unet in unets.items():
            case = f"{method} latent {latent}²"
            grown = gpu_budget.grown(previous.get(method), latent, 2 * TOKEN_POWER[method], calls(check))
            if not budget.allows(case, grown if method in previous else setup / 2):
                continue
            inputs = _unet_inputs(check, unet, latent)
            estimate = traced_call(twins[method], inputs)
            why = refusal(estimate, cap)
            if why:
                budget.refuse(case, why)
                continue
            with torch.no_grad():
                ms = forward_ms(check, lambda unet=unet, inputs=inputs: unet(**inputs).sample)
            previous[method] = (latent, ms / 1e3)
            rows.append({"method": method, "latent": latent, "image_px": 8 * latent, "ms": ms,
                         "trace_gib": round(estimate["device_bytes"] / 2**30, 2)})
            del inputs
    return {"speedup_vs_sdpa": speedups_over_sdpa(rows, "linfusion", "latent"),
            "target": "linfusion >= 1.5x SDPA at a 256² latent"}


def compiled_unet(check, budget: gpu_budget.Budget) -> dict:
    """bench/compile.py's rows (eager vs torch.compile of the UNet), when that file and its compile_rows exist."""
    try:
        module = importlib.import_module("compile")
    except ModuleNotFoundError as error:
        if error.name != "compile":  # bench/compile.py is there but needs what is not installed: an error
            raise
        return {"skipped": "bench/compile.py not present"}
    compile_rows = getattr(module, "compile_rows", None)
    if compile_rows is None:
        return {"skipped": "bench/compile.py has no compile_rows"}
    if not budget.allows("compiling the UNets", BUILD_S["compiled_unet"][check.device]):
        return {}
    latents = [8] if check.dry_run else [128, 256, 512]
    rows = compile_rows(device=check.device, dtype=torch.float32 if check.dry_run else torch.float16,
                        latents=latents, methods=["linfusion", "sdpa"], seconds_left=budget.left,
                        tiny=check.dry_run, backend="eager" if check.dry_run else "inductor")
    budget.rows().extend(rows)
    budget.cut_short = budget.left() <= 0 or any("time" in str(row.get("skipped", "")) for row in rows)
    return {}


def lean_16k(check, budget: gpu_budget.Budget) -> dict:
    """The largest UNet call of a 16384² SD-1.5 job (latent 2048², batch 2: guidance), LinFusion, in the lean mode
    with skips parked in host memory, after a warm-up at a small latent; its measured peak against the trace."""
    latent, warm, dtype = (16, 8, torch.float32) if check.dry_run else (2048, 512, torch.float16)
    if not budget.allows("building the UNet", BUILD_S["lean_16k"][check.device]):
        return {}
    from linfuse.linearize.twin import meta_twin
    from linfuse.pipelines.lean import LeanSettings, lean_mode

    settings = LeanSettings(park_skips=not check.dry_run)
    unet = _build_unet(check, "linfusion", dtype)
    inputs = _unet_inputs(check, unet, latent, batch=2)
    twin = meta_twin(unet)
    estimates = {"lean": traced_call(twin, inputs, settings), "plain": traced_call(twin, inputs)}
    result = {"latent": latent, "image_px": 8 * latent, "dtype": str(dtype), "mode": settings.describe(),
              "estimates": estimates, "target": "measured within ±25 % of the estimate; plain's trace above 2^31 "
              "elements, lean's below"}
    budget.partial.update(result)
    why = refusal(estimates["lean"], gpu_budget.memory_cap(check.device))
    if why:
        budget.refuse("lean call", why)
        return result
    if not budget.allows(f"warm-up at latent {warm}²"):
        return result
    small = _unet_inputs(check, unet, warm, batch=2)
    with torch.no_grad(), lean_mode(unet, settings):
        for _ in range(2):  # the first compiles the kernels; the second is the one the prediction grows from
            _, warm_s = gpu_budget.timed(lambda: unet(**small).sample)
    if budget.allows(f"floor against lean at latent {warm}²", 4 * warm_s):
        result["floor"] = floor_against_lean(check, unet, twin, small, settings)
    if budget.allows("the floor's component offload", BUILD_S["lean_16k"][check.device] + 2 * warm_s):
        result["offload"] = component_offload_figures(check, unet, small, dtype)
    small = None  # freed before the big call
    predicted = (1 if check.dry_run else LEAN_PARKING_FACTOR) * warm_s * (latent / warm) ** 2
    result |= {"warm_latent": warm, "warm_seconds": warm_s, "predicted_seconds": predicted}
    if not budget.allows(f"lean call at latent {latent}²", predicted):
        return result
    gpu_budget.release(check.device)
    before = torch.cuda.memory_allocated() if check.device == "cuda" else 0
    with torch.no_grad(), lean_mode(unet, settings):
        out, seconds = gpu_budget.timed(lambda: unet(**inputs).sample)
    measured = torch.cuda.max_memory_allocated() - before if check.device == "cuda" else None
    lean = estimates["lean"]
    return result | {
        "call_seconds": seconds, "finite": bool(torch.isfinite(out).all()), "measured_peak_bytes": measured,
        "measured_over_estimate": None if measured is None else measured / lean["device_bytes"],
        "measured_over_trace": None if measured is None else measured / lean["trace_bytes"]}


def floor_against_lean(check, unet, twin, inputs: dict, lean) -> dict:
    """The floor rung as auto would take it on this device (CUDA: skips, residuals and up-sampler sources in pinned
    host memory read back band by band; CPU: on disk) against ``lean`` on the same call: seconds and measured peak
    of each, the floor's trace, and the largest difference of the two outputs (also over lean's largest value)."""
    from linfuse.pipelines.lean import lean_mode
    from linfuse.pipelines.preflight import rung_ladder

    floor = rung_ladder("floor", check.device)[0]
    figures, outputs = {"mode": floor.describe(), "estimate": traced_call(twin, inputs, floor)}, {}
    for name, settings in (("lean", lean), ("floor", floor)):
        gpu_budget.release(check.device)
        before = torch.cuda.memory_allocated() if check.device == "cuda" else 0
        with torch.no_grad(), lean_mode(unet, settings):
            outputs[name], figures[f"{name}_seconds"] = gpu_budget.timed(lambda: unet(**inputs).sample)
        figures[f"{name}_measured_peak_bytes"] = \
            torch.cuda.max_memory_allocated() - before if check.device == "cuda" else None
    figures["floor_over_lean"] = figures["floor_seconds"] / figures["lean_seconds"]
    difference = (outputs["floor"].float() - outputs["lean"].float()).abs().max().item()
    figures["max_abs_difference"] = difference
    figures["relative_difference"] = difference / max(outputs["lean"].float().abs().max().item(), 1e-30)
    return figures


def _flux_config(check) -> dict:
    import linfuse

    config = json.loads((Path(linfuse.__file__).parent / "pipelines" / "configs" / "flux.json").read_text())
    config = {k: v for k, v in config["transformer"].items() if not k.startswith("_")}
    if check.dry_run:
        config.update(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                      joint_attention_dim=32, pooled_projection_dim=16, axes_dims_rope=[4, 6, 6])
    return config


def build_flux(check, dtype):
    """FluxTransformer2DModel from its config with random weights made in ``dtype`` on the device directly (built on
    the meta device, cast there, then allocated): no fp32 copy ever exists on the device."""
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        transformer = FluxTransformer2DModel.from_config(_flux_config(check))
    transformer = transformer.to(dtype).to_empty(device=check.device).eval()
    generator = torch.Generator(check.device).manual_seed(0)
    with torch.no_grad():
        for p in transformer.parameters():
            p.normal_(0.0, 0.02, generator=generator)
        for module in transformer.modules():
            if isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm)) and module.weight is not None:
                module.weight.fill_(1.0)
    return transformer


def flux_clear(check, budget: gpu_budget.Budget) -> dict:
    """The FLUX.1-dev transformer (batch 1, 512 text tokens): SDPA, then CLEAR r = 16 (linearize / unlinearize in
    place), at image sizes 1024² … 4096², size by size."""
    import linfuse

    sides, text, dtype = ((128, 256), 8, torch.float32) if check.dry_run else ((1024, 2048, 4096), 512, torch.bfloat16)
    if not budget.allows("building the transformer", BUILD_S["flux_clear"][check.device]):
        return {}
    began = time.perf_counter()
    transformer = build_flux(check, dtype)
    setup = time.perf_counter() - began
    rows, previous = budget.rows(), {}
    for side in sides:
        inputs = _flux_inputs(transformer, side, text, check.device, dtype)
        for method in ("sdpa", "clear"):
            case = f"{method} {side}²"
            grown = gpu_budget.grown(previous.get(method), side, 2 * TOKEN_POWER[method], calls(check))
            if not budget.allows(case, grown if method in previous else setup / 2):
                continue
            if method == "clear":
                linfuse.linearize(transformer, "clear", radius=16)
            try:
                with torch.no_grad():
                    ms = forward_ms(check, lambda inputs=inputs: transformer(**inputs).sample)
            finally:
                if method == "clear":
                    linfuse.unlinearize(transformer)
            previous[method] = (side, ms / 1e3)
            rows.append({"method": method, "image_px": side, "tokens": (side // 16) ** 2, "ms": ms})
        del inputs
    return {"speedup_vs_sdpa": speedups_over_sdpa(rows, "clear", "image_px"),
            "target": "CLEAR r=16 faster than SDPA at 2048², and the gap growing with the size (CLEAR: 6.3x at 8K)"}


def _flux_inputs(transformer, side: int, text: int, device: str, dtype) -> dict:
    from diffusers import FluxPipeline

    config, rows = transformer.config, side // 16
    g = torch.Generator(device).manual_seed(1)
    inputs = {"hidden_states": torch.randn(1, rows * rows, config.in_channels, generator=g, device=device),
              "encoder_hidden_states": torch.randn(1, text, config.joint_attention_dim, generator=g, device=device),
              "pooled_projections": torch.randn(1, config.pooled_projection_dim, generator=g, device=device),
              "timestep": torch.tensor([0.5], device=device),
              "img_ids": FluxPipeline._prepare_latent_image_ids(1, rows, rows, device, dtype),
              "txt_ids": torch.zeros(text, 3, device=device)}
    if config.guidance_embeds:
        inputs["guidance"] = torch.tensor([3.5], device=device)
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}


def component_offload_figures(check, unet, inputs: dict, dtype) -> dict:
    """The floor's component offload (linfuse.pipelines.offload) around this UNet with SD-1.5's text encoder and VAE
    (random weights; narrow ones in a dry run): the device's allocated bytes with every component there, once the
    text encoder has run, while the UNet runs, after a VAE decode, and once removed, against what the planner counts
    as released (``offloaded_bytes``). On the CPU (a dry run) the hooks run and nothing moves (no byte figures)."""
    from types import SimpleNamespace

    from diffusers import AutoencoderKL

    from linfuse.pipelines.offload import component_offload
    from linfuse.pipelines.planner import load_configs, text_encoder_from_config
    from linfuse.pipelines.preflight import offloaded_bytes

    configs = load_configs("sd15")
    text, vae = dict(configs.text_encoders[0]), dict(configs.vae)
    if check.dry_run:
        text |= {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
        vae |= {"block_out_channels": [32, 32, 32, 32]}
    parts = SimpleNamespace(unet=unet, text_encoder=text_encoder_from_config(text).to(check.device, dtype),
                            vae=AutoencoderKL.from_config(vae).to(check.device, dtype).eval())
    cuda = check.device == "cuda"
    planned = offloaded_bytes(parts)
    gpu_budget.release(check.device)

    def allocated():
        return torch.cuda.memory_allocated() if cuda else None

    seen = {"all_on_device": allocated()}
    ids = torch.zeros(1, 77, dtype=torch.long, device=check.device)
    latents = torch.zeros(1, 4, 8, 8, device=check.device, dtype=dtype)
    started = time.perf_counter()
    with torch.no_grad(), component_offload(parts, device=torch.device(check.device)):
        seen["enabled"] = allocated()
        parts.text_encoder(ids)
        seen["text_encoder_ran"] = allocated()
        handle = unet.register_forward_pre_hook(lambda *_: seen.__setitem__("unet_runs", allocated()))
        try:
            unet(**{k: v[:1] if k != "timestep" else v for k, v in inputs.items()})
        finally:
            handle.remove()
        parts.vae.decode(latents)
        seen["vae_decoded"] = allocated()
    seen["removed"] = allocated()
    figures = {"planned_released_bytes": sum(planned), "allocated": seen, "seconds": time.perf_counter() - started}
    if cuda:
        figures["freed_while_unet_runs"] = seen["all_on_device"] - seen["unet_runs"]
        figures["freed_over_planned"] = figures["freed_while_unet_runs"] / max(sum(planned), 1)
        figures["restored"] = seen["removed"] == seen["all_on_device"]
    return figures
