"""Interactive runbooks for rebuilding a cloud platform on plain VMs.

Notebooks start with :func:`open_run`; the command line (``runbook``) runs them headless and
archives every run. See the README for the layout.
"""

__version__ = "0.1.0"

from .errors import RunbookError  # noqa: E402
from .notebook import Run, open_run  # noqa: E402
from .params import Params, load_params  # noqa: E402

__all__ = ["Params", "Run", "RunbookError", "__version__", "load_params", "open_run"]
