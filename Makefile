# Enclave: the two commands of the quick start are `make up` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STATE_DIR ?= $(CURDIR)/.enclave
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha256sum | cut -c1-12)
# Debian packages the suite and the embedded enclave need.
APT_PACKAGES := postgresql nftables iproute2 util-linux dicom3tools chromium chromium-driver libisal2

.PHONY: test up down lint system-deps venv bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[server,ml,dev]'
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

# Install missing Debian packages (as root); skipped when everything is there.
system-deps:
	@missing=""; \
	for pkg in $(APT_PACKAGES); do \
	  dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "error: need root to install:$$missing" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

lint: venv
	$(BIN)/ruff check .

test: system-deps venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

up: system-deps venv
	$(BIN)/enclave up --state-dir $(STATE_DIR)

down: venv
	$(BIN)/enclave down --state-dir $(STATE_DIR)

bench: venv
	$(BIN)/python -m benchmarks.secret_sharing --size-mib 256

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
