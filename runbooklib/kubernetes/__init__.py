"""The Kubernetes phase: cluster definitions rendered from the parameter file."""
