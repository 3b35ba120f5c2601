"""Each selection score keeps what it claims, on hand-made logits."""
import math

import torch

from cl_engine.selection import el2n, entropy, margin, priority

# Three samples of true class 0: confidently right, unsure, confidently wrong.
LOGITS = torch.tensor([[8.0, 0.0, 0.0], [1.0, 1.0, 0.9], [0.0, 8.0, 0.0]])
LABELS = torch.tensor([0, 0, 0])


def top(method, k=1):
    return torch.argsort(priority(method, LOGITS, LABELS), descending=True)[:k].tolist()


def test_el2n_is_distance_of_softmax_to_onehot():
    p = torch.softmax(LOGITS, 1)
    expected = [math.sqrt((p[i, 0] - 1) ** 2 + p[i, 1] ** 2 + p[i, 2] ** 2) for i in range(3)]
    torch.testing.assert_close(el2n(LOGITS, LABELS), torch.tensor(expected))
    assert top("el2n") == [2]  # the confidently wrong sample is the hardest


def test_entropy_is_safe_when_the_softmax_saturates():
    saturated = torch.tensor([[1000.0, -1000.0, -1000.0], [0.0, 0.0, 0.0]])
    h = entropy(saturated, torch.tensor([0, 0]))
    assert torch.isfinite(h).all()
    assert h[0] == 0.0
    torch.testing.assert_close(h[1], torch.tensor(math.log(3)))
    assert top("entropy") == [1]  # the unsure sample is the most uncertain


def test_margin_is_negative_when_misclassified_and_smallest_is_hardest():
    m = margin(LOGITS, LABELS)
    p = torch.softmax(LOGITS, 1)
    torch.testing.assert_close(m, torch.stack([p[0, 0] - p[0, 1], p[1, 0] - p[1, 1], p[2, 0] - p[2, 1]]))
    assert m[0] > 0.99 and m[2] < -0.99
    assert top("margin", 2) == [2, 1]  # wrong first, then the near tie; the easy one last


def test_random_priority_is_reproducible_from_the_generator():
    a = priority("random", LOGITS, LABELS, torch.Generator().manual_seed(5))
    b = priority("random", LOGITS, LABELS, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == (3,)
