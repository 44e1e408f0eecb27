#!/usr/bin/env bash
# The image's entry point: JupyterLab on the course, never without a token.
#   JUPYTER_TOKEN   the token to require (compose reads it from docker/.env); when unset, one is
#                   generated and printed once, to this log only
#   QVL_LAB_IP      address to listen on inside the container (default 0.0.0.0: reachable only
#                   through a published port, which compose binds to 127.0.0.1)
#   QVL_LAB_PORT    port inside the container (default 8888; compose maps LAB_PORT to 8888, so
#                   leave this alone there)
# Any other command given to `docker run IMAGE ...` runs instead of JupyterLab, e.g. `qvl env`.
set -euo pipefail
cd /course
if [ "${QVL_VARIANT:-gpu}" = cpu ] && [ -z "${QVL_MODEL:-}" ]; then
    export QVL_MODEL=tiny  # the CPU image is for the tiny stand-in, for any command
fi
if [ "$#" -gt 0 ]; then exec "$@"; fi
token="${JUPYTER_TOKEN:-}"
if [ -z "$token" ]; then
    token="$(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
    echo "No JUPYTER_TOKEN was set; this session's token (shown once, here only):"
    echo "    $token"
    echo "Open http://127.0.0.1:8888/lab?token=<the token above> (with compose: LAB_PORT's port)"
fi
qvl env || true
# The token goes through the environment, not the command line (ps would show it to any user).
export JUPYTER_TOKEN="$token"
exec jupyter lab --no-browser \
    --ip="${QVL_LAB_IP:-0.0.0.0}" --port="${QVL_LAB_PORT:-8888}" \
    --ServerApp.root_dir=/course --LabApp.default_url=/lab/tree/notebooks
