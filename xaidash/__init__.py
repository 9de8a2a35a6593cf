"""xaidash: an explainability workbench for image classifiers.

The application package: the ``xaidash`` command line (:mod:`xaidash.cli`), the demo
(:mod:`xaidash.demo`) and the error type every layer raises for bad user input
(:mod:`xaidash.errors`). The work itself lives in the ``compute``, ``store`` and
``dashboard`` packages.
"""

__version__ = "0.1.0"
