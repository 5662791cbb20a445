#!/usr/bin/env bash
# Spark JVM class-data archive: one optional step of scripts/install.sh (which sets VENV).
# A cold JVM spends about a third of a short Spark job loading classes; the archive, dumped
# from a tiny synthetic preprocessing run into ~/.cache/mnist-mlops/, removes most of that.
# Without Java (or if the dump fails) Spark simply starts the slow way, so this never fails.
set -uo pipefail
cd "$(dirname "$0")/../.."
VENV="${VENV:-.venv}"
if ! command -v java >/dev/null 2>&1 && [ -z "${JAVA_HOME:-}" ]; then
  echo "spark-cds: no Java runtime yet; skipping the class-data archive" >&2
  exit 0
fi
"$VENV/bin/python" -m mnist_mlops.data.spark >/dev/null 2>&1 \
  || echo "WARNING: could not build the Spark class-data archive; Spark will start slower" >&2
exit 0
