"""Linear-attention variants from the literature, for UNet self-attention (``linearize(..., method=NAME)``)."""

VARIANTS: list[tuple[str, type, str]] = []  # (name, processor class, one-line summary)
