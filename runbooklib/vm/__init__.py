"""The VM phase: facts about every host, readiness for Kubernetes, and an idempotent baseline.

``facts`` reads state (one SSH round trip per host), ``readiness`` judges it per target
distribution, ``baseline`` plans and applies only the changes still needed.
"""
