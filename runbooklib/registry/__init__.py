"""The registry phase: image pull access to Google's registry from outside Google Cloud."""

from ..phase import Phase
from .settings import Registry

PHASE = Phase(name="registry", title="Registry access", section="registry", model=Registry, after=("kubernetes",))
