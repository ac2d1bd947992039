"""A simulated visual cortex for mini-NSD.

The anatomy is an ellipsoidal "brain" in a small voxel grid. Its posterior cap, carved by a
smooth random field, is the nsdgeneral region. Each voxel there gets a population receptive
field (pRF) whose centre varies smoothly across the volume:

* hemisphere (sign of x) -> contralateral visual hemifield;
* posterior-to-anterior position (y) -> visual area band V1, V2, V3, hV4, then higher areas;
* angle in the x-z cross-section -> polar angle (dorsal voxels code the lower field);
* radius in the x-z cross-section -> eccentricity.

pRF size grows with eccentricity and along the hierarchy. Each voxel pools four image
feature maps through its Gaussian pRF (luminance, red-green, blue-yellow, contrast energy)
with voxel-specific weights; voxels in floc-* blobs also respond to their image category.
The noiseless drive is z-scored across the stimulus set and scaled to percent signal change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

#: Half-width of the stimulus in degrees of visual angle (NSD images span 8.4 deg).
FIELD_HALF_DEG: float = 4.2
#: Visual area bands from posterior to anterior: (name, fraction of the region, pRF size factor).
AREAS: tuple[tuple[str, float, float], ...] = (
    ("V1", 0.28, 1.0), ("V2", 0.22, 1.5), ("V3", 0.18, 2.0), ("hV4", 0.12, 2.8), ("higher", 0.20, 4.0),
)
#: prf-eccrois bin edges in degrees (labels 1..5 = 0.5, 1, 2, 4, >4 deg).
ECC_EDGES: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
#: Image categories with a floc localiser file.
FLOC_CATEGORIES: tuple[str, ...] = ("faces", "words", "places", "bodies")
FEATURES: tuple[str, ...] = ("luminance", "red-green", "blue-yellow", "contrast")


@dataclass(frozen=True)
class Anatomy:
    """One simulated subject's volume, ROI label volumes and voxel tuning.

    Attributes
    ----------
    shape : tuple of 3 int
        (X, Y, Z) voxel grid.
    affine : array of shape (4, 4)
    brain : array of shape (X, Y, Z), bool
    rois : dict of str to array of shape (X, Y, Z), int16
        Label volumes keyed by NSD ROI file name; -1 outside the brain.
    voxels : array of shape (n_voxels,), int64
        Flat C-order indices of the nsdgeneral voxels.
    area : array of shape (n_voxels,), int64
        Index into :data:`AREAS`.
    rf_x, rf_y, rf_size, ecc : arrays of shape (n_voxels,)
        pRF centre (deg, y up), Gaussian sigma (deg) and eccentricity (deg).
    weights : array of shape (n_voxels, 4)
        Tuning to :data:`FEATURES`.
    category : array of shape (n_voxels, 4)
        Selectivity for :data:`FLOC_CATEGORIES` (0 outside floc blobs).
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    brain: np.ndarray
    rois: dict[str, np.ndarray]
    voxels: np.ndarray
    area: np.ndarray
    rf_x: np.ndarray
    rf_y: np.ndarray
    rf_size: np.ndarray
    ecc: np.ndarray
    weights: np.ndarray
    category: np.ndarray


def build_anatomy(shape: tuple[int, int, int], rng: np.random.Generator, *, keep: float = 0.65,
                  origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0), voxel_mm: float = 1.8) -> Anatomy:
    """Build one subject's simulated anatomy and receptive fields.

    Parameters
    ----------
    shape : tuple of 3 int
        (X, Y, Z) grid, each at least 12.
    rng : numpy Generator
    keep : float
        Fraction of the posterior cap kept as nsdgeneral by the carving field.
    origin_mm, voxel_mm
        Affine translation and voxel size.

    Returns
    -------
    Anatomy
    """
    shape = tuple(int(s) for s in shape)
    centre = (np.array(shape) - 1) / 2
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    p = (grid - centre) / (0.46 * np.array(shape))
    radius = np.linalg.norm(p, axis=-1)
    brain = radius <= 1.0
    carve = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=1.5)
    cap = brain & (p[..., 1] < -0.3) & (radius >= 0.3) & (np.abs(p[..., 0]) > 0.06)
    region = cap & (carve >= np.quantile(carve[cap], 1.0 - keep))
    voxels = np.flatnonzero(region)
    px, py, pz = (p[..., k].reshape(-1)[voxels] for k in range(3))
    area = _area_bands(py)
    rho = np.clip(np.hypot(px, pz) / np.sqrt(np.clip(1 - py**2, 1e-3, None)), 0, 1)
    ecc = 0.2 + 5.5 * rho**2.2
    theta = np.arctan2(pz, np.abs(px))  # dorsal (pz > 0) codes the lower field
    rf_x = -np.sign(px) * ecc * np.cos(theta)
    rf_y = -ecc * np.sin(theta)
    size_factor = np.array([a[2] for a in AREAS])[area]
    rf_size = (0.15 + 0.12 * ecc) * size_factor
    level = area / (len(AREAS) - 1)
    weights = np.column_stack([
        rng.normal(0.8, 0.4, len(voxels)) * (1 - 0.5 * level),
        rng.normal(0.0, 0.6, len(voxels)),
        rng.normal(0.0, 0.6, len(voxels)),
        rng.normal(0.8, 0.3, len(voxels)) * (1 + 0.5 * level),
    ])
    rois, category = _label_volumes(shape, brain, voxels, area, ecc, theta, rng)
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = np.asarray(origin_mm) - voxel_mm * centre
    logger.debug("anatomy %s: %d nsdgeneral voxels", shape, len(voxels))
    return Anatomy(shape=shape, affine=affine, brain=brain, rois=rois, voxels=voxels.astype(np.int64), area=area,
                   rf_x=rf_x, rf_y=rf_y, rf_size=rf_size, ecc=ecc, weights=weights, category=category)


def _area_bands(py: np.ndarray) -> np.ndarray:
    """Assign area indices by posterior-to-anterior rank, in the fractions of :data:`AREAS`."""
    edges = np.cumsum([a[1] for a in AREAS])[:-1]
    rank = (np.argsort(np.argsort(py, kind="stable"), kind="stable") + 0.5) / max(len(py), 1)
    return np.searchsorted(edges, rank).astype(np.int64)


def _label_volumes(shape: tuple[int, ...], brain: np.ndarray, voxels: np.ndarray, area: np.ndarray,
                   ecc: np.ndarray, theta: np.ndarray, rng: np.random.Generator
                   ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """ROI label volumes (NSD conventions) and per-voxel category selectivity."""
    def blank() -> np.ndarray:
        vol = np.where(brain, 0, -1).astype(np.int16).reshape(-1)
        return vol

    rois = {"nsdgeneral": blank()}
    rois["nsdgeneral"][voxels] = 1
    retino = area < 4
    visual = blank()
    dorsal = (theta > 0).astype(np.int64)  # labels: 2a+1 = ventral, 2a+2 = dorsal; hV4 = 7
    visual[voxels[retino]] = np.where(area[retino] == 3, 7, 2 * area[retino] + 1 + dorsal[retino])
    rois["prf-visualrois"] = visual
    eccvol = blank()
    eccvol[voxels[retino]] = 1 + np.searchsorted(np.array(ECC_EDGES), ecc[retino], side="right")
    rois["prf-eccrois"] = eccvol
    category = np.zeros((len(voxels), len(FLOC_CATEGORIES)))
    higher = voxels[area >= 3]
    for k, name in enumerate(FLOC_CATEGORIES):
        vol = blank()
        seeds = rng.choice(higher, size=min(2, len(higher)), replace=False) if len(higher) else []
        for label, seed in enumerate(seeds, start=1):
            blob = _ball(shape, np.unravel_index(seed, shape), radius=2.5) & brain.reshape(-1)
            vol[blob & (vol == 0)] = label
        rois[f"floc-{name}"] = vol
        category[:, k] = (vol[voxels] > 0) * rng.uniform(1.0, 2.0, len(voxels))
    return {name: vol.reshape(shape) for name, vol in rois.items()}, category


def _ball(shape: tuple[int, ...], centre: tuple, radius: float) -> np.ndarray:
    grid = np.indices(shape).reshape(len(shape), -1)
    d2 = sum((grid[k] - int(centre[k])) ** 2 for k in range(len(shape)))
    return d2 <= radius**2


def image_features(images: np.ndarray, size: int = 32) -> np.ndarray:
    """Feature maps of images at a coarse resolution.

    Parameters
    ----------
    images : array of shape (n_images, size, size, 3), float in [0, 1]
        Images already resampled to ``size``.

    Returns
    -------
    features : array of shape (n_images, 4, size * size)
        Luminance, red-green, blue-yellow and contrast energy (gradient magnitude, blurred).
    """
    r, g, b = images[..., 0], images[..., 1], images[..., 2]
    lum = 0.299 * r + 0.587 * g + 0.114 * b
    gy, gx = np.gradient(lum, axis=(1, 2))
    energy = ndimage.gaussian_filter(np.hypot(gx, gy), sigma=(0, 1, 1))
    maps = np.stack([lum - 0.5, r - g, b - (r + g) / 2, 4 * energy], axis=1)
    return maps.reshape(len(images), len(FEATURES), size * size)


def receptive_fields(anatomy: Anatomy, size: int = 32) -> np.ndarray:
    """Gaussian pRFs sampled on the image grid.

    Returns
    -------
    rf : array of shape (n_voxels, size * size)
        Each row sums to its pRF's mass inside the image (< 1 for pRFs beyond the edge).
    """
    coord = ((np.arange(size) + 0.5) / size * 2 - 1) * FIELD_HALF_DEG
    fx = np.tile(coord, size)           # column position, x grows rightwards
    fy = -np.repeat(coord, size)        # row position, y grows upwards
    d2 = (fx[None] - anatomy.rf_x[:, None]) ** 2 + (fy[None] - anatomy.rf_y[:, None]) ** 2
    sig = anatomy.rf_size[:, None]
    pix_area = (2 * FIELD_HALF_DEG / size) ** 2
    return np.exp(-d2 / (2 * sig**2)) * pix_area / (2 * np.pi * sig**2)


def voxel_drive(anatomy: Anatomy, features: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """Noiseless response of every nsdgeneral voxel to every image, z-scored per voxel.

    Parameters
    ----------
    anatomy : Anatomy
    features : array of shape (n_images, 4, n_pixels)
        From :func:`image_features`.
    categories : array of shape (n_images, 4)
        1 where the image shows a floc category.

    Returns
    -------
    drive : array of shape (n_images, n_voxels)
    """
    size = int(round(np.sqrt(features.shape[2])))
    rf = receptive_fields(anatomy, size)
    drive = sum((features[:, f] @ rf.T) * anatomy.weights[:, f] for f in range(features.shape[1]))
    drive /= drive.std(axis=0, keepdims=True) + 1e-12
    drive += categories @ anatomy.category.T
    drive -= drive.mean(axis=0, keepdims=True)
    return drive / (drive.std(axis=0, keepdims=True) + 1e-12)
