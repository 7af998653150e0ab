# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch first (local CPU wheel); the package's range is satisfied by it, so nothing bigger is pulled.
$(STAMP): $(PY) pyproject.toml setup.py compnn_index/search/csrc/hyperpatchmatch.cpp compnn_index/search/csrc/fused_exact.cpp \
          compnn_index/search/csrc/bounded_exact.cpp compnn_index/search/csrc/kernels.h
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q pybind11 setuptools wheel
	$(PY) -m pip install -q --no-build-isolation -e '.[test,ray]'
	touch $(STAMP)

install: $(STAMP)

# the stores and report, then the notebook tour executed on them (indexes/demo/tour.ipynb)
demo: $(STAMP)
	$(VENV)/bin/compnn demo --out indexes/demo
	$(PY) tools/run_tour.py indexes/demo

# The viewer test drives Debian's chromium headless; the script installs it if missing.
test: $(STAMP)
	bash tools/install_chromium.sh || echo "warning: chromium could not be installed; the viewer test will be skipped"
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) build *.egg-info compnn_index/search/_hpm*.so compnn_index/search/_fused*.so compnn_index/search/_bounded*.so
