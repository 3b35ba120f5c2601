#!/usr/bin/env bash
# Run here, before a GPU session: downloads into .whl/ (git-ignored) the wheels that the GPU machine's image
# lacks or may hold in a version the generated gRPC code refuses, for its Python 3.12 on x86-64, at the versions
# this checkout's .venv holds (make install first). Nothing can be downloaded on that machine, so the session
# carries .whl (about 11 MiB of the 64 MiB a call may carry) and benchmarks/device_check.sh installs it there.
#
#   benchmarks/device_wheels.sh          # then, in the session: run(command="benchmarks/device_check.sh", carry=[".whl"])
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
# The project's dependencies missing from the image (see /work/.library/device/KINDS.md's package list), and
# grpcio/protobuf, which proto/clstream_proto needs at least at the versions that generated it.
NAMES="annotated-types grpcio grpcio-health-checking grpcio-reflection protobuf pydantic pydantic-core
pydantic-settings python-dotenv quadprog typing-extensions typing-inspection"
pins=()
for name in $NAMES; do
  version=$("$PY" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
  [ -n "$version" ] || { echo "device_wheels: $name is not installed in $PY's environment; run make install first" >&2; exit 2; }
  pins+=("$name==$version")
done
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pins[@]}"
echo "device_wheels: $(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1), in .whl: ${pins[*]}" >&2
