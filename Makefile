# Two commands on a fresh clone:  `make run`  and  `make test`.
# Everything they need (the virtual environment, Debian's dcmtk/orthanc and its plugins/dicom3tools/chromium) is installed
# idempotently: a second run finds the stamps and skips the installs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEB_PACKAGES := dcmtk orthanc orthanc-webviewer orthanc-dicomweb dicom3tools chromium
export FLWR_TELEMETRY_ENABLED = 0
export FLWR_DISABLE_UPDATE_CHECK = 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION = 1
export RAY_USAGE_STATS_ENABLED = 0
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: help venv system-deps test test-fast lint run preview data bench bench-gpu bench-federation lock clean export example-data

help:
	@echo "make run          start Orthanc (:8042, PACS + viewer), Triton, the REST API (:8080) and the DICOM node (:11112), supervised"
	@echo "make example-data write the small example inputs of the README's curl/storescu examples to examples/"
	@echo "make test         install everything needed and run the whole test suite (lint and types included)"
	@echo "make lint         only ruff, mypy and the import layers (import-linter), as make test runs them"
	@echo "make preview      write docs/img/data_preview.png (sites x contrasts, coils, k-space, mask)"
	@echo "make data         generate (and cache) the embedded multi-site phantom data set"
	@echo "make export       export the trained runs' generators to ONNX into model_repository/ (parity-checked)"
	@echo "make bench        run the benchmarks and write their tables to docs/"
	@echo "make bench-federation  FedAvg vs gradient averaging, with compression, 2 and 5 sites (10+ min)"
	@echo "make bench-gpu    GPU against CPU: inference of both families, one DP-SGD synthesis round (needs CUDA)"
	@echo "make federation-certs a private CA, the SuperLink's TLS certificate and a key per site (.cache/federation-pki)"
	@echo "make train-federated  a short federated reconstruction demo (configs/recon-v2.yaml), then synthesis"
	@echo "make train-recon-v2   the shipped reconstruction model's federated run (configs/recon-v2.yaml, ~90 min CPU)"
	@echo "make train-synthesis  federated T1w->T2w synthesis, 4 sites, DP-SGD (configs/synthesis.yaml, < 15 min CPU)"
	@echo "make train-synthesis-flair  the same for T1w->FLAIR"
	@echo "make evaluate-synthesis  served synthesis models on a real glioma patient and the MNI152 T1 template (docs/)"
	@echo "make pretrain-synthesis  retrain the synthesis generators' public starting weights (pretrained/, both directions)"
	@echo "make lock         regenerate requirements.lock from pyproject.toml"

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24" 2>&1 | grep -v "^WARNING: Location" || true
	set -o pipefail; $(PY) -m pip install -q -r requirements.lock 2>&1 | { grep -v "^WARNING: Location" || true; }
	set -o pipefail; $(PY) -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(PY) -m pip check
	@touch $(STAMP)

# Debian packages of the embedded PACS (`make run`: Orthanc with its web viewer and DICOMweb plugins) and of the
# end-to-end tests' real peers (dcmtk as scanner, Orthanc as PACS, dciodvfy, chromium for the viewer page).
# Idempotent: only the packages dpkg does not list as installed are installed.
system-deps:
	@missing=""; \
	for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

test: venv system-deps
	$(PY) -m pytest

test-fast: venv
	$(PY) -m pytest -m "not slow and not e2e"

# The same checks tests/test_lint.py and tests/test_layers.py run inside make test, for a quick look.
lint: venv
	$(VENV)/bin/ruff check .
	$(PY) -m mypy
	$(VENV)/bin/lint-imports

preview: venv
	$(PY) -m training.data_cli preview --out docs/img/data_preview.png

data: venv
	$(PY) -m training.data_cli generate

# Orthanc (the embedded PACS and viewer, :8042 / DICOM :4242), Triton (shipped model_repository/, CPU config), the
# REST API on :8080 and the DICOM node on :11112; a crashed service is restarted with back-off. Ctrl-C stops it all.
run: venv system-deps example-data
	$(PY) -m serving.stack

# Small input files for the README's curl and storescu examples (from the embedded phantom).
example-data: venv
	@test -f examples/kspace.npz || $(PY) -m serving.api examples --out examples/

bench: venv
	$(PY) -m benchmarks.recon_speed --out docs/benchmarks/recon_speed.md
	$(PY) -m benchmarks.cs_baseline --out docs/benchmarks/cs_baseline.md
	$(PY) -m benchmarks.serving_latency --out docs/benchmarks/serving_latency.md
	$(PY) -m benchmarks.rest_latency --out docs/benchmarks/rest_latency.md
	$(PY) -m benchmarks.dicom_latency --out docs/benchmarks/dicom_latency.md

# Not in `bench`: 16 small training runs, about 10 minutes on 2 idle cores, far more under load (table in docs/federation.md).
bench-federation: venv
	$(PY) -m benchmarks.federation_compression --out docs/benchmarks/federation_compression.md

# On a GPU host only (exits 2 without a visible CUDA GPU; CI has none).
bench-gpu: venv
	$(PY) -m benchmarks.gpu_timings --out docs/benchmarks/gpu_timings.md

# The shipped models' runs: recon_unrolled version 2 from `make train-recon-v2` (v1 in the repository stays),
# the synthesis generators (version 3; versions 1 and 2 stay in the repository) from `make train-synthesis`.
# A missing run is an error naming it.
# After `make train-federated` (a demonstration): make export RECON_RUN=runs/recon-v2-demo
RECON_RUN ?= runs/recon-v2
RECON_VERSION ?= 2
SYNTHESIS_RUNS ?= runs/synthesis-default
SYNTHESIS_VERSION ?= 3
export: venv
	$(PY) -m training.cli export --run-dir $(RECON_RUN) --repo model_repository --version $(RECON_VERSION)
	$(PY) -m training.cli export $(foreach r,$(SYNTHESIS_RUNS),--run-dir $(r)) --repo model_repository --version $(SYNTHESIS_VERSION)

lock:
	rm -rf /tmp/mri-lock-venv && $(PYTHON) -m venv /tmp/mri-lock-venv
	/tmp/mri-lock-venv/bin/pip install -q ".[test]"
	( echo "# Exact versions installed by 'make venv'. Regenerate with 'make lock' after changing pyproject.toml."; \
	  echo "# torch is the local CPU wheel; never unpin it (an unpinned torch pulls several GB of CUDA packages)."; \
	  /tmp/mri-lock-venv/bin/pip freeze --exclude mri-service | sed -e 's/^torch==2.13.0+cpu/torch==2.13.0/' ) > requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

.PHONY: federation-certs train-federated train-recon-v2 train-synthesis pretrain-synthesis train-synthesis-flair evaluate-synthesis
# A demonstration of both recipes within 15 minutes here: the shipped reconstruction recipe (configs/recon-v2.yaml)
# for 3 short rounds, then the synthesis run. The shipped recon_unrolled v2 comes from `make train-recon-v2`.
# The federation's CA, SuperLink certificate and one SuperNode key per site (docs/federation.md).
FEDERATION_SITES ?= hospital-a hospital-b hospital-c
FEDERATION_HOSTS ?=
federation-certs: venv
	$(PY) -m training.cli federation-certs --out .cache/federation-pki --sites "$(FEDERATION_SITES)" \
	  $(foreach h,$(FEDERATION_HOSTS),--host $(h))

train-federated: venv
	$(PY) -m training.cli federated --config configs/recon-v2.yaml --set name=recon-v2-demo \
	  --set run_dir=runs/recon-v2-demo --set federation.rounds=3 --set data.train_batches=8 --set data.val_batches=2
	$(PY) -m training.cli federated --config configs/synthesis.yaml

# The shipped reconstruction model (recon_unrolled v2): 4 hospitals, 40 rounds, about 90 minutes on 2 CPU cores.
train-recon-v2: venv
	$(PY) -m training.cli federated --config configs/recon-v2.yaml

train-synthesis: venv
	$(PY) -m training.cli federated --config configs/synthesis.yaml

# T1w->FLAIR (and FLAIR->T1w): the default run with another direction. SYNTH_ENGINE=sequential trains the sites in
# turn in one process (no Ray), for a machine whose CPU is saturated.
SYNTH_ENGINE ?= flower
train-synthesis-flair: venv
	$(PY) -m training.cli federated --config configs/synthesis.yaml --engine $(SYNTH_ENGINE) --set name=synthesis-flair \
	  --set run_dir=runs/synthesis-flair --set 'synthesis.direction=T1w->FLAIR' \
	  --set model.init_weights=pretrained/synthesis-public-T1w-FLAIR.npz

# The served synthesis models on real anatomy (evaluation only): docs/synthesis_patients.md, docs/synthesis_generalization.md
evaluate-synthesis: venv
	$(PY) -m training.cli evaluate-synthesis --real

# The synthesis generators' starting weights (model.init_weights of configs/synthesis.yaml): centralized,
# no DP, on the phantom's hospital-e ... hospital-h, which no default run trains on or holds out (they play
# a public data set such as IXI). Shipped in pretrained/; this target retrains and republishes them.
PUBLIC_SITES ?= [hospital-e,hospital-f,hospital-g,hospital-h]
# 10 rounds of 48 Adam steps (160 pooled slices, batch 10, 3 epochs, 96 x 96 patches), a few minutes per direction
# on an idle machine; both directions of the shipped models (T1w<->T2w, T1w<->FLAIR).
PRETRAIN_SETS = --fresh --engine sequential --set 'data.train_sites=$(PUBLIC_SITES)' --set data.pooled=true \
	  --set privacy.enabled=false --set objective.lr=0.002 --set model.init_weights=null --set federation.rounds=10 \
	  --set federation.local_epochs=3 --set data.source.subjects_per_site=6 --set data.train_slices_total=160 \
	  --set objective.batch_size=10 --set objective.micro_batch_size=10
pretrain-synthesis: venv
	$(PY) -m training.cli federated --config configs/synthesis.yaml $(PRETRAIN_SETS) --set name=synthesis-public \
	  --set run_dir=runs/synthesis-public
	$(PY) -m training.cli publish-init runs/synthesis-public pretrained/synthesis-public-T1w-T2w.npz
	$(PY) -m training.cli federated --config configs/synthesis.yaml $(PRETRAIN_SETS) --set name=synthesis-public-flair \
	  --set run_dir=runs/synthesis-public-flair --set 'synthesis.direction=T1w->FLAIR'
	$(PY) -m training.cli publish-init runs/synthesis-public-flair pretrained/synthesis-public-T1w-FLAIR.npz
