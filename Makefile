# Enclave: the two commands of the quick start are `make up` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STATE_DIR ?= $(CURDIR)/.enclave
# Every install takes exactly these versions (with hashes); `make lock` refreshes it on purpose.
LOCK := requirements.lock
PIP_VERSION := 26.3
EXTRAS := server,ml,dev,provider
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) Makefile | sha256sum | cut -c1-12)
# The locked torch is PyTorch's CPU build (2.13.0+cpu). These machines keep its wheel in
# /opt/wheels (pip's configured find-links); elsewhere it comes from PyTorch's CPU index.
TORCH_SOURCE ?= $(if $(wildcard /opt/wheels/torch-*+cpu-*.whl),--find-links /opt/wheels,--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
TORCH_PIP_SOURCE ?= $(if $(wildcard /opt/wheels/torch-*+cpu-*.whl),,--extra-index-url https://download.pytorch.org/whl/cpu)
# Debian packages the suite and the embedded enclave need: the base (fuse3: the decrypting
# dataset mounts; gcc, pkg-config and the -dev packages build their native filesystem), desktop sessions (TigerVNC's Xvnc, a light Xfce desktop, noVNC for the
# browser; xclip for the tests), and the PACS peers the provider gateway is tested against
# (dcmtk's storescu/echoscu/storescp, Orthanc).
APT_PACKAGES := postgresql nftables iproute2 util-linux dicom3tools chromium chromium-driver libisal2 fuse3 \
  gcc pkg-config libfuse3-dev libssl-dev \
  tigervnc-standalone-server xfwm4 xfce4-panel xfdesktop4 xfce4-settings xfconf xfce4-terminal \
  dbus-x11 x11-utils fonts-dejavu-core novnc websockify xclip dcmtk orthanc
# The decrypting mounts' native filesystem process (C, libfuse3, OpenSSL); without it the
# enclave serves mounts with the Python one.
NATIVE_DATAFS := enclave/datafs/native/enclave-datafs
# checkov (Kubernetes mode's static checks) has pins of its own: its own lock and virtualenv.
CHECKOV_LOCK := requirements-checkov.lock
CHECKOV_VENV := build/checkov
# `make test-latest` builds this throwaway virtualenv from the newest versions pyproject allows.
LATEST_VENV := .venv-latest

.PHONY: native test test-fast test-latest up down lint typecheck system-deps venv lock bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet pip==$(PIP_VERSION)

$(STAMP): $(BIN)/python pyproject.toml $(LOCK)
	$(BIN)/pip install --quiet --require-hashes $(TORCH_PIP_SOURCE) -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

# Refresh the lock from pyproject.toml: the newest versions it allows, for Python 3.11 on
# Linux x86_64. Commit the result with a message that names what moved.
lock: $(BIN)/python
	$(BIN)/pip install --quiet "uv>=0.13,<0.14"
	$(BIN)/uv pip compile pyproject.toml --extra server --extra ml --extra dev --extra provider \
	  --python-version 3.11 --generate-hashes $(TORCH_SOURCE) \
	  --custom-compile-command "make lock" --quiet -o $(LOCK)

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

# The static gates, given the bin folder of a virtualenv.
define static_checks
	$(1)/ruff check .
	$(1)/ruff format --check .
	$(1)/mypy
	$(1)/lint-imports --no-cache
endef

$(NATIVE_DATAFS): enclave/datafs/native/datafs.c enclave/datafs/native/build.sh | system-deps
	enclave/datafs/native/build.sh $@

native: $(NATIVE_DATAFS)

lint: venv
	$(call static_checks,$(BIN))

typecheck: venv
	$(BIN)/mypy

# Everything, as root: the static gates, then the whole suite (real PostgreSQL, JupyterHub,
# network namespaces, headless Chromium, the wheel check).
test: system-deps venv $(NATIVE_DATAFS) $(CHECKOV_VENV)/.installed
	$(call static_checks,$(BIN))
	$(BIN)/python -m pytest -q

# The inner loop: no root, no browser, nothing slow (under 2 minutes on 2 cores).
test-fast: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n auto -m "not root and not browser and not slow"

# Not in CI: the newest versions pyproject.toml allows, in a throwaway virtualenv, so the
# next drift is found by a command and not by a user.
test-latest: system-deps
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/pip install --quiet --upgrade pip
	$(LATEST_VENV)/bin/pip install --quiet --upgrade --upgrade-strategy eager $(TORCH_PIP_SOURCE) -e '.[$(EXTRAS)]'
	$(LATEST_VENV)/bin/pip list --format=freeze > $(LATEST_VENV)/versions.txt
	@echo "newest allowed versions: $(LATEST_VENV)/versions.txt (diff it against $(LOCK))"
	$(call static_checks,$(LATEST_VENV)/bin)
	$(LATEST_VENV)/bin/python -m pytest -q

up: system-deps venv $(NATIVE_DATAFS)
	$(BIN)/enclave up --state-dir $(STATE_DIR)

down: venv
	$(BIN)/enclave down --state-dir $(STATE_DIR)

bench: venv
	$(BIN)/python -m benchmarks.secret_sharing --size-mib 256

clean:
	rm -rf $(VENV) $(LATEST_VENV) .pytest_cache .ruff_cache .mypy_cache

# ---- Kubernetes mode (docs/kubernetes.md)
IMAGE_REGISTRY ?= ghcr.io/enclave-project
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGES := hub user user-gpu services
CONTAINER_ENGINE ?= $(shell command -v docker 2>/dev/null || command -v podman 2>/dev/null)
# checkov pins dependencies the project lock cannot hold: its own throwaway virtualenv,
# installed only from requirements-checkov.lock (hashes).
K8S_OUT := build/k8s

.PHONY: images k8s-render checkov checkov-lock

images:
	@if [ -z "$(CONTAINER_ENGINE)" ] || ! $(CONTAINER_ENGINE) info >/dev/null 2>&1; then \
	  echo "make images: no working docker or podman on this machine (engine: '$(CONTAINER_ENGINE)'); the Dockerfiles are checked statically by make checkov" >&2; \
	  exit 1; \
	fi
	for image in $(IMAGES); do \
	  $(CONTAINER_ENGINE) build -f images/$$image/Dockerfile -t $(IMAGE_REGISTRY)/enclave-$$image:$(IMAGE_TAG) . || exit 1; \
	done

k8s-render: venv
	rm -rf $(K8S_OUT)
	$(BIN)/enclave k8s render --out $(K8S_OUT)

$(CHECKOV_VENV)/.installed: $(CHECKOV_LOCK)
	rm -rf $(CHECKOV_VENV)
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --require-hashes -r $(CHECKOV_LOCK)
	touch $@

# The rendered manifests and the Dockerfiles, with the reasoned skips of deploy/kubernetes.
checkov: $(CHECKOV_VENV)/.installed k8s-render
	$(CHECKOV_VENV)/bin/checkov --quiet --compact --skip-download --framework kubernetes -d $(K8S_OUT) \
	  --skip-check $$(sed -n 's/^\(CKV[A-Z0-9_]*\):.*/\1/p' deploy/kubernetes/checkov-skips.yaml | paste -sd,)
	$(CHECKOV_VENV)/bin/checkov --quiet --compact --skip-download --framework dockerfile -d images \
	  --skip-check $$(sed -n 's/^\(CKV[A-Z0-9_]*\):.*/\1/p' deploy/kubernetes/checkov-skips.yaml | paste -sd,)

checkov-lock: $(BIN)/python
	echo "checkov==3.3.30" | $(BIN)/uv pip compile --quiet --generate-hashes --python-version 3.11 \
	  --custom-compile-command "make checkov-lock" - -o $(CHECKOV_LOCK)
