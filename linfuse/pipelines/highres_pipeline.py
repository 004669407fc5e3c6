"""``LinfuseHighResPipeline``: progressive high-resolution generation as a diffusers pipeline (SD-1.x/2.x, SDXL).

    pipe = LinfuseHighResPipeline.from_pipe(StableDiffusionPipeline.from_pretrained(...))   # or an SDXL pipeline
    linfuse.linearize(pipe)
    images = pipe(["a lighthouse at dusk", "a harbour"], width=4096, height=2048, num_images_per_prompt=2,
                  generator=torch.Generator().manual_seed(0)).images

It runs :func:`~linfuse.pipelines.highres.highres_latents` with the pipeline's own components (nothing copied), one
image after another (at these sizes one at a time is what fits), with diffusers' call conventions: ``prompt`` a
string or a list, ``num_images_per_prompt``, ``generator`` (one, or one per image), ``output_type`` "pil", "np" or
"latent", ``callback_on_step_end`` (called at every step of every stage), ``return_dict``. The progressive options
(``upscale``, ``strengths``, ``skip_residual``, ``vae_tile``, ``memory``, …) are the fields of
:class:`~linfuse.pipelines.highres.HighResOptions`.
"""

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    ImagePipelineOutput,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from ..errors import InvalidArgumentError
from .highres import HighResOptions, checked_stages, decode, decode_images, highres_latents, job_offload
from .parameters import GenerationParams

OUTPUT_TYPES = ("pil", "np", "latent")


class LinfuseHighResPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->text_encoder_2->unet->vae"
    _optional_components = ["text_encoder_2", "tokenizer_2"]

    def __init__(self, vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 unet: UNet2DConditionModel, scheduler: KarrasDiffusionSchedulers,
                 text_encoder_2: CLIPTextModelWithProjection | None = None, tokenizer_2: CLIPTokenizer | None = None):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                              text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def is_sdxl(self) -> bool:
        return self.text_encoder_2 is not None

    def text_to_image(self):
        """A StableDiffusionPipeline, or StableDiffusionXLPipeline, over the same components (nothing is copied)."""
        if self.is_sdxl:
            return StableDiffusionXLPipeline(vae=self.vae, text_encoder=self.text_encoder,
                                             text_encoder_2=self.text_encoder_2, tokenizer=self.tokenizer,
                                             tokenizer_2=self.tokenizer_2, unet=self.unet, scheduler=self.scheduler)
        return StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                       unet=self.unet, scheduler=self.scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 25, guidance_scale: float = 7.5,
                 negative_prompt: str | list[str] | None = None, num_images_per_prompt: int = 1,
                 generator: torch.Generator | list[torch.Generator] | None = None, output_type: str = "pil",
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs: list[str] | None = None,
                 return_dict: bool = True, progress: bool = True, **options):
        prompts, negatives = self.check_inputs(prompt, negative_prompt, num_images_per_prompt, output_type, options)
        generators = self.per_image_generators(generator, len(prompts) * num_images_per_prompt)
        side = self.unet.config.sample_size * self.vae_scale_factor
        settings = HighResOptions(**options)
        pipe, results = self.text_to_image(), []

        def job(index: int) -> GenerationParams:
            which = index // num_images_per_prompt
            return GenerationParams(prompt=prompts[which], negative_prompt=negatives[which], width=width or side,
                                    height=height or side, steps=num_inference_steps, guidance=guidance_scale)

        stages = checked_stages(pipe, job(0), settings)  # one size for all: checked once, first
        with job_offload(pipe, stages):
            for index in range(len(prompts) * num_images_per_prompt):
                latents = highres_latents(pipe, job(index), settings, stages=stages, generator=generators[index],
                                          callback_on_step_end=callback_on_step_end,
                                          callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs or
                                          ["latents"], progress=progress)
                results.append(latents if output_type == "latent" else decode_images(pipe, latents, settings)
                               if output_type == "pil" else decode(pipe, latents, settings))
        images = self.postprocess(results, output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    @staticmethod
    def check_inputs(prompt, negative_prompt, num_images_per_prompt, output_type, options):
        """Every argument checked before any work; returns the prompts and one negative prompt for each."""
        unknown = sorted(set(options) - set(HighResOptions.__dataclass_fields__))
        if unknown:
            raise InvalidArgumentError(f"unknown options {', '.join(unknown)}; allowed: "
                                       f"{', '.join(sorted(HighResOptions.__dataclass_fields__))}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, (list, tuple)) else None
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise InvalidArgumentError(f"prompt must be a string or a non-empty list of strings; got {prompt!r}")
        negatives = negative_prompt if isinstance(negative_prompt, (list, tuple)) else [negative_prompt or ""] * len(
            prompts)
        if len(negatives) != len(prompts):
            raise InvalidArgumentError(f"negative_prompt has {len(negatives)} entries for {len(prompts)} prompts")
        if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, int) or \
                num_images_per_prompt < 1:
            raise InvalidArgumentError(f"num_images_per_prompt must be an integer >= 1; got {num_images_per_prompt!r}")
        if output_type not in OUTPUT_TYPES:
            raise InvalidArgumentError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}; got {output_type!r}")
        HighResOptions(**options).validate()
        return prompts, [n or "" for n in negatives]

    @staticmethod
    def per_image_generators(generator, count: int) -> list[torch.Generator]:
        """One generator per image: a list is used as given, one generator serves every image in turn, None draws a
        seed from torch's global generator (diffusers' behaviour)."""
        if isinstance(generator, (list, tuple)):
            if len(generator) != count:
                raise InvalidArgumentError(f"generator is a list of {len(generator)} for {count} images; pass one "
                                           "per image (prompts × num_images_per_prompt) or a single generator")
            return list(generator)
        if generator is None:
            generator = torch.Generator("cpu").manual_seed(int(torch.randint(0, 2**63 - 1, ()).item()))
        return [generator] * count

    @staticmethod
    def postprocess(results: list[torch.Tensor], output_type: str):
        if output_type == "latent":
            return torch.cat(results)
        if output_type == "pil":  # decoded in streamed bands: no float canvas
            return [image for batch in results for image in batch]
        return np.concatenate([batch.float().add(1).div_(2).clamp_(0, 1).permute(0, 2, 3, 1).numpy()
                               for batch in results])
