"""results.md of bench/gpu_check.py: the three targets first (measured, target, met or not, or why not measured),
then each section's table, then what each section skipped or cut short and any error."""

TARGETS = (  # (target, section, how the figure is read)
    ("linear attention forward ≥ 0.8 × copy bandwidth at N ≥ 2^16", "linear_bandwidth"),
    ("SD-1.5 UNet, linfusion ≥ 1.5 × SDPA at a 256² latent", "unet_sd15"),
    ("FLUX-4K local attention, Triton ≥ 1.5 × FlexAttention (compiled, same mask)", "local_flux4k"),
)


def target_rows(results: dict) -> list[tuple[str, str, str]]:
    """(target, measured, status) for the three targets."""
    sections, dry = results["sections"], results["dry_run"]
    out = []
    for target, name in TARGETS:
        section = sections.get(name)
        value, bound = _figure(name, section or {})
        if section is None:
            measured, status = "-", "not measured: section not run"
        elif value is None:
            measured = "-"
            status = "not measured: " + (f"error in {name}" if "error" in section else
                                         "the dry run's sizes and CPU have no such figure" if dry else
                                         "cut short before it" if section.get("cut_short") else "no such row")
        else:
            measured = f"{value:.2f}"
            status = ("dry run (CPU, interpreter): not a GPU figure" if dry else
                      "**met**" if value >= bound else "**not met**")
        out.append((target, measured, status))
    return out


def _figure(name: str, section: dict) -> tuple[float | None, float]:
    if name == "linear_bandwidth":
        return section.get("worst_of_copy_at_2^16_up"), 0.8
    if name == "unet_sd15":
        return section.get("speedup_vs_sdpa", {}).get("256"), 1.5
    return section.get("speedup_vs_flex"), 1.5


def markdown(results: dict) -> str:
    sections = results["sections"]
    lines = [f"# linfuse GPU check{' (dry run on the CPU, Triton interpreter)' if results['dry_run'] else ''}", "",
             "| target | measured | status |", "|---|---:|---|"]
    lines += [f"| {t} | {m} | {s} |" for t, m, s in target_rows(results)] + [""]
    for name, section in sections.items():
        lines += WRITERS.get(name, lambda s: [])(section)
    for name, section in sections.items():
        if section.get("cut_short"):
            lines.append(f"**{name}** was cut short at its deadline.")
        if section.get("error"):
            lines += [f"**{name} error:**", "", "```", str(section["error"]), "```", ""]
        if section.get("skipped"):
            skipped = section["skipped"]
            lines += [f"**{name} skipped:**", ""] + [f"- {s}" for s in ([skipped] if isinstance(skipped, str)
                                                                       else skipped)] + [""]
    return "\n".join(lines)


def _environment(env: dict) -> list[str]:
    return ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in env.items() if k not in ("skipped",)] + [""]


def _configs(section: dict) -> list[str]:
    if not section.get("rows"):
        return []
    lines = ["## Kernels against the fp32 reference (relative RMS error, worst of out, dq, dk, dv)", "",
             "| problem | shape | dtype | config rank | worst error | tolerance | ok | configs |",
             "|---|---|---|---:|---:|---:|---|---|"]
    lines += [f"| {r['problem']} | {r['shape']} | {r['dtype']} | {r['rank']} | {r['worst']:.2e} | "
              f"{r['tolerance']:.0e} | {'yes' if r['ok'] else '**no**'} | {_configs_text(r['configs'])} |"
              for r in section["rows"]]
    return lines + [""]


def _configs_text(configs: dict) -> str:
    return "; ".join(f"{kernel}: " + " ".join(f"{k}={v}" for k, v in config.items())
                     for kernel, config in configs.items()).replace("|", "/")


def _bandwidth(bw: dict) -> list[str]:
    if not bw.get("rows"):
        return []
    lines = [f"## Linear attention forward, B·H = 16 (copy: {_num(bw.get('copy_GB/s'))} GB/s)", "",
             "| dtype | d | N | ms | GB/s | of copy |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['dtype']} | {r['d']} | {r['N']} | {r['ms']:.3f} | {r['GB/s']:.1f} | {_num(r['of_copy'])} |"
              for r in bw["rows"]]
    return lines + [""]


def _unet(unet: dict) -> list[str]:
    if not unet.get("rows"):
        return []
    lines = ["## SD-1.5 UNet forward (random weights, batch 1)", "", "| method | latent | image | ms | trace GiB |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['method']} | {r['latent']}² | {r['image_px']}² | {r['ms']:.1f} | {r['trace_gib']} |"
              for r in unet["rows"]]
    return lines + ["", "linfusion speed-up over SDPA: " + (", ".join(
        f"{k}²: {v:.2f}×" for k, v in unet.get("speedup_vs_sdpa", {}).items()) or "-"), ""]


def _local(local: dict) -> list[str]:
    if not local.get("rows"):
        return []
    lines = [f"## Local attention: {local.get('problem')}", "",
             "| kernel | ms | effective TFLOP/s | first call s | rel. RMS vs Triton |", "|---|---:|---:|---:|---:|"]
    for r in local["rows"]:
        if "ms" in r:
            check = "-" if r.get("vs_triton") is None else f"{r['vs_triton']:.1e}"
            lines.append(f"| {r['kernel']} | {r['ms']:.2f} | {r['TFLOP/s']:.2f} | {r['first_call_s']} | {check} |")
        else:
            lines.append(f"| {r['kernel']} | failed: {r.get('error', '?')[:200]} | | | |")
    return lines + ["", f"Triton vs FlexAttention: {_num(local.get('speedup_vs_flex'))}×, vs dense SDPA: "
                    f"{_num(local.get('speedup_vs_sdpa'))}× (NATTEN 0.21's published H100 figure for an 80×80 window "
                    "on this problem: 16.2 ms)", ""]


def _compiled(section: dict) -> list[str]:
    if not section.get("rows"):
        return []
    lines = ["## Compiled UNet (bench/compile.py)", "", "| method | latent | eager ms | compiled ms | speed-up | "
             "compile s |", "|---|---:|---:|---:|---:|---:|"]
    for r in section["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['method']} | {r['latent']}² | skipped: {r['skipped']} | | | |")
        else:
            lines.append(f"| {r['method']} | {r['latent']}² | {_num(r.get('eager_ms'))} | "
                         f"{_num(r.get('compiled_ms'))} | {_num(r.get('speedup'))} | {_num(r.get('compile_s'))} |")
    return lines + [""]


def _lean(lean: dict) -> list[str]:
    if "estimates" not in lean:
        return []
    est = lean["estimates"]
    lines = [f"## {lean['image_px']}² SD-1.5 UNet call in the lean mode ({lean['mode']}, batch 2, {lean['dtype']})",
             "", "| | seconds | device GiB | host GiB | largest tensor |", "|---|---:|---:|---:|---:|"]
    if "finite" in lean:
        lines.append(f"| measured | {lean['call_seconds']:.1f} | {_gib(lean['measured_peak_bytes'])} | | |")
    lines += [f"| estimate, {name} | | {_gib(e['device_bytes'])} | {_gib(e['host_bytes'])} | {e['max_elements']:.3g} |"
              for name, e in est.items()]
    if "finite" in lean:
        lines += ["", f"finite: {lean['finite']}; measured / estimate: {_num(lean['measured_over_estimate'])}; "
                  f"measured / raw trace: {_num(lean['measured_over_trace'])}"]
    floor = lean.get("floor")
    if floor:
        peaks = f"{_gib(floor['floor_measured_peak_bytes'])} / {_gib(floor['lean_measured_peak_bytes'])}"
        lines += ["", f"Floor ({floor['mode']}) against lean at latent {lean['warm_latent']}²: "
                  f"{floor['floor_seconds']:.2f} s / {floor['lean_seconds']:.2f} s = {floor['floor_over_lean']:.2f}×; "
                  f"measured peak {peaks} GiB (floor's estimate {_gib(floor['estimate']['device_bytes'])} GiB); "
                  f"outputs within {floor['max_abs_difference']:.2e} ({floor['relative_difference']:.1e} of the "
                  "largest value)"]
    offload = lean.get("offload")
    if offload:
        freed = offload.get("freed_while_unet_runs")
        lines += ["", f"The floor's component offload (SD-1.5 text encoder and VAE to host while the UNet runs): "
                  f"planned to free {_gib(offload['planned_released_bytes'])} GiB, freed {_gib(freed)} GiB "
                  f"(freed / planned {_num(offload.get('freed_over_planned'))}); every component back after "
                  f"removal: {offload.get('restored', '-')}; {offload['seconds']:.2f} s with the moves"]
    return lines + [""]


def _flux(flux: dict) -> list[str]:
    if not flux.get("rows"):
        return []
    lines = ["## FLUX.1-dev transformer forward (random weights, batch 1, 512 text tokens)", "",
             "| method | image | image tokens | ms |", "|---|---:|---:|---:|"]
    lines += [f"| {r['method']} | {r['image_px']}² | {r['tokens']} | {r['ms']:.1f} |" for r in flux["rows"]]
    return lines + ["", "CLEAR (r = 16) speed-up over SDPA: " + (", ".join(
        f"{k}²: {v:.2f}×" for k, v in flux.get("speedup_vs_sdpa", {}).items()) or "-"), ""]


WRITERS = {"environment": _environment, "configs": _configs, "linear_bandwidth": _bandwidth, "unet_sd15": _unet,
           "local_flux4k": _local, "compiled_unet": _compiled, "lean_16k": _lean, "flux_clear": _flux}


def _gib(count) -> str:
    return "-" if count is None else f"{count / 2**30:.2f}"


def _num(value) -> str:
    return "-" if value is None else f"{value:.2f}" if value < 100 else f"{value:.0f}"
