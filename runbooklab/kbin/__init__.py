"""The lab's real Kubernetes parts, built from their Go modules (see README.md and build.py)."""
