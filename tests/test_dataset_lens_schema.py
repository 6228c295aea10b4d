"""Data sets store the lens as (profile name, parameters): any registered profile round-trips,
and files of format 1 (fixed SIE + shear fields) still read."""

import h5py
import numpy as np
import pytest

import lensinv.simulate
from lensinv import EPL, SIE, ExternalShear, ImageGrid, Lens, SourceGrid
from lensinv.dataset import LensDataset, build_dataset
from lensinv.simulate import ObservationPreset, SimulationConfig

SMALL = ObservationPreset(name="small", image_grid=ImageGrid(32, 0.15), source_grid=SourceGrid(16, 1.5),
                          supersample=1, psf_fwhm=None, snr=(20.0, 50.0))
CFG = SimulationConfig(preset=SMALL)


def test_epl_lens_round_trips_through_a_file(tmp_path, monkeypatch):
    def draw(self, rng):
        return Lens(EPL(theta_E=rng.uniform(0.8, 1.2), gamma=rng.uniform(1.7, 2.3), q=0.7, phi=0.4,
                        center=(0.01, -0.02)), ExternalShear(0.03, 0.5))

    monkeypatch.setattr(lensinv.simulate.LensPrior, "draw", draw)
    path = build_dataset(tmp_path / "epl.h5", 3, 11, CFG, part_size=2)
    with LensDataset(path) as ds:
        lenses = [ds[i].lens for i in range(3)]
        for i in range(3):
            assert ds[i].lens == lensinv.simulate.simulate(i, 11, CFG).lens  # exact: JSON keeps float64
    assert all(isinstance(lens.components[0], EPL) for lens in lenses)
    assert len({lens.components[0].gamma for lens in lenses}) == 3


def test_format_1_files_still_read(tmp_path):
    path = build_dataset(tmp_path / "v2.h5", 2, 5, CFG)
    with LensDataset(path) as ds:
        expected = [ds[i].lens for i in range(2)]
    with h5py.File(path, "r+") as f:  # rewrite it as format 1 wrote it
        sie = [lens.components[0] for lens in expected]
        shear = [lens.components[1] for lens in expected]
        fields = {"theta_E": [c.theta_E for c in sie], "q": [c.q for c in sie], "phi": [c.phi for c in sie],
                  "center_x": [c.center[0] for c in sie], "center_y": [c.center[1] for c in sie],
                  "gamma": [c.gamma for c in shear], "gamma_phi": [c.phi for c in shear]}
        del f["lens/records"], f["crc32"]  # format 1 had neither
        for k, v in fields.items():
            f[f"lens/{k}"] = np.array(v)
        f.attrs["lensinv_format"] = 1
    with LensDataset(path) as ds:
        assert [ds[i].lens for i in range(2)] == expected


def test_unknown_profile_in_a_file_raises(tmp_path):
    path = build_dataset(tmp_path / "x.h5", 1, 5, CFG)
    with h5py.File(path, "r+") as f:  # as a newer version with a profile unknown here might write it
        f["lens/records"][0] = '[["NOPE", {"theta_E": 1.0}]]'
        del f["crc32"]
    with LensDataset(path) as ds, pytest.raises(ValueError, match="unknown mass profile 'NOPE'"):
        ds[0]


def test_records_api():
    lens = Lens(SIE(1.0, 0.8, 0.1, (0.1, 0.0)), EPL(0.3, 2.2, 0.9), ExternalShear(0.02, 0.3))
    recs = lens.to_records()
    assert [r[0] for r in recs] == ["SIE", "EPL", "SHEAR"]
    assert recs[0][1] == {"theta_E": 1.0, "q": 0.8, "phi": 0.1, "center_x": 0.1, "center_y": 0.0}
    assert Lens.from_records(recs) == lens
    with pytest.raises(ValueError, match="unknown parameter"):
        Lens.from_records([("SIE", {"theta_E": 1.0, "slope": 2.0})])
