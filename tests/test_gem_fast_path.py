"""The optimised GEM / A-GEM steps against straightforward references, to float tolerance.

The engine computes the memories' gradients in one batched pass (per-layer matmuls, vmap, or a
loop for batch norm), reads memories as views of the buffer, and projects per-parameter blocks
in place. The references here do it the plain way: one forward and backward per past bucket on
that bucket's samples, flattened gradients, the dual QP in float64 through quadprog.
"""
import copy

import numpy as np
import pytest
import quadprog
import torch
from torch import nn
from torch.nn import functional as F

from cl_engine import Learner, LearnerConfig
from cl_engine.buffer import ReplayBuffer
from cl_engine.models import build_model
from cl_engine.strategies.gradients import MemoryGradients, flatten_blocks, gradient_path


def flat_grads(model):
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.parameters()])


def reference_rows(model, buffer, buckets):
    """One forward and backward per bucket, on a copy so that batch-norm statistics stay put."""
    model = copy.deepcopy(model).train()
    rows = []
    for b in buckets:
        model.zero_grad(set_to_none=True)
        x, y = buffer.get(buffer.slots(torch.tensor([b])))
        F.cross_entropy(model(x), y).backward()
        rows.append(flat_grads(model))
    return torch.stack(rows)


def filled_buffer(sizes, shape, order=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    buf = ReplayBuffer(sum(sizes) + 5)
    for b in order or range(len(sizes)):
        n = sizes[b]
        buf.write(torch.arange(len(buf), len(buf) + n), torch.randn(n, *shape, generator=g),
                  torch.randint(10, (n,), generator=g), b)
    return buf


class Tanhy(nn.Module):  # no batch norm, not a plain stack of Linear layers: the vmap path
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(64, 32), nn.Linear(32, 10)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x.flatten(1))))


def small_bn_net():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 10))


MODELS = {
    "linear path (mlp)": (lambda: build_model("mlp", (1, 8, 8), 10), "linear"),
    "linear path (linear probe)": (lambda: build_model("linear", (1, 8, 8), 10), "linear"),
    "vmap path": (Tanhy, "vmap"),
    "loop path (batch norm)": (small_bn_net, "loop"),
}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("layout", ["equal runs", "uneven", "interleaved order"])
def test_memory_gradients_equal_one_backward_per_bucket(name, layout):
    make, path = MODELS[name]
    torch.manual_seed(0)
    model = make()
    assert gradient_path(model) == path
    if layout == "equal runs":
        buf, buckets = filled_buffer((12, 12, 12), (1, 8, 8)), [0, 1, 2]
    elif layout == "uneven":
        buf, buckets = filled_buffer((12, 7, 12), (1, 8, 8)), [0, 1, 2]
    else:
        buf, buckets = filled_buffer((9, 9, 9), (1, 8, 8), order=[2, 0, 1]), [0, 1, 2]
    blocks = MemoryGradients(model)(buf, buckets)
    assert [b.shape for b in blocks] == [(3, *p.shape) for p in model.parameters()]
    torch.testing.assert_close(flatten_blocks(blocks), reference_rows(model, buf, buckets), rtol=1e-5, atol=1e-6)


def test_a_shared_layer_sums_its_calls():
    """Weight sharing: the layer used twice gets the sum of both calls' contributions."""
    layer = nn.Linear(8, 8)
    model = nn.Sequential(layer, nn.ReLU(), layer, nn.ReLU(), nn.Linear(8, 10))
    buf = filled_buffer((6, 6), (8,))
    torch.testing.assert_close(flatten_blocks(MemoryGradients(model)(buf, [0, 1])), reference_rows(model, buf, [0, 1]),
                               rtol=1e-5, atol=1e-6)


def test_a_hooked_model_leaves_the_linear_path_and_its_hook_runs():
    """The linear path runs the leaves itself; a model with a forward hook takes the vmap path,
    which calls the modules (and so the hook), and its rows match the reference."""
    model = build_model("mlp", (8,), 10)
    assert gradient_path(model) == "linear"
    calls = []
    model[2].register_forward_hook(lambda mod, inp, out: calls.append(len(out)) or out * 0.5)
    assert gradient_path(model) == "vmap"
    buf = filled_buffer((6, 6), (8,))
    rows = flatten_blocks(MemoryGradients(model)(buf, [0, 1]))
    assert calls  # the hook ran
    torch.testing.assert_close(rows, reference_rows(model, buf, [0, 1]), rtol=1e-5, atol=1e-6)


def test_equal_runs_are_read_in_place_and_the_grouping_is_cached():
    buf = filled_buffer((5, 5, 5), (3,))
    x, y, counts = buf.grouped([1, 2])
    assert x.shape == (2, 5, 3) and counts.tolist() == [5, 5]
    assert x.data_ptr() == buf.x[5].data_ptr()  # a view of the storage, no copy
    assert buf.grouped([1, 2])[0] is x
    buf.write(torch.tensor([0]), torch.zeros(1, 3), torch.tensor([1]), 0)  # any change invalidates it
    assert buf.grouped([1, 2])[0] is not x
    uneven = filled_buffer((5, 2), (3,))
    x, y, counts = uneven.grouped([0, 1])
    assert x.shape == (2, 5, 3) and counts.tolist() == [5, 2]
    torch.testing.assert_close(x[1, :2], uneven.x[5:7])
    buf.size = 0
    assert buf.buckets_held() == []


def reference_gem_step(model, optimizer, buffer, x, y, bucket, margin, eps):
    """GEM as the paper's code does it: per-bucket rows, flat g, the dual QP in float64."""
    past = sorted(set(buffer.bucket[: len(buffer)].tolist()) - {bucket})
    G = reference_rows(model, buffer, past).double() if past else None
    optimizer.zero_grad(set_to_none=True)
    model.train()
    F.cross_entropy(model(x), y).backward()
    projected = False
    if G is not None:
        g = flat_grads(model).double()
        Gg = G @ g
        if (Gg < 0).any():
            gram = G @ G.T
            gram = (0.5 * (gram + gram.T) + eps * torch.eye(len(past), dtype=torch.float64)).numpy()
            v = quadprog.solve_qp(gram, -Gg.numpy(), np.eye(len(past)), np.full(len(past), margin))[0]
            g = g + torch.from_numpy(v) @ G
            offset = 0
            for p in model.parameters():
                p.grad = g[offset: offset + p.numel()].view_as(p).float().clone()
                offset += p.numel()
            projected = True
    optimizer.step()
    return projected


def reference_agem_step(model, optimizer, buffer, generator, x, y, bucket, sample_size):
    past = sorted(set(buffer.bucket[: len(buffer)].tolist()) - {bucket})
    ref = None
    if past:
        mx, my = buffer.sample(sample_size, generator, torch.tensor(past))
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(mx), my).backward()
        ref = flat_grads(model)
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    if ref is not None:
        g = flat_grads(model)
        dot = torch.dot(g, ref)
        if dot < 0:
            g = g - dot / torch.dot(ref, ref) * ref
            offset = 0
            for p in model.parameters():
                p.grad = g[offset: offset + p.numel()].view_as(p).clone()
                offset += p.numel()
    optimizer.step()


@pytest.mark.parametrize("strategy", ["gem", "agem"])
@pytest.mark.parametrize("capacity", [1000, 50])  # 50: bucket quotas of 17/17/16, uneven memories
def test_optimised_step_equals_reference_step(strategy, capacity):
    """Step by step through four buckets, each optimised update equals the reference update."""
    config = LearnerConfig(strategy=strategy, model="mlp", lr=0.1, momentum=0.5, weight_decay=1e-4,
                           memory_per_bucket=20, buffer_capacity=capacity, agem_sample_size=16)
    learner = Learner(config, (1, 8, 8), 10)
    g = torch.Generator().manual_seed(5)
    projections = 0
    for bucket in range(4):
        for _ in range(6):
            x, y = torch.randn(10, 1, 8, 8, generator=g), torch.randint(10, (10,), generator=g)
            model = copy.deepcopy(learner.model)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5, weight_decay=1e-4)
            optimizer.load_state_dict(copy.deepcopy(learner.optimizer.state_dict()))  # own momentum
            if strategy == "gem":
                projections += reference_gem_step(model, optimizer, learner.buffer, x, y, bucket,
                                                  config.memory_strength, config.qp_eps)
            else:
                generator = torch.Generator().manual_seed(0)
                generator.set_state(learner.generator.get_state())
                reference_agem_step(model, optimizer, learner.buffer, generator, x, y, bucket, 16)
            learner.observe(x, y, bucket)
            for (name, a), b in zip(learner.model.named_parameters(), model.parameters()):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name} bucket {bucket}: {m}")
        learner.end_bucket(bucket)
    if strategy == "gem":
        assert projections == learner.counters["projections"] > 0
        if capacity == 50:
            assert sorted(learner.buffer.counts_by_bucket().values()) == [12, 12, 13, 13]
