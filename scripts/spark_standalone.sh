#!/usr/bin/env bash
# A Spark standalone cluster on localhost: one master and N workers, started with the
# `sbin/spark-daemon.sh` that ships inside the pyspark wheel (the same launcher Spark's own
# start-master.sh / start-worker.sh call; pip's pyspark does not ship those two wrappers).
#
#   scripts/spark_standalone.sh start    # prints the master URL, e.g. spark://127.0.0.1:7077
#   scripts/spark_standalone.sh status
#   scripts/spark_standalone.sh stop
#
# Then train on it (docs/distributed.md):
#   python -m mnist_mlops.train backend=spark_ddp spark=cluster spark.master=spark://127.0.0.1:7077
#
# Settings (environment): SPARK_STANDALONE_WORKERS (2), SPARK_WORKER_CORES (1),
# SPARK_WORKER_MEMORY (2g), SPARK_MASTER_PORT (7077), SPARK_MASTER_WEBUI_PORT (8080; workers use
# the ports after it), SPARK_STANDALONE_DIR (outputs/spark-standalone: pids, logs, work dirs).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
PY="${PYTHON:-$VENV/bin/python}"
WORKERS="${SPARK_STANDALONE_WORKERS:-2}"
CORES="${SPARK_WORKER_CORES:-1}"
MEMORY="${SPARK_WORKER_MEMORY:-2g}"
HOST="${SPARK_MASTER_HOST:-127.0.0.1}"
PORT="${SPARK_MASTER_PORT:-7077}"
WEBUI_PORT="${SPARK_MASTER_WEBUI_PORT:-8080}"
STATE_DIR="$(mkdir -p "${SPARK_STANDALONE_DIR:-outputs/spark-standalone}" && cd "${SPARK_STANDALONE_DIR:-outputs/spark-standalone}" && pwd)"
MASTER_URL="spark://$HOST:$PORT"

SPARK_HOME="$("$PY" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')"
export SPARK_HOME
export SPARK_PID_DIR="$STATE_DIR/pids" SPARK_LOG_DIR="$STATE_DIR/logs" SPARK_WORKER_DIR="$STATE_DIR/work"
# a unique SPARK_IDENT_STRING keeps these pid files apart from any other cluster on the machine
export SPARK_IDENT_STRING="mnist-mlops-$PORT"
export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-$HOST}" SPARK_MASTER_HOST="$HOST"
export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")}"
unset SPARK_NO_DAEMONIZE  # spark-daemon.sh must background the JVMs
DAEMON=(bash "$SPARK_HOME/sbin/spark-daemon.sh")
MASTER_CLASS=org.apache.spark.deploy.master.Master
WORKER_CLASS=org.apache.spark.deploy.worker.Worker

wait_for_workers() {
  # The master's JSON endpoint lists registered workers; wait until all of them are ALIVE.
  local deadline=$((SECONDS + 60)) alive=0
  while ((SECONDS < deadline)); do
    alive="$("$PY" - "$HOST" "$WEBUI_PORT" <<'PY' 2>/dev/null || echo 0
import json, sys, urllib.request
with urllib.request.urlopen(f"http://{sys.argv[1]}:{sys.argv[2]}/json/", timeout=2) as resp:
    print(sum(w["state"] == "ALIVE" for w in json.load(resp)["workers"]))
PY
)"
    [ "$alive" -ge "$WORKERS" ] && return 0
    sleep 1
  done
  echo "only $alive of $WORKERS workers registered with $MASTER_URL within 60 s;" \
    "see $SPARK_LOG_DIR" >&2
  return 1
}

case "${1:-}" in
  start)
    mkdir -p "$SPARK_PID_DIR" "$SPARK_LOG_DIR" "$SPARK_WORKER_DIR"
    "${DAEMON[@]}" start "$MASTER_CLASS" 1 \
      --host "$HOST" --port "$PORT" --webui-port "$WEBUI_PORT" >/dev/null
    for i in $(seq 1 "$WORKERS"); do
      "${DAEMON[@]}" start "$WORKER_CLASS" "$i" \
        --host "$HOST" --webui-port "$((WEBUI_PORT + i))" \
        --cores "$CORES" --memory "$MEMORY" --work-dir "$SPARK_WORKER_DIR" \
        "$MASTER_URL" >/dev/null
    done
    wait_for_workers
    echo "$MASTER_URL"
    ;;
  stop)
    for i in $(seq "$WORKERS" -1 1); do
      "${DAEMON[@]}" stop "$WORKER_CLASS" "$i" >/dev/null || true
    done
    "${DAEMON[@]}" stop "$MASTER_CLASS" 1 >/dev/null || true
    ;;
  status)
    "${DAEMON[@]}" status "$MASTER_CLASS" 1
    for i in $(seq 1 "$WORKERS"); do "${DAEMON[@]}" status "$WORKER_CLASS" "$i"; done
    ;;
  *)
    echo "usage: $0 start|stop|status  (settings: see the header of this script)" >&2
    exit 2
    ;;
esac
