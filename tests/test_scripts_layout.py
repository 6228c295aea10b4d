"""Scripts are thin entry points: none imports another; shared rules live in the packages."""

import ast
from pathlib import Path

import numpy as np
import pytest

import baselines

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_no_script_imports_another(script):
    others = {p.stem for p in SCRIPTS} - {script.stem}
    assert not (_imported_modules(script) & others), f"{script.name} imports another script"


def test_warren_dye_setup_nominal_noise_and_mask():
    img = np.zeros((24, 24))
    img[10:14, 10:14] = 2.0
    # real noise passes through; the mask keeps the arc pixels
    s = baselines.warren_dye_setup(img, 0.1)
    assert s.sigma == 0.1 and s.mask is not None and s.mask[12, 12] and not s.mask[0, 0]
    # noise-free data: 1e-3 of the peak
    s = baselines.warren_dye_setup(img, 0.0)
    assert s.sigma == pytest.approx(2e-3)
    assert baselines.warren_dye_setup(img, 0.0, mask=False).mask is None
    # a mask that would keep nothing means all pixels
    assert baselines.warren_dye_setup(np.full((8, 8), 1e-6), 1.0).mask is None


@pytest.mark.parametrize("image, sigma, word", [
    (np.zeros((8, 8)), 0.0, "positive peak"),
    (np.full((8, 8), np.nan), 0.1, "NaN"),
    (np.ones(8), 0.1, "2-D"),
    (np.ones((8, 8)), -1.0, "sigma"),
    (np.ones((8, 8)), float("nan"), "sigma"),
    (np.ones((8, 8)), "abc", "sigma"),
])
def test_warren_dye_setup_refuses_bad_input(image, sigma, word):
    with pytest.raises(ValueError, match=word):
        baselines.warren_dye_setup(image, sigma)
