# Sourced by scripts/run and scripts/test: create .venv and install the project once.
# Re-installs only when pyproject.toml changed since the last install (a stamp file).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.pypto-installed"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
    # torch==2.13.0 is the CPU build served from local disk; installing it first keeps
    # pyproject's torch>=2.4 from pulling a multi-GB CUDA build.
    if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
        "$VENV/bin/pip" install -q "torch==2.13.0"
    fi
    "$VENV/bin/pip" install -q -e "$ROOT[dev]"
    touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
