# Two commands matter: `make demo` and `make test`. Both install first when needed.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# On a machine without a GPU we ask for the CPU build of torch explicitly so that no CUDA wheels are pulled.
# Set TORCH_INDEX (e.g. https://download.pytorch.org/whl/cpu) where your pip does not already provide a CPU build.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
PYTEST_WORKERS ?= 2

.PHONY: install demo test bench bench-gpu clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip >/dev/null
	@if $(PY) -c "import torch" 2>/dev/null; then \
	  echo "torch already installed: $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then \
	  $(PIP) install -q "torch>=2.4,<3"; \
	else \
	  $(PIP) install -q "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)); \
	fi
	$(PIP) install -q -e ".[dev,hf,rouge]"
	@# The [deepspeed] extra builds from source against the torch above: no build isolation (it would fetch another
	@# torch), no prebuilt CUDA ops. Optional: without it the DeepSpeed test is skipped and says so.
	$(PY) -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/torch-pin.txt
	DS_BUILD_OPS=0 $(PIP) install -q --no-build-isolation -c $(VENV)/torch-pin.txt "deepspeed>=0.19.8" \
	  || echo "deepspeed not installed: train.strategy=deepspeed and its test are unavailable"
	touch $@

demo: install
	$(VENV)/bin/cramlm demo

test: install
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) tests

bench: install
	@for b in $(filter-out benchmarks/gpu_check.py,$(wildcard benchmarks/*.py)); do echo "== $$b"; $(PY) $$b || exit 1; done

# The GPU check (docs/gpu_check.md): on a lent GPU machine, which has no network, from the checkout as it is.
GPU_CHECK_OUT ?= runs/gpu-check
PRETRAIN ?= ../shared/data/pretrain/enwiki_2015/enwiki_2015_00.txt.gz
GLUE ?= ../shared/data/glue
bench-gpu:
	PYTHONPATH=src PYTHONUNBUFFERED=1 $(if $(wildcard $(PY)),$(PY),python3) benchmarks/gpu_check.py --device cuda \
	  --out $(GPU_CHECK_OUT) --data $(PRETRAIN) --glue-dir $(GLUE)

clean:
	rm -rf $(VENV) runs .pytest_cache
