# facesketch: every target sets itself up on a fresh machine and is fast the second time.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# A CPU build of torch is preferred where one lies on disk (this project's machines);
# elsewhere pip's default torch (CUDA-enabled on Linux x86_64) is installed.
TORCH_WHEEL := $(firstword $(wildcard /opt/wheels/torch-*+cpu-cp3*-manylinux*_x86_64.whl))
TORCH_SPEC  ?= $(if $(TORCH_WHEEL),$(TORCH_WHEEL),torch>=2.4)
PYTEST_ARGS ?=

.PHONY: install test demo bench browser clean help

help:
	@echo "make demo     the main job on the bundled model: export, bench, web UI on 127.0.0.1"
	@echo "make test     the test suite (CUFS tests need ../shared/data/cufs)"
	@echo "make bench    CPU benchmarks -> benchmarks/results/"
	@echo "make install  create $(VENV) with facesketch and everything the tests need"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev]"
	# piq: the independent FSIM reference of the tests. --no-deps: its torchvision
	# requirement would make pip replace torch; its FSIM needs torch only.
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps "piq==0.8.0"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/facesketch demo

bench: $(STAMP)
	$(BIN)/python -m benchmarks.train_throughput --device cpu
	$(BIN)/facesketch bench --json benchmarks/results/bench_cpu.json

# Debian's Chromium for the browser test (needs root; .ci/run calls this).
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

clean:
	rm -rf $(VENV) .pytest_cache bundles/default
