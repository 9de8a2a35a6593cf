"""The reader side of the store: run discovery, the per-run cache and indexes, and the typed queries
the dashboard asks (DuckDB, values bound as parameters, read-only)."""
