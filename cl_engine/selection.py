"""Sample-selection scores: which samples a bucket leaves behind in the replay memory.

Every score is a pure function of (logits, labels) and is oriented the same way: a HIGHER
priority means a harder, more informative sample that retention keeps first.
- el2n:    ‖softmax(z) − onehot(y)‖₂ (Paul et al. 2021); 0 for a confident correct answer, up to √2.
- entropy: Shannon entropy of softmax(z), from log_softmax, so a saturated softmax gives 0, never NaN.
- margin:  p_y − max_{k≠y} p_k, in probabilities; negative when misclassified. The hardest sample
           is the one with the SMALLEST margin, so the priority is −margin.
- random:  uniform noise from the learner's generator: retention becomes a uniform random sample.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

SELECTIONS = ("random", "el2n", "entropy", "margin")


def el2n(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    probs = F.softmax(logits.float(), dim=1)
    return torch.linalg.vector_norm(probs - F.one_hot(labels, probs.shape[1]).float(), dim=1)


def entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    log_probs = F.log_softmax(logits.float(), dim=1)
    return -(log_probs.exp() * log_probs).sum(dim=1)


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    probs = F.softmax(logits.float(), dim=1)
    true = probs.gather(1, labels[:, None]).squeeze(1)
    others = probs.scatter(1, labels[:, None], float("-inf"))
    return true - others.max(dim=1).values


def priority(method: str, logits: torch.Tensor | None, labels: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Keep-first priority of each sample (higher is kept first) under `method`. `random` does not read
    the logits (None is fine: the caller need not compute them); the others need them."""
    if method == "random":
        return torch.rand(labels.shape[0], generator=generator).to(labels.device)
    if method == "el2n":
        return el2n(logits, labels)
    if method == "entropy":
        return entropy(logits, labels)
    if method == "margin":
        return -margin(logits, labels)
    raise ValueError(f"unknown selection {method!r}; expected one of {', '.join(SELECTIONS)}")
