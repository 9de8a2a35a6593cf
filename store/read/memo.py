"""Memoizing queries over immutable runs: :func:`memo_run`.

Published runs never change, so a query's result stays valid until the run is deleted (then the
reader's rescan evicts it from the run cache, memo included).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from xaidash.store.read.cache import RunCache
from xaidash.store.read.catalog import RunEntry

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
