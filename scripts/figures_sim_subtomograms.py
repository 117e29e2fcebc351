#!/usr/bin/env python
"""Figures of docs/simulate_subtomograms_particles.md (written to docs/images/sim_sub_*.png).

Run from the repository root: ``python scripts/figures_sim_subtomograms.py`` (about 15 s on 2 CPU cores).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from napari_cryoalign.backend.ctf import ctf_2d, electron_wavelength_angstrom  # noqa: E402
from napari_cryoalign.backend.fourier import power_spectrum  # noqa: E402
from napari_cryoalign.backend.simulate.particles import simulate_particles  # noqa: E402
from napari_cryoalign.backend.simulate.structures import list_structures, load_structure_map, structure_info  # noqa: E402
from napari_cryoalign.backend.simulate.subtomograms import simulate_subtomograms  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"


def _save(fig, name):
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    tmp = path.with_name(f".{name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    print("wrote", path)


def structures_figure():
    names = list_structures()
    fig, ax = plt.subplots(3, len(names), figsize=(2.0 * len(names), 6.2))
    for j, name in enumerate(names):
        d, vox = load_structure_map(name, box=38)
        c = d.shape[0] // 2
        info = structure_info(name)
        ax[0, j].imshow(d.sum(0), cmap="gray")
        ax[0, j].set_title(f"{name}\n{info['pdb_id']}, {info['mass_da'] / 1e3:.0f} kDa", fontsize=8)
        ax[1, j].imshow(d[c], cmap="gray")
        ax[2, j].imshow(d[:, c, :], cmap="gray")
    for a in ax.ravel():
        a.set_xticks([]), a.set_yticks([])
    ax[0, 0].set_ylabel("projection along z")
    ax[1, 0].set_ylabel("slice z = N/2 (x→, y↓)")
    ax[2, 0].set_ylabel("slice y = N/2 (x→, z↓)")
    fig.suptitle("Packaged maps (10 Å voxels, 25 Å, 38³ box shown)", fontsize=10)
    _save(fig, "sim_sub_structures.png")


def subtomogram_figure():
    snrs = [100, 0.1, 0.05, 0.03, 0.01]
    fig, ax = plt.subplots(2, len(snrs) + 1, figsize=(2.1 * (len(snrs) + 1), 4.4))
    ref = None
    for j, snr in enumerate(snrs):
        s = simulate_subtomograms(["ribosome"], n_per_class=1, snr=snr, seed=1, noise_seed=2)
        v = s.volumes[0]
        ref = s.references[0]
        ax[0, j].imshow(v[16], cmap="gray")
        ax[1, j].imshow(v[:, 16, :], cmap="gray")
        ax[0, j].set_title(f"SNR {snr:g}", fontsize=9)
    ax[0, -1].imshow(ref[16], cmap="gray")
    ax[1, -1].imshow(ref[:, 16, :], cmap="gray")
    ax[0, -1].set_title("reference (unrotated)", fontsize=9)
    ax[0, 0].set_ylabel("xy slice")
    ax[1, 0].set_ylabel("xz slice (beam ↓)")
    for a in ax.ravel():
        a.set_xticks([]), a.set_yticks([])
    fig.suptitle("Ribosome subtomogram, 32³ at 12 Å, ±60° tilts, defocus 5 µm (same pose, increasing noise)", fontsize=10)
    _save(fig, "sim_sub_subtomograms.png")


def wedge_figure():
    s = simulate_subtomograms(["ribosome", "cct"], n_per_class=1, snr=0.1, seed=3)
    p = power_spectrum(s.volumes[0])
    nw = simulate_subtomograms(["ribosome", "cct"], n_per_class=1, snr=0.1, seed=3, tilt_range_deg=None)
    p2 = power_spectrum(nw.volumes[0])
    fig, ax = plt.subplots(1, 3, figsize=(10, 3.5))
    ax[0].imshow(p2[:, 16, :], cmap="magma")
    ax[0].set_title("log |F|², ky = 0, no wedge")
    ax[1].imshow(p[:, 16, :], cmap="magma")
    ax[1].set_title("log |F|², ky = 0, ±60° tilts")
    ax[2].imshow(s.mask[:, 16, :], cmap="gray")
    ax[2].set_title("observed mask (1 = measured)")
    for a in ax:
        a.set_xlabel("kx →")
        a.set_ylabel("kz ↓ (beam)")
        a.set_xticks([]), a.set_yticks([])
    fig.suptitle("Missing wedge in the Fourier transform of a noisy subtomogram (SNR 0.1), CTF rings visible", fontsize=10)
    _save(fig, "sim_sub_wedge.png")


def particles_figure():
    clean = simulate_particles("ribosome", n=6, box=64, pixel_size_angstrom=6.0, snr=None, seed=4)
    noisy = simulate_particles("ribosome", n=6, box=64, pixel_size_angstrom=6.0, snr=0.1, seed=4)
    proj = simulate_particles("ribosome", n=6, box=64, pixel_size_angstrom=6.0, snr=None, defocus_um=None, seed=4)
    fig, ax = plt.subplots(3, 6, figsize=(11, 6))
    for j in range(6):
        ax[0, j].imshow(proj.images[j], cmap="gray")
        ax[1, j].imshow(clean.images[j], cmap="gray")
        ax[2, j].imshow(noisy.images[j], cmap="gray")
        rot, tilt, psi = proj.euler_deg[j]
        ax[0, j].set_title(f"({rot:.0f}, {tilt:.0f}, {psi:.0f})°\n{clean.defocus_u_um[j]:.2f} µm", fontsize=8)
    ax[0, 0].set_ylabel("projection")
    ax[1, 0].set_ylabel("× CTF (bright protein)")
    ax[2, 0].set_ylabel("+ noise, SNR 0.1")
    for a in ax.ravel():
        a.set_xticks([]), a.set_yticks([])
    fig.suptitle("Simulated ribosome particle images, 64² at 6 Å (Euler rot, tilt, psi; defocus U)", fontsize=10)
    _save(fig, "sim_sub_particles.png")


def ctf_figure():
    n, px, dz = 256, 2.0, 2.0
    c = ctf_2d((n, n), pixel_size_angstrom=px, defocus_um=dz)[0].numpy()
    k = np.arange(c.size) / (n * px)
    lam = electron_wavelength_angstrom(300)
    k0 = math.sqrt((math.pi - math.asin(0.07)) / (math.pi * lam * dz * 1e4))
    full = torch.fft.fftshift(ctf_2d((n, n), pixel_size_angstrom=px, defocus_um=dz, rfft=False)).numpy()
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [2, 1]})
    ax[0].plot(k, c, lw=1)
    ax[0].axhline(0, color="k", lw=0.5)
    ax[0].axvline(k0, color="r", ls="--", lw=0.8, label=f"first zero (theory) 1/{1 / k0:.1f} Å")
    ax[0].set_xlabel("spatial frequency (1/Å)")
    ax[0].set_ylabel("CTF")
    ax[0].set_title("ctf_2d: 300 kV, Cs 2.7 mm, A 0.07, defocus 2 µm; -0.07 at DC")
    ax[0].legend(fontsize=8)
    ax[1].imshow(full, cmap="gray")
    ax[1].set_title("2D CTF (fftshift)")
    ax[1].set_xticks([]), ax[1].set_yticks([])
    _save(fig, "sim_sub_ctf.png")


def main() -> int:
    structures_figure()
    subtomogram_figure()
    wedge_figure()
    particles_figure()
    ctf_figure()
    return 0


if __name__ == "__main__":
    sys.exit(main())
