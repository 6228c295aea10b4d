"""The RIM on visibilities: the torch physics against the numpy VisibilityOperator, and
RIM.reconstruct on a VisibilityOperator (unit equivariance, refusals)."""

import logging

import numpy as np
import pytest
import scipy.sparse as sp
import torch

pytest.importorskip("finufft")

import lensinv  # noqa: E402
from lensinv import SIE, ExternalShear, ImageGrid, Lens, SourceGrid  # noqa: E402
from rim import RIM, RIMConfig  # noqa: E402
from rim.physics import BatchedVisibilityOperator  # noqa: E402

IMG, SRC = ImageGrid(24, 0.06), SourceGrid(8, 0.9)
TINY = RIMConfig(steps=3, embed=4, hidden1=6, hidden2=4, kernel=3, source_n=8, image_n=24)
N_VIS = 300


def _setup(rng, primary_beam=True, shared=True):
    cov = lensinv.UVCoverage(rng.uniform(-1.5e6, 1.5e6, (N_VIS, 2)))
    pb = np.exp(-0.5 * sum(c**2 for c in IMG.coordinates()) / 0.6**2) if primary_beam else None
    ops = [lensinv.visibility_operator(Lens(SIE(t, 0.8, 0.5), ExternalShear(0.03, 0.4)),
                                       cov if shared else lensinv.UVCoverage(rng.uniform(-1.5e6, 1.5e6, (N_VIS, 2))),
                                       IMG, SRC, supersample=2, primary_beam=pb) for t in (0.45, 0.7)]
    sigma = rng.uniform(0.5, 1.5, N_VIS)  # per visibility
    vis = [op.apply(rng.uniform(size=SRC.size)) + sigma * (rng.normal(size=N_VIS) + 1j * rng.normal(size=N_VIS))
           for op in ops]
    return ops, vis, sigma


def _batched(ops, dirty, dtype):
    return BatchedVisibilityOperator.from_scipy([o.L for o in ops], [d.beam for d in dirty], IMG.n, SRC.n, dtype=dtype,
                                                primary_beams=[o.primary_beam for o in ops])


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("primary_beam,shared", [(True, True), (False, False)], ids=["pb-shared", "nopb-own"])
def test_chi2_gradient_matches_the_numpy_operator(rng, dtype, rtol, primary_beam, shared):
    ops, vis, sigma = _setup(rng, primary_beam, shared)
    dirty = [op.dirty(v, sigma) for op, v in zip(ops, vis)]
    bop = _batched(ops, dirty, dtype)
    assert bop.spectra.shape[0] == (1 if shared else 2)
    s = rng.uniform(size=(2, SRC.n, SRC.n))
    got = bop.chi2_gradient(torch.as_tensor(s, dtype=dtype), torch.as_tensor(np.stack([d.image for d in dirty]), dtype=dtype),
                            torch.as_tensor([d.sigma for d in dirty], dtype=dtype)).double().numpy()
    for b, op in enumerate(ops):
        ref = op.adjoint((op.apply(s[b]) - vis[b]) / sigma**2)  # grad of chi^2 / 2 of the visibilities
        assert np.linalg.norm(got[b].ravel() - ref) <= rtol * np.linalg.norm(ref)


def test_apply_part_is_the_transpose_and_the_beam_self_adjoint(rng):
    ops, vis, sigma = _setup(rng)
    bop = _batched(ops, [op.dirty(v, sigma) for op, v in zip(ops, vis)], torch.float64)
    s = torch.as_tensor(rng.normal(size=(2, SRC.n, SRC.n)))
    x, y = (torch.as_tensor(rng.normal(size=(2, IMG.n, IMG.n))) for _ in range(2))
    fwd, adj = float((bop.apply(s) * x).sum()), float((s * bop.adjoint(x)).sum())
    assert abs(fwd - adj) <= 1e-12 * abs(fwd)
    np.testing.assert_allclose(bop.apply(s)[0].numpy().ravel(), ops[0].image(s[0].numpy()), rtol=1e-12, atol=1e-14)
    bx, by = float((bop.beam_convolve(x) * y).sum()), float((x * bop.beam_convolve(y)).sum())
    assert abs(bx - by) <= 1e-12 * abs(bx)
    # the beam convolution is the normal matrix of the Fourier part: Re(A^H W A) x / sum(W)
    w = 1 / sigma**2
    ref = ops[0].fourier_adjoint(w * ops[0].fourier(x[0].numpy())) / w.sum()
    np.testing.assert_allclose(bop.beam_convolve(x)[0].numpy(), ref, rtol=0, atol=1e-10 * np.abs(ref).max())


def test_physics_refusals(rng):
    ops, vis, sigma = _setup(rng)
    dirty = [op.dirty(v, sigma) for op, v in zip(ops, vis)]
    bop = _batched(ops, dirty, torch.float64)
    s, d = torch.zeros(2, SRC.n, SRC.n, dtype=torch.float64), torch.zeros(2, IMG.n, IMG.n, dtype=torch.float64)
    with pytest.raises(ValueError, match="sigma"):
        bop.chi2_gradient(s, d, torch.ones(2, IMG.n, IMG.n, dtype=torch.float64))
    with pytest.raises(ValueError, match="dirty"):
        bop.chi2_gradient(s, d[:1], torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="beam"):
        BatchedVisibilityOperator.from_scipy([ops[0].L], [np.ones((5, 5))], IMG.n, SRC.n)
    with pytest.raises(ValueError, match="beams"):
        BatchedVisibilityOperator.from_scipy([o.L for o in ops], [dirty[0].beam], IMG.n, SRC.n)


def test_dirty_image_units_and_refusals(rng):
    ops, vis, sigma = _setup(rng)
    op = ops[0]
    d = op.dirty(vis[0], sigma)
    assert d.beam[IMG.n - 1, IMG.n - 1] == pytest.approx(1.0, rel=1e-12)
    assert d.sigma == pytest.approx(1 / np.sqrt(np.sum(1 / sigma**2)), rel=1e-12)
    np.testing.assert_allclose(d.image, op.fourier_adjoint(vis[0] / sigma**2) / np.sum(1 / sigma**2), rtol=1e-12)
    scaled = op.dirty(vis[0] * 1e-3, sigma * 1e-3)
    np.testing.assert_allclose(scaled.image, d.image * 1e-3, rtol=1e-10, atol=1e-16)
    assert scaled.sigma == pytest.approx(d.sigma * 1e-3, rel=1e-12)
    for bad, match in [(np.ones(3), "vis must have"), (np.full(N_VIS, np.nan), "vis contains")]:
        with pytest.raises(ValueError, match=match):
            op.dirty(bad, 1.0)
    for bad in (0.0, -1.0, np.inf, np.ones(3)):
        with pytest.raises(ValueError, match="sigma"):
            op.dirty(vis[0], bad)


@pytest.fixture
def tiny_rim():
    torch.manual_seed(0)
    return RIM(TINY).eval()


def test_reconstruct_is_unit_equivariant_on_visibilities(rng, tiny_rim):
    ops, vis, sigma = _setup(rng)
    op = ops[0]
    ref = tiny_rim.reconstruct(op, vis[0], sigma)
    assert ref.shape == (SRC.n, SRC.n) and ref.dtype == np.float64 and np.abs(ref).max() > 0
    for c in (1e-3, 7.0, 2.0**-40):
        got = tiny_rim.reconstruct(op, vis[0] * c, sigma * c)
        np.testing.assert_allclose(got, ref * c, rtol=1e-5, atol=1e-5 * np.abs(ref).max() * c)
    # a scalar sigma of any size: only relative noise enters
    a, b = tiny_rim.reconstruct(op, vis[0], 1.0), tiny_rim.reconstruct(op, vis[0], 1e-200)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(a).max())
    # it runs the batched physics: the same as forward on the dirty image
    d = op.dirty(vis[0], sigma)
    from rim.model import data_scale  # the normalisation training uses on dirty images
    k = float(data_scale(torch.as_tensor(d.image)[None], visibilities=True)[0])
    bop = BatchedVisibilityOperator.from_scipy([op.L], [d.beam], IMG.n, SRC.n, primary_beams=[op.primary_beam])
    with torch.no_grad():
        est = tiny_rim(torch.as_tensor(d.image / k, dtype=torch.float32)[None], bop, torch.ones(1))[-1]
    one = tiny_rim.reconstruct(op, vis[0], sigma, transforms=1)  # one pass (the default averages 8)
    np.testing.assert_allclose(one, est[0].double().numpy() * k, rtol=1e-5, atol=1e-6 * np.abs(one).max())


def test_reconstruct_refusals_on_visibilities(rng, tiny_rim, caplog):
    ops, vis, sigma = _setup(rng)
    op = ops[0]
    for bad in (0.0, -1.0, np.nan, np.inf, np.full(N_VIS, -1.0), np.ones(5), "x"):
        with pytest.raises(ValueError, match="sigma"):
            tiny_rim.reconstruct(op, vis[0], bad)
    with pytest.raises(ValueError, match="vis"):
        tiny_rim.reconstruct(op, vis[0][:10], 1.0)
    with pytest.raises(ValueError, match="vis"):
        tiny_rim.reconstruct(op, np.where(np.arange(N_VIS) == 3, np.nan, vis[0]), 1.0)
    with caplog.at_level(logging.WARNING, logger="rim.model"):
        zero = tiny_rim.reconstruct(op, np.zeros(N_VIS, complex), 1.0)
    assert np.array_equal(zero, np.zeros((SRC.n, SRC.n))) and "all zero" in caplog.text
    far = lensinv.VisibilityOperator(L=sp.csr_matrix((IMG.size, SRC.size)), coverage=op.coverage, image_grid=IMG,
                                     source_grid=SRC, lens=op.lens, supersample=1)  # no ray reaches the source
    with pytest.raises(ValueError, match="maps nothing"):
        tiny_rim.reconstruct(far, vis[0], 1.0)
    blind = lensinv.visibility_operator(op.lens, op.coverage, IMG, SRC, supersample=2, primary_beam=np.zeros(IMG.shape))
    with pytest.raises(ValueError, match="maps nothing"):
        tiny_rim.reconstruct(blind, vis[0], 1.0)
    other = lensinv.visibility_operator(op.lens, op.coverage, ImageGrid(26, 0.06), SRC, supersample=1)
    with pytest.raises(ValueError, match="grids"):
        tiny_rim.reconstruct(other, np.ones(N_VIS, complex), 1.0)
