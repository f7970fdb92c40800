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

# each demo is a fresh rehearsal: the lab is rebuilt, then the whole migration runs as one suite in the order
# the phases declare (`runbook suite --params params/lab.yaml --list`), then the day's parameter edit (the ELK
# VMs fold in as workers) from the fold-in phase on; `runbook report` writes the browsable record and says where
demo: setup
	$(BIN)/runbook lab down
	$(BIN)/runbook lab up
	$(BIN)/runbook suite --params params/lab.yaml --apply --new --reason "make demo: lab rehearsal of the migration"
	$(BIN)/runbook suite --params params/lab-fold-in.yaml --apply --new --from foldin --reason "make demo: capacity fold-in"
	$(BIN)/runbook report
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
