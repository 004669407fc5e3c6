"""Third-party notices that say nothing to a linfuse user, kept out of the command line and the web UI.

transformers warns, once per class, that its torchvision image processors fall back to the PIL ones when
torchvision is absent (linfuse never uses an image processor: the text encoders only take tokens). Only those
records are dropped; every other warning still shows.
"""

import logging
import re

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


TRUNCATION_NOTICE = "The following part of your input was truncated because"
ECHO_LIMIT = 80  # characters of the dropped prompt text that the shortened notice quotes


class _ShortenTruncationNotices(logging.Filter):
    """diffusers quotes the whole dropped part of a long prompt (100 KB prompt: 100 KB on stderr); keep the limit,
    the dropped length and its first characters."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(TRUNCATION_NOTICE) and ": " in message:
            reason, dropped = message.split(": ", 1)
            dropped = dropped.removeprefix("['").removesuffix("']")  # diffusers prints the decoded batch as a list
            if len(dropped) > ECHO_LIMIT:
                limit = re.search(r"(\d+)\s+tokens", reason)
                limit = f"{limit.group(1)} tokens" if limit else "its limit"
                record.msg = (f"prompt truncated to {limit} (the text encoder's limit): the {len(dropped)} characters "
                              f"after them are ignored, from {dropped[:ECHO_LIMIT]!r}…")
                record.args = ()
        return True


def shorten_truncation_notices() -> None:
    """Install the filter on diffusers' own stderr handler (idempotent); call once diffusers is imported."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.get_logger("diffusers")  # configures the library's handler if nothing has yet
    for handler in logging.getLogger("diffusers").handlers:
        if not any(isinstance(f, _ShortenTruncationNotices) for f in handler.filters):
            handler.addFilter(_ShortenTruncationNotices())
