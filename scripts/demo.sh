#!/usr/bin/env bash
# Set up everything (scripts/setup.sh) and run the headless demo on the embedded sample data.
# Extra arguments go to `cryoalign demo`, e.g. `bash scripts/demo.sh --out /tmp/demo`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/cryoalign demo "$@"
