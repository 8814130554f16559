"""Numerical comparison shared by the kernel tests."""

from __future__ import annotations


def assert_matches(got: dict, want: dict, tol: float) -> None:
    """Every tensor of ``got`` (output and gradients by name) within ``tol`` relative max error of the
    float64 reference of the same name in ``want``."""
    assert set(got) == set(want)
    for name, ref in want.items():
        a = got[name]
        assert a is not None and a.shape == ref.shape, name
        err = (a.cpu().double() - ref).abs().max().item() / max(1e-12, ref.abs().max().item())
        assert err <= tol, f"{name}: relative max error {err:.2e} > {tol:.0e}"
