# Sourced by demo.sh and test.sh: create .venv if missing and install radmtl into it.
# torch: a torch that is already importable (e.g. a user's CUDA build) is kept by giving the venv
# the system site-packages; otherwise the CPU build torch==2.13.0 is installed first, because an
# unpinned torch pulls several GB of CUDA wheels.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    if "$PYTHON" -c "import torch" >/dev/null 2>&1; then
        echo "setup: using the torch already installed for $PYTHON"
        "$PYTHON" -m venv --system-site-packages .venv
    else
        "$PYTHON" -m venv .venv
    fi
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python -c "import torch" >/dev/null 2>&1; then
    echo "setup: installing torch==2.13.0 (CPU build)"
    # --no-compile: pip would compile all of torch's ~4000 modules to bytecode (30 of the 40 s this
    # install took); radmtl imports a fraction of them, compiled on first import below.
    pip install -q --no-compile "torch==2.13.0"
fi
# Reinstall only when pyproject.toml or this script changed: a no-op pip install still costs ~20 s.
stamp=".venv/.radmtl-installed"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! python -c "import radmtl" >/dev/null 2>&1; then
    echo "setup: installing radmtl and its dependencies into .venv"
    # uv resolves and unpacks the ~110 dependencies in parallel: 7 s here against 80 s for pip (a fresh
    # .venv, warm caches). The torch already in the environment is pinned for uv, which reads no pip
    # config: it can keep that torch or fail, never swap in a CUDA build; pip takes over on any failure.
    torch_pin="$(mktemp)"
    python -c "import torch; print('torch==' + torch.__version__)" 2>/dev/null > "$torch_pin"
    # The dose extra (issue 28) and pyRadPlan without its declared AI dependencies (pyproject.toml says why).
    # RADMTL_DOSE=0 leaves both out; `radmtl evaluate --dose` then says how to install them.
    extras="dev"
    if [ "${RADMTL_DOSE:-1}" != "0" ]; then extras="dev,dose"; fi
    if ! { pip install -q uv && python -m uv pip install -q --constraint "$torch_pin" -e ".[$extras]"; }; then
        echo "setup: uv unavailable or failed; installing with pip"
        pip install -q -e ".[$extras]"
    fi
    if [ "${RADMTL_DOSE:-1}" != "0" ]; then
        python -m uv pip install -q --no-deps "pyradplan==0.5.0" 2>/dev/null || pip install -q --no-deps "pyradplan==0.5.0"
    fi
    rm -f "$torch_pin"
    echo "$want" > "$stamp"
fi
# Bytecode is written on first import, for the modules radmtl and its tests actually use, into .venv
# (and the clone's __pycache__, which git ignores). Where PYTHONDONTWRITEBYTECODE is set, as on CI,
# nothing was ever written and every process recompiled MONAI, MLflow, SciPy… on import (`import
# radmtl.training.train` 13.8 s against 6.6 s). Compiling everything at install instead (pip's
# default, uv's --compile-bytecode) cost 55 s of a fresh set-up, most of it on modules never imported.
unset PYTHONDONTWRITEBYTECODE
