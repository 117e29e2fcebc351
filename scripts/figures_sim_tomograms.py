"""Pictures for docs/simulate_tomograms_tiltseries.md (writes docs/images/sim_tomo_*.png).

Run:  .venv/bin/python scripts/figures_sim_tomograms.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from napari_cryoalign.backend.simulate.markers import sample_marker_tiltseries, simulate_marker_tiltseries  # noqa: E402
from napari_cryoalign.backend.simulate.tomogram import simulate_tomogram  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"


def _show(ax, img, title, **kw):
    lo, hi = np.percentile(img, [1, 99])
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, **kw)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def tomogram_figures() -> None:
    sim = simulate_tomogram(shape=(96, 256, 256), structures=("ribosome", "cct", "ruvab", "mtor"), n_particles=60,
                            n_vesicles=1, vesicle_radius_nm=(30.0, 35.0), n_gold=3, dose=100.0, seed=3)
    tomo, pot = sim.tomogram, sim.potential
    nz, ny, nx = tomo.shape
    zc = int(np.median(sim.truth.coordinates_xyz[:, 2]))
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.6), gridspec_kw={"height_ratios": [2.6, 1]})
    _show(axes[0, 0], pot[zc], f"noiseless potential, xy slice z={zc}")
    _show(axes[0, 1], tomo[zc], f"WBP tomogram (100 e/Å², CTF 3 µm, phase-flipped), z={zc}")
    yc = ny // 2
    _show(axes[1, 0], pot[:, yc, :], f"potential, xz slice y={yc}")
    _show(axes[1, 1], tomo[:, yc, :], f"tomogram, xz slice y={yc} (missing-wedge elongation along z)")
    sel = np.abs(sim.truth.coordinates_xyz[:, 2] - zc) < 3
    for ax in (axes[0, 0], axes[0, 1]):
        ax.scatter(sim.truth.coordinates_xyz[sel, 0], sim.truth.coordinates_xyz[sel, 1], s=60, facecolors="none",
                   edgecolors="tab:orange", linewidths=0.8)
    fig.suptitle("Simulated tomogram 96×256×256 at 10 Å (orange: truth centres within 3 voxels of the slice)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(OUT / "sim_tomo_slices.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4))
    i0 = int(np.argmin(np.abs(sim.tilt_angles_deg)))
    i1 = int(np.argmax(sim.tilt_angles_deg))
    _show(axes[0], sim.tilt_series[i0], f"tilt image at {sim.tilt_angles_deg[i0]:.0f}° (counts)")
    _show(axes[1], sim.tilt_series[i1], f"tilt image at {sim.tilt_angles_deg[i1]:.0f}° (counts)")
    fig.tight_layout()
    fig.savefig(OUT / "sim_tomo_tilt_images.png", dpi=110)
    plt.close(fig)

    # power spectrum of the xz plane (ky = 0 central section, averaged over ky near 0)
    f = np.fft.fftshift(np.abs(np.fft.fftn(tomo)) ** 2)
    kz = np.log1p(f[:, ny // 2 - 2: ny // 2 + 3, :].mean(1))
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.imshow(kz, cmap="magma", aspect="auto", extent=(-0.5, 0.5, 0.5, -0.5))
    for a in (60.0, -60.0):
        kx = np.linspace(-0.5, 0.5, 3)
        ax.plot(kx, kx * np.tan(np.radians(a)), "c--", lw=0.8)
    ax.set_xlim(-0.5, 0.5)
    ax.set_ylim(0.5, -0.5)
    ax.set_xlabel("kx (cycles/voxel)")
    ax.set_ylabel("kz (cycles/voxel)")
    ax.set_title("log power of the tomogram, kx-kz plane (ky≈0): missing wedge beyond ±60°", fontsize=9)
    fig.tight_layout()
    fig.savefig(OUT / "sim_tomo_power_spectrum.png", dpi=110)
    plt.close(fig)


def marker_figures() -> None:
    s = sample_marker_tiltseries(seed=0)
    p3 = simulate_marker_tiltseries(preset="paper3d", seed=0)
    p2 = simulate_marker_tiltseries(preset="paper2d", seed=0)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    i = int(np.argmax(s.tilt_angles_deg))
    _show(axes[0], s.tilt_series[i], f"sample data, {s.tilt_angles_deg[i]:.0f}°, 4 nm px, CTF + Poisson")
    axes[0].scatter(s.projected_px[i, :, 0], s.projected_px[i, :, 1], s=80, facecolors="none",
                    edgecolors="tab:orange", linewidths=0.8)
    j = len(p3.tilt_angles_deg) - 1
    _show(axes[1], p3.tilt_series[j], f"preset paper3d, {p3.tilt_angles_deg[j]:.0f}° (t=1), I0=1024")
    axes[1].scatter(p3.projected_px[j, :, 0], p3.projected_px[j, :, 1], s=50, facecolors="none",
                    edgecolors="tab:orange", linewidths=0.8, label="projected (deformed)")
    from napari_cryoalign.backend.tomography import project_points

    undeformed = project_points(p3.bead_positions_nm, p3.tilt_angles_deg[j:j + 1]) / p3.pixel_size_nm + 32
    axes[1].scatter(undeformed[0, :, 0], undeformed[0, :, 1], s=12, c="tab:cyan", marker="x",
                    label="without deformation")
    axes[1].legend(fontsize=7, loc="lower right")
    axes[2].imshow(p2.ideal[:, 0, :], cmap="gray", aspect="auto",
                   extent=(-0.5, 63.5, p2.tilt_angles_deg[-1], p2.tilt_angles_deg[0]))
    axes[2].plot(p2.projected_px[:, :, 0], p2.tilt_angles_deg, "o", ms=2, c="tab:orange")
    axes[2].set_xlabel("detector pixel u")
    axes[2].set_ylabel("tilt angle (°)")
    axes[2].set_title("preset paper2d: sinogram (20 × 64) + bead traces", fontsize=9)
    fig.tight_layout()
    fig.savefig(OUT / "sim_tomo_markers.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    tomogram_figures()
    marker_figures()
    print("wrote", sorted(p.name for p in OUT.glob("sim_tomo_*.png")))
