"""The image page, with its data-quality and trust-check sections."""
