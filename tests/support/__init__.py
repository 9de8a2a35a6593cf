"""Helpers shared by the tests and the benchmarks, not part of the installed package.

:mod:`tests.support.synthetic` builds a realistic synthetic store through the store's real
writer API (no torch needed). The benchmarks put the repository root on ``sys.path`` to import it.
"""
