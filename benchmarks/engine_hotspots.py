"""Micro-benchmarks behind the optimisation suggestions in BENCHMARKS.md (peer comparison section).

    .venv-bench/bin/python benchmarks/engine_hotspots.py

Each item times what cl_engine does today next to a leaner way of computing the same thing, per
training step of the peer benchmark's run (MLP 64-100-100-10, batch 10, one torch thread). Times
are CPU seconds of this thread (robust to other load on a shared machine), the best of several
rounds, in microseconds per call. The alternatives are sketches for this measurement only; the
engine is not changed here. Writes benchmarks/results/engine_hotspots.json.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]  # this checkout, whatever the venv has installed

from benchmarks.common import study_parser  # noqa: E402
from cl_engine.buffer import ReplayBuffer  # noqa: E402
from cl_engine.learner import Learner  # noqa: E402
from cl_engine.config import LearnerConfig  # noqa: E402
from cl_engine.models import build_model  # noqa: E402
from cl_engine.retention import ReservoirRetention  # noqa: E402
from cl_engine.sgd import sgd_step  # noqa: E402
from cl_engine.strategies.gradients import MemoryGradients, flatten_blocks  # noqa: E402

torch.set_num_threads(1)
RESULTS: dict[str, dict[str, float]] = {}


def bench(fn, n: int = 300, rounds: int = 5) -> float:
    """Best-of-rounds CPU microseconds per call."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.thread_time()
        for _ in range(n):
            fn()
        best = min(best, (time.thread_time() - t0) / n)
    return best * 1e6


def report(group: str, **timings: float) -> None:
    RESULTS[group] = {k: round(v, 1) for k, v in timings.items()}
    print(f"{group}:")
    for k, v in timings.items():
        print(f"  {v:9.1f} us  {k}")


def model_and_batch(batch: int = 10):
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10)
    x = torch.rand(batch, 1, 8, 8)
    y = torch.randint(0, 10, (batch,))
    return model, x, y


def step_parts() -> None:
    model, x, y = model_and_batch()
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.1)

    def backward_and_step():  # the engine's step before sgd_step: gradients through .grad
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y, reduction="none").mean().backward()
        opt.step()

    def grad_and_sgd_step():  # the engine's step now: torch.autograd.grad, then sgd_step
        grads = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="none").mean(), params)
        sgd_step(opt, params, list(grads))

    def floor():  # what a naive step must do: forward, loss, gradient, p -= lr * g
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
        with torch.no_grad():
            torch._foreach_add_(params, grads, alpha=-0.1)

    grads = list(torch.autograd.grad(F.cross_entropy(model(x), y), params))
    for p, g in zip(params, grads):
        p.grad = g.clone()
    learner = Learner(LearnerConfig(strategy="naive", device="cpu"), (1, 8, 8), 10)

    report("naive step, parts (per step)",
           **{"zero_grad + backward + optimizer.step() (the engine before)": bench(backward_and_step),
              "autograd.grad + sgd_step (as the engine)": bench(grad_and_sgd_step),
              "floor: forward + autograd.grad + foreach SGD update": bench(floor),
              "torch.optim.SGD.step() alone": bench(opt.step),
              "sgd_step alone (as the engine)": bench(lambda: sgd_step(opt, params, grads)),
              "Learner.check_batch": bench(lambda: learner.check_batch(x, y))})

    learner_n = Learner(LearnerConfig(strategy="naive", device="cpu"), (1, 8, 8), 10)
    report("naive step, whole (per step)",
           **{"Learner.observe (naive)": bench(lambda: learner_n.observe(x, y, 0), n=200),
              "floor (above)": bench(floor, n=200)})


def reservoir() -> None:
    buf = ReplayBuffer(500)
    ret = ReservoirRetention(buf)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(10, 1, 8, 8)
    y = torch.randint(0, 10, (10,))
    for _ in range(100):  # fill: the steady state is the full-buffer case
        ret.observe(x, y, 0, g)

    # A vectorised reservoir for a batch: draw all n positions at once, keep the last write per slot.
    state = {"seen": ret.seen}

    def vectorised():
        n, cap = len(y), buf.capacity
        seen = state["seen"]
        j = (torch.rand(n, generator=g, dtype=torch.float64) * torch.arange(seen + 1, seen + n + 1)).long()
        hit = j < cap
        slots, idx = j[hit], hit.nonzero().flatten()
        # last write wins: reverse, unique keeps the first occurrence via scatter of reversed order
        if len(slots):
            order = torch.arange(len(slots) - 1, -1, -1)
            last = torch.full((cap,), -1, dtype=torch.int64).scatter_reduce(0, slots[order], idx[order], "amax")
            chosen = last[last >= 0]
            dest = (last >= 0).nonzero().flatten()
            buf.x[dest] = x[chosen]
            buf.y[dest] = y[chosen]
            buf.bucket[dest] = 0
        state["seen"] = seen + n

    def current():
        ret.observe(x, y, 0, g)

    gen = torch.Generator().manual_seed(1)
    report("replay memory (per step, full buffer of 500)",
           **{"ReservoirRetention.observe (as the engine)": bench(current),
              "vectorised reservoir + write": bench(vectorised),
              "ReplayBuffer.sample(10) (randperm of 500)": bench(lambda: buf.sample(10, gen)),
              "torch.randint-based draw of 10 (with replacement)": bench(
                  lambda: buf.get(torch.randint(buf.size, (10,), generator=gen)))})


def gem_gradients() -> None:
    model, _, _ = model_and_batch()
    params = list(model.parameters())
    m = 256
    timings = {}
    for T in (1, 2, 4):
        buf = ReplayBuffer(T * m)
        xs = torch.rand(T * m, 1, 8, 8)
        ys = torch.randint(0, 10, (T * m,))
        buf.write(torch.arange(T * m), xs, ys, torch.arange(T).repeat_interleave(m))
        buckets = list(range(T))

        engine, vmapped = MemoryGradients(model), MemoryGradients(model, path="vmap")
        assert engine.path == "linear"

        def engine_rows():  # the engine's choice for this MLP
            return flatten_blocks(engine(buf, buckets))

        def vmap_rows():  # the engine's path for models other than Linear stacks without batch norm
            return flatten_blocks(vmapped(buf, buckets))

        def loop_rows():  # Avalanche's way: one forward + backward per past bucket
            rows = []
            for t in buckets:
                model.zero_grad(set_to_none=True)
                F.cross_entropy(model(xs[t * m:(t + 1) * m]), ys[t * m:(t + 1) * m]).backward()
                rows.append(torch.cat([p.grad.reshape(-1) for p in params]))
            return torch.stack(rows)

        def floor():  # one forward + backward over the same T*m samples in one batch
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(xs), ys).backward()

        G_e, G_v, G_l = engine_rows(), vmap_rows(), loop_rows()
        assert torch.allclose(G_e, G_l, atol=1e-5) and torch.allclose(G_v, G_l, atol=1e-5), "gradients disagree"
        timings.update({
            f"T={T}: one pass + per-layer bmm (the engine's linear path, MLPs)": bench(engine_rows, n=30),
            f"T={T}: vmap per-bucket gradients (the engine's path for other models)": bench(vmap_rows, n=30),
            f"T={T}: loop of T backward passes (Avalanche's way)": bench(loop_rows, n=30),
            f"T={T}: floor: one forward+backward over T*{m} samples": bench(floor, n=30),
        })
    report("GEM memory gradients G (per step, 256 memories per past bucket)", **timings)


def main(argv=None) -> int:
    study_parser(__doc__).parse_args(argv)  # no flags: --help says what it does instead of running it
    step_parts()
    reservoir()
    gem_gradients()
    out = ROOT / "benchmarks" / "results" / "engine_hotspots.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                               "unit": "CPU microseconds per call, best of 5 rounds", "results": RESULTS}, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
