"""What every page needs: the store access, the selection store and the parsed URL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xaidash.dashboard.data import DashData, ResolvedRun, SelectionStore
from xaidash.dashboard.params import Filters


@dataclass
class AppState:
    """Per-app singletons, created by :func:`dashboard.app.create_app`."""

    data: DashData
    selections: SelectionStore
    store_path: str


@dataclass(frozen=True)
class PageContext:
    """Inputs of one page render: app state, validated filters and the resolved run."""

    state: AppState
    filters: Filters
    resolved: ResolvedRun

    @property
    def data(self) -> DashData:
        return self.state.data

    @property
    def run_id(self) -> str | None:
        return self.resolved.run_id

    def run_info(self) -> Any:
        return self.data.run(self.run_id) if self.run_id else None
