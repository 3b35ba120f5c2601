"""sgd_step applies torch.optim.SGD's update from a gradient list, bit for bit, and keeps its state."""
import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cl_engine.sgd import sgd_step


def two_models():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3), nn.Linear(3, 3))
    b = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3), nn.Linear(3, 3))
    b.load_state_dict(a.state_dict())
    return a, b


def loss_of(model, x, y, skip_last: bool):
    h = model[2](model[1](model[0](x)))
    return F.cross_entropy(h if skip_last else model[3](h), y)  # skip_last: the last layer gets no gradient


@pytest.mark.parametrize("settings", [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, weight_decay=1e-2, dampening=0.1),
    dict(lr=0.05, momentum=0.5, nesterov=True),
    dict(lr=0.05, weight_decay=1e-3, maximize=True),
])
def test_matches_torch_sgd_step_bit_for_bit(settings):
    ours, ref = two_models()
    opt_ours = torch.optim.SGD(ours.parameters(), **settings)
    opt_ref = torch.optim.SGD(ref.parameters(), **settings)
    params = list(ours.parameters())
    g = torch.Generator().manual_seed(1)
    for step in range(6):
        x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
        skip_last = step % 3 == 1
        grads = torch.autograd.grad(loss_of(ours, x, y, skip_last), params, allow_unused=True)
        assert (grads[-1] is None) == skip_last
        sgd_step(opt_ours, params, list(grads))
        opt_ref.zero_grad(set_to_none=True)
        loss_of(ref, x, y, skip_last).backward()
        opt_ref.step()
        for p, q in zip(ours.parameters(), ref.parameters()):
            assert torch.equal(p, q), f"step {step}: weights differ from torch.optim.SGD"
    # The momentum buffers live in the optimizer's own state, so its state_dict is torch's.
    state_ours, state_ref = opt_ours.state_dict(), opt_ref.state_dict()
    assert state_ours["param_groups"] == state_ref["param_groups"]
    assert state_ours["state"].keys() == state_ref["state"].keys()
    for k in state_ref["state"]:
        assert torch.equal(state_ours["state"][k]["momentum_buffer"], state_ref["state"][k]["momentum_buffer"])


def test_continues_from_a_loaded_torch_state():
    ours, ref = two_models()
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    loss_of(ref, x, y, False).backward()
    opt_ref.step()
    ours.load_state_dict(ref.state_dict())
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
    opt_ours.load_state_dict(copy.deepcopy(opt_ref.state_dict()))  # as from a checkpoint: no shared buffers
    params = list(ours.parameters())
    sgd_step(opt_ours, params, list(torch.autograd.grad(loss_of(ours, x, y, False), params)))
    opt_ref.zero_grad(set_to_none=True)
    loss_of(ref, x, y, False).backward()
    opt_ref.step()
    assert all(torch.equal(p, q) for p, q in zip(ours.parameters(), ref.parameters()))


def test_refuses_several_parameter_groups():
    model, _ = two_models()
    opt = torch.optim.SGD([{"params": model[0].parameters()}, {"params": model[2].parameters()}], lr=0.1)
    with pytest.raises(ValueError, match="one parameter group; this optimizer has 2"):
        sgd_step(opt, list(model[0].parameters()), [None, None])
