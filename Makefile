# Two commands on a fresh machine: `make demo` (a style transfer of the bundled examples) and
# `make test`. Both create the virtual environment and install the project when needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.nst-installed
# torch/torchvision pinned to releases known to work together; override e.g. for a CPU-only wheel index.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DEMO_ARGS ?= size=256 steps=150
ABLATION_ARGS ?= size=128 steps=200

.PHONY: install demo test bench ablations clean-outputs

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[test,slurm,search]'
	touch $(STAMP)

demo: install
	$(PY) -m nst.run $(DEMO_ARGS)

test: install
	$(PY) -m pytest -q

# the same sweep batched and one trial at a time (on a GPU: every preset of benchmarks/sweep.py)
bench: install
	$(PY) benchmarks/sweep.py $(BENCH_ARGS)

ablations: install
	set -e; for f in sweeps/*.yaml; do \
	  $(PY) -m nst.run -m +sweep=$$(basename $$f .yaml) $(ABLATION_ARGS) || echo "sweep $$f had failures"; \
	done

clean-outputs:
	rm -rf outputs
