# One environment for everything: .venv, built from pyproject.toml on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CIFAR_TAR ?= ../shared/data/cifar10-jpeg75.tar.gz

.PHONY: install run test test-slow lint bench gpu-check data clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## make run: the default experiment (digits + small_cnn + BadNets, no defense); prints its result
run: $(STAMP)
	$(PY) run.py $(ARGS)

## make test: the fast suite (the target: under 20 minutes on 2 CPU cores; the last full run took about 20.5 on a busy machine)
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -m "not slow" -q --durations=15

## make test-slow: real-data checks on the CIFAR-10 JPEG copy (skipped when it is absent) and the longer runs
## (the whole gallery at trainer=tiny, a submitit_local sweep)
test-slow: $(STAMP)
	$(PY) -m pytest -m slow -q

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: $(STAMP)
	$(PY) scripts/bench.py $(ARGS)

## make gpu-check: on a CUDA machine, bench + a 100-epoch PreActResNet-18 BadNets run (cifar10-jpeg75,
## trainer=gpu) + D-BR on it + a SimCLR epoch, one timed markdown table (needs `make data`)
gpu-check: $(STAMP)
	$(PY) scripts/gpu_check.py $(ARGS)

## make data: unpack the CIFAR-10 JPEG copy into data/cifar10-jpeg75 (dataset=cifar10_jpeg75)
data: data/cifar10-jpeg75

data/cifar10-jpeg75: $(CIFAR_TAR)
	test -f $(CIFAR_TAR) || { echo "make data: $(CIFAR_TAR) not found; set CIFAR_TAR=<path to cifar10-jpeg75.tar.gz>"; exit 2; }
	mkdir -p $@.partial && tar -xzf $(CIFAR_TAR) -C $@.partial && mv $@.partial $@

clean:
	rm -rf outputs .pytest_cache .ruff_cache
