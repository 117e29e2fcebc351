#!/usr/bin/env bash
# Set up everything (scripts/setup.sh), fetch the real test files of other software, run the test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/io -x`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
PYTHON=.venv/bin/python bash scripts/fetch_test_data.sh
# GUI tests run on a virtual screen (pytest-xvfb starts Xvfb); napari's settings go to temporary folders.
# the 30 slowest tests are listed at the end: the whole CI run (.ci/run) must stay under 20 minutes
exec .venv/bin/python -m pytest --durations=30 "$@"
