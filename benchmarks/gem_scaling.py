"""GEM's cost as past buckets accumulate (issue 7, study 2): step time against T, next to its floor.

    python benchmarks/gem_scaling.py            # default, ~3-5 min on 2 cores
    python benchmarks/gem_scaling.py --quick    # smoke test, well under a minute

Writes benchmarks/results/gem_scaling.json, prints a table and rewrites the `gem_scaling` section
of BENCHMARKS.md.

Set-up (the GEM paper's MNIST one, on synthetic data of MNIST's shape): cl_engine's `mlp`
(784-100-100-10), SGD lr 0.1, batch 10, 256 memories per past bucket. The data are synthetic:
784-d Gaussian class clusters (10 classes), each bucket seeing them through its own fixed
permutation of the inputs, as permuted MNIST does; no dataset download is needed. A shared
model is first trained (naive SGD, one pass) over the T past buckets so that the memories'
gradients are those of a model that has learned them; every method starts from its weights.

For each T, four things are timed per step, side by side in one process, in rotating order:
- `gem`, `agem`, `replay`: a cl_engine Learner (LearnerConfig + Learner.observe, the engine's own
  code) whose buffer is pre-filled with T buckets of 256 memories and whose open bucket is T.
  `replay` draws a replay batch of 10 (incoming 10 + 10 memories, one loss).
- `floor`: what GEM cannot do with less: one forward and backward of the same MLP over the
  same samples (T·256 memories + the batch of 10) in one batch, then an SGD step.
Each repetition times `--steps` consecutive steps per method (after a warm-up); the table shows
medians over repetitions of the per-step thread-CPU time (robust to other load on a shared
machine; wall times are in the JSON). `QP` is how often GEM's QP ran (a constraint was
violated), from the learner's projection counter.

Also: cProfile and torch.profiler top entries of GEM's step at `--profile-T`, and the cost of the
"loop" and "vmap" gradient paths of strategies/gradients.py at T=10 for the reduced ResNet18
(3×32×32), with fewer memories per bucket (`--conv-memory`) and steps so it stays minutes on a CPU.
"""
from __future__ import annotations

import copy
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]  # this checkout, whatever the venv has installed

from benchmarks.common import (  # noqa: E402
    QUICK_SETTINGS, command_line, entry_point, machine, machine_line, median, output_flags, section_head, study_parser,
    timed, write_markdown, write_results)
from cl_engine import LearnerConfig  # noqa: E402
from cl_engine.learner import Learner  # noqa: E402
from cl_engine.models import build_model  # noqa: E402
from cl_engine.sgd import sgd_step  # noqa: E402
from cl_engine.strategies.gradients import MemoryGradients  # noqa: E402

SECTION = "gem_scaling"
METHODS = ("gem", "agem", "replay", "floor")
GOAL = 1.5  # GEM within 1.5x of the floor at 10 past buckets


# -- data -----------------------------------------------------------------------------------------

def synthetic_buckets(num_buckets: int, per_bucket: int, shape: tuple[int, ...], classes: int, seed: int):
    """Gaussian class clusters seen through a fixed input permutation per bucket (bucket 0: none)."""
    g = torch.Generator().manual_seed(seed)
    d = int(torch.tensor(shape).prod())
    means = torch.randn(classes, d, generator=g)
    out = []
    for b in range(num_buckets):
        y = torch.randint(0, classes, (per_bucket,), generator=g)
        x = means[y] + 1.5 * torch.randn(per_bucket, d, generator=g)
        if b:
            x = x[:, torch.randperm(d, generator=g)]
        out.append((x.view(per_bucket, *shape).contiguous(), y))
    return out


def pretrain(model_name: str, shape, classes: int, buckets, lr: float, batch: int, seed: int) -> dict:
    """Initial weights: one naive pass over each past bucket's samples, in order."""
    torch.manual_seed(seed)
    model = build_model(model_name, shape, classes)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    for x, y in buckets:
        for i in range(0, len(y), batch):
            opt.zero_grad()
            F.cross_entropy(model(x[i: i + batch]), y[i: i + batch]).backward()
            opt.step()
    return copy.deepcopy(model.state_dict())


def prefilled_learner(strategy: str, model_name: str, shape, classes: int, memories, state: dict, args,
                      seed: int) -> Learner:
    """A Learner whose buffer holds T buckets of memories (consecutive equal runs, as bucket
    retention keeps them) and whose open bucket is T."""
    T, m = len(memories), len(memories[0][1])
    config = LearnerConfig(model=model_name, strategy=strategy, lr=args.lr, seed=seed, device="cpu",
                           buffer_capacity=T * m, memory_per_bucket=m, memory_strength=args.memory_strength,
                           qp_eps=1e-3, agem_sample_size=args.agem_sample_size,
                           replay_batch_size=args.batch_size,
                           retention="per-bucket" if strategy in ("gem", "agem") else "reservoir")
    learner = Learner(config, shape, classes)
    learner.model.load_state_dict(state)
    x = torch.cat([mx for mx, _ in memories])
    y = torch.cat([my for _, my in memories])
    bucket = torch.arange(T).repeat_interleave(m)
    learner.buffer.write(torch.arange(T * m), x, y, bucket)
    learner.open_bucket = T
    return learner


class Floor:
    """One forward+backward over memories + batch in one batch, and an SGD step."""

    def __init__(self, model_name, shape, classes, memories, state, lr):
        self.model = build_model(model_name, shape, classes)
        self.model.load_state_dict(state)
        self.model.train()
        self.params = list(self.model.parameters())
        self.opt = torch.optim.SGD(self.params, lr=lr)
        # memories staged once with room for the batch behind them, as GEM stages them: each step
        # copies only the batch
        self.xs = torch.cat([mx for mx, _ in memories])
        self.ys = torch.cat([my for _, my in memories])
        self.n = len(self.ys)

    def step(self, x, y):
        b = len(y)
        if self.xs.shape[0] != self.n + b:
            self.xs = torch.cat([self.xs[: self.n], x])
            self.ys = torch.cat([self.ys[: self.n], y])
        self.xs[self.n:], self.ys[self.n:] = x, y
        grads = torch.autograd.grad(F.cross_entropy(self.model(self.xs), self.ys), self.params)
        sgd_step(self.opt, self.params, list(grads))  # the engine's own update, as its strategies take it


class Incoming:
    """Batches of the open bucket, cycling."""

    def __init__(self, x, y, batch):
        self.x, self.y, self.batch, self.i = x, y, batch, 0

    def __call__(self):
        if self.i + self.batch > len(self.y):
            self.i = 0
        s = slice(self.i, self.i + self.batch)
        self.i += self.batch
        return self.x[s], self.y[s]


# -- the MLP sweep --------------------------------------------------------------------------------

def sweep(args) -> tuple[list[dict], dict]:
    shape, classes, m = (784,), 10, args.memory_per_bucket
    T_max = max(args.T)
    data = synthetic_buckets(T_max + 1, max(m, 1), shape, classes, args.seed)
    points, runs = {}, []
    for T in args.T:
        memories = data[:T]
        state = pretrain("mlp", shape, classes, memories, args.lr, args.batch_size, args.seed)
        # the open bucket T's samples: its own permutation (the T-th bucket of the same generator)
        nx, ny = synthetic_buckets(T + 1, 2000, shape, classes, args.seed)[T]
        p = {"learners": {s: prefilled_learner(s, "mlp", shape, classes, memories, state, args, args.seed)
                          for s in ("gem", "agem", "replay")},
             "floor": Floor("mlp", shape, classes, memories, state, args.lr),
             "incoming": Incoming(nx, ny, args.batch_size)}
        points[T] = p
    # warm-up: a few steps of everything
    for T, p in points.items():
        for method in METHODS:
            step_fn(p, method, T)()
    for rep in range(args.reps):
        for T, p in points.items():
            order = METHODS[rep % len(METHODS):] + METHODS[: rep % len(METHODS)]
            for method in order:
                learner = p["learners"].get(method)
                proj0 = learner.counters["projections"] if learner else 0
                fb0 = learner.counters["qp_fallbacks"] if learner else 0
                wall, cpu = timed(step_fn(p, method, T), args.steps)
                run = {"rep": rep, "T": T, "method": method, "steps": args.steps, "wall_ms": wall * 1e3,
                       "cpu_ms": cpu * 1e3}
                if learner:
                    run["projections"] = learner.counters["projections"] - proj0
                    run["qp_fallbacks"] = learner.counters["qp_fallbacks"] - fb0
                runs.append(run)
        print(f"rep {rep + 1}/{args.reps}: " + " ".join(
            f"T={r['T']}:{r['method']} {r['cpu_ms']:.1f}ms" for r in runs if r["rep"] == rep and r["method"] == "gem"),
            file=sys.stderr)
    return runs, points


def step_fn(p, method, T):
    inc = p["incoming"]
    if method == "floor":
        def f():
            x, y = inc()
            p["floor"].step(x, y)
        return f
    learner = p["learners"][method]

    def f():
        x, y = inc()
        learner.observe(x, y, T)
    return f


def summarise(runs, Ts) -> list[dict]:
    rows = []
    for T in Ts:
        row = {"T": T}
        for method in METHODS:
            rs = [r for r in runs if r["T"] == T and r["method"] == method]
            row[f"{method}_cpu_ms"] = median([r["cpu_ms"] for r in rs])
            row[f"{method}_wall_ms"] = median([r["wall_ms"] for r in rs])
            if method in ("gem", "agem"):
                steps = sum(r["steps"] for r in rs)
                row[f"{method}_projection_rate"] = sum(r["projections"] for r in rs) / steps
                row[f"{method}_qp_fallbacks"] = sum(r["qp_fallbacks"] for r in rs)
        # GEM and the floor timed back to back in each repetition: the ratio within a repetition
        floor = {r["rep"]: r["cpu_ms"] for r in runs if r["T"] == T and r["method"] == "floor"}
        paired = [r["cpu_ms"] / floor[r["rep"]] for r in runs if r["T"] == T and r["method"] == "gem" and r["rep"] in floor]
        row["gem_over_floor_paired"] = paired
        row["gem_over_floor_paired_median"] = median(paired)
        for method in ("gem", "agem", "replay"):
            row[f"{method}_over_floor"] = row[f"{method}_cpu_ms"] / row["floor_cpu_ms"]
            row[f"{method}_over_floor_wall"] = row[f"{method}_wall_ms"] / row["floor_wall_ms"]
        rows.append(row)
    return rows


# -- where GEM's time goes ------------------------------------------------------------------------

def profile_gem(points, T: int, steps: int) -> dict:
    p = points[T]
    fn = step_fn(p, "gem", T)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        fn()
    prof.disable()
    stats = pstats.Stats(prof)
    total = stats.total_tt
    entries = []
    for (file, line, name), (cc, nc, tt, ct, _) in stats.stats.items():
        entries.append({"function": f"{Path(file).name}:{line}({name})", "calls": nc, "tottime_ms_per_step":
                        tt / steps * 1e3, "cumtime_ms_per_step": ct / steps * 1e3})
    by_cum = sorted(entries, key=lambda e: -e["cumtime_ms_per_step"])[:25]
    by_tot = sorted(entries, key=lambda e: -e["tottime_ms_per_step"])[:15]

    def cum(name_part):
        hits = [e for e in entries if name_part in e["function"]]
        return max((e["cumtime_ms_per_step"] for e in hits), default=0.0)

    parts = {"observe": cum("(observe)"), "memory+batch gradients (MemoryGradients.with_batch)": cum("(with_batch)"),
             "projection (gem_project_)": cum("(gem_project_)"), "QP (solve_gem_dual, quadprog)": cum("(solve_gem_dual)"),
             "optimizer step (sgd_step)": cum("(sgd_step)"), "retention.observe": cum("retention.py")}
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(12)
    # torch.profiler: the operators underneath
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as tp:
        for _ in range(max(1, steps // 2)):
            fn()
    ops = sorted(tp.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]
    n = max(1, steps // 2)
    torch_top = [{"op": e.key, "calls_per_step": e.count / n, "self_cpu_ms_per_step": e.self_cpu_time_total / n / 1e3}
                 for e in ops]
    return {"T": T, "steps": steps, "cprofile_total_ms_per_step": total / steps * 1e3, "parts_ms_per_step": parts,
            "cprofile_top_cumtime": by_cum, "cprofile_top_tottime": by_tot, "cprofile_text": buf.getvalue(),
            "torch_profiler_top_self_cpu": torch_top}


# -- conv model: the loop and vmap gradient paths -------------------------------------------------

def conv_paths(args) -> dict:
    from torch.func import replace_all_batch_norm_modules_

    shape, classes, T, m, b = (3, 32, 32), 10, args.conv_T, args.conv_memory, args.batch_size
    data = synthetic_buckets(T + 1, m, shape, classes, args.seed)
    memories = data[:T]
    nx, ny = synthetic_buckets(T + 1, 200, shape, classes, args.seed)[T]
    torch.manual_seed(args.seed)
    state = build_model("reduced-resnet18", shape, classes).state_dict()
    gem = prefilled_learner("gem", "reduced-resnet18", shape, classes, memories, state, args, args.seed)
    floor = Floor("reduced-resnet18", shape, classes, memories, state, args.lr)
    loop_model = build_model("reduced-resnet18", shape, classes)
    loop_model.load_state_dict(state)
    loop = MemoryGradients(loop_model, "loop")
    # vmap cannot update batch-norm running statistics per bucket; without them (batch statistics
    # only, as in training mode anyway) it computes the same gradients.
    vmap_model = build_model("reduced-resnet18", shape, classes)
    vmap_model.load_state_dict(state)
    replace_all_batch_norm_modules_(vmap_model)
    vmap = MemoryGradients(vmap_model, "vmap")
    buf = gem.buffer
    past = list(range(T))
    inc = Incoming(nx, ny, b)
    fns = {
        "gem_step (loop path, Learner.observe)": lambda: gem.observe(*inc(), T),
        "loop: memory gradients only": lambda: loop(buf, past),
        "vmap: memory gradients only": lambda: vmap(buf, past),
        "floor: one fwd+bwd over T·m+b, SGD step": lambda: floor.step(*inc()),
    }
    check = None
    try:
        Gl, Gv = loop(buf, past), vmap(buf, past)
        check = max(float((a - c).abs().max() / (a.abs().max() + 1e-12)) for a, c in zip(Gl, Gv))
    except Exception as e:  # report, don't die
        check = f"error: {e}"
    for f in fns.values():
        f()
    runs = []
    for rep in range(args.conv_reps):
        for name, f in fns.items():
            wall, cpu = timed(f, args.conv_steps)
            runs.append({"rep": rep, "what": name, "wall_ms": wall * 1e3, "cpu_ms": cpu * 1e3})
    rows = []
    floor_ms = median([r["cpu_ms"] for r in runs if r["what"].startswith("floor")])
    for name in fns:
        ms = median([r["cpu_ms"] for r in runs if r["what"] == name])
        rows.append({"what": name, "cpu_ms": ms, "wall_ms": median([r["wall_ms"] for r in runs if r["what"] == name]),
                     "over_floor": ms / floor_ms})
    return {"model": "reduced-resnet18", "input_shape": shape, "T": T, "memory_per_bucket": m, "batch_size": b,
            "steps": args.conv_steps, "reps": args.conv_reps, "engine_path": gem.strategy.memory_gradients.path,
            "loop_vs_vmap_max_rel_diff": check, "runs": runs, "summary": rows}


# -- output ---------------------------------------------------------------------------------------

def table(rows) -> str:
    lines = ["| past buckets T | samples in floor | floor ms | GEM ms | GEM / floor | QP ran | A-GEM ms | A-GEM / floor "
             "| replay ms | replay / floor | GEM / floor per repetition |", "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['T']} | {r['T'] * r['m'] + r['b']} | {r['floor_cpu_ms']:.2f} | {r['gem_cpu_ms']:.2f} "
            f"| **{r['gem_over_floor']:.2f}** | {r['gem_projection_rate'] * 100:.0f}% | {r['agem_cpu_ms']:.2f} "
            f"| {r['agem_over_floor']:.2f} | {r['replay_cpu_ms']:.2f} | {r['replay_over_floor']:.2f} "
            f"| {min(r['gem_over_floor_paired']):.2f}–{max(r['gem_over_floor_paired']):.2f} |")
    return "\n".join(lines)


def over_goal(rows) -> str:
    high = [T for T, r in sorted(rows.items()) if r["gem_over_floor"] > GOAL]
    spread = max(max(r["gem_over_floor_paired"]) - min(r["gem_over_floor_paired"]) for r in rows.values())
    text = (f"Between repetitions the ratio moves by up to {spread:.2f} (the last column: GEM and the floor timed back "
            "to back in each): timing noise of a shared 2-core machine; the medians are the figures.")
    if high:
        small = [T for T in high if rows[T]["floor_cpu_ms"] < 10]
        text += (f" Above {GOAL}× at T = {', '.join(map(str, high))}"
                 + (": with so few past buckets the floor is a few milliseconds, and GEM's fixed costs per step (staging "
                    "the batch behind the memories, the products with G, the QP when it runs, "
                    "Python) are a large share of it." if small == high else "."))
    return text


def reading(out) -> str:
    rows = {r["T"]: r for r in out["summary"]}
    goal_T = 10 if 10 in rows else max(rows)
    r = rows[goal_T]
    met = r["gem_over_floor"] <= GOAL
    prof = out.get("profile")
    parts = ""
    if prof:
        pp = prof["parts_ms_per_step"]
        parts = (f" Under cProfile at T={prof['T']} a GEM step is {pp['observe']:.1f} ms, of which "
                 f"{pp['memory+batch gradients (MemoryGradients.with_batch)']:.1f} ms is the one batched forward and "
                 f"backward over memories and batch (the floor's own work), {pp['projection (gem_project_)']:.1f} ms "
                 f"the projection ({pp['QP (solve_gem_dual, quadprog)']:.2f} ms in the QP solve) and "
                 f"{pp['optimizer step (sgd_step)']:.2f} ms the optimizer step; the top operators (torch.profiler) are "
                 + ", ".join(f"{e['op']} {e['self_cpu_ms_per_step']:.1f} ms" for e in prof["torch_profiler_top_self_cpu"][:4])
                 + ".")
    text = (f"At T={goal_T} past buckets GEM's step costs {r['gem_over_floor']:.2f}× the floor "
            f"({r['gem_cpu_ms']:.1f} ms against {r['floor_cpu_ms']:.1f} ms): the goal of ≤ {GOAL}× is "
            + ("**met**" if met else f"**not met**, by {r['gem_over_floor'] / GOAL:.2f}×") + ". "
            f"Across T the ratio runs from {min(x['gem_over_floor'] for x in rows.values()):.2f}× to "
            f"{max(x['gem_over_floor'] for x in rows.values()):.2f}×: GEM does the floor's work (one forward and "
            "backward over every memory and the batch, in one pass on the MLP's \"linear\" path) with the weight "
            "gradients per bucket as batched matmuls, plus the T×P products and, when a constraint is violated, a "
            "T×T QP; the floor grows linearly with T and so does GEM. The floor is what plain PyTorch (nn.Module calls "
            "and autograd) pays for the same rows; GEM's pass is the engine's hand-written one "
            "(strategies/linear_pass.py), which skips autograd's bookkeeping, so the floor is not a bound GEM "
            "could not go below. "
            + over_goal(rows) + " A-GEM's cost does not grow with T "
            f"({rows[min(rows)]['agem_cpu_ms']:.1f}–{rows[max(rows)]['agem_cpu_ms']:.1f} ms: one reference gradient on "
            f"{out['settings']['agem_sample_size']} sampled memories), so its ratio to the floor falls as T grows; "
            "replay (10 + 10 samples) is the cheapest." + parts)
    conv = out.get("conv")
    if conv:
        text += (f"\n\nConv model ({conv['model']} at 3×32×32, T={conv['T']}, {conv['memory_per_bucket']} memories per "
                 f"bucket, fewer steps): the engine takes the `{conv['engine_path']}` path (batch norm). "
                 + " ".join(f"{x['what']}: {x['cpu_ms']:.0f} ms ({x['over_floor']:.2f}× floor)." for x in conv["summary"])
                 + (f" loop and vmap gradients agree to {conv['loop_vs_vmap_max_rel_diff']:.1e} (relative)."
                    if isinstance(conv["loop_vs_vmap_max_rel_diff"], float) else
                    f" vmap check: {conv['loop_vs_vmap_max_rel_diff']}.")
                 + " vmap runs on a copy whose batch norms keep no running statistics (torch.func's "
                 "replace_all_batch_norm_modules_), which is why the engine does not take it for batch-norm models.")
    return text


def publish(out: dict, path: Path, markdown: Path) -> None:
    st = out["settings"]
    rows = summarise(out["runs"], st["T"])
    for r in rows:
        r["m"], r["b"] = st["memory_per_bucket"], st["batch_size"]
    out["summary"] = rows
    md = table(rows)
    print(md)
    write_results(out, path)
    if str(markdown) == "-":
        return
    conv = out.get("conv")
    conv_md = ""
    if conv:
        conv_md = "\n".join(["", f"Gradient paths, {conv['model']} 3×32×32, T={conv['T']}, {conv['memory_per_bucket']} "
                             f"memories per bucket, batch {conv['batch_size']} (median of {conv['reps']} × {conv['steps']} "
                             "step(s), CPU ms per call):", "",
                             "| what | ms | × floor |", "|---|---|---|"]
                            + [f"| {x['what']} | {x['cpu_ms']:.0f} | {x['over_floor']:.2f} |" for x in conv["summary"]])
    body = "\n".join(section_head("### GEM's cost as buckets accumulate (`benchmarks/gem_scaling.py`, issue 7 study 2)",
                                  out, quick=QUICK_SETTINGS) + [
        f"Settings: MLP 784-100-100-10 on synthetic 784-d inputs, 10 classes (Gaussian clusters, one input permutation "
        f"per bucket, like permuted MNIST), SGD lr {st['lr']}, batch {st['batch_size']}, {st['memory_per_bucket']} "
        f"memories per past bucket, GEM margin {st['memory_strength']}, A-GEM sample {st['agem_sample_size']}, replay "
        f"batch {st['batch_size']}. Per-step thread-CPU ms, median of {st['reps']} repetitions × {st['steps']} steps; "
        "floor = one forward+backward of the same MLP over the T·256 memories + the batch in one batch, plus an SGD step. "
        "QP ran: share of GEM steps whose gradient violated a constraint (the QP was solved).",
        "",
        table(rows),
        conv_md,
        "",
        reading(out),
    ])
    write_markdown(markdown, body, SECTION)


def main(argv=None) -> int:
    p = study_parser(__doc__)
    p.add_argument("--T", type=int, nargs="+", default=[1, 2, 5, 10, 15, 19], help="numbers of past buckets")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=40, help="steps timed per (T, method, repetition)")
    p.add_argument("--memory-per-bucket", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--memory-strength", type=float, default=0.5)
    p.add_argument("--agem-sample-size", type=int, default=256)
    p.add_argument("--profile-T", type=int, default=10)
    p.add_argument("--profile-steps", type=int, default=40)
    p.add_argument("--conv-T", type=int, default=10)
    p.add_argument("--conv-memory", type=int, default=16, help="memories per bucket for the conv model")
    p.add_argument("--conv-steps", type=int, default=2)
    p.add_argument("--conv-reps", type=int, default=3)
    p.add_argument("--no-conv", action="store_true")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not a measurement")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    output_flags(p, SECTION)
    args = p.parse_args(argv)
    if args.quick:
        args.T, args.reps, args.steps, args.profile_steps = [1, 5, 10], 2, 5, 5
        args.conv_memory, args.conv_steps, args.conv_reps = 4, 1, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.profile_T not in args.T:
        args.profile_T = max(args.T)
    t0 = time.perf_counter()
    info = machine()
    print(f"machine: {machine_line(info)}", file=sys.stderr)
    runs, points = sweep(args)
    out = {"study": "GEM's cost as past buckets accumulate", "command": command_line(argv), "machine": info,
           "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "data": "synthetic: 784-d Gaussian class clusters, 10 classes, one fixed input permutation per bucket",
           "timed": "per-step thread-CPU and wall ms of Learner.observe (gem, agem, replay) and of the floor",
           "runs": runs}
    print("profiling GEM ...", file=sys.stderr)
    out["profile"] = profile_gem(points, args.profile_T, args.profile_steps)
    del points
    if not args.no_conv:
        print("conv model gradient paths ...", file=sys.stderr)
        out["conv"] = conv_paths(args)
    out["wall_seconds"] = time.perf_counter() - t0
    publish(out, args.out, args.markdown)
    return 0



if __name__ == "__main__":
    sys.exit(entry_point(main, publish, "gem_scaling"))
