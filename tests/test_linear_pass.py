"""LinearPass, the hand-written forward and backward of linear-only models, against autograd."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cl_engine import Learner, LearnerConfig
from cl_engine.strategies.linear_pass import PER_SAMPLE_PASSES, LinearPass, linear_only

ACTIVATIONS = [nn.ReLU(), nn.LeakyReLU(0.2), nn.ELU(0.7), nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU(), nn.Tanh(),
               nn.Sigmoid(), nn.Identity()]


def chain(activation, bias=True):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16, bias=bias), activation, nn.Linear(16, 8),
                         nn.Sequential(activation, nn.Linear(8, 5)))


def autograd_gradient(model, x, y, weight):
    params = [p for p in model.parameters() if p.requires_grad]
    losses = F.cross_entropy(model(x), y, reduction="none")
    return losses.detach(), model(x).detach(), torch.autograd.grad((losses * weight).sum(), params)


def test_every_per_sample_module_is_covered():
    assert {type(a) for a in ACTIVATIONS} | {nn.Flatten} == set(PER_SAMPLE_PASSES)


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=lambda a: repr(a))
def test_gradient_logits_and_losses_equal_autograd(activation):
    model = chain(activation)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(7, 3, 4, generator=g), torch.randint(5, (7,), generator=g)
    weight = torch.rand(7, generator=g)
    blocks, grads, logits, losses = LinearPass(model)(x, y, weight)
    ref_losses, ref_logits, ref_grads = autograd_gradient(model, x, y, weight)
    assert blocks == []
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(losses, ref_losses)
    for (name, _), got, want in zip(model.named_parameters(), grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("activation", [nn.ReLU(), nn.Tanh()], ids=repr)
def test_groups_get_their_own_gradients_and_the_rest_theirs(activation):
    """Rows 0..T·m-1 in T groups: each group's block is the gradient of its rows alone."""
    model = chain(activation, bias=False)
    g = torch.Generator().manual_seed(2)
    T, m, rest = 3, 4, 5
    x, y = torch.randn(T * m + rest, 12, generator=g), torch.randint(5, (T * m + rest,), generator=g)
    weight = torch.rand(T * m + rest, generator=g)
    blocks, grads, logits, losses = LinearPass(model)(x, y, weight, T, m)
    for t in range(T):
        rows = slice(t * m, (t + 1) * m)
        want = autograd_gradient(model, x[rows], y[rows], weight[rows])[2]
        for block, w in zip(blocks, want):
            torch.testing.assert_close(block[t], w, rtol=1e-5, atol=1e-7)
    ref_losses, ref_logits, ref_grads = autograd_gradient(model, x[T * m:], y[T * m:], weight[T * m:])
    torch.testing.assert_close(losses, ref_losses)
    torch.testing.assert_close(logits, ref_logits)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_frozen_layers_are_left_out_and_the_backward_stops_above_them():
    model = chain(nn.ReLU())
    for p in model[1].parameters():
        p.requires_grad_(False)
    model[4][1].bias.requires_grad_(False)
    lp = LinearPass(model)
    assert lp.first_trained == 3 and len(lp.params) == 3
    x, y, w = torch.randn(6, 12), torch.randint(5, (6,)), torch.full((6,), 1 / 6)
    _, grads, _, _ = lp(x, y, w)
    for got, want in zip(grads, autograd_gradient(model, x, y, w)[2]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    blocks, _, _, _ = lp(x, y, w, 2, 3)  # grouped: every trained parameter's block is written, none left stale
    for t in range(2):
        rows = slice(3 * t, 3 * t + 3)
        for block, want in zip(blocks, autograd_gradient(model, x[rows], y[rows], w[rows])[2]):
            torch.testing.assert_close(block[t], want, rtol=1e-5, atol=1e-7)


def test_a_model_that_is_not_a_chain_is_refused():
    model = chain(nn.ReLU())
    model[2].register_forward_hook(lambda mod, inp, out: out)
    assert not linear_only(model)
    with pytest.raises(ValueError, match="nn.Linear and per-sample modules only"):
        LinearPass(model)
    assert not linear_only(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)))


@pytest.mark.parametrize("strategy", ["naive", "replay", "agem"])
def test_a_learner_step_on_an_mlp_equals_the_autograd_step(strategy):
    """The strategies take LinearPass for the mlp: one step, against torch's own SGD on autograd."""
    config = LearnerConfig(strategy=strategy, model="mlp", lr=0.1, momentum=0.9, buffer_capacity=0)
    learner = Learner(config, (1, 8, 8), 10)
    assert learner.strategy.linear is not None
    reference = Learner(config, (1, 8, 8), 10).model
    reference.load_state_dict(learner.model.state_dict())
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        x, y = torch.randn(10, 1, 8, 8, generator=g), torch.randint(10, (10,), generator=g)
        learner.observe(x, y, 0)
        optimizer.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        optimizer.step()
    for a, b in zip(learner.model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
