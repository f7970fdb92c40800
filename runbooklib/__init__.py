"""Interactive runbooks for rebuilding a cloud platform on plain VMs.

Notebooks start with :func:`open_run`; the command line (``runbook``) runs them headless and
archives every run. See the README for the layout.
"""

__version__ = "0.1.0"

__all__ = ["Params", "Run", "RunbookError", "__version__", "load_params", "open_run"]

_LAZY = {"Params": "params", "load_params": "params", "Run": "notebook", "open_run": "notebook",
         "RunbookError": "errors"}


def __getattr__(name):  # imported on first use, so `runbook runs` does not pay for pydantic
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
