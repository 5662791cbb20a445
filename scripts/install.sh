#!/usr/bin/env bash
# Create .venv and install the project with everything it needs; safe to re-run.
# Used by `make install` (and so by `make run` / `make test`) and by the Dockerfile.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
"$PYTHON" - <<'PY'
import sys
if sys.version_info[:2] not in {(3, 11), (3, 12)}:
    sys.exit(f"mnist-mlops needs Python 3.11 (3.12 works); found {sys.version.split()[0]}")
PY

if ! command -v java >/dev/null 2>&1 && [ -z "${JAVA_HOME:-}" ]; then
  echo "WARNING: no Java runtime found; Spark preprocessing needs one." >&2
  echo "         Debian/Ubuntu: apt-get install -y openjdk-17-jre-headless" >&2
fi

VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e '.[pipeline,dev]'
for extra in scripts/install.d/*.sh; do
  [ -e "$extra" ] && VENV="$VENV" bash "$extra"
done
"$VENV/bin/python" -m pip check
touch "$VENV/.installed"
