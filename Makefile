# chipfit — the README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# A local CPU build; an unpinned torch pulls GBs of CUDA packages. pyproject.toml keeps a range for users.
TORCH  := torch==2.13.0

.PHONY: demo test bench lint typecheck example clean sysroot-aarch64

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

# every CPU extra, so the backend conformance kit runs on each CPU backend
$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev,tvm,openvino]'
	touch $@ $(VENV)/.core

demo: $(VENV)/.core
	$(BIN)/chipfit fit examples/digits/model.onnx --data examples/digits/eval.npz \
		--spec examples/digits/chipfit.yaml --out out/demo

test: $(VENV)/.dev
	$(BIN)/python -m pytest -q -m "not bench"

bench: $(VENV)/.dev
	$(BIN)/python -m pytest -q -m bench
	$(BIN)/python benchmarks/run.py --out BENCHMARKS.md

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/ruff format --check src tests examples benchmarks

typecheck: $(VENV)/.dev
	$(BIN)/mypy

# Re-train the bundled example (needs the dev extras: torch, scikit-learn).
example: $(VENV)/.dev
	$(BIN)/python examples/digits/make_example.py

# Optional: an aarch64 sysroot (Debian arm64 Python + TVM runtime) so that `chipfit compile --target` checks
# Arm modules under qemu-user; needs root for apt-get/debootstrap. Tests that need it skip without it.
sysroot-aarch64: $(VENV)/.dev
	PYTHON=$(BIN)/python tools/make-sysroot.sh aarch64

clean:
	rm -rf out .pytest_cache
