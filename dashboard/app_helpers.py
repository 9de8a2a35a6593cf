"""Small helpers shared by the app shell and pages (kept apart to avoid import cycles)."""

from __future__ import annotations

from typing import Any


def run_label(rec: dict[str, Any]) -> str:
    """A human label for a run: date, model, dataset, accuracy."""
    created = rec.get("created")
    when = created.strftime("%Y-%m-%d %H:%M") if hasattr(created, "strftime") else str(created)[:16]
    acc = rec.get("accuracy")
    acc_s = f" · acc {100 * acc:.1f}%" if acc is not None and acc == acc else ""
    return f"{when} · {rec.get('arch') or '?'} · {rec.get('dataset_spec') or ''}{acc_s}"
