#!/usr/bin/env bash
# Set up everything napari-cryoalign needs, from nothing, idempotently:
#   * Debian packages for a virtual screen (Xvfb + OpenGL/Qt libraries), only where missing;
#   * a Python virtual environment in .venv at the repository root, with pinned packages
#     (torch==2.13.0 CPU build, napari with PyQt6, test tools) and this package (editable).
# Re-running is quick: the Python install is skipped while pyproject.toml and the
# constraints are unchanged. Environment: PYTHON (default python3.11), CRYOALIGN_NO_APT=1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

APT_PACKAGES=(xvfb xauth libgl1 libegl1 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1
              libxcb-image0 libxcb-render-util0 libxcb-shape0 libxcb-randr0 libxcb-xinerama0 libfontconfig1 libdbus-1-3)

if [ "${CRYOALIGN_NO_APT:-0}" != 1 ] && command -v dpkg >/dev/null 2>&1; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "[setup] installing Debian packages: ${missing[*]}"
    if [ "$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi
    if [ "$SUDO" = none ]; then
      echo "[setup] warning: cannot install ${missing[*]} without root; GUI tests need them" >&2
    else
      $SUDO apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
  fi
fi

PYTHON=${PYTHON:-python3.11}
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "[setup] error: $PYTHON not found; napari-cryoalign needs Python 3.11 (set PYTHON=...)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi

stamp=.venv/.cryoalign-installed
want=$(cat pyproject.toml requirements/constraints.txt requirements/copick.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing Python packages into .venv (torch==2.13.0 CPU build, napari[pyqt6], dask distributed, copick, test tools)"
  # (pip's notes about local mirror folders that do not hold a package are noise: filtered)
  {
    .venv/bin/python -m pip install -q --upgrade "pip>=23.2"
    # torch is pinned explicitly: an unpinned torch pulls a multi-GB CUDA build.
    .venv/bin/python -m pip install -q -c requirements/constraints.txt "torch==2.13.0" -e ".[pyqt6,testing]"
    # copick without its declared dependencies (see requirements/copick.txt)
    .venv/bin/python -m pip install -q --no-deps -r requirements/copick.txt
  } 2>&1 | { grep -v -e "is ignored: it is neither a file nor a directory" || true; }
  echo "$want" > "$stamp"
fi
.venv/bin/python -c "import torch, napari, distributed, napari_cryoalign; from napari_cryoalign.io.copick_project import import_copick; print(f'[setup] ok: torch {torch.__version__}, napari {napari.__version__}, distributed {distributed.__version__}, copick {import_copick().__version__}, napari-cryoalign {napari_cryoalign.__version__}')"
