"""The Compare runs page and its data-quality card."""
