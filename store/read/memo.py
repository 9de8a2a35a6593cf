"""Memoizing queries over immutable runs: :func:`memo_run`, and :class:`RunQueries`, the base of the
reader's per-table query objects.

Published runs never change, so a query's result stays valid until the run is deleted (then the
reader's rescan evicts it from the run cache, memo included).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Concatenate, ParamSpec, Protocol, TypeVar

import pandas as pd

from xaidash.store.read.cache import RunCache
from xaidash.store.read.catalog import RunEntry
from xaidash.store.read.records import Params

T = TypeVar("T")
P = ParamSpec("P")


class Memoizing(Protocol):
    """What :func:`memo_run` needs of the object whose methods it memoizes: the run cache that
    keeps the results, and the run lookup that tells a readable run from an unknown id."""

    _run_cache: RunCache

    def _entry(self, run_id: object) -> RunEntry | None: ...


S = TypeVar("S", bound=Memoizing)


def memo_run(fn: Callable[Concatenate[S, P], T]) -> Callable[Concatenate[S, P], T]:
    """Memoize a query over an immutable run (keyed by method name and bound arguments).

    The first argument after ``self`` is the run id. Unknown/invalid run ids are not memoized.
    """
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        bound = sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        values = list(bound.arguments.values())[1:]
        if self._entry(values[0]) is None:
            return fn(self, *args, **kwargs)
        return self._run_cache.memoized((fn.__name__, *values), lambda: fn(self, *args, **kwargs))

    return wrapper


class RunQueries:
    """The base of a per-table query object the reader holds (``reader.quality``, ``reader.trust``):
    it is given what it needs of the reader instead of the reader itself.

    ``entry`` looks a run up (None for unknown ids), ``df`` runs one query with bound parameters
    as a DataFrame, and ``run_cache`` keeps the memoized answers with the run's other results.
    """

    def __init__(
        self,
        entry: Callable[[object], RunEntry | None],
        df: Callable[[str, Params], pd.DataFrame],
        run_cache: RunCache,
    ) -> None:
        self._lookup = entry
        self._df = df
        self._run_cache = run_cache

    def _entry(self, run_id: object) -> RunEntry | None:
        return self._lookup(run_id)
