#!/usr/bin/env bash
# Set up (first run only) and open the course in JupyterLab. Extra arguments go to jupyter lab,
# e.g.  bash scripts/lab.sh --no-browser --port 8888   (from another machine: an SSH tunnel,
# `ssh -N -L 8888:127.0.0.1:8888 this-host`, rather than --ip 0.0.0.0; see docs/security.md)
# The model is chosen by course.yaml (model: auto = the real 3B on a CUDA GPU, the tiny stand-in
# otherwise); `qvl env` tells what this machine can do.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
qvl env || true
extra=()
if [ "$(id -u)" = 0 ]; then extra+=(--allow-root); fi  # containers and cloud machines run as root
exec jupyter lab --ServerApp.root_dir="$ROOT" --LabApp.default_url=/lab/tree/notebooks "${extra[@]}" "$@"
