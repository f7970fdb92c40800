# Everything a fresh Debian machine needs, in two commands: `make demo` and `make test`.
# Each target bootstraps what it uses (Debian packages when missing, the .venv) and is safe to repeat.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup system venv demo lab-down test bench notebooks kube-parts object-store clean

setup: system venv kube-parts object-store

system:
	@scripts/ensure-debian-packages

venv: $(STAMP)

$(STAMP): pyproject.toml
	@scripts/bootstrap-venv "$(PYTHON)" "$(VENV)"
	@touch $@

# each demo is a fresh rehearsal: the lab is rebuilt, so the day-two runbooks start from the seed's cluster
demo: setup
	$(BIN)/runbook lab down
	$(BIN)/runbook lab up
	$(BIN)/runbook run notebooks/00-environment-overview.ipynb --params params/lab.yaml
	$(BIN)/runbook run notebooks/01-vm-preflight.ipynb --params params/lab.yaml --allow-not-ready
	$(BIN)/runbook run notebooks/02-vm-baseline.ipynb --params params/lab.yaml --apply
	$(BIN)/runbook run notebooks/01-vm-preflight.ipynb --params params/lab.yaml
	$(BIN)/runbook run notebooks/03-kubernetes-cluster.ipynb --params params/lab.yaml --apply
	$(BIN)/runbook run notebooks/04-registry-access.ipynb --params params/lab.yaml --apply
	$(BIN)/runbook run notebooks/05-database.ipynb --params params/lab.yaml --apply
	$(BIN)/runbook run notebooks/06-cdn-storage.ipynb --params params/lab.yaml --apply
	$(BIN)/runbook run notebooks/07-block-storage.ipynb --params params/lab.yaml --apply
	$(BIN)/runbook run notebooks/09-edge-load-balancing.ipynb --params params/lab.yaml --apply
	$(BIN)/runbook run notebooks/02-vm-baseline.ipynb --params params/lab-fold-in.yaml --apply
	$(BIN)/runbook run notebooks/10-capacity-fold-in.ipynb --params params/lab-fold-in.yaml --apply
	$(BIN)/runbook run notebooks/incident/etcd-snapshot-restore.ipynb --params params/lab-fold-in.yaml --apply
	@echo "The lab stays up for you to explore: $(BIN)/runbook lab status | runbook runs | make lab-down"
	@echo "Its Kubernetes: .lab/bin/kubectl --kubeconfig .lab/kubernetes/kube_config_cluster.yml get nodes -o wide"

lab-down: venv
	$(BIN)/runbook lab down

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	$(BIN)/python bench/runner_overhead.py
	$(BIN)/python bench/fleet.py
	$(BIN)/python bench/facts_vs_peers.py
	$(BIN)/python bench/archive.py

# the lab's real Kubernetes parts (kube-apiserver, controller-manager, scheduler, kubectl, etcd 3.6,
# kwok, helm) built from their Go modules into ~/.cache/runbooklab/kbin; only what is missing is built
# (about 16 minutes cold on 2 cores, 0.2 s warm). See runbooklab/kbin/README.md. Rook's module (its
# manifests and charts, for the block-storage runbook) is downloaded into Go's module cache; OpenSearch's
# jars (the logging runbooks' search engine) are copied from Maven Central into ~/.cache/runbooklab/opensearch.
kube-parts:
	@python3 runbooklab/kbin/build.py
	@python3 -m runbooklab.rook --fetch
	@python3 runbooklab/opensearch.py --fetch

# the archive tests' S3 server with Object Lock: versitygw (Apache-2.0) built from its Go module into
# ~/.cache/runbooklab/versitygw (about 3 minutes cold on 2 cores, nothing warm); see runbooklab/objectstore.py
object-store:
	@python3 runbooklab/objectstore.py --build >/dev/null

# regenerate the generated blocks of the runbooks' markdown (rollback tables) after changing operations
notebooks: venv
	$(BIN)/python -m runbooklib.phase.doc notebooks/*.ipynb notebooks/*/*.ipynb

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
