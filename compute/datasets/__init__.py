"""Data sources: a ``--data SPEC`` becomes stable, labeled image items, decoded robustly for the network."""
