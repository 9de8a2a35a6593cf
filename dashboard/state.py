"""What every page needs: the store access, the selection store and the parsed URL."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from xaidash.dashboard.data import LRU, DashData, DerivedCache, SelectionStore
from xaidash.dashboard.params import Filters
from xaidash.dashboard.paths import path_label

if TYPE_CHECKING:
    from xaidash.store import RunInfo


#: how many rendered pages the router keeps (a page is 3-250 KB of JSON)
PAGE_CACHE_SIZE = 128


@dataclass(frozen=True)
class CachedPage:
    """A page as the router sent it, as JSON text, and what its render did besides.

    Text rather than the tree of dicts and lists: a cached gallery page is ~2,000 such objects,
    128 pages a quarter of a million, and every full garbage collection walked them all (tens of
    ms per pause on 2 cores); a string is one object the collector never looks into. Parsing it
    again on a hit costs well under a millisecond per 50 KB.
    """

    text: str
    effects: tuple[Callable[[], None], ...]


@dataclass
class AppState:
    """Per-app singletons, created by :func:`xaidash.dashboard.app.create_app`."""

    data: DashData
    selections: SelectionStore
    store_path: str
    #: figures and indexes built from store data (per app: two apps may show two stores)
    derived: DerivedCache = field(default_factory=DerivedCache)
    #: pages show full server paths (``xaidash serve --show-paths``) instead of names
    show_paths: bool = False
    #: rendered pages as the router sends them (JSON-ready) and the effects their render had,
    #: by URL and the store's runs (see :func:`xaidash.dashboard.app.cached_page`)
    pages: LRU[tuple[object, ...], CachedPage] = field(default_factory=lambda: LRU(PAGE_CACHE_SIZE))

    @property
    def store_label(self) -> str:
        """The store as pages name it (see :mod:`xaidash.dashboard.paths`)."""
        return path_label(self.store_path, self.show_paths)


@dataclass(frozen=True)
class PageContext:
    """Inputs of one page render: app state, the run it shows and the validated filters.

    Pages are rendered only for a store with runs (the router shows the "no runs yet" alert
    otherwise), so ``info`` is always a run, and ``filters.run`` is its id.
    """

    state: AppState
    filters: Filters
    info: RunInfo
    #: why the run in the URL was replaced by the latest one, if it was
    warning: str | None = None
    #: what the render did beside building the page (e.g. the gallery's prefetch of its maps),
    #: done again when the router serves the page from its cache
    effects: list[Callable[[], None]] = field(default_factory=list, compare=False)

    def effect(self, fn: Callable[[], None]) -> None:
        """Do ``fn`` now, and again whenever this page is served from the router's cache."""
        self.effects.append(fn)
        fn()

    @property
    def data(self) -> DashData:
        return self.state.data

    @property
    def run_id(self) -> str:
        return self.info.run_id
