"""GEM's dual QP against an exact, independent solution of the primal; A-GEM's closed form."""
import itertools

import numpy as np
import pytest
import torch

from cl_engine import projection
from cl_engine.guard import NonFinite
from cl_engine.projection import agem_project, gem_project


def primal_projection(g: np.ndarray, G: np.ndarray) -> np.ndarray:
    """argmin_z ½‖z − g‖² s.t. Gz ≥ 0, by enumerating active sets (exact for a few constraints).

    The optimum is the projection of g onto the subspace {G_A z = 0} of its active set A, and
    every feasible such projection is at least as far from g, so the nearest feasible one wins.
    """
    best, best_dist = None, np.inf
    for k in range(G.shape[0] + 1):
        for active in itertools.combinations(range(G.shape[0]), k):
            GA = G[list(active)]
            z = g - GA.T @ np.linalg.lstsq(GA @ GA.T, GA @ g, rcond=None)[0] if k else g.copy()
            if (G @ z >= -1e-9 * max(1.0, np.abs(G).max() * np.abs(z).max())).all():
                d = np.linalg.norm(z - g)
                if d < best_dist - 1e-12:
                    best, best_dist = z, d
    return best


def shifted(g: np.ndarray, G: np.ndarray, margin: float) -> np.ndarray:
    """The dual with v ≥ γ is the primal projection of g + γ·Σ_k g_k (see projection.py)."""
    return g + margin * G.sum(axis=0)


def violating_case(seed: int, T: int = 3, P: int = 12):
    rng = np.random.default_rng(seed)
    while True:
        G = rng.normal(size=(T, P))
        g = rng.normal(size=P)
        if (G @ g < 0).any():
            return g, G


def degenerate_cases():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=10), rng.normal(size=10)
    g = -(a + 0.3 * b)
    yield "duplicated", g, np.stack([a, a, b])
    yield "opposite", g, np.stack([a, -a])
    yield "nearly dependent", g, np.stack([a, a + 1e-6 * b, b])
    yield "parallel to g", -a, np.stack([a, 2 * a])


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_gem_equals_primal_qp_on_random_gradients(seed, margin):
    g, G = violating_case(seed)
    out = gem_project(torch.tensor(g), torch.tensor(G), margin=margin, eps=1e-10)
    assert out.projected and not out.fallback
    expected = primal_projection(shifted(g, G, margin), G)
    np.testing.assert_allclose(out.gradient.numpy(), expected, atol=1e-6)
    assert (G @ out.gradient.numpy() >= -1e-6).all()


@pytest.mark.parametrize("name,g,G", list(degenerate_cases()), ids=lambda v: v if isinstance(v, str) else "")
def test_gem_on_degenerate_gradients(name, g, G):
    out = gem_project(torch.tensor(g), torch.tensor(G), margin=0.0, eps=1e-8)
    assert out.projected and not out.fallback
    np.testing.assert_allclose(out.gradient.numpy(), primal_projection(g, G), atol=1e-4)
    assert (G @ out.gradient.numpy() >= -1e-4).all()


@pytest.mark.parametrize("seed", range(10))
def test_default_eps_keeps_constraints_to_within_eps(seed):
    """With ε on the diagonal, KKT gives Gg̃ = μ − εv ≥ −εv: violations are at most ε·max(v)."""
    g, G = violating_case(seed, T=5, P=30)
    out = gem_project(torch.tensor(g), torch.tensor(G), margin=0.5, eps=1e-3)
    v = projection.solve_gem_dual(G @ G.T, G @ g, 0.5, 1e-3)
    assert (G @ out.gradient.numpy() >= -1e-3 * v.max() - 1e-9).all()


def test_no_violation_leaves_gradient_alone_without_a_qp(monkeypatch):
    monkeypatch.setattr(projection.quadprog, "solve_qp", lambda *a: pytest.fail("QP solved needlessly"))
    G = torch.eye(3, 5, dtype=torch.float64)
    g = torch.tensor([1.0, 2.0, 0.0, -4.0, 5.0], dtype=torch.float64)
    out = gem_project(g, G)
    assert not out.projected and torch.equal(out.gradient, g)


def test_failed_qp_falls_back_to_agem_projection(monkeypatch):
    def failing(*args):
        raise ValueError("constraints are inconsistent, no solution")
    monkeypatch.setattr(projection.quadprog, "solve_qp", failing)
    g, G = violating_case(3)
    g, G = torch.tensor(g), torch.tensor(G)
    out = gem_project(g, G)
    assert out.projected and out.fallback
    torch.testing.assert_close(out.gradient, agem_project(g, G.mean(dim=0)).gradient)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gradient_is_refused_and_nothing_changes(bad):
    """A non-finite memory gradient once fell back to A-GEM, which returned NaN that was applied."""
    G = torch.tensor([[1.0, 0.0], [bad, 1.0]], dtype=torch.float64)
    g = torch.tensor([-1.0, 0.5], dtype=torch.float64)
    with pytest.raises(NonFinite):
        gem_project(g, G)
    with pytest.raises(NonFinite):
        agem_project(g, G[1])
    with pytest.raises(NonFinite):
        agem_project(torch.tensor([bad, 0.0], dtype=torch.float64), G[0])
    assert g.tolist() == [-1.0, 0.5]


def test_agem_matches_closed_form():
    rng = np.random.default_rng(0)
    for _ in range(20):
        g, r = rng.normal(size=8), rng.normal(size=8)
        out = agem_project(torch.tensor(g), torch.tensor(r))
        if g @ r < 0:
            assert out.projected
            np.testing.assert_allclose(out.gradient.numpy(), g - (g @ r) / (r @ r) * r, rtol=1e-12)
            assert abs(out.gradient.numpy() @ r) < 1e-10
        else:
            assert not out.projected and np.array_equal(out.gradient.numpy(), g)


def test_in_place_projection_of_blocks_matches_the_flat_one_even_for_a_transposed_block():
    gen = torch.Generator().manual_seed(3)
    shapes = [(4, 3), (3,), (2, 5)]
    G = [torch.randn(3, *s, generator=gen, dtype=torch.float64) for s in shapes]
    g = [torch.randn(*s, generator=gen, dtype=torch.float64) for s in shapes]
    g[0] = -G[0].sum(dim=0)  # violates the first constraints
    flat = gem_project(torch.cat([b.reshape(-1) for b in g]), torch.cat([b.reshape(3, -1) for b in G], dim=1))
    assert flat.projected
    blocks = [b.clone() for b in g]
    blocks[2] = blocks[2].T.contiguous().T  # same values, not contiguous: flattened by a copy
    assert not blocks[2].is_contiguous()
    projected, fallback = projection.gem_project_(blocks, G)
    assert projected and not fallback
    torch.testing.assert_close(torch.cat([b.reshape(-1) for b in blocks]), flat.gradient)
