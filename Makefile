# The developer's entry point: one target a job. `scripts/test` (what CI runs) installs what is
# missing and runs lint, types, generate --check and both test layers; these targets run one
# piece at a time in the repository's .venv (created by `make venv`).
PY ?= .venv/bin/python
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: venv lint types unit integration test generate check-generated bench image

venv:
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q -e '.[dev,demo]'

lint:
	ruff check .
	ruff format --check .

types:
	mypy

unit:
	$(PY) -m pytest -m unit

integration:
	$(PY) -m pytest -m integration

# Everything CI runs, with the installs.
test:
	scripts/test

# Dashboards, rules and Kubernetes manifests from their one source (the metric catalogue).
generate:
	$(PY) grafana/generate.py
	$(PY) prometheus/generate_rules.py
	$(PY) deploy/kubernetes/generate.py

check-generated:
	$(PY) grafana/generate.py --check
	$(PY) prometheus/generate_rules.py --check
	$(PY) deploy/kubernetes/generate.py --check

bench:
	$(PY) -m bench.run

# The production image as an OCI layout in dist/oci (root: debootstrap and chroot; no Docker).
image:
	scripts/build-image
