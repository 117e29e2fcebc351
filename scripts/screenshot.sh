#!/usr/bin/env bash
# Make the README's screenshot: `cryoalign gui` with the tomogram sample, on a virtual screen.
# Usage: bash scripts/screenshot.sh [OUT.png] [extra `cryoalign gui` arguments]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${1:-docs/images/screenshot_gui.png}
shift || true
mkdir -p "$(dirname "$out")"
export XDG_CONFIG_HOME=${XDG_CONFIG_HOME:-$(mktemp -d)} XDG_CACHE_HOME=${XDG_CACHE_HOME:-$(mktemp -d)}
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
chmod 700 "$XDG_RUNTIME_DIR"
xvfb-run -a -s "-screen 0 1680x1050x24" .venv/bin/cryoalign gui --screenshot "$out" "$@"
