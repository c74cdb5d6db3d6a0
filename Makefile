# Each target sets itself up on a fresh machine: .venv is created if missing and the package
# (with its compiled kernels) is (re)installed when its sources change.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.pytransfer-installed
SOURCES := pyproject.toml setup.py CMakeLists.txt $(wildcard csrc/*.cpp csrc/*.h)

.PHONY: demo test bench cuda-check lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python $(SOURCES)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	PYTRANSFER_REQUIRE_EXT=1 $(BIN)/python -m pip install --quiet -e ".[test,bench]"
	touch $@

demo: $(STAMP)           ## the main job: every method on sklearn digits (report in runs/demo)
	$(BIN)/pytransfer demo

test: $(STAMP)           ## lint, then the test suite (Triton kernels under TRITON_INTERPRET=1)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: $(STAMP)          ## benchmark report: ratios against anchors, results.json + PNGs
	$(BIN)/pytransfer bench --out bench/results

cuda-check:              ## compile csrc/cuda/*.cu to cubin (sm_80, sm_90) where nvcc exists
	cmake -S . -B build/cuda-check -DPYTRANSFER_CUDA_CHECK=ON -DPYTRANSFER_CUDA_ONLY=ON
	cmake --build build/cuda-check --target cuda_cubin

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf build $(VENV) *.egg-info pytransfer/_C*.so
