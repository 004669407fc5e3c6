"""The memory preflight's model for DiT pipelines: a meta transformer (FLUX, SD3, PixArt) traced per stage.

Like :class:`~.preflight.MemoryModel` for UNets, one transformer call is traced on the meta device at the stage's
latent size, in the setting the stage would run: plain, or the DiT lean mode (:mod:`.lean.dit`: one sample at a
time, MLPs in chunks of tokens). The call's batch is the classifier-free-guidance batch of SD3 and PixArt (2), 1 for
FLUX (its true CFG calls the transformer once per half; FLUX.1-dev's guidance is an embedding). FLUX's RoPE tables
are computed from real position ids (the CLEAR processors read the token grid from them) and then moved to meta.
"""

import torch

from .families import TEXT_LENGTH
from .lean.dit import dit_lean_mode
from .memory_trace import trace
from .preflight import LATENT_BUFFERS, MemoryModel, rung_ladder


class DiTMemoryModel(MemoryModel):
    """Meta transformer and VAE of a DiT pipeline; ``family`` is "flux", "sd3" or "pixart"."""

    def __init__(self, *, transformer, vae, family: str, vae_factor: int, text_tokens: int | None = None,
                 device_type: str = "cuda", offload_bytes: tuple[int, int] = (0, 0)):
        self.transformer, self.family = transformer, family
        self.text_tokens = text_tokens or (TEXT_LENGTH[family] + (77 if family == "sd3" else 0))
        super().__init__(unet=transformer, vae=vae, vae_factor=vae_factor, text_tokens=self.text_tokens,
                         device_type=device_type, offload_bytes=offload_bytes)

    @classmethod
    def of(cls, pipe) -> "DiTMemoryModel":
        """The model of a loaded DiT pipeline: meta twins of its transformer and VAE, its text length."""
        from ..linearize.twin import meta_twin
        from .families import family, text_length
        from .offload import execution_device
        from .preflight import offloaded_bytes

        kind = family(pipe)
        tokens = (text_length(pipe) or 0) + (pipe.tokenizer.model_max_length if kind == "sd3" else 0)
        return cls(transformer=meta_twin(pipe.transformer), vae=meta_twin(pipe.vae), family=kind,
                   vae_factor=pipe.vae_scale_factor, text_tokens=tokens,
                   device_type=execution_device(pipe.transformer).type, offload_bytes=offloaded_bytes(pipe))

    def ladder(self, memory: str) -> list:
        return rung_ladder(memory, self.device_type, dit=True)

    def denoiser_batch(self, batch: int, guidance: bool) -> int:
        """FLUX calls its transformer once per CFG half (or has no CFG); SD3 and PixArt batch both halves."""
        return batch if self.family == "flux" else batch * (2 if guidance else 1)

    def _inputs(self, batch: int, height: int, width: int) -> dict:
        config, meta = self.transformer.config, {"device": "meta", "dtype": self.dtype}
        tokens = self.text_tokens
        if self.family == "flux":
            from diffusers import FluxPipeline

            inputs = {"hidden_states": torch.empty(batch, (height // 2) * (width // 2), config.in_channels, **meta),
                      "encoder_hidden_states": torch.empty(batch, tokens, config.joint_attention_dim, **meta),
                      "pooled_projections": torch.empty(batch, config.pooled_projection_dim, **meta),
                      "timestep": torch.empty(batch, **meta),
                      "img_ids": FluxPipeline._prepare_latent_image_ids(1, height // 2, width // 2, "cpu",
                                                                        torch.float32),
                      "txt_ids": torch.zeros(tokens, 3)}
            if config.guidance_embeds:
                inputs["guidance"] = torch.empty(batch, **meta)
            return inputs
        sample = torch.empty(batch, config.in_channels, height, width, **meta)
        if self.family == "sd3":
            return {"hidden_states": sample, "timestep": torch.empty(batch, **meta),
                    "encoder_hidden_states": torch.empty(batch, tokens, config.joint_attention_dim, **meta),
                    "pooled_projections": torch.empty(batch, config.pooled_projection_dim, **meta)}
        return {"hidden_states": sample, "timestep": torch.empty(batch, **meta),
                "encoder_hidden_states": torch.empty(batch, tokens, config.caption_channels, **meta),
                "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}

    def _trace_unet(self, latent_height: int, latent_width: int, batch: int, lean) -> tuple[int, int, int]:
        inputs = self._inputs(batch, latent_height, latent_width)
        hook = None
        if self.family == "flux":  # RoPE tables from real ids, then on meta like everything else
            hook = self.transformer.pos_embed.register_forward_hook(
                lambda _m, _a, out: tuple(t.to("meta", self.dtype) for t in out))

        def forward(x):
            return self.transformer(**{**inputs, "hidden_states": x}, return_dict=False)[0]

        try:
            with dit_lean_mode(self.transformer, lean), torch.no_grad():
                traced = trace(forward, inputs["hidden_states"], existing=self._unet_existing)
        finally:
            if hook is not None:
                hook.remove()
        latent = inputs["hidden_states"][:1].nelement() * inputs["hidden_states"].element_size()
        device = int(self.overhead * traced.peak) + LATENT_BUFFERS * latent
        return device, traced.host_peak, traced.max_elements
