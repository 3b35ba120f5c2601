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

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import quadprog
import torch

from .guard import NonFinite


@dataclass
class Projection:
    gradient: torch.Tensor
    projected: bool  # a constraint was violated and g was changed
    fallback: bool = False  # the QP failed and the A-GEM projection was used instead


Blocks = Sequence[torch.Tensor]


def _dot(a: Blocks, b: Blocks) -> torch.Tensor:
    return sum(torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(a, b))


def agem_project_(g: Blocks, g_ref: Blocks) -> bool:
    """A-GEM in place on gradient blocks (one tensor per parameter); returns whether g changed.
    Raises NonFinite, changing nothing, when g or g_ref is not finite."""
    both = torch.stack([_dot(g, g_ref), _dot(g_ref, g_ref)])
    dot, norm2 = both.tolist()
    if not (math.isfinite(dot) and math.isfinite(norm2)):
        raise NonFinite("non-finite gradient: A-GEM projection not applied")
    if dot >= 0 or norm2 <= 0:
        return False
    scale = both[0] / both[1]
    for x, r in zip(g, g_ref):
        x.sub_(scale * r)
    return True


def agem_project(g: torch.Tensor, g_ref: torch.Tensor) -> Projection:
    """A-GEM: if ⟨g, g_ref⟩ < 0, remove g's component along g_ref: g − (gᵀg_ref / g_refᵀg_ref)·g_ref."""
    out = g.clone()
    projected = agem_project_([out], [g_ref])
    return Projection(out if projected else g, projected)


def solve_gem_dual(gram: np.ndarray, Gg: np.ndarray, margin: float, eps: float) -> np.ndarray:
    """The GEM dual QP in float64 from GGᵀ (T, T) and Gg (T,); returns v. Raises ValueError."""
    t = gram.shape[0]
    gram = 0.5 * (gram + gram.T) + eps * np.eye(t)
    # quadprog minimises ½ xᵀPx − aᵀx subject to Cᵀx ≥ b.
    return quadprog.solve_qp(gram, -Gg, np.eye(t), np.full(t, margin))[0]


def _dual(G: list[torch.Tensor], g: list[torch.Tensor], Gg: torch.Tensor, margin: float, eps: float) -> np.ndarray:
    """v from the T×T products of G (T, n_i) and g (n_i) blocks, formed in their own dtype."""
    gram = G[0] @ G[0].T
    for Gi in G[1:]:
        gram.addmm_(Gi, Gi.T)
    both = torch.cat([gram, Gg[:, None]], dim=1).double().cpu().numpy()  # one copy to the host
    if not np.isfinite(both).all():
        raise ValueError("non-finite gradient")
    return solve_gem_dual(both[:, :-1], both[:, -1], margin, eps)


def _products(G: list[torch.Tensor], g: list[torch.Tensor]) -> torch.Tensor:
    """Gg (T,) from blocks G (T, n_i) and g (n_i)."""
    Gg = G[0] @ g[0]
    for Gi, gi in zip(G[1:], g[1:]):
        Gg.addmv_(Gi, gi)
    return Gg


def gem_project_(g: Blocks, G: Blocks, margin: float = 0.5, eps: float = 1e-3) -> tuple[bool, bool]:
    """GEM in place on gradient blocks: g[i] has a parameter's shape, G[i] is (T, *that shape).

    Returns (projected, fallback); raises NonFinite, changing nothing, when G or g holds a
    non-finite value (the caller must not apply the step). Solves the QP only when a constraint is violated. The products
    Gg (T) and GGᵀ (T×T) are formed in the gradients' own dtype, where they live, without a
    flattened copy of G; only the T×T problem is solved in float64 on the CPU. Should quadprog
    refuse a Gram matrix formed in float32 (rounding can make a nearly singular one indefinite),
    the products are formed again in float64 before falling back to A-GEM.
    """
    T = G[0].shape[0] if len(G) else 0
    if T == 0:
        return False, False
    Gf = [Gi if Gi.dim() == 2 else Gi.reshape(T, -1) for Gi in G]
    gf = [gi if gi.dim() == 1 else gi.reshape(-1) for gi in g]  # views of g where it is contiguous, as gradients are
    Gg = _products(Gf, gf)
    low, total = torch.stack([Gg.min(), Gg.sum()]).tolist()
    if not math.isfinite(total):  # a non-finite entry anywhere in G or g makes Gg non-finite
        raise NonFinite("non-finite gradient: GEM projection not applied")
    if low >= 0:
        return False, False
    try:
        try:
            v = _dual(Gf, gf, Gg, margin, eps)
        except ValueError:
            if Gg.dtype == torch.float64:
                raise
            G64, g64 = [Gi.double() for Gi in Gf], [gi.double() for gi in gf]
            v = _dual(G64, g64, _products(G64, g64), margin, eps)
    except ValueError:
        agem_project_(g, [Gi.mean(dim=0) for Gi in G])
        return True, True
    v = torch.from_numpy(v).to(Gf[0].device, Gf[0].dtype)
    for gi, flat, Gi in zip(g, gf, Gf):
        flat.addmv_(Gi.T, v)  # g += Gᵀv, block by block, in place
        if flat.data_ptr() != gi.data_ptr():  # a non-contiguous block, flattened by a copy
            gi.copy_(flat.view(gi.shape))
    return True, False


def gem_project(g: torch.Tensor, G: torch.Tensor, margin: float = 0.5, eps: float = 1e-3) -> Projection:
    """GEM on one flat gradient g (P,) against past gradients G (T, P); see gem_project_."""
    out = g.clone()
    projected, fallback = gem_project_([out], [G], margin, eps)
    return Projection(out if projected else g, projected, fallback)
