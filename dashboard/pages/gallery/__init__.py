"""The gallery page and its data-quality filter."""
