"""Gum-Net (Zeng & Xu, CVPR 2020): a slim PyTorch re-implementation, written from the paper.

The network takes a pair ``(moving, fixed)`` of ``box^3`` subtomograms and predicts the rigid
transform that brings ``moving`` onto ``fixed``. Parts, in the paper's order:

1. **Siamese feature extractor** (:class:`FeatureExtractor`): four blocks
   ``conv3d(k=3, valid) -> ReLU -> BatchNorm -> DCT spectral pooling`` (box 32:
   30->26, 24->18, 16->12, 10->8 samples), then ``conv3d -> BatchNorm`` and a channel-wise
   L2 normalisation; the same weights for both inputs. Output ``(B, C, 6, 6, 6)``.
2. **Feature correlation** (:func:`feature_correlation`): the inner product of every
   feature vector of one input with every feature vector of the other, ``(B, 216, 6, 6, 6)``
   (channels = positions of the first input), L2-normalised over the channels; computed both
   ways (moving->fixed and fixed->moving).
3. **Regression head**: each correlation map through ``conv3d -> BN -> ReLU`` twice,
   flattened, concatenated, two linear layers, and an output layer giving ``K`` hypotheses of
   the transform (a rotation in the continuous 6-D representation, and a shift
   ``max_shift * tanh(.)``).
4. **Spatial transformer with missing-wedge imputation** (:func:`warp_and_impute`): the moving
   volume is warped with the predicted transform (differentiable trilinear resampling), its
   observed Fourier mask is rotated the same way (a Fourier transform rotates with its
   volume; shifts do not move the magnitude), and the Fourier coefficients the moving
   volume never measured are filled from the fixed volume:
   ``out = IFFT( FFT(warp(moving)) * M' + FFT(fixed) * (1 - M') )``.

Transform convention (the project's, ``CONVENTIONS.md``): the network predicts a RELION
matrix ``A`` (reference -> particle, ``particle(A r) = reference(r)``, acting on ``(x, y, z)``
about ``N // 2``) and an origin ``o`` (voxels, ``(x, y, z)``, particle centre at
``N // 2 - o``), so that ``geometry.align_particle_to_reference(moving, A, o) ~ fixed``.

Deviations from the paper (reasons in ``docs/align_learned.md``): 8-32 instead of 32-512
feature channels, 32 instead of 1024 correlation-branch channels, 256 instead of 2000 hidden
units (training on 2 CPU cores, weights < 5 MB); a 6-D rotation representation instead of
sigmoid Euler angles (continuous, no gimbal lock); ``K`` transform hypotheses trained
winner-takes-all and chosen at inference by the same unsupervised correlation (avoids the
local optima of correlation-only training); per-pair ``1 - Pearson r`` instead of the
batch-pooled ``1 - r^2``. ``GumNetConfig(head="grid")`` (the shipped default) replaces the
hypotheses by a classification over a rotation grid, optionally on a Fourier-cropped
``input_box`` (``docs/align_learned.md``, "The grid head").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation
from torch import nn

from ..geometry import _sample, align_particle_to_reference, random_rotations
from ._dct import SpectralPool3d

__all__ = [
    "FeatureExtractor",
    "GumNet",
    "GumNetConfig",
    "constrained_correlation_map",
    "crop_fourier_mask",
    "feature_correlation",
    "fourier_crop",
    "imputed_correlation_map",
    "origin_from_peak",
    "pair_correlation",
    "rotate_fourier_mask",
    "rotate_fourier_mask_rfft",
    "rotation_from_6d",
    "standardize",
    "warp_and_impute",
]


def _default_pools(box: int) -> tuple:
    """Spectral-pooling (out, trunc) sizes: the paper's for box 32, the same ratios otherwise.

    Box 16 keeps every sample and only low-passes (14->14 keeping 12 coefficients, 12/10, 10/8,
    8/7), so that the final feature map is 6^3 as in the paper's 32^3 network.
    """
    paper = ((26, 22), (18, 15), (12, 10), (8, 7))
    if box == 32:
        return paper
    if box == 16:
        return ((14, 12), (12, 10), (10, 8), (8, 7))
    pools, n = [], box
    for (o, t), n32 in zip(paper, (30, 24, 16, 10)):
        n = n - 2
        out = max(4, round(n * o / n32))
        pools.append((out, max(3, min(out, round(out * t / o)))))
        n = out
    return tuple(pools)


@dataclass(frozen=True)
class GumNetConfig:
    """Architecture parameters of :class:`GumNet` (stored in model files).

    Attributes
    ----------
    box : edge of the cubic volumes the model is given, voxels
    channels : output channels of the five feature convolutions
    pools : (out, trunc) of the four DCT spectral pooling layers (default: the paper's for a
        32^3 network input, low-pass only for 16^3)
    corr_channels : channels of the two convolutions of each correlation branch
    hidden : units of the two hidden linear layers
    n_hypotheses : head ``"hypotheses"``: transform hypotheses ``K`` predicted per pair
    max_shift : largest |origin| per axis searched by the correlation peak, voxels (of ``box``)
    head : ``"hypotheses"`` (``K`` rotations in the 6-D representation, chosen by the imputed
        correlation) or ``"grid"`` (a probability for every rotation of
        ``geometry.rotation_grid(grid_step_deg)``: a classification over SO(3))
    grid_step_deg : head ``"grid"``: spacing of the rotation grid, degrees
    input_box : the network's own input edge; volumes of ``box`` are cropped to it (``input_crop``)
        and standardised before the feature extractor. None = ``box``
    input_crop : how: ``"fourier"`` (:func:`fourier_crop`: the whole box at a coarser voxel, the
        shipped weights') or ``"centre"`` (the central ``input_box``³ voxels at the data's own voxel
        size, after the centring when ``centre_moving``: the particle spans twice as many voxels for
        32 -> 16; a 30° rotation of a particle only 4-5 voxels across is hard to learn,
        ``benchmarks/diag_reference_identity.py --world voxel=24``)
    centre_moving : re-centre each moving volume on the fixed one's spherical average (within
        ``max_shift``, :func:`centre_on_rotational_average`) before the network sees it; the rotation
        does not change, the origin is still found afterwards on the volume as given. False for the
        shipped weights (trained without it)
    voxel_size : the voxel size (Å) the network works at, or None. With it, the aligner resamples
        particles of any box and voxel size to ``box``³ at this voxel size before the network sees
        them (:func:`.learned.align_learned` with ``voxel_size=``: Fourier crop or pad, then the box
        centred in ``box``³), so that a particle spans as many voxels as in training. None: volumes
        are taken as given and must be ``box``³
    """

    box: int = 32
    channels: tuple = (4, 8, 16, 32, 32)
    pools: tuple = field(default=())
    corr_channels: int = 32
    hidden: int = 256
    n_hypotheses: int = 24
    max_shift: float = 4.0
    head: str = "hypotheses"
    grid_step_deg: float = 30.0
    input_box: int | None = None
    centre_moving: bool = False
    input_crop: str = "fourier"
    voxel_size: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if self.input_box is not None:
            object.__setattr__(self, "input_box", int(self.input_box))
        pools = self.pools or _default_pools(self.net_box())
        object.__setattr__(self, "pools", tuple((int(o), int(t)) for o, t in pools))
        if len(self.channels) != 5 or len(self.pools) != 4:
            raise ValueError("GumNetConfig needs 5 channel counts and 4 pooling sizes")
        if self.head not in ("hypotheses", "grid"):
            raise ValueError(f"head must be 'hypotheses' or 'grid', got {self.head!r}")
        if self.input_crop not in ("fourier", "centre"):
            raise ValueError(f"input_crop must be 'fourier' or 'centre', got {self.input_crop!r}")
        if self.voxel_size is not None:
            if not float(self.voxel_size) > 0:
                raise ValueError(f"voxel_size must be > 0 Å or None, got {self.voxel_size}")
            object.__setattr__(self, "voxel_size", float(self.voxel_size))
        if not 8 <= self.net_box() <= int(self.box):
            raise ValueError(f"input_box must be between 8 and box ({self.box}), got {self.input_box}")

    def net_box(self) -> int:
        """Edge of the volumes the feature extractor sees (``input_box`` or ``box``)."""
        return int(self.input_box or self.box)

    def feature_size(self) -> int:
        """Edge of the final feature map (6 for box 32)."""
        return self.pools[-1][0] - 2

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["pools"] = [list(p) for p in self.pools]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> GumNetConfig:
        d = dict(d)
        d["channels"] = tuple(d.get("channels", cls.channels))
        d["pools"] = tuple(tuple(p) for p in d.get("pools", ()))
        return cls(**d)


def _l2norm(x: torch.Tensor, dim: int = 1, eps: float = 1e-6) -> torch.Tensor:
    return x / torch.sqrt((x * x).sum(dim=dim, keepdim=True) + eps)


def _initial_rotations(k: int) -> np.ndarray:
    """``k`` well-spread starting rotations: the octahedral group (24) first, then seeded random ones."""
    octa = Rotation.create_group("O").as_matrix()
    order = np.argsort([np.abs(Rotation.from_matrix(r).magnitude()) for r in octa], kind="stable")
    octa = octa[order]  # identity first
    if k <= 24:
        # greedy farthest-point choice among the 24, so that small k are spread out too
        chosen = [0]
        while len(chosen) < k:
            d = np.array([min(np.degrees(Rotation.from_matrix(octa[i] @ octa[j].T).magnitude()) for j in chosen)
                          for i in range(24)])
            d[chosen] = -1
            chosen.append(int(np.argmax(d)))
        return octa[chosen]
    return np.concatenate([octa, random_rotations(k - 24, seed=12345)])


class FeatureExtractor(nn.Module):
    """Shared (Siamese) feature extractor: ``(B, 1, box, box, box)`` -> ``(B, C, s, s, s)``, L2-normalised."""

    def __init__(self, cfg: GumNetConfig):
        super().__init__()
        layers = []
        cin, n = 1, cfg.net_box()
        for cout, (out, trunc) in zip(cfg.channels[:4], cfg.pools):
            layers += [nn.Conv3d(cin, cout, 3), nn.ReLU(inplace=True), nn.BatchNorm3d(cout),
                       SpectralPool3d(n - 2, out, trunc)]
            cin, n = cout, out
        layers += [nn.Conv3d(cin, cfg.channels[4], 3), nn.BatchNorm3d(cfg.channels[4])]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _l2norm(self.body(x), dim=1)


def feature_correlation(fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """Correlation of every feature vector of ``fa`` with every one of ``fb``.

    ``fa``, ``fb``: ``(B, C, s, s, s)``. Returns ``(B, s^3, s, s, s)``: channel ``k`` is the
    inner product of ``fa`` at position ``k`` (z, y, x flattened) with ``fb`` at each position,
    L2-normalised over the channels.
    """
    b, c, s = fa.shape[0], fa.shape[1], fa.shape[2:]
    corr = torch.einsum("bck,bcl->bkl", fa.reshape(b, c, -1), fb.reshape(b, c, -1))
    return _l2norm(corr.reshape(b, -1, *s), dim=1)


def rotation_from_6d(x: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` from the 6-D representation ``(..., 6)`` (two columns, Gram-Schmidt)."""
    a1, a2 = x[..., 0:3], x[..., 3:6]
    b1 = F.normalize(a1, dim=-1, eps=1e-8)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1, eps=1e-8)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


class GumNet(nn.Module):
    """Slim Gum-Net: predicts the rigid transform bringing ``moving`` onto ``fixed``.

    ``forward(moving, fixed)`` with both ``(B, box, box, box)`` (standardised, see
    :func:`standardize`; ``fixed`` may also be ``(1, box, box, box)``, one reference for the whole
    batch, whose features are then computed once in eval mode) returns

    * head ``"hypotheses"``: ``(B, K, 3, 3)``, ``K`` hypotheses of the RELION matrix ``A``
      (reference -> particle) such that ``align_particle_to_reference(moving, A, origin) ~ fixed``;
    * head ``"grid"``: ``(B, M)`` logits over the ``M`` rotations of ``self.grid`` ``(M, 3, 3)``
      (the same matrices ``A``).

    The origin is the peak of :func:`imputed_correlation_map` within ``config.max_shift``
    voxels per axis (:func:`..peaks.find_peak` with ``window="cube"``, then :func:`origin_from_peak`).
    """

    def __init__(self, config: GumNetConfig | None = None):
        super().__init__()
        cfg = config or GumNetConfig()
        self.config = cfg
        self.features = FeatureExtractor(cfg)
        s = cfg.feature_size()
        cc = cfg.corr_channels

        def branch():
            return nn.Sequential(nn.Conv3d(s ** 3, cc, 3), nn.BatchNorm3d(cc), nn.ReLU(inplace=True),
                                 nn.Conv3d(cc, cc, 3), nn.BatchNorm3d(cc), nn.ReLU(inplace=True), nn.Flatten())

        self.branch_ab = branch()
        self.branch_ba = branch()
        flat = cc * (s - 4) ** 3
        self.head = nn.Sequential(nn.Linear(2 * flat, cfg.hidden), nn.ReLU(inplace=True),
                                  nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU(inplace=True))
        if cfg.head == "grid":
            from ..geometry import rotation_grid

            grid = torch.from_numpy(rotation_grid(cfg.grid_step_deg)).float()
            self.register_buffer("grid", grid, persistent=False)  # rebuilt from the config, not stored
            self.out = nn.Linear(cfg.hidden, grid.shape[0])
        else:
            self.grid = None
            self.out = nn.Linear(cfg.hidden, 6 * cfg.n_hypotheses)
            self._init_output()

    def _init_output(self) -> None:
        """Small output weights; biases start the K hypotheses at K spread-out rotations, zero shift."""
        k = self.config.n_hypotheses
        nn.init.normal_(self.out.weight, std=1e-3)
        rots = _initial_rotations(k)
        bias = np.zeros((k, 6))
        bias[:, 0:3] = rots[:, :, 0]
        bias[:, 3:6] = rots[:, :, 1]
        with torch.no_grad():
            self.out.bias.copy_(torch.from_numpy(bias.reshape(-1)).float())

    def _net_input(self, x: torch.Tensor) -> torch.Tensor:
        n, big = self.config.net_box(), x.shape[-1]
        if n == big:
            return x
        if self.config.input_crop == "centre":
            lo = (big - n) // 2
            return standardize(x[..., lo:lo + n, lo:lo + n, lo:lo + n])
        return standardize(fourier_crop(x, n))

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        b = moving.shape[0]
        if self.config.centre_moving:
            moving = centre_on_rotational_average(moving, fixed, int(np.ceil(self.config.max_shift)))
        moving, fixed = self._net_input(moving), self._net_input(fixed)
        if fixed.shape[0] == 1 and b > 1 and not self.training:
            fm = self.features(moving.unsqueeze(1))
            ff = self.features(fixed.unsqueeze(1)).expand(b, -1, -1, -1, -1)
        else:
            both = self.features(torch.cat([moving, fixed.expand(b, -1, -1, -1)], 0).unsqueeze(1))
            fm, ff = both[:b], both[b:]
        h = torch.cat([self.branch_ab(feature_correlation(fm, ff)), self.branch_ba(feature_correlation(ff, fm))], 1)
        raw = self.out(self.head(h))
        if self.config.head == "grid":
            return raw
        return rotation_from_6d(raw.view(b, self.config.n_hypotheses, 6))

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def refine_grid_head(model: GumNet, grid_step_deg: float) -> GumNet:
    """A copy of a grid-head ``model`` whose head classifies over the finer ``rotation_grid(grid_step_deg)``.

    The curriculum of issue 18 (``docs/align_learned.md``): a coarse head learns first (78 rotations at
    60°), then the grid is refined. Every layer but the output is copied; each fine rotation's output
    row (weight and bias) is the row of its nearest coarse rotation, with ``log k`` taken off the bias
    where ``k`` fine rotations share that coarse one. The refined model then starts where the coarse one
    stopped: the probability it gives to the fine rotations of one coarse cell sums to the coarse
    model's probability of that cell (exactly, for every input), spread evenly within the cell.
    """
    if model.config.head != "grid":
        raise ValueError(f"refine_grid_head needs a model with head='grid', got head={model.config.head!r}")
    from dataclasses import replace

    from ..geometry import geodesic_angle_deg

    fine = GumNet(replace(model.config, grid_step_deg=float(grid_step_deg)))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("out.")}
    fine.load_state_dict(state, strict=False)
    coarse_grid = model.grid.detach().cpu().numpy().astype(np.float64)
    fine_grid = fine.grid.detach().cpu().numpy().astype(np.float64)
    nearest = np.argmin(geodesic_angle_deg(fine_grid[:, None], coarse_grid[None]), axis=1)
    counts = np.bincount(nearest, minlength=len(coarse_grid)).astype(np.float64)
    idx = torch.from_numpy(nearest)
    with torch.no_grad():
        fine.out.weight.copy_(model.out.weight.detach()[idx])
        fine.out.bias.copy_(model.out.bias.detach()[idx] - torch.from_numpy(np.log(counts[nearest])).float())
    fine.train(model.training)
    return fine.to(next(model.parameters()).device)


# ------------------------------------------------------------------------- warp + imputation
def standardize(x: torch.Tensor) -> torch.Tensor:
    """Per-volume zero mean and unit standard deviation, ``(B, z, y, x)``."""
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    s = x.std(dim=(1, 2, 3), keepdim=True, unbiased=False).clamp(min=1e-12)
    return (x - m) / s


def rotate_fourier_mask(mask: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """The observed Fourier mask of ``align_particle_to_reference(volume, A)``.

    A volume rotated by ``A.T`` has its Fourier transform rotated the same way about the DC
    term (index ``N // 2`` of the fftshift-ed mask); a shift changes only phases.
    ``mask``: ``(z, y, x)`` or ``(B, z, y, x)``, fftshift-ed; ``rotations``: ``(B, 3, 3)``.
    Returns ``(B, z, y, x)``, values in [0, 1] (trilinear).
    """
    b = rotations.shape[0]
    rotations = rotations.detach()  # the mask only gates the imputation; no gradient through it
    if mask.ndim == 3:
        mask = mask.unsqueeze(0)
    mask = mask.to(rotations.dtype).expand(b, *mask.shape[1:])
    return align_particle_to_reference(mask, rotations, None).clamp(0.0, 1.0)


def rotate_fourier_mask_rfft(mask: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """:func:`rotate_fourier_mask` in unshifted rfft layout, sampled only where the rfft half is.

    Equals ``mask_to_rfft(rotate_fourier_mask(mask, rotations))`` (the rotated mask at frequency
    ``f`` is the mask at ``A f``) for about half the samples. ``mask``: ``(z, y, x)`` or
    ``(1 | B, z, y, x)``, cubic, fftshift-ed (DC at ``N // 2``); ``rotations``: ``(B, 3, 3)``.
    Returns ``(B, N, N, N // 2 + 1)``, values in [0, 1] (trilinear).
    """
    b = rotations.shape[0]
    rotations = rotations.detach()  # the mask only gates the imputation; no gradient through it
    if mask.ndim == 3:
        mask = mask.unsqueeze(0)
    n = mask.shape[-1]
    mask = mask.to(device=rotations.device, dtype=rotations.dtype).expand(b, *mask.shape[1:])
    f = torch.fft.fftfreq(n, d=1.0 / n, device=rotations.device, dtype=rotations.dtype)  # signed integer frequencies
    fz, fy, fx = torch.meshgrid(f, f, f[: n // 2 + 1], indexing="ij")
    p = torch.stack([fx, fy, fz], dim=-1)  # (x, y, z) order
    src = torch.einsum("zyxi,bji->bzyxj", p, rotations) + float(n // 2)  # A f, at the fftshift-ed index
    return _sample(mask, src, mode="linear", padding="zeros").clamp(0.0, 1.0)


def fourier_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Band-limited down-sampling of ``(B, n, n, n)`` volumes to ``(B, size, size, size)``.

    Crops the centred Fourier transform around the DC term (index ``n // 2`` -> ``size // 2``),
    so the box centre stays the centre and a shift of ``s`` voxels becomes ``s * size / n``.
    """
    n = x.shape[-1]
    if size == n:
        return x
    lo = n // 2 - size // 2
    spec = torch.fft.fftshift(torch.fft.fftn(x, dim=(1, 2, 3)), dim=(1, 2, 3))
    spec = spec[:, lo:lo + size, lo:lo + size, lo:lo + size]
    return torch.fft.ifftn(torch.fft.ifftshift(spec, dim=(1, 2, 3)), dim=(1, 2, 3)).real.to(x.dtype)


def crop_fourier_mask(mask: torch.Tensor, size: int) -> torch.Tensor:
    """The fftshift-ed Fourier mask ``(..., n, n, n)`` of :func:`fourier_crop`-ed volumes: its centre ``size^3``."""
    n = mask.shape[-1]
    lo = n // 2 - size // 2
    return mask[..., lo:lo + size, lo:lo + size, lo:lo + size]


def warp_and_impute(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    rotations: torch.Tensor,
    origins: torch.Tensor,
    *,
    moving_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Warp ``moving`` onto ``fixed`` and fill its missing Fourier region from ``fixed``.

    Parameters
    ----------
    moving, fixed : ``(B, z, y, x)`` tensors
    rotations : ``(B, 3, 3)`` RELION matrices ``A`` (reference -> particle, on (x, y, z))
    origins : ``(B, 3)`` voxels ``(x, y, z)``
    moving_mask : observed Fourier mask of ``moving``, fftshift-ed, ``(z, y, x)`` or
        ``(B, z, y, x)``; None = everything observed (no imputation)

    Returns
    -------
    imputed : ``(B, z, y, x)`` real, ``IFFT(FFT(warped) M' + FFT(fixed) (1 - M'))``
    warped : ``(B, z, y, x)``, ``align_particle_to_reference(moving, A, origin)``
    mask_half : ``(B, z, y, x//2+1)`` the rotated mask ``M'`` in unshifted rfft layout
        (ones when ``moving_mask`` is None)

    All differentiable with respect to ``rotations`` and ``origins``.
    """
    warped = align_particle_to_reference(moving, rotations, origins)
    shape = moving.shape[1:]
    dims = (1, 2, 3)
    if moving_mask is None:
        ones = torch.ones((moving.shape[0], shape[0], shape[1], shape[2] // 2 + 1), dtype=moving.dtype,
                          device=moving.device)
        return warped, warped, ones
    mh = rotate_fourier_mask_rfft(moving_mask.to(moving.device), rotations)
    spec = torch.fft.rfftn(warped, dim=dims) * mh + torch.fft.rfftn(fixed, dim=dims) * (1.0 - mh)
    return torch.fft.irfftn(spec, s=shape, dim=dims), warped, mh


def pair_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each pair of volumes ``(B, ...)`` -> ``(B,)``."""
    a = a.flatten(1)
    b = b.flatten(1)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / torch.sqrt((a * a).sum(1) * (b * b).sum(1)).clamp(min=1e-12)


def _rfft_weights(shape, device, dtype) -> torch.Tensor:
    """Multiplicity of each rfft coefficient in the full spectrum (1 or 2), DC term set to 0."""
    n = shape[-1]
    w = torch.full((shape[0], shape[1], n // 2 + 1), 2.0, device=device, dtype=dtype)
    w[..., 0] = 1.0
    if n % 2 == 0:
        w[..., -1] = 1.0
    w[0, 0, 0] = 0.0
    return w


def imputed_correlation_map(warped: torch.Tensor, fixed: torch.Tensor, mask_half: torch.Tensor) -> torch.Tensor:
    """Correlation of the imputed moving volume with ``fixed`` for every circular shift, by FFT.

    The imputed volume is ``IFFT(FFT(warped) M' + FFT(fixed) (1 - M'))``; shifting its measured
    part by ``d`` (voxels, ``(x, y, z)``) gives the Pearson correlation (DC excluded)
    ``c(d) = [sum_r w_M(r + d) f(r) + E_miss] / sqrt((E_wM + E_miss) E_f)`` with ``w_M`` the
    measured part, ``E_miss`` the energy of ``fixed`` in the imputed region and ``E_wM``,
    ``E_f`` the energies (exact for a binary ``M'``; soft mask edges are approximated).

    Parameters
    ----------
    warped, fixed : ``(B, n, n, n)``
    mask_half : ``(B, n, n, n//2+1)`` rotated observed mask, unshifted rfft layout (:func:`warp_and_impute`)

    Returns
    -------
    ``(B, n, n, n)``: entry ``[b, z, y, x]`` is ``c(d)`` for ``d`` = (x, y, z) index, wrapped
    to ``[-n/2, n/2)`` (``torch.fft.fftfreq(n) * n``). Differentiable.
    """
    dims = (1, 2, 3)
    shape = warped.shape[1:]
    wgt = _rfft_weights(shape, warped.device, warped.dtype)
    wf = torch.fft.rfftn(warped, dim=dims)
    ff = torch.fft.rfftn(fixed, dim=dims)
    nvox = float(np.prod(shape))
    wm = wf * mask_half
    f2 = ff.real ** 2 + ff.imag ** 2
    cc = torch.fft.irfftn(wm * ff.conj() * (wgt > 0), s=shape, dim=dims)
    e_miss = (wgt * f2 * (1.0 - mask_half)).sum(dims) / nvox
    e_f = (wgt * f2).sum(dims) / nvox
    e_wm = (wgt * (wm.real ** 2 + wm.imag ** 2)).sum(dims) / nvox
    denom = torch.sqrt(((e_wm + e_miss) * e_f).clamp(min=1e-20))
    return (cc + e_miss.view(-1, 1, 1, 1)) / denom.view(-1, 1, 1, 1)


def constrained_correlation_map(warped: torch.Tensor, fixed: torch.Tensor, mask_half: torch.Tensor) -> torch.Tensor:
    """Correlation of ``warped`` with ``fixed`` over the Fourier region both measured, for every circular shift.

    The constrained correlation (Förster et al. 2008; Xu et al. 2012): both volumes are restricted
    to the rotated observed mask ``M'`` and correlated there, DC excluded,
    ``c(d) = sum_r (w M')(r + d) (f M')(r) / sqrt(E_wM E_fM)``. Unlike
    :func:`imputed_correlation_map` it gives no credit for the region filled from ``fixed``, so a
    rotation cannot score by hiding the reference's strong Fourier components in the missing wedge
    (what unsupervised fine-tuning with the imputed correlation learned to do: docs/align_learned.md).

    Parameters
    ----------
    warped, fixed : ``(B, n, n, n)``
    mask_half : ``(B, n, n, n//2+1)`` the region measured (the rotated particle mask, times the fixed
        volume's own mask where it has one), unshifted rfft layout

    Returns
    -------
    ``(B, n, n, n)`` laid out as :func:`imputed_correlation_map`'s. Differentiable.
    """
    dims = (1, 2, 3)
    shape = warped.shape[1:]
    wgt = _rfft_weights(shape, warped.device, warped.dtype)
    wm = torch.fft.rfftn(warped, dim=dims) * mask_half
    fm = torch.fft.rfftn(fixed, dim=dims) * mask_half
    nvox = float(np.prod(shape))
    cc = torch.fft.irfftn(wm * fm.conj() * (wgt > 0), s=shape, dim=dims)
    e_w = (wgt * (wm.real ** 2 + wm.imag ** 2)).sum(dims) / nvox
    e_f = (wgt * (fm.real ** 2 + fm.imag ** 2)).sum(dims) / nvox
    return cc / torch.sqrt((e_w * e_f).clamp(min=1e-20)).view(-1, 1, 1, 1)


def centre_on_rotational_average(moving: torch.Tensor, fixed: torch.Tensor, max_shift: int) -> torch.Tensor:
    """``moving`` shifted by whole voxels (periodic) to best match the *spherical average* of ``fixed``.

    A centring that needs no pose: a rotation leaves the spherical average unchanged, so the peak of
    the cross-correlation of ``moving`` with it, searched within ``max_shift`` voxels per axis, is the
    particle's displacement whatever its orientation. Gum-Net's grid head learns nothing while the
    particles of its training pairs are shifted and does learn once they are centred like this
    (``benchmarks/diag_reference_identity.py --world shift=2`` / ``shift=2,centre``, docs/align_learned.md).

    Parameters
    ----------
    moving : ``(B, n, n, n)``
    fixed : ``(B, n, n, n)`` or ``(1, n, n, n)``
    max_shift : largest displacement searched per axis, voxels

    Returns
    -------
    ``(B, n, n, n)``, ``moving`` rolled by minus the displacement found (no gradient flows through the
    choice of the shift; the values themselves are only permuted).
    """
    shifts = rotational_average_shift(moving, fixed, max_shift)
    return torch.stack([torch.roll(moving[i], tuple((-shifts[i]).tolist()), dims=(0, 1, 2))
                        for i in range(moving.shape[0])])


def rotational_average_shift(moving: torch.Tensor, fixed: torch.Tensor, max_shift: int) -> torch.Tensor:
    """``(B, 3)`` long, (z, y, x): the whole-voxel displacement of each ``moving`` from the centre, the peak of
    its cross-correlation with the spherical average of ``fixed`` within ``max_shift`` voxels per axis
    (:func:`centre_on_rotational_average`; shapes as there)."""
    b, n = moving.shape[0], moving.shape[-1]
    dev = moving.device
    with torch.no_grad():
        ax = torch.arange(n, device=dev) - n // 2
        zz, yy, xx = torch.meshgrid(ax, ax, ax, indexing="ij")
        r = torch.sqrt((zz ** 2 + yy ** 2 + xx ** 2).to(torch.float32)).round().long().reshape(-1)
        f = fixed.reshape(fixed.shape[0], -1).to(torch.float32)
        sums = torch.zeros(fixed.shape[0], int(r.max()) + 1, device=dev).scatter_add_(1, r.expand_as(f), f)
        counts = torch.bincount(r, minlength=sums.shape[1]).clamp(min=1).to(torch.float32)
        avg = (sums / counts)[:, r].reshape(fixed.shape[0], n, n, n)
        dims = (1, 2, 3)
        cc = torch.fft.irfftn(torch.fft.rfftn(moving.to(torch.float32), dim=dims)
                              * torch.fft.rfftn(avg, dim=dims).conj(), s=(n, n, n), dim=dims)
        d = torch.fft.fftfreq(n, device=dev) * n  # index -> signed displacement
        far = (d.abs() > max_shift)
        cc = cc.masked_fill(far.view(1, n, 1, 1) | far.view(1, 1, n, 1) | far.view(1, 1, 1, n), float("-inf"))
        k = cc.reshape(b, -1).argmax(1)
        return torch.stack([d[k // (n * n)], d[(k // n) % n], d[k % n]], 1).long()  # (z, y, x)


def origin_from_peak(rotations: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Origin ``o = -A d`` (voxels, ``(x, y, z)``) of a particle aligned by ``A`` whose residual
    shift is ``d`` (``align_particle_to_reference(moving, A)(r + d) ~ fixed(r)``)."""
    return -torch.einsum("bij,bj->bi", rotations, shifts.to(rotations.dtype))
