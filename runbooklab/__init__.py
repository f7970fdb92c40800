"""The built-in lab: a rehearsal site of real SSH hosts on one Linux machine (root required).

Each VM is a network namespace on a private subnet with no route out, its own mount, PID and UTS
namespaces, a copy-on-write root (an overlay on the host's root), and a real OpenSSH server with its
own host key. See :mod:`runbooklab.site`. Installed with the ``[lab]`` extra; the product (``runbooklib``) never imports it.
"""

from .site import Lab, LabError, VMStatus

__all__ = ["Lab", "LabError", "VMStatus"]
