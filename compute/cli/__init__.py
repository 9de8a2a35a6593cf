"""The argparse front ends of ``xaidash train`` and ``xaidash compute``, light to import."""
