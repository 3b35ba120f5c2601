"""Gradient projections of GEM (Lopez-Paz & Ranzato 2017) and A-GEM (Chaudhry et al. 2019).

GEM asks that the update g not increase the loss on any past bucket's memory: ⟨g̃, g_k⟩ ≥ 0 for
each past gradient g_k (the rows of G). When g violates one, it is replaced by the closest vector
that satisfies all of them, found through the dual QP as in the reference code:

    min_v ½ vᵀ(GGᵀ + εI)v + (Gg)ᵀv   s.t.  v ≥ γ,        g̃ = Gᵀv + g

γ (`memory_strength`) is the reference's margin. Substituting v = γ·1 + u shows what it means:
g̃ is exactly the Euclidean projection onto {z : Gz ≥ 0} of the shifted g + γ·Σ_k g_k, so γ > 0
leans the update towards the past buckets. ε keeps the QP strictly convex when gradients are
duplicated or dependent (quadprog's "G is not positive definite"); a QP that fails all the
same falls back to the A-GEM projection on the mean past gradient, and the caller counts it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import quadprog
import torch


@dataclass
class Projection:
    gradient: torch.Tensor
    projected: bool  # a constraint was violated and g was changed
    fallback: bool = False  # the QP failed and the A-GEM projection was used instead


def agem_project(g: torch.Tensor, g_ref: torch.Tensor) -> Projection:
    """A-GEM: if ⟨g, g_ref⟩ < 0, remove g's component along g_ref: g − (gᵀg_ref / g_refᵀg_ref)·g_ref."""
    dot = torch.dot(g, g_ref)
    norm2 = torch.dot(g_ref, g_ref)
    if dot >= 0 or norm2 <= 0:
        return Projection(g, False)
    return Projection(g - (dot / norm2) * g_ref, True)


def solve_gem_dual(gram: np.ndarray, Gg: np.ndarray, margin: float, eps: float) -> np.ndarray:
    """The GEM dual QP in float64 from GGᵀ (T, T) and Gg (T,); returns v. Raises ValueError."""
    t = gram.shape[0]
    gram = 0.5 * (gram + gram.T) + eps * np.eye(t)
    # quadprog minimises ½ xᵀPx − aᵀx subject to Cᵀx ≥ b.
    return quadprog.solve_qp(gram, -Gg, np.eye(t), np.full(t, margin))[0]


def gem_project(g: torch.Tensor, G: torch.Tensor, margin: float = 0.5, eps: float = 1e-3) -> Projection:
    """GEM: g (P,) against past gradients G (T, P). Solves a QP only when a constraint is violated.

    The products GGᵀ and Gg are formed in float64 where the gradients live; only the T×T
    problem travels to the CPU.
    """
    if G.shape[0] == 0:
        return Projection(g, False)
    G64, g64 = G.double(), g.double()
    Gg = G64 @ g64
    if bool((Gg >= 0).all()):
        return Projection(g, False)
    try:
        gram = (G64 @ G64.T).cpu().numpy()
        if not (np.isfinite(gram).all() and torch.isfinite(Gg).all()):
            raise ValueError("non-finite gradient")
        v = solve_gem_dual(gram, Gg.cpu().numpy(), margin, eps)
    except ValueError:
        fallback = agem_project(g, G.mean(dim=0))
        return Projection(fallback.gradient, True, fallback=True)
    projected = g64 + torch.from_numpy(v).to(G64.device) @ G64
    return Projection(projected.to(g.dtype), True)
