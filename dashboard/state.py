"""What every page needs: the store access, the selection store and the parsed URL."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from xaidash.dashboard.data import DashData, DerivedCache, ResolvedRun, SelectionStore
from xaidash.dashboard.params import Filters

if TYPE_CHECKING:
    from xaidash.store import RunInfo


@dataclass
class AppState:
    """Per-app singletons, created by :func:`xaidash.dashboard.app.create_app`."""

    data: DashData
    selections: SelectionStore
    store_path: str
    #: figures and indexes built from store data (per app: two apps may show two stores)
    derived: DerivedCache = field(default_factory=DerivedCache)


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
    def info(self) -> RunInfo | None:
        """The run the page shows; None when the store has no runs."""
        return self.resolved.info
