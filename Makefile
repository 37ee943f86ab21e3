# The two commands: `make demo` (the quick example + a short benchmark on the default device)
# and `make test` (every test: C, C under ASan+UBSan, Python). Both set up what they need.
PYTHON ?= python3
BUILD ?= build
ASAN_BUILD ?= build-asan
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
LIB := $(CURDIR)/$(BUILD)/libflashattn.so
# Run the Python package from the source tree against the library built here.
PYENV := FLASHATTN_LIBRARY=$(LIB) PYTHONPATH=$(CURDIR)/python

.PHONY: all build build-asan deps test test-c test-asan test-python test-precompile test-gpu demo bench clean

all: build

build:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DFA_WERROR=ON
	cmake --build $(BUILD) -j$(JOBS)

build-asan:
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFA_SANITIZE=ON -DFA_WERROR=ON -DFA_BUILD_BENCH=OFF
	cmake --build $(ASAN_BUILD) -j$(JOBS)

# Python test dependencies (torch CPU build, pytest, ...), installed once.
deps:
	$(PYTHON) -m pip install -q -r requirements-test.txt

test: test-c test-asan test-python test-precompile

test-c: build
	ctest --test-dir $(BUILD) --output-on-failure -j$(JOBS) -LE precompile

test-asan: build-asan
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  FA_TEST_QUICK=1 ctest --test-dir $(ASAN_BUILD) --output-on-failure -j$(JOBS) -LE precompile

test-python: build deps
	$(PYENV) $(PYTHON) -m pytest tests/python -q -ra

# Every shipped cuda kernel variant through NVRTC for sm_80 and sm_90a, with no GPU and an empty
# cache, so a kernel that fails to compile (or warns) fails the tests. libnvrtc comes from the
# nvidia-cuda-nvrtc wheel, installed into the build folder.
NVRTC_DIR := $(CURDIR)/$(BUILD)/nvrtc
test-precompile: build
	test -e $(NVRTC_DIR)/nvidia/cu13/lib/libnvrtc.so.13 || \
	  $(PYTHON) -m pip install -q --no-deps --target $(NVRTC_DIR) "nvidia-cuda-nvrtc==13.0.*"
	cache=$$(mktemp -d) && FLASHATTN_NVRTC=$(NVRTC_DIR)/nvidia/cu13/lib/libnvrtc.so.13 \
	  FLASHATTN_CACHE_DIR=$$cache $(PYENV) $(PYTHON) -m flash_attn precompile --arch sm_80 --arch sm_90a; \
	  status=$$?; rm -rf $$cache; exit $$status

# GPU tests (tests/gpu) skip without a GPU: the C grids on the cuda backend, then the Python ones.
test-gpu: build deps
	ctest --test-dir $(BUILD) --output-on-failure -L gpu -LE precompile
	$(PYENV) $(PYTHON) -m pytest tests/gpu -q -ra

demo: build deps
	$(PYENV) $(PYTHON) examples/quick_example.py
	$(PYENV) $(PYTHON) -m flash_attn bench --suite quick --out bench-out

bench: build deps
	$(PYENV) $(PYTHON) -m flash_attn bench --suite cpu --out bench-out

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) bench-out
