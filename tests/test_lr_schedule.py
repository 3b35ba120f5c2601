"""--lr-schedule cosine: each step's learning rate is torch's CosineAnnealingLR's over the bucket's batches,
restarting at every bucket; constant keeps lr; a learner with no plan for its bucket refuses to guess."""
import pytest
import torch

from cl_engine import Learner, LearnerConfig, StreamOptions, build_stream
from cl_engine.__main__ import main
from cl_engine.schedule import batches_per_bucket, bucket_batches

STREAM = build_stream("digits-rotated", StreamOptions(num_buckets=2, samples_per_bucket=95))
BATCH, EPOCHS = 10, 2


def torch_cosine(base: float, steps: int) -> list[float]:
    """The lr of each of `steps` steps under CosineAnnealingLR(T_max=steps), stepped once per batch."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def step_lrs(config: LearnerConfig) -> list[list[float]]:
    learner = Learner(config, STREAM.input_shape, STREAM.num_classes)
    out = []
    for b, bucket in enumerate(STREAM.buckets):
        n = len(bucket.train)
        learner.plan_bucket(b, batches_per_bucket(n, BATCH, EPOCHS))
        out.append([learner.observe(*bucket.train.batch(i), b, ids=i).lr
                    for i in bucket_batches(n, BATCH, EPOCHS, config.seed, b)])
        learner.end_bucket(b)
    return out


def test_cosine_steps_are_cosine_annealing_lr_restarting_every_bucket():
    lrs = step_lrs(LearnerConfig(strategy="replay", lr=0.05, lr_schedule="cosine", device="cpu"))
    expected = torch_cosine(0.05, batches_per_bucket(95, BATCH, EPOCHS))  # 20 steps: 10 a pass, 2 passes
    assert len(expected) == 20
    for bucket in lrs:
        assert bucket == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert lrs[0][0] == 0.05 and lrs[0][-1] < 0.001


def test_constant_keeps_the_lr():
    lrs = step_lrs(LearnerConfig(strategy="replay", lr=0.05, device="cpu"))
    assert {lr for bucket in lrs for lr in bucket} == {0.05}


def test_a_cosine_learner_without_a_plan_refuses_to_guess():
    learner = Learner(LearnerConfig(lr_schedule="cosine", device="cpu"), STREAM.input_shape, STREAM.num_classes)
    with pytest.raises(ValueError, match="planned batch count"):
        learner.plan_bucket(0, None)
    with pytest.raises(ValueError, match="planned batch count"):
        learner.observe(*STREAM.buckets[0].train.batch(torch.arange(10)), 0)
    learner.plan_bucket(0, 7)
    learner.plan_bucket(0, 99)  # the first declaration holds
    assert learner.planned_batches == 7


def test_the_cli_runs_cosine_and_it_changes_what_is_learned(tmp_path, capsys):
    def run(schedule):
        report = tmp_path / f"{schedule}.json"
        assert main(["run", "--buckets", "2", "--samples-per-bucket", "95", "--lr-schedule", schedule, "--epochs", "2",
                     "--quiet", "--report", str(report)]) == 0
        capsys.readouterr()
        import json
        return json.loads(report.read_text())
    cosine, constant = run("cosine"), run("constant")
    assert cosine["config"]["lr_schedule"] == "cosine"
    assert cosine["accuracy_matrix"] != constant["accuracy_matrix"]
