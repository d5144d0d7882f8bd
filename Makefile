# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv if missing, installs ortbind with the example's dependencies, and
#               runs the Stable Diffusion example on its built-in digits model (trained on
#               scikit-learn's handwritten digits; exported to ONNX on first run): out/demo.png is a 7
#   make test   the same plus test dependencies (and, as root, the Debian browser the web UI's
#               test drives), then runs the test suite (what CI runs)
#   make test-oldest
#               creates .venv-oldest with the oldest releases pyproject.toml allows
#               (constraints-oldest.txt) and runs the core tests there (CI runs it after make test)

PYTHON ?= python3
VENV ?= .venv
PIP_ARGS ?=
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -c constraints.txt $(PIP_ARGS)

# The oldest supported set. Only the core tests run there: the Stable Diffusion example's tests
# (tests/examples) need diffusers/transformers/onnxscript, tested at the pinned set only (constraints.txt).
OLDEST_VENV ?= .venv-oldest
OLDEST_PY := $(OLDEST_VENV)/bin/python
OLDEST_TESTS ?= tests/ortbind -m "not slow"

.PHONY: demo test test-oldest lint bench clean browser

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.demo-deps: pyproject.toml constraints.txt | $(PY)
	$(PIP) -e ".[example]"
	touch $@

$(VENV)/.test-deps: pyproject.toml constraints.txt | $(PY)
	$(PIP) -e ".[dev]"
	touch $@ $(VENV)/.demo-deps

$(OLDEST_PY):
	$(PYTHON) -m venv $(OLDEST_VENV)

$(OLDEST_VENV)/.test-deps: pyproject.toml constraints-oldest.txt | $(OLDEST_PY)
	$(OLDEST_PY) -m pip install --disable-pip-version-check -c constraints-oldest.txt $(PIP_ARGS) -e . pytest hypothesis
	touch $@

demo: $(VENV)/.demo-deps
	$(PY) -m examples.stable_diffusion.txt2img --prompt "a handwritten 7" --out out/demo.png

# Headless Chromium and its driver for the browser tests in tests/examples/test_app.py. Quick when present; installed
# with apt-get when missing and running as root (as CI does), else the test says why it skips.
BROWSER_PACKAGES := chromium chromium-driver
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing $(BROWSER_PACKAGES) for the browser test"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q --no-install-recommends $(BROWSER_PACKAGES) >/dev/null \
		|| { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $(BROWSER_PACKAGES) >/dev/null; }; \
	else echo "note: $(BROWSER_PACKAGES) missing and not root: the browser test will skip"; fi

test: $(VENV)/.test-deps browser
	$(PY) -m pytest $(PYTEST_ARGS)

test-oldest: $(OLDEST_VENV)/.test-deps
	$(OLDEST_PY) -m pytest $(OLDEST_TESTS) $(PYTEST_ARGS)

lint: $(VENV)/.test-deps
	$(PY) -m ruff check .
	$(PY) -m ruff format --check ortbind
	$(PY) -m mypy

bench: $(VENV)/.test-deps
	$(PY) -m benchmarks.overhead
	$(PY) -m benchmarks.sd_pipeline
	$(PY) -m benchmarks.cpu_spinning
	$(PY) -m benchmarks.serve_batching
	$(PY) -m benchmarks.soak
	$(PY) -m benchmarks.decode

clean:
	rm -rf $(VENV) $(OLDEST_VENV) out build *.egg-info .pytest_cache .mypy_cache .ruff_cache
