# prunefx developer commands. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.prunefx-setup
FASHION_MNIST := /usr/share/datasets/fashion-mnist
# The test lanes write bytecode even where PYTHONDONTWRITEBYTECODE is set: otherwise every test worker rewrites
# every test module's asserts and every process a test starts compiles prunefx again.
WRITE_BYTECODE := PYTHONDONTWRITEBYTECODE=
TEST_ENV := OMP_NUM_THREADS=1 $(WRITE_BYTECODE)

.PHONY: setup demo test test-fast test-zoo test-faults test-min-torch bench bench-all lint docs clean

setup: $(STAMP)

# Re-runs only when the pinned inputs change, so a second `make setup` is instant.
$(STAMP): pyproject.toml constraints.txt assets.txt Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade -c constraints.txt pip setuptools uv
	@# uv installs the dependencies (torch's CUDA libraries are gigabytes of wheels): it downloads and unpacks them in
	@# parallel, where pip takes one at a time. Then compileall byte-compiles them on every core. The bytecode must
	@# exist: where PYTHONDONTWRITEBYTECODE is set, every process (each test worker, each fresh measuring process)
	@# would compile torch again on import. compileall's status is not checked: a few packages ship templates that
	@# are not Python, as pip and uv also ignore.
	$(VENV)/bin/uv pip install --quiet --python $(PY) -c constraints.txt -e '.[dev,docs]'
	-$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null 2>&1
	$(PIP) install --quiet --no-deps -r assets.txt
	@# TensorRT's type stubs for tests/test_tensorrt_api.py, in their own folder: they require TensorRT itself (no wheel
	@# without an NVIDIA driver), and in site-packages their tensorrt/__init__.pyi makes `import tensorrt` succeed
	$(PIP) install --quiet --no-deps -c constraints.txt --target $(VENV)/tensorrt-stubs --upgrade tensorrt-stubs
	@# Torch-TensorRT's source for tests/test_torch_tensorrt_api.py: read with ast, never imported (it needs CUDA)
	$(PIP) install --quiet --no-deps -c constraints.txt --target $(VENV)/torch-tensorrt --upgrade torch-tensorrt
	@$(MAKE) --no-print-directory fashion-mnist
	@touch $(STAMP)

# The Debian package is installed when it is missing and we are allowed to (root with apt-get).
.PHONY: fashion-mnist
fashion-mnist:
	@if [ -d $(FASHION_MNIST) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
		|| echo "warning: could not install dataset-fashion-mnist; Fashion-MNIST tests will skip"; \
	else echo "warning: $(FASHION_MNIST) missing and apt-get unavailable; Fashion-MNIST tests will skip"; fi

demo: setup
	$(VENV)/bin/prunefx demo

# Two pytest workers, one thread each: most tests are single-threaded Python (capture, graph
# rewrites), so two workers use both cores where one worker with two threads would leave one idle.
# Tests that assert on measured latency run afterwards on their own, so no other test disturbs the timing.
# --dist worksteal: a worker that runs out of tests takes queued ones from the other, so the lane does not end
# with one worker idle while the other still has a queue of its own.
TEST_WORKERS ?= 2
test: setup
	$(VENV)/bin/ruff check .
	@$(MAKE) --no-print-directory docs
	$(TEST_ENV) $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not timing and not zoo" --durations=15
	$(WRITE_BYTECODE) $(PY) -m pytest -q -m "timing and not zoo"

# The heaviest model-zoo cases (marked zoo): the breadth the 20-minute lane leaves out. Those that also time
# (the doc pages run in full: their --speedup searches) run afterwards, alone, as in `make test`.
test-zoo: setup
	$(TEST_ENV) $(PY) -m pytest -q -m "zoo and not timing" -n $(TEST_WORKERS) --dist worksteal
	$(WRITE_BYTECODE) $(PY) -m pytest -q -m "zoo and timing"

# The fault-injection lane alone (killed and hung-up runs, full disks and streams, limits, corrupt images);
# `make test` runs it too, within its 20 minutes.
test-faults: setup
	$(TEST_ENV) $(PY) -m pytest -q -m "faults and not zoo and not timing" -n $(TEST_WORKERS) --dist worksteal

# The development lane: the unit tests. Leaves out what is marked slow (model zoo, end-to-end commands), zoo and
# timing (latency asserts want a quiet machine); stops at the first failure; lists the slowest tests, which are
# the ones to mark slow when the lane grows past its budget (4 minutes on 2 cores).
test-fast: setup
	$(VENV)/bin/ruff check .
	$(TEST_ENV) $(PY) -m pytest -q -m "not slow and not zoo and not timing" -x -n $(TEST_WORKERS) --dist worksteal --durations=25

# The unit tests on the oldest torch pyproject.toml allows (the GPU machine's): torch and torchvision of that
# release in a folder ahead of the venv's on PYTHONPATH, every other package the venv's. Not part of `make test`
# (a second torch is gigabytes of wheels with its CUDA libraries); run it when code reaches for a newer torch API.
MIN_TORCH := $(VENV)/min-torch/.prunefx-installed
MIN_TORCH_PACKAGES := torch==2.11.0 torchvision==0.26.0
$(MIN_TORCH): $(STAMP)
	$(PIP) install --quiet --target $(VENV)/min-torch --upgrade --no-deps $(MIN_TORCH_PACKAGES)
	@touch $@

test-min-torch: setup $(MIN_TORCH)
	PYTHONPATH=$(CURDIR)/$(VENV)/min-torch $(PY) -c "import torch; assert torch.__version__.startswith('2.11.'), torch.__version__"
	PYTHONPATH=$(CURDIR)/$(VENV)/min-torch $(TEST_ENV) $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not timing and not zoo"

# The benchmarks behind the README's headline and coverage figures that fit about 95 minutes on 2 cores, with the
# settings each was published with (benchmarks/published.py; `run_all.py --dry-run` prints the plan), then the
# README's tables regenerated from their results files; on a quiet machine.
# NVIDIA ModelOpt, the peer the INT8 and side-by-side benchmarks compare with, beside the venv (its [onnx] extra
# pins onnxruntime-gpu and cupy, which a CPU machine neither needs nor has; the rest of the extra is in the venv).
MODELOPT := $(VENV)/modelopt/.prunefx-installed
MODELOPT_PACKAGES := nvidia-modelopt==0.47.0 omegaconf==2.4.0 antlr4-python3-runtime==4.9.3 pulp==3.3.2 \
	onnxslim==0.1.98 polygraphy==0.53.6 lief==1.0.0 cppimport==26.4.17 ninja==1.13.2
$(MODELOPT): $(STAMP)
	$(PIP) install --quiet --target $(VENV)/modelopt --upgrade --no-deps $(MODELOPT_PACKAGES)
	@touch $@

bench: setup $(MODELOPT)
	$(PY) benchmarks/run_all.py
	@$(MAKE) --no-print-directory docs

# Every results file the docs show, then every other benchmark script with its defaults.
bench-all: setup $(MODELOPT)
	$(PY) benchmarks/run_all.py --all
	@$(MAKE) --no-print-directory docs

# The GPU check (scripts/gpu_check.py): `make gpu-check-prepare` here builds .gpu-check/ (a wheel of prunefx and
# the wheels the GPU machine lacks); carried there, `make gpu-check` runs every GPU test and benchmark in one call
# of at most 8 minutes, results in $OUT (else build/gpu-check). `make gpu-check-smoke` proves it on this CPU.
GPU_PYTHON ?= python3
gpu-check-prepare: setup
	@# the CPU smoke runs of the check's benchmarks (in the zoo lane, out of `make test`) first: a GPU is rare
	$(TEST_ENV) $(PY) -m pytest -q -p no:cacheprovider tests/test_gpu_speedup_smoke.py tests/test_module_speed_check.py tests/test_gpu_check.py
	$(PY) scripts/gpu_check.py prepare

gpu-check:
	$(GPU_PYTHON) scripts/gpu_check.py run

# A second call on the warm GPU machine: benchmarks/gpu_speedup.py goes on from the rows the check finished.
# GPU_SECONDS: the device time `status` says is left, less a minute.
GPU_SECONDS ?= 240
gpu-speedup:
	$(GPU_PYTHON) scripts/gpu_check.py speedup --seconds $(GPU_SECONDS)

# Back here, with the check's files copied into benchmarks/gpu_check/: its speed-up rows that the published
# figures lack are added to benchmarks/results/gpu_speedup.*, each stamped with its code.
gpu-publish: setup
	$(PY) scripts/publish_gpu_rows.py
	$(PY) scripts/readme_results.py --write

gpu-check-smoke: setup
	$(PY) scripts/gpu_check.py prepare --smoke
	$(PY) scripts/gpu_check.py run --smoke --out build/gpu-check-smoke/out

# The documentation site in build/site/, built strictly: a broken link, anchor or API reference fails it.
# Its reference and benchmark tables are generated from the code and results files (scripts/docs_hooks.py).
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	@# benchmarks call one another's helpers (fashion_mnist_accuracy's by depth_vs_channel, ...): a call that no longer
	@# matches its function's signature is refused (mypy's call-arg check; their other typing is not enforced)
	cd benchmarks && ! MYPYPATH=. ../$(VENV)/bin/mypy --ignore-missing-imports --follow-imports=silent --no-error-summary *.py | grep '\[call-arg\]'
	@# unused code in the library (tests, benchmarks, examples and scripts count as users; whitelist: framework entry points)
	! $(VENV)/bin/vulture graph passes runtime prunefx benchmarks examples tests scripts --min-confidence 60 | grep -E '^(graph|passes|runtime|prunefx)/'
	@# import contracts (pyproject.toml [tool.importlinter]): read from the package laid out as it installs, since
	@# graph/, passes/ and runtime/ install as prunefx.graph, prunefx.passes and prunefx.runtime (package-dir)
	$(PY) scripts/package_tree.py build/import_tree
	cd build/import_tree && $(CURDIR)/$(VENV)/bin/lint-imports --no-cache $(CURDIR)/pyproject.toml
	@# no two modules import each other, imports inside functions included (scripts/import_cycles.py)
	$(PY) scripts/import_cycles.py build/import_tree

clean:
	rm -rf $(VENV) build *.egg-info
