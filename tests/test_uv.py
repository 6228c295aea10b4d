"""Visibility data in and out (npz, uvfits, measurement sets) and the uv-coverage simulator."""

import math

import numpy as np
import pytest

from lensinv import uv as luv
from lensinv.uv import Visibilities


@pytest.fixture
def data(rng):
    n = 50
    return Visibilities(uv=rng.normal(0, 3e5, (n, 2)), vis=rng.normal(size=n) + 1j * rng.normal(size=n),
                        sigma=rng.uniform(0.1, 0.3, n), frequency=230e9)


def _same(a, b, rtol=0.0):
    np.testing.assert_allclose(a.uv, b.uv, rtol=rtol or 1e-15)
    np.testing.assert_allclose(a.vis, b.vis, rtol=rtol or 1e-15)
    np.testing.assert_allclose(a.sigma, b.sigma, rtol=rtol or 1e-15)


def test_npz_round_trip(tmp_path, data):
    p = tmp_path / "v.npz"
    luv.write_npz(p, data)
    got = luv.read_visibilities(p)
    _same(got, data)
    assert got.frequency == data.frequency


def test_uvfits_round_trip(tmp_path, data):
    p = tmp_path / "v.uvfits"
    luv.write_uvfits(p, data, antennas=np.tile([1, 2], (data.n_vis, 1)))
    got = luv.read_visibilities(p)
    _same(got, data, rtol=1e-14)
    assert got.frequency == pytest.approx(230e9)
    with pytest.raises(FileExistsError):
        luv.write_uvfits(p, data)
    luv.write_uvfits(p, data, overwrite=True)


def test_uvfits_channels_hands_and_flags(tmp_path, rng):
    """Two channels, RR/LL: I is the weighted mean of the hands; u = UU * frequency per channel;
    flagged (weight <= 0) data are left out; an astropy-made file as a third-party writer would."""
    from astropy.io import fits

    n, f0, df = 6, 100e9, 1e9
    uu, vv = rng.normal(0, 1e-6, n), rng.normal(0, 1e-6, n)  # seconds
    arr = np.zeros((n, 1, 1, 1, 2, 2, 3))  # DEC RA IF FREQ STOKES COMPLEX
    arr[..., 0] = rng.normal(size=arr.shape[:-1])
    arr[..., 1] = rng.normal(size=arr.shape[:-1])
    arr[..., 2] = 4.0
    arr[0, ..., 0, 1, 2] = 0.0  # group 0, channel 0: LL (Stokes index 1) flagged
    arr[1, ..., 0, :, 2] = -1.0  # group 1, channel 0: both flagged
    gd = fits.GroupData(arr, parnames=["UU---SIN", "VV---SIN", "WW---SIN", "BASELINE", "DATE"],
                        pardata=[uu, vv, np.zeros(n), np.zeros(n), np.zeros(n)], bitpix=-32)
    hdu = fits.GroupsHDU(gd)
    for i, (ct, cv, cd) in enumerate([("COMPLEX", 1, 1), ("STOKES", -1, -1), ("FREQ", f0, df), ("IF", 1, 1),
                                      ("RA", 0, 1), ("DEC", 0, 1)], start=2):
        hdu.header[f"CTYPE{i}"], hdu.header[f"CRVAL{i}"], hdu.header[f"CDELT{i}"], hdu.header[f"CRPIX{i}"] = \
            ct, cv, cd, 1.0
    p = tmp_path / "x.uvfits"
    hdu.writeto(p)
    got = luv.read_uvfits(p)
    assert got.n_vis == 2 * n - 1
    a = np.asarray(hdu.data.data, dtype=np.float64)[:, 0, 0, 0]  # (n, chan, stokes, 3)
    # group 2, channel 1: both hands of weight 4 -> mean, sigma 1/sqrt(8)
    uu_s, vv_s = (np.asarray(hdu.data.par(k), dtype=np.float64) for k in (0, 1))  # as stored (float32)

    def at(g, chan):
        f = f0 + chan * df
        hit = np.flatnonzero(np.isclose(got.uv[:, 0], uu_s[g] * f, rtol=1e-9) &
                             np.isclose(got.uv[:, 1], vv_s[g] * f, rtol=1e-9))
        assert hit.size == 1
        return int(hit[0])

    pos = [at(2, 1)]
    exp = (a[2, 1, 0, 0] + a[2, 1, 1, 0]) / 2 + 1j * (a[2, 1, 0, 1] + a[2, 1, 1, 1]) / 2
    assert got.vis[pos[0]] == pytest.approx(exp, rel=1e-6)
    assert got.sigma[pos[0]] == pytest.approx(1 / math.sqrt(8))
    # group 0, channel 0: only RR -> RR itself, sigma 1/2
    i0 = at(0, 0)
    assert got.vis[i0] == pytest.approx(a[0, 0, 0, 0] + 1j * a[0, 0, 0, 1], rel=1e-6)
    assert got.sigma[i0] == pytest.approx(0.5)


def test_measurement_set_round_trip(tmp_path, data):
    pytest.importorskip("casacore.tables")
    p = tmp_path / "v.ms"
    luv.write_ms(p, data)
    got = luv.read_visibilities(p)
    np.testing.assert_allclose(got.uv, data.uv, rtol=1e-12)
    np.testing.assert_allclose(got.vis, data.vis, rtol=1e-6)  # the MS DATA column is single precision
    np.testing.assert_allclose(got.sigma, data.sigma, rtol=1e-6)
    assert got.frequency == pytest.approx(230e9)


def test_bad_records_are_named(tmp_path, rng):
    with pytest.raises(ValueError, match="uv contains NaN"):
        Visibilities(uv=np.full((3, 2), np.nan), vis=np.zeros(3), sigma=1.0)
    with pytest.raises(ValueError, match="vis must have 3"):
        Visibilities(uv=np.zeros((3, 2)), vis=np.zeros(4), sigma=1.0)
    with pytest.raises(ValueError, match="sigma"):
        Visibilities(uv=np.zeros((3, 2)), vis=np.zeros(3), sigma=np.array([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="frequency"):
        luv.write_uvfits(tmp_path / "a.uvfits", Visibilities(uv=np.zeros((3, 2)), vis=np.zeros(3), sigma=1.0))
    np.savez(tmp_path / "b.npz", u=np.zeros(3))
    with pytest.raises(ValueError, match="missing v, vis, sigma"):
        luv.read_npz(tmp_path / "b.npz")
    with pytest.raises(ValueError, match="path must be"):
        luv.read_visibilities(tmp_path / "c.txt")


def test_alma_like_layout():
    lay = luv.alma_layout("extended")
    assert lay.n_antennas == 43 and lay.dish_diameter == 12.0
    assert lay.max_baseline == pytest.approx(luv.ALMA_CONFIGURATIONS["extended"], rel=1e-12)
    d = np.linalg.norm(lay.enu[:, None] - lay.enu[None], axis=-1)
    assert d[np.triu_indices(43, 1)].min() >= 15.0
    assert np.array_equal(lay.enu, luv.alma_layout("extended").enu)  # reproducible
    with pytest.raises(ValueError, match="configuration"):
        luv.alma_layout("huge")


def test_earth_rotation_synthesis():
    # an east-west baseline of 1 km at the pole, source at the pole: a circle of radius B / lambda
    lay = luv.ArrayLayout("ew", np.array([[0.0, 0, 0], [1000.0, 0, 0]]), latitude=90.0, dish_diameter=12.0)
    cov = luv.simulate_coverage(lay, declination=90.0, hour_angle=(-6, 6), integration_time=600.0,
                                frequencies=[100e9, 200e9], min_elevation=0.0)
    lam = luv.C_LIGHT / cov.frequency
    np.testing.assert_allclose(np.hypot(cov.uv[:, 0], cov.uv[:, 1]) * lam, 1000.0, rtol=1e-12)
    np.testing.assert_allclose(cov.w, 0.0, atol=1e-6)
    n_t = round(12 * 3600 / (600 / luv.SIDEREAL_DAY * 86400))
    assert cov.n_vis == n_t * 2
    # any layout: |(u, v, w)| is the baseline length over lambda; H = 0, dec = latitude: u = east
    alma = luv.alma_layout("compact")
    c = luv.simulate_coverage(alma, declination=-40.0, hour_angle=(-2, 2), integration_time=120.0)
    pairs, benu = alma.baselines
    n_bl = pairs.shape[0]
    L = np.linalg.norm(benu, axis=1)
    got = np.sqrt(c.uv[:, 0] ** 2 + c.uv[:, 1] ** 2 + c.w**2).reshape(-1, n_bl) * luv.C_LIGHT / 230e9
    np.testing.assert_allclose(got, np.broadcast_to(L, got.shape), rtol=1e-12)
    c0 = luv.simulate_coverage(alma, declination=luv.ALMA_LATITUDE, hour_angle=(-1e-9, 1e-9), integration_time=1e-4,
                               frequencies=230e9)
    np.testing.assert_allclose(c0.uv[:, 0] * luv.C_LIGHT / 230e9, benu[:, 0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(c0.uv[:, 1] * luv.C_LIGHT / 230e9, benu[:, 1], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="never rises"):
        luv.simulate_coverage(alma, declination=80.0)
    with pytest.raises(ValueError, match="hour_angle"):
        luv.simulate_coverage(alma, hour_angle=(1, -1))


def test_thermal_noise():
    lay = luv.alma_layout()
    s = luv.thermal_sigma(lay, 1.0, 1.0, t_sys=100.0, aperture_efficiency=1.0, correlator_efficiency=1.0, n_pol=1)
    sefd = 2 * 1.380649e-23 * 100 / (math.pi * 36) / 1e-26
    assert s == pytest.approx(sefd / math.sqrt(2))
    assert luv.thermal_sigma(lay, 4.0, 1.0) == pytest.approx(luv.thermal_sigma(lay, 1.0, 1.0) / 2)
    with pytest.raises(ValueError, match="aperture_efficiency"):
        luv.thermal_sigma(lay, 1.0, 1.0, aperture_efficiency=1.5)


def test_simulated_visibilities_invert(rng):
    """End to end on a tiny grid: ALMA-like coverage, thermal noise, a uvfits round trip, invert."""
    pytest.importorskip("finufft")
    import baselines
    import lensinv

    lay = luv.alma_layout("compact", n_antennas=12)
    cov = luv.simulate_coverage(lay, declination=-30.0, hour_angle=(-0.5, 0.5), integration_time=300.0,
                                frequencies=345e9)
    img, src = lensinv.ImageGrid(32, 0.08), lensinv.SourceGrid(12, 1.2)
    op = lensinv.visibility_operator(lensinv.Lens(lensinv.SIE(0.7, 0.8)), cov.coverage, img, src, supersample=2)
    x, y = src.coordinates()
    s = 1e-3 * np.exp(-0.5 * (x**2 + y**2) / 0.15**2)  # Jy/pixel
    d = luv.simulate_visibilities(op, s, 1e-3, rng, frequency=345e9)
    res = baselines.invert(op, d.vis, d.sigma)
    assert res.status == "converged"
    assert 0.5 < res.chi2 / res.n_data < 1.5
