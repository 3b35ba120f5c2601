"""Whether this interpreter imports everything the project and its tests need (benchmarks/device_check.sh asks
before anything else, on a machine where nothing can be installed from a registry): exit 0 with one line on what
it found, or exit 2 with one line naming each package that is missing or unusable and why."""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPORTS = ("torch", "torchvision", "numpy", "PIL", "grpc", "grpc_health.v1.health_pb2", "grpc_reflection.v1alpha.reflection",
           "google.protobuf", "pydantic", "pydantic_settings", "quadprog", "prometheus_client", "sklearn", "tqdm",
           "matplotlib", "pytest", "hypothesis", "scipy", "yaml",
           "clstream_proto.continual_learner_pb2")  # the generated code checks grpcio's and protobuf's versions


def main() -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    sys.path[:0] = [str(ROOT), str(ROOT / "proto")]
    missing = []
    for name in IMPORTS:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - an import that fails for any reason is unusable here
            first = str(e).splitlines()[0][:160] if str(e) else ""
            missing.append(f"{name} ({type(e).__name__}: {first})")
    if missing:
        print("device_imports: missing or unusable here: " + "; ".join(missing) + ". Carry them as wheels in .whl "
              "(benchmarks/device_wheels.sh) or use a venv that has them (make install)", file=sys.stderr)
        return 2
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"device_imports: all import (python {sys.version.split()[0]}, torch {torch.__version__}, CUDA device: "
          f"{gpu})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
