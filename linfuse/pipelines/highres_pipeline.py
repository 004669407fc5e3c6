"""``LinfuseHighResPipeline``: progressive high-resolution generation as a diffusers pipeline (SD-1.x / 2.x).

    pipe = LinfuseHighResPipeline.from_pipe(StableDiffusionPipeline.from_pretrained(...))
    linfuse.linearize(pipe)
    image = pipe("a lighthouse at dusk", width=4096, height=2048).images[0]

It runs :func:`~linfuse.pipelines.highres.generate_highres` with the pipeline's own components; see that module for
the stages, the refusals before work and the options.
"""

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    ImagePipelineOutput,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import CLIPTextModel, CLIPTokenizer

from ..errors import InvalidArgumentError
from .highres import HighResOptions, generate_highres
from .parameters import GenerationParams


class LinfuseHighResPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(self, vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 unet: UNet2DConditionModel, scheduler: KarrasDiffusionSchedulers):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)

    def text_to_image(self) -> StableDiffusionPipeline:
        """A StableDiffusionPipeline over the same components (nothing is copied)."""
        return StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                       unet=self.unet, scheduler=self.scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)

    @torch.no_grad()
    def __call__(self, prompt: str, width: int, height: int, negative_prompt: str = "", num_inference_steps: int = 25,
                 guidance_scale: float = 7.5, seed: int = 0, progress: bool = True, **options) -> ImagePipelineOutput:
        """``options`` are the fields of :class:`HighResOptions` (upscale, strengths, skip_residual, vae_tile, …)."""
        allowed = set(HighResOptions.__dataclass_fields__)
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise InvalidArgumentError(f"unknown options {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
        params = GenerationParams(prompt=prompt, negative_prompt=negative_prompt, width=width, height=height,
                                  steps=num_inference_steps, guidance=guidance_scale, seed=seed)
        image = generate_highres(self.text_to_image(), params, HighResOptions(**options), progress=progress)
        return ImagePipelineOutput(images=[image])
