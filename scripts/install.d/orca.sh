#!/usr/bin/env bash
# BigDL-Orca for `backend=orca`: one step of scripts/install.sh, which sets VENV and runs
# `pip check` afterwards.
#
# Why repack: bigdl-orca-spark3 / bigdl-dllib-spark3 2.4.0 declare `pyspark==3.1.3` (which does not
# run on Python 3.11 / Java 17) and bigdl-tf / bigdl-math (TensorFlow/MKL extras PyTorch training
# never imports). Their JARs target Spark 3.x on Scala 2.12 and train fine on the project's pyspark
# 3.5.x (they fail on pyspark 4.x, Scala 2.13). pip has no way to override a dependency's declared
# requirement, and `--no-deps` alone leaves `pip check` red. So the two wheels are downloaded as
# published, their METADATA is corrected (`pyspark>=3.1.3,<4`, no bigdl-tf/bigdl-math), the RECORD
# hash of METADATA is updated and the version gets the local label `+pyspark35` so nobody mistakes
# them for the originals; everything else in the wheels is byte-for-byte the published content.
# The runtime dependencies they really import are pinned here.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${VENV:-.venv}"
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
LOCAL_LABEL="pyspark35"
WHEEL_DIR="$VENV/.bigdl-wheels"

"${PIP[@]}" install --quiet six==1.17.0 packaging==26.4 pyzmq==27.3.0 conda-pack==0.3.1
# bigdl-core declares no dependencies, so it installs as published.
"${PIP[@]}" install --quiet --no-deps bigdl-core==2.4.0.dev0

if "$PY" - "$LOCAL_LABEL" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version

want = f"2.4.0+{sys.argv[1]}"
try:
    ok = all(version(d) == want for d in ("bigdl-dllib-spark3", "bigdl-orca-spark3"))
except PackageNotFoundError:
    ok = False
sys.exit(0 if ok else 1)
PY
then
  exit 0  # already installed and repacked
fi

mkdir -p "$WHEEL_DIR"
"${PIP[@]}" download --quiet --no-deps --dest "$WHEEL_DIR" \
  bigdl-dllib-spark3==2.4.0 bigdl-orca-spark3==2.4.0
"$PY" - "$WHEEL_DIR" "$LOCAL_LABEL" <<'PY'
"""Rewrite the declared requirements of the two BigDL wheels (see the comment above)."""
import base64
import hashlib
import re
import sys
import zipfile
from pathlib import Path

wheel_dir, label = Path(sys.argv[1]), sys.argv[2]
DROP = re.compile(r"^Requires-Dist: (bigdl-tf|bigdl-math)\b")
PYSPARK = re.compile(r"^Requires-Dist: pyspark \(==3\.1\.3\)$")


def fix_metadata(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if DROP.match(line):
            continue
        if PYSPARK.match(line):
            line = "Requires-Dist: pyspark (<4,>=3.1.3)"
        if line == "Version: 2.4.0":
            line = f"Version: 2.4.0+{label}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest},{len(data)}"


for src in sorted(wheel_dir.glob("bigdl_*-2.4.0-py3-none-*.whl")):
    name = src.name.split("-")[0]
    old_info, new_info = f"{name}-2.4.0.dist-info/", f"{name}-2.4.0+{label}.dist-info/"
    dst = src.with_name(src.name.replace("-2.4.0-", f"-2.4.0+{label}-"))
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        metadata = fix_metadata(zin.read(old_info + "METADATA").decode()).encode()
        for item in zin.infolist():
            arcname = item.filename.replace(old_info, new_info, 1)
            if item.filename == old_info + "METADATA":
                data = metadata
            elif item.filename == old_info + "RECORD":
                rows = []
                for row in zin.read(item).decode().splitlines():
                    path, _, rest = row.partition(",")
                    path = path.replace(old_info, new_info, 1)
                    if path == new_info + "METADATA":
                        rest = record_hash(metadata)
                    rows.append(f"{path},{rest}")
                data = ("\n".join(rows) + "\n").encode()
            else:
                data = zin.read(item)
            info = zipfile.ZipInfo(arcname, item.date_time)
            info.external_attr, info.compress_type = item.external_attr, zipfile.ZIP_DEFLATED
            zout.writestr(info, data)
    print(f"repacked {dst.name}")
PY
"${PIP[@]}" install --quiet --no-deps \
  "$WHEEL_DIR"/bigdl_dllib_spark3-2.4.0+"$LOCAL_LABEL"-*.whl \
  "$WHEEL_DIR"/bigdl_orca_spark3-2.4.0+"$LOCAL_LABEL"-*.whl
rm -rf "$WHEEL_DIR"
