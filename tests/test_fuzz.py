"""A small deterministic fuzz pass over the public constructors, ``lensinv.operator`` and ``baselines.invert``.

Every case either returns something finite and sensible, or raises ``ValueError``/``TypeError`` whose
message names the parameter; never another exception type, NaN output or a hang. The cases are drawn
once, at collection, from a seeded generator (so a failure is reproducible by its id), on tiny grids.
Known bugs in code owned elsewhere are explicit ``xfail(strict=True)`` cases at the end.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Sequence

import numpy as np
import pytest

import baselines
import lensinv
from lensinv import EPL, SIE, ExternalShear, ImageGrid, Lens, SourceGrid, airy_psf, gaussian_psf, validate_kernel

SEED = 20261127
N_CASES = 30  # per target

IG, SG = ImageGrid(16, 0.2), SourceGrid(8, 1.0)

# hostile scalars: wrong types, non-finite, extreme magnitudes, negative, zero, arrays where a number goes
HOSTILE = [0, -1, -0.0, 1e-300, 5e-324, 1e300, -1e300, math.nan, math.inf, -math.inf, True, np.bool_(False), "abc",
           "1.0", b"1", 1j, None, [1.0], (1.0,), np.array(0.5), np.array([0.5, 0.6]), 2.5, 10**20, np.float32(0.3),
           np.int64(3), np.float16(0.5), -1e-300]
DTYPES = [np.float64, np.float32, np.int64, np.bool_, np.complex128, object, str]


def _pick(rng: np.random.Generator, pool: Sequence[Any]) -> Any:
    return pool[int(rng.integers(len(pool)))]


def _hostile_or(rng: np.random.Generator, valid: Callable[[], Any], p_valid: float = 0.4) -> Any:
    return valid() if rng.random() < p_valid else _pick(rng, HOSTILE)


def _hostile_array(rng: np.random.Generator, shape: tuple[int, ...], good_shapes: Sequence[tuple[int, ...]],
                   scale: float = 1.0, positive: bool = False) -> np.ndarray:
    """A random array: usually of a good shape, of a random dtype, sometimes with NaN/inf, extreme or negative.

    With ``positive`` the values are made non-negative first (then sometimes negated, as hostile input).
    """
    if rng.random() < 0.25:
        shape = _pick(rng, [(), (3,), (shape[0] - 1,) + shape[1:], (2,) + shape, (0,) + shape[1:], (1, int(np.prod(shape)))])
    elif rng.random() < 0.5:
        shape = _pick(rng, good_shapes)
    a = rng.normal(0.0, 1.0, shape) * scale
    if positive:
        a = np.abs(a)
    kind = rng.integers(6)
    if kind == 1 and a.size:
        a.flat[int(rng.integers(a.size))] = _pick(rng, [np.nan, np.inf, -np.inf])
    elif kind == 2:
        a = a * 10.0 ** rng.uniform(-300, 300)
    elif kind == 3:
        a = -np.abs(a)
    dtype = _pick(rng, DTYPES) if rng.random() < 0.4 else np.float64
    if dtype is np.complex128:
        with np.errstate(invalid="ignore"):
            return a + 1j * a
    if dtype is str:
        return a.astype(str)
    if dtype in (np.int64,):
        return np.nan_to_num(a, nan=0.0, posinf=1e9, neginf=-1e9).clip(-1e9, 1e9).astype(np.int64)
    return a.astype(dtype)


def _named_or_fine(call: Callable[[], Any], names: Sequence[str]) -> Any:
    """Run ``call``: a ValueError/TypeError must name one of ``names`` (returns None); any other exception fails."""
    try:
        return call()
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        assert any(n in msg for n in names), f"{type(exc).__name__} does not name any of {list(names)}: {msg}"
        return None


def _finite(*arrays: Any) -> bool:
    return all(np.all(np.isfinite(np.asarray(a, dtype=np.complex128))) for a in arrays)


def _cases(target: str, draw: Callable[[np.random.Generator], dict], n: int = N_CASES) -> list:
    rng = np.random.default_rng([SEED, sum(map(ord, target))])
    return [pytest.param(draw(rng), id=f"{target}-{k}") for k in range(n)]


# ---------------------------------------------------------------- grids

def _draw_grid(rng: np.random.Generator) -> dict:
    cls = _pick(rng, [ImageGrid, SourceGrid])
    size_name = "pixel_scale" if cls is ImageGrid else "fov"
    return {"cls": cls, "n": _hostile_or(rng, lambda: int(rng.integers(2, 40)), 0.5),
            size_name: _hostile_or(rng, lambda: 10.0 ** rng.uniform(-3, 2), 0.5)}


@pytest.mark.parametrize("kw", _cases("grid", _draw_grid))
def test_fuzz_grids(kw):
    kw = dict(kw)
    cls = kw.pop("cls")
    g = _named_or_fine(lambda: cls(**kw), list(kw))
    if g is not None:
        assert isinstance(g.n, int) and g.n >= 2 and g.delta > 0 and math.isfinite(g.delta)
        assert _finite(g.axis, g.extent) and isinstance(g.delta, float)


# ---------------------------------------------------------------- mass profiles and lenses

_VALID = {
    "theta_E": lambda rng: 10.0 ** rng.uniform(-2, 1), "q": lambda rng: rng.uniform(0.05, 1.0),
    "phi": lambda rng: rng.uniform(-10, 10), "gamma": lambda rng: rng.uniform(1.2, 2.8),
    "center": lambda rng: tuple(rng.normal(0, 0.3, 2)), "shear": lambda rng: rng.uniform(0, 0.3),
}
_PARAMS = {SIE: ["theta_E", "q", "phi", "center"], EPL: ["theta_E", "gamma", "q", "phi", "center"],
           ExternalShear: ["gamma", "phi"]}
_CENTERS = [(0.0, math.nan), (1e100, -1e100), "ab", (1.0, 2.0, 3.0), 5.0, (True, 0.0), ("a", 0.0), None, np.zeros(2)]


def _draw_profile(rng: np.random.Generator) -> dict:
    cls = _pick(rng, list(_PARAMS))
    kw = {}
    for name in _PARAMS[cls]:
        key = "shear" if cls is ExternalShear and name == "gamma" else name
        kw[name] = _VALID[key](rng)
    # one or two hostile parameters
    for name in rng.choice(_PARAMS[cls], size=int(rng.integers(1, 3)), replace=False):
        kw[name] = _pick(rng, _CENTERS + HOSTILE[:8]) if name == "center" else _pick(rng, HOSTILE)
    return {"cls": cls, **kw}


@pytest.mark.parametrize("kw", _cases("profile", _draw_profile, 2 * N_CASES))
def test_fuzz_mass_profiles(kw):
    kw = dict(kw)
    cls = kw.pop("cls")
    prof = _named_or_fine(lambda: cls(**kw), list(kw))
    if prof is None:
        return
    lens = Lens(prof)
    x = np.array([0.0, 0.3, -1.2, 1e-300, 50.0])
    y = np.array([0.0, 0.1, 0.7, 0.0, -20.0])
    cx, cy = prof.center if hasattr(prof, "center") else (0.0, 0.0)
    ax, ay = lens.deflection(np.append(x, cx), np.append(y, cy))  # a ray through the centre too
    assert _finite(ax, ay), f"{prof!r}: deflection {ax} {ay}"
    bx, by = lens.raytrace(x, y)
    assert _finite(bx, by) and bx.shape == x.shape
    again = Lens.from_lenstronomy(*lens.to_lenstronomy())  # the round trip must not raise
    ax2, ay2 = again.deflection(x, y)
    np.testing.assert_allclose(ax2, lens.deflection(x, y)[0], rtol=1e-6, atol=1e-9 * (1 + np.abs(ax2).max()))


def _draw_lens_args(rng: np.random.Generator) -> dict:
    pool = [SIE(1.0), EPL(0.8, gamma=2.1, q=0.7), ExternalShear(0.1), "abc", None, 3, Lens(SIE(1.0)), SIE, np.ones(2)]
    return {"components": [_pick(rng, pool) for _ in range(int(rng.integers(0, 4)))]}


@pytest.mark.parametrize("kw", _cases("lens", _draw_lens_args, 12))
def test_fuzz_lens(kw):
    lens = _named_or_fine(lambda: Lens(*kw["components"]), ["component"])
    if lens is not None:
        ax, ay = lens.deflection(np.array([0.3, 0.0]), np.array([0.2, 0.0]))
        assert _finite(ax, ay)


# ---------------------------------------------------------------- PSFs

def _draw_psf(rng: np.random.Generator) -> dict:
    kw = {"fn": _pick(rng, [gaussian_psf, airy_psf]),
          "fwhm": _hostile_or(rng, lambda: 10.0 ** rng.uniform(-2, 0.5)),
          "pixel_scale": _hostile_or(rng, lambda: 10.0 ** rng.uniform(-1.5, -0.5))}
    if rng.random() < 0.4:
        kw["size"] = _hostile_or(rng, lambda: int(2 * rng.integers(0, 10) + 1))
    return kw


@pytest.mark.parametrize("kw", _cases("psf", _draw_psf))
def test_fuzz_psf(kw):
    kw = dict(kw)
    fn = kw.pop("fn")
    k = _named_or_fine(lambda: fn(**kw), list(kw))
    if k is not None:
        assert k.ndim == 2 and k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1 and k.shape[0] <= 1025
        assert _finite(k) and k.min() >= 0 and k.sum() == pytest.approx(1.0, abs=1e-12)


def _draw_kernel(rng: np.random.Generator) -> dict:
    side = int(2 * rng.integers(0, 4) + 1)
    return {"kernel": _hostile_array(rng, (side, side), [(side, side), (side + 1, side + 1), (side, side + 2)],
                                     positive=rng.random() < 0.7)}


@pytest.mark.parametrize("kw", _cases("kernel", _draw_kernel))
def test_fuzz_validate_kernel(kw):
    k = _named_or_fine(lambda: validate_kernel(kw["kernel"], name="psf"), ["psf"])
    if k is not None:
        assert k.dtype == np.float64 and _finite(k) and k.min() >= 0 and k.sum() == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------- operator

def _draw_operator(rng: np.random.Generator) -> dict:
    lens = Lens(SIE(10.0 ** rng.uniform(-1, 0.3), q=rng.uniform(0.1, 1.0), phi=rng.uniform(0, 7),
                    center=tuple(rng.normal(0, 0.2, 2))),
                ExternalShear(rng.uniform(0, 0.2), rng.uniform(0, 7)))
    if rng.random() < 0.3:
        lens = Lens(EPL(10.0 ** rng.uniform(-1, 0.3), gamma=rng.uniform(1.3, 2.7), q=rng.uniform(0.2, 1.0)))
    kw: dict[str, Any] = {"lens": lens, "image_grid": ImageGrid(int(rng.integers(4, 17)), 10.0 ** rng.uniform(-1.3, -0.5)),
                          "source_grid": SourceGrid(int(rng.integers(2, 9)), 10.0 ** rng.uniform(-0.5, 0.5))}
    r = rng.random()
    if r < 0.3:
        side = int(2 * rng.integers(0, 3) + 1)
        kw["psf"] = _hostile_array(rng, (side, side), [(side, side)], positive=rng.random() < 0.7)
    elif r < 0.45:
        kw["psf"] = np.full((3, 3), 10.0 ** rng.uniform(-300, 300))
    if rng.random() < 0.4:
        kw["supersample"] = _pick(rng, [1, 2, 3, 0, -1, 2.0, True, "2", None, np.int64(2)])
    if rng.random() < 0.15:
        kw[_pick(rng, ["lens", "image_grid", "source_grid"])] = _pick(rng, ["abc", None, (16, 0.2), SIE(1.0), 3])
    return kw


_OP_NAMES = ["lens", "image_grid", "source_grid", "image grid", "source grid", "psf", "supersample"]


@pytest.mark.slow
@pytest.mark.parametrize("kw", _cases("operator", _draw_operator))
def test_fuzz_operator(kw):
    op = _named_or_fine(lambda: lensinv.operator(**kw), _OP_NAMES)
    if op is None:
        return
    n_img, n_src = kw["image_grid"].size, kw["source_grid"].size
    assert op.shape == (n_img, n_src) and op.matrix.nnz > 0 and _finite(op.matrix.data)
    assert op.matrix.data.min() >= 0
    # a uniform source gives at most 1 in every image pixel (bilinear weights and the PSF sum to <= 1)
    ones = op.apply(np.ones(n_src))
    assert _finite(ones) and ones.max() <= 1.0 + 1e-9


def _draw_apply(rng: np.random.Generator) -> dict:
    which = _pick(rng, ["apply", "adjoint"])
    shape = (8, 8) if which == "apply" else (16, 16)
    return {"which": which, "x": _hostile_array(rng, shape, [shape, (shape[0] * shape[1],)])}


@pytest.fixture(scope="module")
def small_op() -> lensinv.LensOperator:
    return lensinv.operator(Lens(SIE(0.8, q=0.7, phi=0.3), ExternalShear(0.05, 0.2)), IG, SG,
                            psf=gaussian_psf(0.3, 0.2))


@pytest.mark.parametrize("kw", _cases("apply", _draw_apply))
def test_fuzz_apply_adjoint(small_op, kw):
    name = "source" if kw["which"] == "apply" else "image"
    out = _named_or_fine(lambda: getattr(small_op, kw["which"])(kw["x"]), [name])
    if out is not None:
        x = np.asarray(kw["x"], dtype=np.float64)
        assert out.ndim == x.ndim and _finite(out)
        limit = np.abs(x).max() * (1.0 if kw["which"] == "apply" else small_op.matrix.sum(axis=0).max())
        assert np.abs(out).max() <= limit * (1 + 1e-9) + 1e-300


# ---------------------------------------------------------------- invert

@pytest.fixture(scope="module")
def observation(small_op) -> tuple[lensinv.LensOperator, np.ndarray]:
    src = np.zeros((8, 8))
    src[3:5, 3:5] = 1.0
    return small_op, small_op.apply(src) + np.random.default_rng(SEED).normal(0, 0.01, (16, 16))


# sigma far outside the data's units (1e-300, 1e300) is a known bug: explicit cases in _KNOWN below
_MODERATE = [v for v in HOSTILE if not (isinstance(v, float) and v != 0 and not 1e-100 < abs(v) < 1e100)]


def _draw_invert(rng: np.random.Generator) -> dict:
    scale = 10.0 ** rng.uniform(-100, 100)  # data and noise in any units, jointly
    kw: dict[str, Any] = {"scale": scale, "sigma": 0.01 * scale}
    r = rng.random()
    if r < 0.3:
        kw["image"] = _hostile_array(rng, (16, 16), [(16, 16), (256,)], scale)
    elif r < 0.55:
        kw["sigma"] = _pick(rng, _MODERATE) if rng.random() < 0.6 else \
            _hostile_array(rng, (16, 16), [(16, 16), (256,)], 0.01 * scale, positive=True)
    elif r < 0.75:
        kw["lam"] = _hostile_or(rng, lambda: 10.0 ** rng.uniform(-3, 3) / scale**2, 0.3)
    elif r < 0.85:
        kw["regularization"] = _pick(rng, ["zeroth", "gradient", "curvature", "bogus", None, 3, "GRADIENT"])
    else:
        kw["mask"] = _pick(rng, [np.zeros((16, 16), bool), np.ones((15, 16), bool), "abc", np.full((16, 16), np.nan),
                                 np.arange(256).reshape(16, 16) % 3 == 0, np.ones(256, bool)])
    return kw


def _check_invert(observation, kw: dict, names: Sequence[str]) -> None:
    op, img = observation
    kw = dict(kw)
    scale = kw.pop("scale", 1.0)
    kw.setdefault("image", img * scale)
    r = _named_or_fine(lambda: baselines.invert(op, **kw), names)
    if r is None:
        return
    assert r.source.shape == (8, 8) and r.source.dtype == np.float64
    assert _finite(r.source, r.lam, r.log_evidence, r.chi2), (r.lam, r.log_evidence, r.chi2)
    assert r.lam > 0 and r.chi2 >= 0


@pytest.mark.parametrize("kw", _cases("invert", _draw_invert, 24))
def test_fuzz_invert(observation, kw, caplog):
    caplog.set_level(logging.ERROR)
    names = [k for k in kw if k != "scale"]
    _check_invert(observation, kw, names)


# Cases the fuzz found (once bugs in baselines): the contract above, on explicit inputs.
_KNOWN = [  # extreme units: refused with a ValueError naming sigma, image or prior_mean (float64's range)
    pytest.param({"scale": 1e160, "sigma": 1e158}, id="units-1e160"),
    pytest.param({"scale": 1e-160, "sigma": 1e-162}, id="units-1e-160"),
    pytest.param({"sigma": 1e200}, id="sigma-1e200"),
    pytest.param({"sigma": 1e-160}, id="sigma-1e-160"),
    pytest.param({"sigma": 1e-300}, id="sigma-1e-300"),
    pytest.param({"sigma": 0.01, "prior_mean": np.full((8, 8), 1e300)}, id="prior_mean-1e300"),
]


@pytest.mark.parametrize("kw", _KNOWN)
def test_fuzz_invert_known(observation, kw, caplog):
    caplog.set_level(logging.ERROR)
    _check_invert(observation, kw, [k for k in kw if k != "scale"])


# Found by the fuzz (once NaN deflections): a ray or a centre 1e155 arcsec or more from an elliptical
# lens overflowed psi^2. Positions beyond 1e100 arcsec are now refused, naming the parameter.
@pytest.mark.parametrize("cls, q", [(SIE, 0.5), (EPL, 0.5), (EPL, 1.0)])
def test_fuzz_far_rays_known(cls, q):
    assert _named_or_fine(lambda: Lens(cls(1.0, q=q, center=(1e155, 0.0))), ["center"]) is None
    lens = Lens(cls(1.0, q=q))
    assert _named_or_fine(lambda: lens.deflection(np.array([1e200, 1e155]), np.array([0.0, 1e155])), ["x"]) is None
    ax, ay = lens.deflection(np.array([1e99, -1e99]), np.array([1e99, 0.0]))
    assert _finite(ax, ay)
