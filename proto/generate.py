"""Regenerate the Python package `clstream_proto` from proto/clstream/v1/continual_learner.proto.

    python proto/generate.py            # rewrite proto/clstream_proto/ in place
    python proto/generate.py --out DIR  # write DIR/clstream_proto/ instead (the check test does)

The .proto is mapped to the virtual path clstream_proto/ so that the generated modules import each
other as `clstream_proto.…`: one importable package for server and client, with no clash with the
`proto` package of proto-plus. The output depends on the grpcio-tools version; pyproject pins it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE_DIR = HERE / "clstream" / "v1"
PROTO = "continual_learner.proto"
PACKAGE = "clstream_proto"
GENERATED = ("continual_learner_pb2.py", "continual_learner_pb2.pyi", "continual_learner_pb2_grpc.py", "__init__.py")
INIT = '''"""Generated from proto/clstream/v1/continual_learner.proto by proto/generate.py. Do not edit."""
from . import continual_learner_pb2, continual_learner_pb2_grpc

__all__ = ["continual_learner_pb2", "continual_learner_pb2_grpc"]
'''


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    args = ["grpc_tools.protoc", f"-I{PACKAGE}={SOURCE_DIR}", f"--python_out={out}", f"--pyi_out={out}",
            f"--grpc_python_out={out}", f"{PACKAGE}/{PROTO}"]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {SOURCE_DIR / PROTO}")
    (out / PACKAGE / "__init__.py").write_text(INIT)
    return [out / PACKAGE / name for name in GENERATED]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE, help="directory to write clstream_proto/ into")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
