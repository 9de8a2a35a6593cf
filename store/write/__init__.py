"""The writer side of the store: creating a store, one job's staging area and its atomic publish."""
