"""Third-party notices that say nothing to a linfuse user, kept out of the command line and the web UI.

transformers warns, once per class, that its torchvision image processors fall back to the PIL ones when
torchvision is absent (linfuse never uses an image processor: the text encoders only take tokens). Only those
records are dropped; every other warning still shows.
"""

import logging

FALLBACK_NOTICE = "requires torchvision (not installed); falling back to"
_LOGGER = "transformers.utils.import_utils"


class _DropFallbackNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return FALLBACK_NOTICE not in record.getMessage()


def quiet_third_party_notices() -> None:
    """Install the filter (idempotent); call before diffusers or transformers import their pipelines."""
    logger = logging.getLogger(_LOGGER)
    if not any(isinstance(f, _DropFallbackNotices) for f in logger.filters):
        logger.addFilter(_DropFallbackNotices())
