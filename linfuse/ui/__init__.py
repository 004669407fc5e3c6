"""The web UI (``python app.py``): Gradio tabs over linfuse's pipelines; one concept per module.

``context``: settings and what the tabs share; ``models``: the cached model loader; ``validation``: input checks
and error messages; ``preflight``: the memory estimate as shown; ``jobs``: a request's memory plan beside other
requests, its denoising one at a time; ``forms``: the shared input and output widgets; ``results``: saving,
captions and the gallery; ``companions``: the cached SR models and classifiers;
``generate_tab``, ``highres_tab``, ``img2img_tab``, ``upscale_tab`` and ``inspect_tab``: one tab each.
"""

from .context import AppSettings, UIContext

__all__ = ["AppSettings", "UIContext"]
