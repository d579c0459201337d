#!/usr/bin/env bash
# The one-command demo: set up a virtual environment (once), then run the whole PeaPOD pipeline on the embedded
# synthetic data, on CPU. Extra arguments go to peapod-demo, e.g. `bash demo.sh --data beauty --max_users 300`.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/peapod-demo ]; then
    python3 -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q torch==2.13.0   # the CPU build; a plain `torch` pulls CUDA
    .venv/bin/python -m pip install -q -e ".[test]"
fi
exec .venv/bin/peapod-demo --output_dir runs/demo --fresh True "$@"
