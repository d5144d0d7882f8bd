# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv if missing, installs ortbind with the example's dependencies, and
#               runs the Stable Diffusion example on its built-in tiny model
#   make test   the same plus test dependencies, then runs the test suite (what CI runs)

PYTHON ?= python3
VENV ?= .venv
PIP_ARGS ?=
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -c constraints.txt $(PIP_ARGS)

.PHONY: demo test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.demo-deps: pyproject.toml constraints.txt | $(PY)
	$(PIP) -e ".[example]"
	touch $@

$(VENV)/.test-deps: pyproject.toml constraints.txt | $(PY)
	$(PIP) -e ".[dev]"
	touch $@ $(VENV)/.demo-deps

demo: $(VENV)/.demo-deps
	$(PY) -m examples.stable_diffusion.txt2img --prompt "an astronaut riding a horse on the moon" --out out/demo.png

test: $(VENV)/.test-deps
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.test-deps
	$(PY) -m ruff check .
	$(PY) -m ruff format --check ortbind
	$(PY) -m mypy

bench: $(VENV)/.test-deps
	$(PY) -m benchmarks.overhead
	$(PY) -m benchmarks.sd_pipeline
	$(PY) -m benchmarks.cpu_spinning

clean:
	rm -rf $(VENV) out build *.egg-info .pytest_cache .mypy_cache .ruff_cache
