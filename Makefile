# aln-node — see README.md. Quick start: `make demo`, then `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEBIAN_TOOLS := dcmtk dicom3tools orthanc orthanc-dicomweb redis-server r-cran-proc \
	docker-compose kubernetes-client systemd openssl postgresql chromium npm
CONFIG ?= deploy/alnnode.toml
PYTEST_ARGS ?=

.PHONY: all venv debian-tools viewer test lint demo run clean bench

all: test

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch/torchvision pinned (CUDA build; runs on the CPU when no GPU is present)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[worker,dev]'
	touch $@

venv: $(STAMP)

# Debian tools the tests and the demo use; installed when we are root and they are missing.
debian-tools:
	@missing=""; \
	for t in storescu:dcmtk dciodvfy:dicom3tools Orthanc:orthanc redis-server:redis-server Rscript:r-cran-proc \
	         docker-compose:docker-compose kubectl:kubernetes-client systemd-analyze:systemd openssl:openssl \
	         chromium:chromium npm:npm; do \
	  command -v $${t%%:*} >/dev/null || missing="$$missing $${t##*:}"; done; \
	[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing="$$missing orthanc-dicomweb"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	Rscript -e 'library(pROC)' >/dev/null 2>&1 || missing="$$missing r-cran-proc"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "warning: missing Debian tools:$$missing (run as root or: sudo apt-get install $(DEBIAN_TOOLS))"; fi; \
	fi

# OHIF's prebuilt viewer for the browser test (tests/viewer): the lock holds @ohif/app only (its dist/ is
# self-contained), about 50 MB download, 200 MB on disk, a few seconds.
VIEWER := tests/viewer/node_modules/@ohif/app/dist/index.html
$(VIEWER): tests/viewer/package-lock.json
	@if command -v npm >/dev/null; then npm ci --prefix tests/viewer --ignore-scripts --no-audit --no-fund && touch $@; \
	else echo "warning: npm is missing (apt-get install npm): the OHIF browser test cannot run"; fi

viewer: $(VIEWER)

lint: $(STAMP)
	$(VENV)/bin/ruff check node workers tests bench
	$(VENV)/bin/mypy node workers

test: $(STAMP) debian-tools viewer lint
	$(VENV)/bin/python -m pytest -q -ra --durations=30 $(PYTEST_ARGS)

demo: $(STAMP) debian-tools
	$(PY) -m node.demo

run: $(STAMP)
	$(VENV)/bin/alnnode serve --config $(CONFIG)

bench: $(STAMP) debian-tools
	$(PY) bench/ingest.py
	$(PY) bench/models.py

clean:
	rm -rf $(VENV) var demo-out .pytest_cache .mypy_cache .ruff_cache *.egg-info tests/viewer/node_modules tests/viewer/artifacts
