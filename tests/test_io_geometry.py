import numpy as np

from medseg.data.phantom import rotation
from medseg.io.geometry import (
    compose_affine,
    decompose_affine,
    grid_mismatch,
    lps_to_ras,
    obliquity_deg,
    orientation_code,
    ras_to_lps,
)


def test_ras_lps_round_trip_and_axis_flip():
    affine = compose_affine([0.7, 0.8, 5.0], [10.0, -20.0, 30.0], rotation((5, 10, 15)))
    assert np.allclose(lps_to_ras(ras_to_lps(affine)), affine)
    lps = ras_to_lps(affine)
    assert np.allclose(lps[:2], -affine[:2]) and np.allclose(lps[2:], affine[2:])


def test_decompose_inverts_compose():
    direction = rotation((0, 30, 0))
    spacing, origin, back = decompose_affine(compose_affine([1, 2, 3], [4, 5, 6], direction))
    assert np.allclose(spacing, [1, 2, 3]) and np.allclose(origin, [4, 5, 6]) and np.allclose(back, direction)


def test_orientation_and_obliquity():
    assert orientation_code(np.diag([-1.0, -1.0, 1.0, 1.0])) == "LPS"
    assert obliquity_deg(np.eye(4)) == 0.0
    assert abs(obliquity_deg(compose_affine([1, 1, 1], [0, 0, 0], rotation((0, 0, 20)))) - 20) < 1e-6


def test_grid_mismatch_names_each_difference():
    a = compose_affine([1, 1, 3], [0, 0, 0], np.eye(3))
    assert grid_mismatch((10, 10, 5), a, (10, 10, 5), a.copy()) == []
    b = compose_affine([1, 1, 2.5], [0, 0, 4], rotation((0, 0, 10)))
    found = " ".join(grid_mismatch((10, 10, 5), a, (10, 11, 5), b))
    for word in ("shape", "spacing", "origin", "direction"):
        assert word in found
