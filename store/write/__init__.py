"""The writer side of the store: ``Store`` (layout, runs, shared images, gc) and ``Staging`` (a
compute job's chunks and its atomic publish)."""
