# pg-lifeboat: every entry point a developer or CI needs.
SHELL := /bin/bash
PYTHON312 := $(shell scripts/find-python)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test lint unit demo test-shifted layers package bench bench-big clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -n "$(PYTHON312)" || { echo "Python 3.12 is required"; exit 1; }
	test -x $(PY) || $(PYTHON312) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . \
	  || $(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: venv lint
	$(VENV)/bin/pytest -q -ra

demo: venv
	$(PY) -m devstack.demo

# A sandbox that stays up (moto, PostgreSQL with the sample database, a config): prints the `export ...` lines for
# `lifeboat`; Ctrl-C or `make devstack-down` stops it. Options: make devstack DEVSTACK_ARGS="--aws-port 0 --pg-port 0"
.PHONY: devstack devstack-down
DEVSTACK_ARGS ?=
devstack: venv
	$(PY) -m devstack.sandbox $(DEVSTACK_ARGS)

devstack-down:
	$(PY) -m devstack.sandbox --down $(filter --dir=%,$(DEVSTACK_ARGS))

# The date-sensitive suites with the test process's clock a year ahead (README, "Tests on another date").
FAKETIME_LIB ?= $(firstword $(wildcard /usr/lib/*/faketime/libfaketime.so.1))
test-shifted: venv
	@test -n "$(FAKETIME_LIB)" || { echo "libfaketime is missing: apt-get install faketime"; exit 2; }
	FAKETIME=+365d LD_PRELOAD=$(FAKETIME_LIB) $(VENV)/bin/pytest -q -p no:cacheprovider \
	  tests/physical tests/integration tests/reliability tests/adapters

# PostgreSQL client Lambda layers (see layers/README.md): layers/dist/pg-clients-{x86_64,arm64}.zip
LAYER_ARCH ?= all
layers: venv
	$(PY) layers/build.py --arch $(LAYER_ARCH)

# Deployable CloudFormation (SAM) stack: $(OUT)/sam.json, deployment.zip and the layer zip (stack/README.md).
STAGE ?= dev
ARCH ?= x86_64
OUT ?= out/$(STAGE)-$(ARCH)
WHEELHOUSE ?=
# ALARM_TARGETS="shop=1d db=1d:snapshot": optional extra per-target alarms fixed in the template; the stack's
# dead-man's switch over every target in SSM (BackupsOverdueAlarm) needs none (stack/README.md, Alarms).
ALARM_TARGETS ?=
package: venv layers/dist/pg-clients-$(ARCH).zip
	$(PY) -m stack.package --stage $(STAGE) --arch $(ARCH) --out $(OUT) \
	  $(if $(WHEELHOUSE),--wheelhouse $(WHEELHOUSE)) $(foreach t,$(ALARM_TARGETS),--target $(t))

# One architecture's layer, built only when missing or older than its inputs (`make layers` builds all).
layers/dist/pg-clients-%.zip: layers/build.py $(wildcard layers/pglayer/*.py) $(wildcard layers/*.json)
	$(PY) layers/build.py --arch $*

# The Fargate worker's container image (Dockerfile; chalicelib/fargate.py), for the stack's ARCH. Runs
# `docker build` when a Docker engine answers; otherwise prints the command to run where one does.
.PHONY: image
IMAGE ?= pg-lifeboat:$(ARCH)
DOCKER_PLATFORM = $(if $(filter arm64,$(ARCH)),linux/arm64,linux/amd64)
image: layers/dist/pg-clients-$(ARCH).zip
	@cmd="docker build --platform $(DOCKER_PLATFORM) --build-arg ARCH=$(ARCH) -t $(IMAGE) ."; \
	if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then \
	  echo "$$cmd"; $$cmd; \
	else \
	  echo "image: no usable Docker engine here (docker missing or its daemon not running); nothing built."; \
	  echo "Build and push where Docker runs (see 'When you outgrow Lambda' in README.md):"; \
	  echo "  $$cmd"; \
	fi

# Benchmarks, not part of `make test` (~30 min): writes BENCHMARKS.md. Sizes, repetitions, sections:
# make bench BENCH_ARGS="--reps 7 --transport both" (python -m bench.run --help); make bench-big adds the 5 GB run.
BENCH_ARGS ?=
bench: venv
	$(PY) -m bench.run $(BENCH_ARGS)

bench-big: venv
	$(PY) -m bench.run --big $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .cache out layers/dist .demo
