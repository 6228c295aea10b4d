"""Source priors: the procedural generator and the galaxy-image loader."""

import numpy as np
import pytest

from lensinv import SourceGrid
from lensinv.sources import ImageSources, ProceduralSources, SourcePrior

GRID = SourceGrid()


def _radius(s, grid):
    x, y = grid.coordinates()
    w = s / s.sum()
    cx, cy = (w * x).sum(), (w * y).sum()
    return np.sqrt((w * ((x - cx) ** 2 + (y - cy) ** 2)).sum())


def test_procedural_sources_statistics(rng):
    gen = ProceduralSources()
    sources = [gen.draw(rng, GRID) for _ in range(300)]
    for s in sources:
        assert s.shape == GRID.shape and s.dtype == np.float64
        assert s.min() >= 0.0 and s.max() == 1.0 and np.all(np.isfinite(s))
    radii = np.array([_radius(s, GRID) for s in sources]) / GRID.delta  # in source pixels
    assert radii.max() / radii.min() > 10  # a wide variety of sizes
    assert np.mean(radii < 2.0) > 0.05  # compact sources, about a pixel
    assert np.mean(radii > 6.0) > 0.2  # and extended ones
    # shifted around the grid, not always centred
    peaks = np.array([np.unravel_index(np.argmax(s), s.shape) for s in sources])
    assert peaks[:, 0].std() > 5 and peaks[:, 1].std() > 5
    # multiple components (clumps, satellites, mergers, spirals) are common
    tables = [gen.components(np.random.default_rng(k), GRID) for k in range(200)]
    assert np.mean([len(t) > 2 for t in tables]) > 0.3
    assert any(t[:, 8].max() > 0 for t in tables)  # spiral arms


def test_procedural_sources_are_deterministic():
    a = ProceduralSources().draw(np.random.default_rng(5), GRID)
    b = ProceduralSources().draw(np.random.default_rng(5), GRID)
    np.testing.assert_array_equal(a, b)


def test_source_prior_validation():
    with pytest.raises(ValueError, match="size"):
        SourcePrior(size=(0.3, 0.1))
    with pytest.raises(ValueError, match="axis_ratio"):
        SourcePrior(axis_ratio=(0.5, 1.5))
    with pytest.raises(ValueError, match="merger_prob"):
        SourcePrior(merger_prob=2.0)


def _galaxy(n=48, bg=10.0, seed=0):
    r = np.random.default_rng(seed)
    y, x = np.mgrid[:n, :n] - (n - 1) / 2
    return bg + 100 * np.exp(-0.5 * ((x / 6) ** 2 + (y / 3) ** 2)) + r.normal(0, 0.5, (n, n))


def test_image_sources_from_files(tmp_path):
    import matplotlib.image as mpimg
    from astropy.io import fits

    fits.PrimaryHDU(_galaxy()).writeto(tmp_path / "a.fits")
    g = _galaxy(seed=1)
    mpimg.imsave(tmp_path / "b.png", g, cmap="gray")
    mpimg.imsave(tmp_path / "c.jpg", g, cmap="gray")
    (tmp_path / "notes.txt").write_text("ignored")
    src = ImageSources(tmp_path, scale=(0.5, 0.9))
    assert len(src.images) == 3
    rng = np.random.default_rng(0)
    for _ in range(20):
        s = src.draw(rng, GRID)
        assert s.shape == GRID.shape and s.min() >= 0 and s.max() == pytest.approx(1.0)
        # background subtracted: the grid's border is dark
        assert np.concatenate([s[0], s[-1], s[:, 0], s[:, -1]]).max() < 0.1
    # random scale and shift: sources differ
    a, b = src.draw(np.random.default_rng(1), GRID), src.draw(np.random.default_rng(2), GRID)
    assert np.abs(a - b).max() > 0.1


def test_image_sources_from_arrays(tmp_path):
    import h5py

    arr = np.stack([_galaxy(seed=k) for k in range(4)])
    np.save(tmp_path / "g.npy", arr)
    with h5py.File(tmp_path / "g.h5", "w") as f:
        f["images"] = arr
    for path in (tmp_path / "g.npy", tmp_path / "g.h5"):
        src = ImageSources(path)
        assert len(src.images) == 4
        s = src.draw(np.random.default_rng(3), GRID)
        assert s.max() == pytest.approx(1.0)
    # the brightest pixel of the resampled galaxy lies near the shifted image centre
    s = ImageSources(tmp_path / "g.npy", scale=(0.5, 0.5), margin=1.0).draw(np.random.default_rng(0), GRID)
    i, j = np.unravel_index(np.argmax(s), s.shape)
    assert abs(i - 31.5) <= 2 and abs(j - 31.5) <= 2


def test_image_sources_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        ImageSources(tmp_path / "missing")
    with pytest.raises(ValueError, match="no FITS/PNG/JPEG"):
        ImageSources(tmp_path)
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read"):
        ImageSources(tmp_path / "bad.png")
    np.save(tmp_path / "flat.npy", np.ones((2, 8, 8)))
    with pytest.raises(ValueError, match="no flux"):
        ImageSources(tmp_path / "flat.npy")
    np.save(tmp_path / "vec.npy", np.ones(5))
    with pytest.raises(ValueError, match="shape"):
        ImageSources(tmp_path / "vec.npy")
