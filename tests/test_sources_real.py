"""Real galaxies as sources (lensinv.galaxies): split, cleaning, augmentation, presets.

Only the tests marked as needing the shared Galaxy Zoo file read ``../shared``; they skip when it is
absent. The rest use small generated images written to a temporary ``.npz``.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

from lensinv.galaxies import (Augmentation, Preparation, RealGalaxySources, default_galaxy_path,
                              load_galaxy_images, prepare_galaxy, render_galaxy, validation_mask)
from lensinv.grids import SourceGrid
from lensinv.simulate import (ObservationPreset, SimulationConfig, simulate, simulation_config, training_config,
                              uses_validation_galaxies)
from lensinv.grids import ImageGrid
from lensinv.sources import MixedSources

GRID = SourceGrid(32, 1.5)


def blob(shape, centre, sigma, amp=1.0, q=1.0, phi=0.0):
    ii, jj = np.indices(shape, dtype=float)
    dy, dx = ii - centre[0], jj - centre[1]
    c, s = math.cos(phi), math.sin(phi)
    xp, yp = c * dx + s * dy, -s * dx + c * dy
    return amp * np.exp(-0.5 * (xp**2 / q + q * yp**2) / sigma**2)


def synthetic(rng, n=64, neighbour=True):
    img = 0.07 + blob((n, n), (n / 2 - 0.5, n / 2 - 0.5), 5.0, 0.8, q=0.6, phi=0.4)
    if neighbour:
        img += blob((n, n), (n * 0.8, n * 0.2), 2.0, 0.9)
    return img + rng.normal(0, 0.01, img.shape)


@pytest.fixture(scope="module")
def galaxy_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    images = np.stack([synthetic(rng) for _ in range(10)]).astype(np.float32)
    names = np.array([f"J{k:06d}+000000.0" for k in range(10)])
    path = tmp_path_factory.mktemp("gal") / "tiny.npz"
    np.savez(path, images=images, iauname=names)
    return path


def test_neighbour_removed_centre_kept():
    rng = np.random.default_rng(1)
    n = 64
    g = prepare_galaxy(synthetic(rng, n), name="two blobs")
    # back in the full frame: the cropped image is centred on the central blob
    assert abs(g.r50 - 5.0 * 1.18) < 2.5  # half-light radius of a Gaussian: 1.18 sigma
    # nothing of the neighbour: every pixel with flux lies within ~4.5 sigma (plus the soft edge) of the centre
    assert g.radius < 5.0 * 4.5 / math.sqrt(0.6) + 6
    ref = prepare_galaxy(synthetic(np.random.default_rng(1), n, neighbour=False))
    assert g.image.shape == ref.image.shape
    assert abs(g.image.sum() - ref.image.sum()) / ref.image.sum() < 0.05
    assert g.image.min() >= 0 and g.image.max() == pytest.approx(1.0)


def test_touching_neighbour_deblended():
    n = 64
    c = n / 2 - 0.5
    img = 0.05 + blob((n, n), (c, c), 5.0, 0.8) + blob((n, n), (c, c + 13), 1.5, 0.9)  # a star on the outskirts
    g = prepare_galaxy(img + np.random.default_rng(2).normal(0, 0.005, img.shape))
    cy, cx = g.centre
    col = int(round(cx + 13))
    assert col >= g.image.shape[1] or g.image[int(round(cy)), col] < 0.05


def test_bad_images_and_parameters():
    with pytest.raises(ValueError, match="2-D"):
        prepare_galaxy(np.zeros(10))
    with pytest.raises(ValueError, match="no flux|threshold"):
        prepare_galaxy(np.zeros((16, 16)))
    for kw, name in [({"border": 0.6}, "border"), ({"nsigma": 0}, "nsigma"), ({"dilate": -1}, "dilate")]:
        with pytest.raises(ValueError, match=name):
            Preparation(**kw)
    with pytest.raises(ValueError, match="stretch"):
        Augmentation(stretch=(1.2, 0.8))
    with pytest.raises(ValueError, match="real_fraction"):
        MixedSources(real=None, real_fraction=1.5)


def _flux(img, scale):
    return img.sum() * scale**2


@pytest.mark.parametrize("angle,flip,scale,fov", [(0.0, False, 0.02, 1.5), (0.7, False, 0.02, 1.5),
                                                  (2.1, True, 0.02, 1.5), (0.3, False, 0.01, 1.5),
                                                  (1.0, True, 0.06, 4.0), (0.0, False, 0.2, 12.0)])
def test_transforms_preserve_flux(angle, flip, scale, fov):
    """Zoom in (grid pixels finer than the image's) and out (up to 4.7x coarser), rotations, flips."""
    grid = SourceGrid(32, fov)
    g = prepare_galaxy(synthetic(np.random.default_rng(3)))
    assert g.radius * scale < fov / 2  # the galaxy fits
    out = render_galaxy(g, grid, scale=scale, angle=angle, flip=flip, normalise=False)
    # surface brightness: sum * pixel area is the image's flux in its own pixel units
    assert _flux(out, grid.delta) == pytest.approx(_flux(g.image, scale), rel=0.03)
    norm = render_galaxy(g, grid, scale=scale, angle=angle, flip=flip, shift=(0.013, -0.021), power=1.1)
    assert norm.max() == pytest.approx(1.0) and norm.min() >= 0.0


def test_no_aliasing_when_shrinking():
    # a fine stripe pattern shrunk 6x must come out smooth (blurred before sampling), not as a moire
    n = 96
    jj = np.indices((n, n))[1]
    stripes = 0.5 + 0.5 * np.cos(2 * np.pi * jj / 2.5) * blob((n, n), (47.5, 47.5), 30.0)
    from lensinv.galaxies import PreparedGalaxy

    def render(img):
        g = PreparedGalaxy(image=img, centre=(47.5, 47.5), r50=20.0, radius=48.0)
        return render_galaxy(g, GRID, scale=GRID.delta / 6, normalise=False)[12:20, 12:20]

    # the stripes average out: as the plain image, to 5 % of the stripes' amplitude (sampling them
    # without the blur would leave a moire of up to their full amplitude)
    assert np.abs(render(stripes) - render(np.full((n, n), 0.5))).max() < 0.025


def test_draws_deterministic_and_valid(galaxy_file):
    src = RealGalaxySources(path=str(galaxy_file), split="train")
    a = [src.draw(np.random.default_rng([5, i]), GRID) for i in range(6)]
    b = [src.draw(np.random.default_rng([5, i]), GRID) for i in range(6)]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
        assert x.shape == GRID.shape and x.min() >= 0 and x.max() == pytest.approx(1.0)
        # the galaxy lies inside the grid: the border carries little light
        assert np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]]).max() < 0.05
    assert not np.array_equal(a[0], a[1])


def test_split_of_generated_names(galaxy_file):
    names = [f"J{k:06d}+000000.0" for k in range(10)]
    mask = validation_mask(names)
    assert mask.sum() == 2
    # stable: independent of the order
    perm = np.random.default_rng(0).permutation(10)
    np.testing.assert_array_equal(validation_mask([names[k] for k in perm]), mask[perm])
    tr, tr_names = load_galaxy_images(galaxy_file, "train")
    va, va_names = load_galaxy_images(galaxy_file, "validation")
    assert len(tr) == 8 and len(va) == 2 and not set(tr_names) & set(va_names)
    assert set(va_names) == {n for n, m in zip(names, mask) if m}
    with pytest.raises(ValueError, match="split"):
        load_galaxy_images(galaxy_file, "all")
    with pytest.raises(ValueError, match="unique"):
        validation_mask(["a", "a"])


def test_mixed_and_presets(galaxy_file, tmp_path):
    cfg = simulation_config("galaxies", galaxy_file=str(galaxy_file))
    assert isinstance(cfg.sources, MixedSources) and cfg.sources.real.split == "train"
    desc = json.loads(cfg.to_json())["sources"]
    assert desc["kind"] == "mixed" and desc["real"]["split"] == "train" and desc["real"]["file"] == "tiny.npz"
    assert not uses_validation_galaxies(cfg.to_json())
    val = simulation_config("validation-fixed", galaxy_file=str(galaxy_file))
    assert uses_validation_galaxies(val.to_json()) and val.preset.snr == (50.0, 50.0)
    with pytest.raises(ValueError, match="validation"):
        training_config("validation", galaxy_file=str(galaxy_file))
    with pytest.raises(ValueError, match="validation"):
        training_config("realistic", sources="validation", galaxy_file=str(galaxy_file))
    # the procedural configuration's JSON is unchanged (old files still resume)
    assert json.loads(simulation_config("realistic").to_json())["sources"]["kind"] == "procedural"


def test_preset_builds_tiny_dataset(galaxy_file, tmp_path):
    from lensinv.dataset import LensDataset, build_dataset

    small = ObservationPreset(name="galaxies", image_grid=ImageGrid(40, 0.12), source_grid=GRID,
                              supersample=1, psf_fwhm=(0.1, 0.2), psf_size=5, snr=(20.0, 50.0))
    cfg = SimulationConfig(preset=small, sources=simulation_config("galaxies", galaxy_file=str(galaxy_file)).sources)
    path = build_dataset(tmp_path / "g.h5", 3, 4, cfg)
    ds = LensDataset(path)
    assert len(ds) == 3 and ds.config["sources"]["kind"] == "mixed"
    sim = simulate(1, 4, cfg)
    np.testing.assert_allclose(ds[1].source, sim.source, rtol=1e-6, atol=1e-7)  # stored as float32
    again = build_dataset(tmp_path / "g.h5", 3, 4, cfg)  # same configuration: left as it is
    assert again == path
    other = SimulationConfig(preset=small, sources=MixedSources(real=cfg.sources.real, real_fraction=0.2))
    with pytest.raises(ValueError, match="configuration"):
        build_dataset(tmp_path / "g.h5", 3, 4, other)


# --- the shared Galaxy Zoo file ---------------------------------------------------------------

@pytest.fixture(scope="module")
def gz():
    path = default_galaxy_path()
    if not path.is_file():
        pytest.skip(f"the shared Galaxy Zoo file {path} is absent")
    return path


def test_gz_split_is_80_320_disjoint_stable(gz):
    tr_img, tr = load_galaxy_images(gz, "train")
    va_img, va = load_galaxy_images(gz, "validation")
    assert len(tr) == 320 and len(va) == 80 and not set(tr) & set(va)
    # SHA-256 of the sorted, newline-joined validation names: the split never changes
    digest = hashlib.sha256("\n".join(sorted(va)).encode()).hexdigest()
    assert digest == "bb3982ff01cda0e41cc05acf27a4e46216ba1984c1eaf6aa7a67c25dd43328aa"


def test_gz_training_sources_never_draw_validation(gz):
    src = RealGalaxySources(split="train")
    _, va = load_galaxy_images(gz, "validation")
    assert len(src.galaxies) >= 300 and not {g.name for g in src.galaxies} & set(va)
    rng = np.random.default_rng(0)
    for _ in range(5):
        s = src.draw(rng, SourceGrid())
        assert s.max() == pytest.approx(1.0) and s.min() >= 0
