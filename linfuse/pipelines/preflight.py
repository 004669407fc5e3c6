"""Memory preflight: the peak memory of each stage of a job, estimated before any work, and the largest size that fits.

Each stage's figure is the memory it needs *beyond* the loaded weights (which are already resident and so already
excluded from the free memory it is compared with):

* a denoising stage: the UNet forward at the stage's latent size and batch (×2 with classifier-free guidance),
  counted by running the model's meta-device twin under :class:`~.memory_trace.LiveBytes` and multiplied by the
  allocator's overhead (``ALLOCATOR_OVERHEAD``), plus the sampler's latents (``LATENT_BUFFERS`` latent-sized
  tensors: latents, noise, CFG copies, multistep history);
* a VAE stage: one tile's decode or encode (traced the same way) plus the canvases of whole images it fills
  (float32, on the CPU); the final decode streams rows and holds one strip of float rows instead, and the 8-bit
  image unless it is written to a file as it is decoded (:func:`decode_bytes`);
* on the CPU, every stage also ``CPU_RUNTIME_BYTES``, the part of a job that does not grow with the image.

On the CPU the device and host are the same memory and the two parts add up; on a GPU the device part is compared
with ``torch.cuda.mem_get_info`` and the host part with the system's available memory. A job fits when every stage
needs at most ``SAFETY`` of what is free and no tensor reaches 2^31 elements (``INDEX_LIMIT``: some convolution and
up-sampling kernels index with 32 bits).

``memory`` picks how the UNet runs (:mod:`.lean`): "plain" (its own forward), "lean" (skips parked in host memory
on CUDA), "floor" (the least memory: :class:`~.lean.LeanSettings` ``floor``; a DiT runs lean), or "auto": per
denoising stage the first of plain, lean, lean with parked skips (CUDA), lean with the up-samplers fused into their
consumers (recomputed), and as a last resort the floor (resnets depth-first; on CUDA skips and residuals read from
host memory band by band) that fits. The trace runs that very code path, so the host memory of parked skips and the
largest tensor are counted, not assumed.
"""

import tempfile
import threading
import weakref
from dataclasses import dataclass, field

import torch

from ..errors import InvalidArgumentError, LinfuseError
from ..linearize.layers import resolve_denoiser
from ..linearize.twin import meta_twin
from .families import is_dit
from .lean import LeanSettings, lean_mode
from .lean.dit import DiTLeanSettings
from .memory_trace import trace
from .offload import execution_device, offloadable, weights_device
from .plan import Stage
from .tiled_vae import strip_rows

SAFETY = 0.9
LATENT_BUFFERS = 10
# Allocators keep some freed memory (glibc's heap after its mmap threshold has grown; CUDA's caching allocator
# blocks), so the resident peak exceeds the peak of live tensors. Measured on this project's CPU (bench/highres.py,
# tests of the bundled UNet and VAE): resident / traced = 1.13–1.40, about 1.25 at large sizes. With
# MALLOC_MMAP_THRESHOLD_=65536 (every large block returned to the system) the two agree within 1 %.
ALLOCATOR_OVERHEAD = {"cpu": 1.25, "cuda": 1.1}
# On the CPU a job also holds a part that does not grow with the image: oneDNN's primitive caches and the heaps of
# the first calls at each new shape, the text encoder's activations, the preflight's own trace. Measured on this
# project's CPU with the bundled student (RSS high-water mark per stage, tests of bench/highres.py): the estimate's
# growth from stage to stage matches the measured one, with a constant 50–70 MiB above it.
CPU_RUNTIME_BYTES = 64 * 2**20
# A rung that offloads (:mod:`.offload`) encodes each stage's prompt with the text encoders back on the device:
# their activations then are at most T5-XXL's at 512 tokens (64 heads' fp32 scores, 64 MiB per layer, one layer at
# a time) and far less for CLIP's 77 tokens.
TEXT_ENCODING_BYTES = 128 * 2**20
CANVAS_BYTES_PER_PIXEL = 3 * 4  # RGB float32
IMAGE_BYTES_PER_PIXEL = 4  # an RGB PIL image: Pillow stores a pixel in 4 bytes
INDEX_LIMIT = 2**31
MEMORY_MODES = ("auto", "plain", "lean", "floor")


def check_memory_mode(memory) -> str:
    if memory not in MEMORY_MODES:
        raise InvalidArgumentError(f"memory must be one of {', '.join(MEMORY_MODES)}; got {memory!r}")
    return memory


def rung_ladder(memory: str, device_type: str, *, dit: bool = False) -> list:
    """The denoiser settings (rungs) ``memory`` may run, cheapest first (None = the plain forward). A UNet: plain,
    lean, lean with parked skips (CUDA), lean with fused up-sampling (recomputes the up-samplers), then the floor
    (the last resort: depth-first resnets that recompute conv1; on CUDA skips and transformer residuals read back
    from host memory band by band, and the text encoders and VAE in host memory while the UNet runs,
    :mod:`.offload`); a DiT (:mod:`.lean.dit`): plain, lean, and on CUDA lean with the text encoders and VAE
    offloaded (its floor)."""
    check_memory_mode(memory)
    if memory == "plain":
        return [None]
    cuda = device_type == "cuda"
    if dit:
        return {"auto": [None, DiTLeanSettings(), *([DiTLeanSettings(offload=True)] if cuda else [])],
                "lean": [DiTLeanSettings()], "floor": [DiTLeanSettings(offload=cuda)]}[memory]
    frugal = LeanSettings(park_skips=cuda)
    if memory == "lean":
        return [frugal]
    fused = LeanSettings(park_skips=cuda, fuse_upsampling=True)
    floor = LeanSettings(park_skips=True, fuse_upsampling=True, floor=True, offload=cuda,
                         park_dir=None if cuda else tempfile.gettempdir())  # the CPU parks on disk
    if memory == "floor":
        return [floor]
    return [None, LeanSettings(), *([frugal] if cuda else []), fused, floor]


def mode_name(settings: LeanSettings | None) -> str:
    return "plain" if settings is None else settings.describe()


class InsufficientMemoryError(LinfuseError):
    """A job would not fit in the memory that is free; raised before any work, with the largest size that fits."""


@dataclass
class StageMemory:
    label: str
    width: int
    height: int
    device_bytes: int
    host_bytes: int
    max_elements: int = 0
    lean: LeanSettings | None = None  # the UNet's settings at a denoising stage
    denoising: bool = False
    released: int = 0  # weights that leave the device for the stage (its rung offloads the text encoders and VAE)

    @property
    def mode(self) -> str:
        return mode_name(self.lean) if self.denoising else ""


@dataclass
class MemoryEstimate:
    """Every stage's need against the free memory. ``resident``: bytes already counted against the device's free
    memory by the caller's account but not yet allocated (the planner's weights; 0 for a loaded pipeline, whose
    weights are no longer free); a stage's ``released`` weights leave the device while it runs. A stage fits when
    ``resident`` plus its device need (less what it released) is at most ``SAFETY`` of the free device memory (and
    its host need at most ``SAFETY`` of the free host memory), every tensor under 2^31."""

    device: str
    stages: list[StageMemory] = field(default_factory=list)
    free_device: int | None = None
    free_host: int | None = None
    resident: int = 0

    @property
    def shared(self) -> bool:
        return self.device == "cpu"

    def stage_need(self, stage: StageMemory) -> tuple[int, int]:
        """(device, host) bytes, the device's net of the weights the stage released; on the CPU both in the device
        figure."""
        device = stage.device_bytes - stage.released
        if self.shared:
            return device + stage.host_bytes, 0
        return device, stage.host_bytes

    @property
    def peak_device(self) -> int:
        """The device peak: ``resident`` plus the largest stage."""
        return self.resident + max(self.stage_need(s)[0] for s in self.stages)

    @property
    def limit_device(self) -> int | None:
        """What the job may use on the device: ``SAFETY`` of the free memory."""
        return None if self.free_device is None else int(SAFETY * self.free_device)

    @property
    def peak_host(self) -> int:
        return max(self.stage_need(s)[1] for s in self.stages)

    @property
    def max_elements(self) -> int:
        return max(s.max_elements for s in self.stages)

    def stage_fits(self, stage: StageMemory) -> bool:
        device, host = self.stage_need(stage)
        device_ok = self.free_device is None or self.resident + device <= SAFETY * self.free_device
        host_ok = self.shared or self.free_host is None or host <= SAFETY * self.free_host
        return device_ok and host_ok and stage.max_elements < INDEX_LIMIT

    @property
    def fits(self) -> bool:
        return all(self.stage_fits(s) for s in self.stages)

    @property
    def modes(self) -> list[str]:
        """The UNet's mode at each denoising stage."""
        return [s.mode for s in self.stages if s.denoising]

    def describe(self) -> str:
        where = "memory" if self.shared else f"{self.device} memory"
        lines = [f"{s.label} {s.width}x{s.height}{f' ({s.mode})' if s.mode else ''}: "
                 f"{memory_text(sum(self.stage_need(s)))}"
                 f"{f' with {memory_text(s.released)} of weights in host memory' if s.released else ''}"
                 for s in self.stages]
        free = f"{memory_text(self.free_device)} free" if self.free_device is not None else "free memory unknown"
        large = f"; a tensor of {self.max_elements:.3g} elements reaches 2^31" if self.max_elements >= INDEX_LIMIT \
            else ""
        return f"peak {memory_text(self.peak_device)} of {where} ({free}){large}; " + "; ".join(lines)


def memory_text(count: int | None) -> str:
    """Bytes for people: GiB from 1 GiB up, MiB below (``?`` when unknown)."""
    if count is None:
        return "?"
    return f"{count / 2**30:.2f} GiB" if abs(count) >= 2**30 else f"{count / 2**20:.1f} MiB"


def host_available() -> int | None:
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def total_memory(device: torch.device) -> int | None:
    """All the memory of ``device`` (a GPU's, or the system's MemTotal for the CPU); None when unreadable."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        with open("/proc/meminfo") as info:
            return next((int(line.split()[1]) * 1024 for line in info if line.startswith("MemTotal:")), None)
    except OSError:
        return None


def check_memory_cap(text: str, device, name: str = "--max-memory") -> int:
    """A memory cap such as '8GiB' (:func:`~.planner.parse_memory`) in bytes, at most ``device``'s total memory; an
    InvalidArgumentError naming ``name`` otherwise."""
    from .loading import resolve_device
    from .planner import parse_memory

    cap = parse_memory(text, name)
    total = total_memory(resolve_device(device))
    if total is not None and cap > total:
        raise InvalidArgumentError(f"{name} must be at most this device's {memory_text(total)}; got {text!r}")
    return cap


def free_memory(device: torch.device) -> tuple[int | None, int | None]:
    """(free device bytes, free host bytes) now; on the CPU both are the system's available memory."""
    host = host_available()
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0], host
    return host, host


class MemoryModel:
    """Meta twins of a pipeline's UNet and VAE, and the traced peak of each operation at any size.

    ``MemoryModel(pipe)`` twins a loaded pipeline; ``MemoryModel(unet=…, vae=…, …)`` takes models already on the meta
    device (the planner builds them from configs, with no weights). Traces are cached per size and setting, and run
    one at a time (a trace installs the lean forward on the shared twin). ``offload_bytes``: (text encoders, VAE)
    bytes on the device that a rung with ``offload`` moves to host memory (:func:`offloaded_bytes`)."""

    def __init__(self, pipe=None, *, unet=None, vae=None, vae_factor: int | None = None, text_tokens: int = 77,
                 device_type: str | None = None, offload_bytes: tuple[int, int] = (0, 0)):
        if pipe is not None:
            unet, vae, vae_factor = meta_twin(pipe.unet), meta_twin(pipe.vae), pipe.vae_scale_factor
            text_tokens = getattr(pipe.tokenizer, "model_max_length", 77) if pipe.tokenizer is not None else 77
            device_type = execution_device(pipe.unet).type
            offload_bytes = offloaded_bytes(pipe)
        self.offload_bytes = offload_bytes
        self.device_type = device_type or "cpu"
        self.overhead = ALLOCATOR_OVERHEAD.get(self.device_type, 1.25)
        self.unet, self.vae, self.vae_factor, self.text_tokens = unet, vae, vae_factor, text_tokens
        self.dtype = unet.dtype
        self._unet_existing = [*self.unet.parameters(), *self.unet.buffers()]
        self._vae_existing = [*self.vae.parameters(), *self.vae.buffers()]
        self._cache: dict = {}
        self._lock = threading.Lock()
        self.report = None  # report(text): told of each new trace before it runs (``linfuse estimate``'s progress)

    def ladder(self, memory: str) -> list:
        """The denoiser settings ``memory`` may run, cheapest first."""
        return rung_ladder(memory, self.device_type)

    def denoiser_batch(self, batch: int, guidance: bool) -> int:
        """Samples in one denoiser call: both classifier-free-guidance halves at once."""
        return batch * (2 if guidance else 1)

    def _unet_inputs(self, batch: int, height: int, width: int):
        config = self.unet.config
        meta = {"device": "meta", "dtype": self.dtype}
        sample = torch.empty(batch, config.in_channels, height, width, **meta)
        context = torch.empty(batch, self.text_tokens, config.cross_attention_dim, **meta)
        added = None
        if config.addition_embed_type == "text_time":
            pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
            added = {"text_embeds": torch.empty(batch, pooled, **meta), "time_ids": torch.empty(batch, 6, **meta)}
        return sample, context, added

    def unet_memory(self, latent_height: int, latent_width: int, batch: int,
                    lean: LeanSettings | None = None) -> tuple[int, int, int]:
        """(device bytes, host bytes, largest tensor's elements) of one denoiser call with these settings."""
        return self._cached(("unet", latent_height, latent_width, batch, lean),
                            lambda: self._trace_unet(latent_height, latent_width, batch, lean),
                            f"denoiser at {latent_width * self.vae_factor}x{latent_height * self.vae_factor}, "
                            f"{mode_name(lean)}")

    def traced_within(self, latent_height: int, latent_width: int, batch: int, lean) -> list[tuple[int, int, int]]:
        """:meth:`unet_memory` of the latents traced so far with this batch and setting that are no larger than
        this one in either side."""
        with self._lock:
            return [figures for key, figures in self._cache.items()
                    if key[0] == "unet" and key[3:] == (batch, lean) and key[1] <= latent_height
                    and key[2] <= latent_width]

    def vae_tile_memory(self, tile: int, batch: int, kind: str) -> tuple[int, int]:
        """(bytes, largest tensor's elements) of one tile's decode or encode."""
        return self._cached(("vae", tile, batch, kind), lambda: self._trace_vae(tile, batch, kind),
                            f"VAE {kind} of a {tile * self.vae_factor}-pixel tile")

    def _cached(self, key, compute, what: str):
        with self._lock:
            if key not in self._cache:
                if self.report is not None:
                    self.report(f"tracing the {what}")
                self._cache[key] = compute()
            return self._cache[key]

    def _trace_unet(self, latent_height: int, latent_width: int, batch: int, lean) -> tuple[int, int, int]:
        sample, context, added = self._unet_inputs(batch, latent_height, latent_width)
        timestep = torch.tensor(500)

        def forward(x, c):
            return self.unet(x, timestep, c, added_cond_kwargs=added).sample

        with lean_mode(self.unet, lean):
            traced = trace(forward, sample, context, existing=self._unet_existing)
        latent = sample[:1].nelement() * sample.element_size()
        device = int(self.overhead * traced.peak) + LATENT_BUFFERS * latent * max(1, batch // 2)
        return device, traced.host_peak, traced.max_elements

    def _trace_vae(self, tile: int, batch: int, kind: str) -> tuple[int, int]:
        config, meta = self.vae.config, {"device": "meta", "dtype": self.vae.dtype}
        if kind == "decode":
            x = torch.empty(batch, config.latent_channels, tile, tile, **meta)
            traced = trace(lambda z: self.vae.decode(z).sample, x, existing=self._vae_existing)
        else:
            side = tile * self.vae_factor
            x = torch.empty(batch, config.in_channels, side, side, **meta)
            traced = trace(lambda z: self.vae.encode(z).latent_dist.mean, x, existing=self._vae_existing)
        return int(self.overhead * traced.peak), traced.max_elements



def denoising_stage(model: MemoryModel, stage: Stage, unet_batch: int, ladder, estimate,
                    runtime: int = 0) -> StageMemory:
    """The stage's memory with the first UNet setting of ``ladder`` that fits (the last one if none does).

    A setting that did not fit at a latent no larger in either side (traced before, for an earlier stage or
    another size) is passed over without a trace: a larger latent needs no less."""
    factor = model.vae_factor
    height, width = stage.height // factor, stage.width // factor
    label = "base" if stage.is_base else f"refine s={stage.strength:g}"

    def memory_of(figures, lean) -> StageMemory:
        device, host, elements = figures
        released = 0
        if getattr(lean, "offload", False):  # the prompt is encoded with the text encoders back, the VAE still out
            text, vae = model.offload_bytes
            released, device = text + vae, max(device, text + TEXT_ENCODING_BYTES)
        return StageMemory(label, stage.width, stage.height, device + runtime, host, elements, lean, denoising=True,
                           released=released)

    for index, lean in enumerate(ladder):
        if estimate is not None and index < len(ladder) - 1 and any(
                not estimate.stage_fits(memory_of(figures, lean))
                for figures in model.traced_within(height, width, unet_batch, lean)):
            continue
        memory = memory_of(model.unet_memory(height, width, unet_batch, lean), lean)
        if estimate is None or estimate.stage_fits(memory):
            break
    return memory


_MODELS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_MODELS_LOCK = threading.Lock()


def memory_model_for(pipe) -> MemoryModel:
    """A pipeline's MemoryModel (a DiT's: :class:`~.dit_memory.DiTMemoryModel`), built once and rebuilt when its
    denoiser's dtype, device or processors (their classes and options) change; what the pipelines, the UI and the
    CLI estimate with."""
    denoiser = resolve_denoiser(pipe)
    processors = tuple((type(m).__name__, repr(m.layer_config()) if hasattr(m, "layer_config") else "")
                       for m in denoiser.attn_processors.values())
    signature = (denoiser.dtype, execution_device(denoiser).type, processors)
    with _MODELS_LOCK:
        cached = _MODELS.get(denoiser)
        if cached is None or cached[0] != signature:
            cached = _MODELS[denoiser] = (signature, _memory_model(pipe))
        return cached[1]


def _memory_model(pipe) -> MemoryModel:
    if not is_dit(pipe):
        return MemoryModel(pipe)
    from .dit_memory import DiTMemoryModel

    return DiTMemoryModel.of(pipe)


def estimate_stages(model: MemoryModel, stages: list[Stage], *, batch: int = 1, guidance: bool = True,
                    upscale: str = "latent", tile: int = 64, memory: str = "plain",
                    estimate: "MemoryEstimate | None" = None, to_file: bool = False) -> list[StageMemory]:
    """The memory of every stage of a progressive job (a single image: ``stages`` with one base stage); with
    ``memory="auto"`` each denoising stage takes the first setting that fits ``estimate``'s free memory;
    ``to_file``: the final image is streamed to a file (:func:`decode_bytes`)."""
    ladder = model.ladder(memory)
    unet_batch = model.denoiser_batch(batch, guidance)
    runtime = CPU_RUNTIME_BYTES if model.device_type == "cpu" else 0
    out = []
    previous = None
    for stage in stages:
        out.append(denoising_stage(model, stage, unet_batch, ladder, estimate, runtime))
        if upscale == "pixel" and previous is not None:  # decode previous, resize, encode: two canvases on the host
            decode, encode = model.vae_tile_memory(tile, batch, "decode"), model.vae_tile_memory(tile, batch, "encode")
            canvases = batch * CANVAS_BYTES_PER_PIXEL * (previous.width * previous.height + stage.width * stage.height)
            out.append(StageMemory("upscale (VAE)", stage.width, stage.height, max(decode[0], encode[0]) + runtime,
                                   canvases, max(decode[1], encode[1])))
        previous = stage
    final = stages[-1]
    decode = model.vae_tile_memory(tile, batch, "decode")
    out.append(StageMemory("decode (VAE)", final.width, final.height, decode[0] + runtime,
                           decode_bytes(final.width, final.height, model.vae_factor, tile, batch, to_file), decode[1]))
    if any(getattr(s.lean, "offload", False) for s in out):  # the job runs offloaded (highres.job_offload): the
        for stage in (s for s in out if not s.denoising):  # VAE works with the text encoders still in host memory
            stage.released = model.offload_bytes[0]
    return out


def decode_bytes(width: int, height: int, factor: int, tile: int, batch: int = 1, to_file: bool = False) -> int:
    """Host bytes of the final decode beyond one tile's (:func:`~.tiled_vae.decode_bands`): its float strip of one
    tile's rows, B·W·rows·``CANVAS_BYTES_PER_PIXEL``, the 8-bit band handed on, B·W·rows·3, and unless the image
    is streamed to a file (``to_file``), the images it fills, B·W·H·``IMAGE_BYTES_PER_PIXEL``."""
    rows = strip_rows(height // factor, tile, factor)
    images = 0 if to_file else batch * width * height * IMAGE_BYTES_PER_PIXEL
    return batch * width * rows * (CANVAS_BYTES_PER_PIXEL + 3) + images


def estimate_memory(pipe, stages: list[Stage], *, batch: int = 1, guidance: bool = True, upscale: str = "latent",
                    tile: int = 64, model: MemoryModel | None = None, limit: int | None = None,
                    memory: str = "auto", host_limit: int | None = None, resident: int = 0,
                    free: tuple[int | None, int | None] | None = None, to_file: bool = False) -> MemoryEstimate:
    """The estimate of every stage, with the free memory now (or ``free``, (device, host) bytes read before: a
    search compares all its sizes with one reading), or ``limit`` bytes (a cap, as on a shared card: for the
    device and, unless ``host_limit`` is given, the host alike; the pipeline's weights count against it, as the
    planner counts them: ``resident``, see :class:`MemoryEstimate`). ``memory`` as in the module docstring;
    ``to_file``: the final image is streamed to a file (:func:`decode_bytes`)."""
    model = model or memory_model_for(pipe)
    if limit is not None:
        free_device, free_host = limit, limit
        if pipe is not None and not resident:  # a cap is what the job may hold, its weights included
            resident = weights_bytes(pipe)
    else:
        free_device, free_host = free or free_memory(execution_device(resolve_denoiser(pipe)) if pipe is not None
                                                     else torch.device(model.device_type))
        if pipe is not None and not resident:  # diffusers' model offload: the denoiser comes in to run
            resident = waiting_bytes(resolve_denoiser(pipe))
    if host_limit is not None:
        free_host = host_limit
    estimate = MemoryEstimate(model.device_type, [], free_device, free_host, resident)
    estimate.stages = estimate_stages(model, stages, batch=batch, guidance=guidance, upscale=upscale, tile=tile,
                                      memory=memory, estimate=estimate, to_file=to_file)
    return estimate


def offloaded_bytes(pipe) -> tuple[int, int]:
    """(text encoders, VAE) bytes that :func:`~.offload.enable_component_offload` would move off a CUDA device
    (nothing on the CPU, whose device memory is the host's)."""
    if execution_device(resolve_denoiser(pipe)).type != "cuda":
        return 0, 0
    found = offloadable(pipe)
    vae = found.pop("vae", None)
    return model_bytes(*found.values()), model_bytes(vae) if vae is not None else 0


def waiting_bytes(denoiser) -> int:
    """The denoiser's bytes when it waits off the device it computes on (under diffusers' model offload): they are
    not yet taken from the free memory, and will be while it runs."""
    waiting = weights_device(denoiser)
    return model_bytes(denoiser) if waiting is not None and waiting.type != execution_device(denoiser).type else 0


def model_bytes(*models) -> int:
    """Bytes of the models' parameters and buffers."""
    return sum(t.nelement() * t.element_size() for m in models for t in [*m.parameters(), *m.buffers()])


def weights_bytes(pipe) -> int:
    """Bytes of the pipeline's models (parameters and buffers), as the planner counts them from configs."""
    return model_bytes(*(m for m in pipe.components.values() if isinstance(m, torch.nn.Module)))
