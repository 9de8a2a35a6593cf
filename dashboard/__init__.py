"""The Dash dashboard: pages, pure figure builders and thin callbacks over the store's reader.
It never imports torch, except the explain page, which loads a run's model on demand."""
