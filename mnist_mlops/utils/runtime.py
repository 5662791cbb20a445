"""Process-level defaults that Spark and friends need on a plain machine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


def set_spark_env_defaults() -> None:
    """Spark workers must run this interpreter and bind to loopback unless told otherwise."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


def require_java() -> str:
    """Path of the ``java`` Spark will use; a clear error (with the fix) when there is none."""
    java_home = os.environ.get("JAVA_HOME")
    java = os.path.join(java_home, "bin", "java") if java_home else shutil.which("java")
    if not java or not os.path.exists(java):
        raise RuntimeError(
            "Spark needs a Java runtime (17 recommended) and none was found on PATH or in "
            "JAVA_HOME. Install one, e.g. `apt-get install -y openjdk-17-jre-headless`."
        )
    try:
        subprocess.run([java, "-version"], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        raise RuntimeError(f"`{java} -version` failed: {err}") from err
    return java
