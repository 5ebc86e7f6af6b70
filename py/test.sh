#!/usr/bin/env bash
# The Python package's suite: builds the wheel with maturin, installs it into a venv
# this script creates (once; reused), and runs pytest against real servers (the tests
# start redis-server and memcached themselves).
# Usage: py/test.sh [pytest args]      (scripts/test runs it)
set -euo pipefail
cd "$(dirname "$0")"

target="${CARGO_TARGET_DIR:-$(cd .. && pwd)/target}"
venv="${AIOLOCK_PY_VENV:-$target/py-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# Pinned: the peers the tests compare against, and the build and test tools.
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
  maturin==1.16.0 pytest==9.2.0 aiocache==0.12.3 redis==5.2.1 aiomcache==0.8.2

wheels="$target/py-wheels"
rm -rf "$wheels"
# A debug build: the suite checks behaviour, and it builds in a fraction of the time.
"$venv/bin/maturin" build -q --out "$wheels" 2>&1 | grep -v '^warning' || true
wheel=$(ls "$wheels"/aiolock_rs-*.whl)
# The wheel carries the stubs and the typing marker.
python3 - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
for needed in ("aiolock_rs/py.typed", "aiolock_rs/_native.pyi", "aiolock_rs/__init__.py",
               "aiolock_rs/sync.py", "aiolock_rs/aiocache.py"):
    assert needed in names, f"{needed} is not in the wheel: {names}"
PY
"$venv/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$wheel"
# From the tests' folder, so that the installed wheel (not the source tree) is tested.
cd tests
"$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
