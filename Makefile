# Two entry points: `make demo` and `make test`. Both create .venv if missing and install
# the project with its dev extra (torch is pinned to the CPU build in pyproject.toml).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT := build/demo

.PHONY: setup demo test lint bench clean browser

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/python -m models.build resnet_small --out build/resnet_small.onnx
	$(BIN)/mapper compile build/resnet_small.onnx --hw a100 -o $(DEMO_OUT)
	$(BIN)/mapper verify build/resnet_small.onnx $(DEMO_OUT)/model.onnx
	@echo "report: $(DEMO_OUT)/report.html"

# The browser tests of the reports drive headless Chromium (Debian's package), installed
# here when it is missing.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
	  else echo "make test needs Chromium for the browser tests of the reports: run" \
	    "'sudo apt-get install chromium' (Debian/Ubuntu), then make test again" >&2; exit 1; fi; }

test: setup browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist worksteal --durations=15

lint: setup
	$(BIN)/ruff check .

BENCHMARKS := compile_time pass_scaling tiling_calibration tiling_optimality tiling_constraints \
	tiling_triton_gpu arena_minimalloc arena_models memory_scratchpad memory_resident \
	moe_quality moe_scale moe_families compress_rtn compress_gqsa compress_lqlora lqlora_table cli_start \
	solver_monotone study_scale large_model simplify hw_probe cpu_fidelity gpu_probe

# Every benchmark in turn; each rewrites its own section of benchmarks/RESULTS.md.
bench: setup
	for name in $(BENCHMARKS); do $(BIN)/python -m benchmarks.$$name || exit 1; done

clean:
	rm -rf build .cache
