#!/usr/bin/env bash
# Fetch real files written by other software, for the readers' tests (tests/io):
#   * mrcfile's source distribution: EMDB maps EMD-3001 (P21, axes stored as z,x,y) and
#     EMD-3197 (plain, and gzip/bzip2 copies), FEI/EPU detector images with FEI1/FEI2
#     extended headers, and a PNG (a real non-MRC file);
#   * cryoDRGN's source distribution (tests/data): RELION 3.0, 3.1 and 5 STAR files (one with
#     6 optics groups, one exported from cryoSPARC, one from a tilt series), with their
#     real particle stacks (.mrcs, and an old .mrc stack without map ID or voxel size).
# Only the needed files are extracted into $DEST/mrcfile and $DEST/cryodrgn (about 80 MB;
# the two source archives, about 70 MB, stay in $DEST/sdist so that a re-run is instant).
# Idempotent. Downloads use pip (PyPI or its configured mirror), with pinned versions and
# sha256 hashes. Nothing is fetched at test run time.
#
# Environment: PYTHON (default .venv/bin/python, else python3), CRYOALIGN_TEST_DATA
# (destination, default .test-data at the repository root).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${CRYOALIGN_TEST_DATA:-$ROOT/.test-data}"
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"
else PY=python3; fi

MRCFILE_VERSION=1.5.4
MRCFILE_SHA256=8fa9eb2e237d87d99b301c61bf02854dd85a451db25eefcbe142c09b36d8d601
CRYODRGN_VERSION=4.3.1
CRYODRGN_SHA256=ad87aae88aea860b4b9487a0f8e469ce1cf9843625a2368be3f69d0bb14be3ed

MRCFILE_FILES=(EMD-3001.map EMD-3001.map.bz2 emd_3001.map.gz EMD-3197.map EMD-3197.map.bz2
               emd_3197.map.gz emd_3197.png fei-extended.mrc epu2.9_example.mrc README.txt)
CRYODRGN_FILES=(relion31.star relion31.v2.star relion31.mrcs relion31.6opticsgroups.star
                relion5.star toy_datadir/toy_images_a.mrcs toy_datadir/toy_images_b.mrcs
                sta_testing_bin8.star ay19102021_L3_position6_ribo_it09_bin8_1.82A.mrcs
                empiar_10076_7.star empiar_10076_7.mrc toy_projections.star toy_projections.mrcs
                FinalRefinement-OriginalParticles-PfCRT.star hand-vol.mrc)

stamp="$DEST/.complete-mrcfile-$MRCFILE_VERSION-cryodrgn-$CRYODRGN_VERSION"
if [ -f "$stamp" ]; then
  echo "[test-data] present in $DEST"
  exit 0
fi
start=$(date +%s)
mkdir -p "$DEST/sdist"

sha_ok() {  # file expected-sha256
  [ -f "$1" ] && [ "$("$PY" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1")" = "$2" ]
}

fetch() {  # name version sha256
  local archive="$DEST/sdist/$1-$2.tar.gz"
  if sha_ok "$archive" "$3"; then return 0; fi
  rm -f "$archive"
  local req
  req="$(mktemp)"
  echo "$1==$2 --hash=sha256:$3" > "$req"
  echo "[test-data] pip download $1==$2 (source distribution)"
  if ! "$PY" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
         --require-hashes -r "$req" -d "$DEST/sdist"; then
    rm -f "$req"
    echo "[test-data] error: could not download $1==$2 with pip" >&2
    return 1
  fi
  rm -f "$req"
  sha_ok "$archive" "$3" || { echo "[test-data] error: $archive has the wrong sha256" >&2; return 1; }
}

extract() {  # name version target-dir prefix-inside-archive files...
  local archive="$DEST/sdist/$1-$2.tar.gz" target="$DEST/$3" prefix="$4"
  shift 4
  local tmp
  tmp="$(mktemp -d "$DEST/.extract.XXXXXX")"
  local members=()
  for f in "$@"; do members+=("$prefix/$f"); done
  tar -xzf "$archive" -C "$tmp" "${members[@]}"
  rm -rf "$target"
  mv "$tmp/$prefix" "$target"
  rm -rf "$tmp"
}

fetch mrcfile "$MRCFILE_VERSION" "$MRCFILE_SHA256"
fetch cryodrgn "$CRYODRGN_VERSION" "$CRYODRGN_SHA256"
extract mrcfile "$MRCFILE_VERSION" mrcfile "mrcfile-$MRCFILE_VERSION/tests/test_data" "${MRCFILE_FILES[@]}"
extract cryodrgn "$CRYODRGN_VERSION" cryodrgn "cryodrgn-$CRYODRGN_VERSION/tests/data" "${CRYODRGN_FILES[@]}"
cat > "$DEST/SOURCES.txt" <<EOF
mrcfile/   from mrcfile==$MRCFILE_VERSION sdist (BSD-3-Clause), tests/test_data: EMDB maps, FEI/EPU images
cryodrgn/  from cryodrgn==$CRYODRGN_VERSION sdist (GPL-3.0 code; data files used unmodified for testing only), tests/data
EOF
touch "$stamp"
echo "[test-data] ready in $DEST ($(du -sh "$DEST" | cut -f1), $(( $(date +%s) - start )) s)"
