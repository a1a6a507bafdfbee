# shellcheck shell=bash
# The Python interpreter of every launcher in scripts/ (sourced; not run on its own).
#
# PYTHON is, in this order: $PYTHON when set; the active virtual environment's python ($VIRTUAL_ENV);
# the project's .venv (what `make install` creates) when it exists; else python3 (python without it).
# require_python MODULE... ends the launcher with one line saying how to get the packages (exit 1)
# when that interpreter cannot find them, instead of a Python traceback later on.

PROJECT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [ -n "${PYTHON:-}" ]; then
  :
elif [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
  PYTHON=$VIRTUAL_ENV/bin/python
elif [ -x "$PROJECT_ROOT/.venv/bin/python" ]; then
  PYTHON=$PROJECT_ROOT/.venv/bin/python
elif command -v python3 >/dev/null 2>&1; then
  PYTHON=python3
else
  PYTHON=python
fi

require_python() {  # MODULE...: top-level packages the launcher's Python programs import
  local missing
  if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "error: Python interpreter '$PYTHON' not found; run \`make install\` (creates .venv) or set PYTHON" >&2
    exit 1
  fi
  local find='import importlib.util as u, sys; print(" ".join(m for m in sys.argv[1:] if u.find_spec(m) is None))'
  missing=$("$PYTHON" -c "$find" "$@" 2>/dev/null) || missing="$*"
  if [ -n "$missing" ]; then
    echo "error: $PYTHON cannot import ${missing// /, }; run \`make install\` (creates .venv with requirements.txt)" \
      "or \`source .venv/bin/activate\` if it exists, or set PYTHON to an interpreter that has them" >&2
    exit 1
  fi
}
