"""The reader side of the store: ``open_store`` -> ``StoreReader`` and the caches, indexes and
per-table queries behind it (read-only; what the dashboard uses)."""
