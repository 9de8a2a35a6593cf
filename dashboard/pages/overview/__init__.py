"""The overview page, with its data-quality and "can I trust these maps?" sections."""
