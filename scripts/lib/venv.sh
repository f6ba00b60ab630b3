# Sourced by scripts/*: run inside the project's .venv (scripts/install-deps makes it),
# as `source .venv/bin/activate` would, so python3, taskman, ruff and every process they
# start (nodes, runners, the lab's nodes in network namespaces) use it, never the
# system interpreter.
_venv="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/.venv"
if [[ ! -x $_venv/bin/python ]]; then
    echo "$0: no $_venv; run scripts/install-deps first" >&2
    exit 1
fi
export VIRTUAL_ENV=$_venv
export PATH=$_venv/bin:$PATH
unset PYTHONHOME _venv
