"""`python -m cl_engine run ...`: train a stream in-process and report what was learned and forgotten."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from pydantic import ValidationError

from .config import LearnerConfig, validation_message
from .learner import resolve_device
from .report import format_table, jsonable, write_json
from .run import run_stream
from .schedule import check_within
from .streams import BUILDERS, StreamOptions, build_stream


class DefaultsFormatter(argparse.RawDescriptionHelpFormatter):
    """--help shows each flag's default after its text, unless the text says it already or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                or not action.option_strings or "default" in text \
                or isinstance(action, argparse._HelpAction):
            return text
        return f"{text} (default: %(default)s)"


def add_learner_flags(p: argparse.ArgumentParser) -> None:
    """The engine's options, shared by every command that builds a learner."""
    f = LearnerConfig.model_fields
    p.add_argument("--strategy", choices=["naive", "replay", "gem", "agem"], default=f["strategy"].default,
                   help=f["strategy"].description)
    p.add_argument("--model", default=f["model"].default, help=f["model"].description)
    p.add_argument("--lr", type=float, default=f["lr"].default, help=f["lr"].description)
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default=f["lr_schedule"].default,
                   help=f["lr_schedule"].description)
    p.add_argument("--momentum", type=float, default=f["momentum"].default, help=f["momentum"].description)
    p.add_argument("--weight-decay", type=float, default=f["weight_decay"].default, help=f["weight_decay"].description)
    p.add_argument("--buffer-capacity", type=int, default=f["buffer_capacity"].default,
                   help=f["buffer_capacity"].description)
    p.add_argument("--retention", choices=["reservoir", "reservoir-end", "ratio", "per-bucket"], default=None,
                   help=f["retention"].description)
    p.add_argument("--retain-ratio", type=float, default=None,
                   help=f"{f['retain_ratio'].description} (implies --retention ratio; default "
                        f"{f['retain_ratio'].default})")
    p.add_argument("--selection", choices=["random", "el2n", "entropy", "margin"], default=f["selection"].default,
                   help="el2n/entropy keep the highest scores, margin the smallest; needs ratio or per-bucket retention")
    p.add_argument("--class-balanced", action="store_true", help=f["class_balanced"].description)
    p.add_argument("--candidate-pool", type=int, default=f["candidate_pool"].default,
                   help=f["candidate_pool"].description)
    p.add_argument("--replay-batch-size", type=int, default=None, help=f["replay_batch_size"].description)
    p.add_argument("--memory-per-bucket", type=int, default=f["memory_per_bucket"].default,
                   help=f["memory_per_bucket"].description)
    p.add_argument("--memory-strength", type=float, default=f["memory_strength"].default,
                   help=f["memory_strength"].description)
    p.add_argument("--agem-sample-size", type=int, default=f["agem_sample_size"].default,
                   help=f["agem_sample_size"].description)
    p.add_argument("--gradient-outlier-ratio", type=float, default=f["gradient_outlier_ratio"].default,
                   help=f["gradient_outlier_ratio"].description)
    p.add_argument("--max-update-ratio", type=float, default=f["max_update_ratio"].default,
                   help=f["max_update_ratio"].description)
    p.add_argument("--clip-grad-norm", type=float, default=f["clip_grad_norm"].default,
                   help=f["clip_grad_norm"].description)
    p.add_argument("--augment", choices=["none", "crop-flip"], default=None,
                   help=f"{f['augment'].description} (default: the stream's: crop-flip for CLEAR images, else none)")
    p.add_argument("--uint8-inputs", choices=["scale", "imagenet"], default=None,
                   help=f"{f['uint8_inputs'].description} (default: the stream's: imagenet for CLEAR images, else "
                        "scale)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=f["precision"].default,
                   help=f["precision"].description)
    p.add_argument("--channels-last", action="store_true", help=f["channels_last"].description)
    p.add_argument("--seed", type=int, default=f["seed"].default, help=f["seed"].description)
    p.add_argument("--device", default="auto", help=f["device"].description)


def learner_config(args: argparse.Namespace) -> LearnerConfig:
    retention = args.retention
    if args.retain_ratio is not None and retention is None:
        retention = "ratio"
    values = dict(
        model=args.model, strategy=args.strategy, lr=args.lr, lr_schedule=args.lr_schedule, momentum=args.momentum,
        weight_decay=args.weight_decay, buffer_capacity=args.buffer_capacity, retention=retention,
        selection=args.selection, class_balanced=args.class_balanced, candidate_pool=args.candidate_pool,
        replay_batch_size=args.replay_batch_size, memory_per_bucket=args.memory_per_bucket,
        memory_strength=args.memory_strength, agem_sample_size=args.agem_sample_size,
        gradient_outlier_ratio=args.gradient_outlier_ratio, max_update_ratio=args.max_update_ratio,
        clip_grad_norm=args.clip_grad_norm, precision=args.precision, channels_last=args.channels_last, seed=args.seed,
        device=args.device,
    )
    if args.retain_ratio is not None:
        values["retain_ratio"] = args.retain_ratio
    for name in ("augment", "uint8_inputs"):  # unset: the stream's default (run_stream applies it)
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    return LearnerConfig(**values)


def add_stream_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="digits-rotated",
                   help=f"NAME or NAME:PATH, NAME one of {', '.join(sorted(BUILDERS))}")
    p.add_argument("--order", choices=["time", "iid"], default="time",
                   help="time: bucket by bucket; iid: everything shuffled (the upper-bound reference)")
    p.add_argument("--buckets", type=int, default=None, help="bucket count, for streams that take one")
    p.add_argument("--samples-per-bucket", type=int, default=None, help="training samples per bucket, where taken")
    p.add_argument("--test-samples-per-bucket", type=int, default=None,
                   help="mnist-*, cifar100-split: test on a seeded subset of this many samples per bucket")
    p.add_argument("--stream-seed", type=int, default=0, help="seed of the stream's construction (splits, angles)")
    d = StreamOptions()
    clear = p.add_argument_group("CLEAR (--dataset clear:PATH)")
    clear.add_argument("--clear-mode", choices=["images", "features"], default=d.clear_mode,
                       help="images: decode the JPEGs; features: the release's 2048-d vectors (use --model linear)")
    clear.add_argument("--protocol", choices=["streaming", "iid"], default=d.protocol,
                       help="streaming: train and test on all of each bucket (only accuracies on later buckets are "
                            "held out); iid: each bucket's 70/30 split")
    clear.add_argument("--split-seed", type=int, default=d.split_seed,
                       help="NeurIPS 2021 release, iid protocol: which split_<seed> to use")
    clear.add_argument("--image-size", type=int, default=d.image_size, help="images mode: side of the crop")
    clear.add_argument("--clear-features", default=d.clear_features,
                       help="features mode: the features/<type> folder (moco_b0; the NeurIPS 2021 release also has "
                            "moco_imagenet, byol_imagenet, imagenet)")
    p.add_argument("--class-order", choices=["label", "shuffled"], default=d.class_order,
                   help="cifar100-split: classes into buckets by label id (as GEM) or in a seeded random order")


def stream_options(args: argparse.Namespace) -> StreamOptions:
    return StreamOptions(
        num_buckets=args.buckets, samples_per_bucket=args.samples_per_bucket,
        test_samples_per_bucket=args.test_samples_per_bucket, seed=args.stream_seed,
        clear_mode=args.clear_mode, protocol=args.protocol, split_seed=args.split_seed,
        image_size=args.image_size, clear_features=args.clear_features, class_order=args.class_order,
    )


def check_run_flags(args: argparse.Namespace) -> None:
    """The run's own flags, checked before anything is trained (ValueError naming the flag)."""
    for flag in ("batch_size", "epochs", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.report is not None:
        report = Path(args.report)
        if report.is_dir():
            raise ValueError(f"--report {report} is a folder; expected the path of the JSON file to write")
        if report.parent.exists() and not report.parent.is_dir():
            raise ValueError(f"--report {report}: {report.parent} is a file, not a folder")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cl_engine", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train a stream in-process and report the accuracy matrix and metrics",
                         formatter_class=DefaultsFormatter)
    add_stream_flags(run)
    add_learner_flags(run)
    run.add_argument("--batch-size", type=int, default=10, help="samples per training step")
    run.add_argument("--epochs", type=int, default=1, help="passes over each bucket")
    run.add_argument("--within-bucket", choices=["shuffled", "upload-time"], default="shuffled",
                     help="order inside a bucket: shuffled (seeded, every pass), or upload-time (the first pass in "
                          "upload order, a live stream's; needs dated samples)")
    run.add_argument("--report", default=None, help="write the JSON report here")
    run.add_argument("--quiet", action="store_true", help="no progress output")
    run.add_argument("--threads", type=int, default=None,
                     help="torch intra-op threads (default: torch's own choice); small models are fastest on 1")
    args = parser.parse_args(argv)
    try:
        check_run_flags(args)
        config = learner_config(args)
        resolve_device(config.device)
        stream = build_stream(args.dataset, stream_options(args), args.order)
        check_within(args.within_bucket, stream.name, stream.undated_samples)
    except ValidationError as e:
        print(f"error: {validation_message(e)}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.quiet:
        print(f"stream {stream.name}: {len(stream)} buckets, {sum(len(b.train) for b in stream.buckets)} training "
              f"samples; strategy {config.strategy}, model {config.model}", file=sys.stderr)
    report = run_stream(stream, config, args.batch_size, args.epochs, progress=not args.quiet,
                        within=args.within_bucket)
    report["config"].update(dataset=args.dataset, order=args.order)
    print(format_table(jsonable(report)))
    print(f"trained {report['samples_trained']} samples in {report['train_seconds']:.2f}s "
          f"({report['samples_per_second']:.0f} samples/s)")
    if args.report:
        print(f"report written to {write_json(args.report, report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
