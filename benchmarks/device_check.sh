#!/usr/bin/env bash
# The GPU session's one command (issue 24): on one CUDA GPU, in under 8 minutes, from the repository root,
#   1. finds a Python that has what the project needs: $PYTHON if set, else .venv/bin/python where it
#      imports torch, else python3 (the GPU image's, which holds torch); where it lacks a package, the wheels
#      carried in .whl/ (made here by benchmarks/device_wheels.sh: what that image lacks) are installed into
#      /tmp/clstream-site, as nothing can be downloaded there; stops (exit 2, one line) naming what still does
#      not import;
#   2. runs the suite's CUDA-marked tests with --require-cuda (a skip would be a failure), ≤ $TEST_SECONDS s;
#   3. runs benchmarks/device_check.py (ResNet18 at 224 px on a CLEAR-layout fixture: floor, engine, service
#      with the learner thread and process, fp32 and AMP), ≤ $BENCH_SECONDS s, time-boxed inside too.
# What it writes goes to $OUT (the device machine's folder that comes back; out/device_check here when unset):
# device_check.log (the progress lines), cuda_tests.xml and cuda_tests.log (stage 2), device_check.json and BENCHMARKS.md with the CUDA section
# rewritten (stage 3). Progress lines carry the seconds elapsed. Arguments go to device_check.py;
# `--device cpu --tiny` is its seconds-long smoke test on a CPU (stage 2 is then left out).
#
#   benchmarks/device_check.sh                        # on the GPU machine
#   benchmarks/device_check.sh --device cpu --tiny    # anywhere, as tests/test_device_check.py does
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/device_check}
TEST_SECONDS=${TEST_SECONDS:-200}
BENCH_SECONDS=${BENCH_SECONDS:-240}
mkdir -p "$OUT"
exec 2> >(tee -a "$OUT/device_check.log" >&2)  # the progress, kept in $OUT even if a stage is killed
start=$SECONDS
say() { echo "[device_check.sh +$((SECONDS - start))s] $*" >&2; }

cpu=0
for arg in "$@"; do [ "$arg" = cpu ] && cpu=1; done

# 1. the interpreter and what it imports
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch' 2>/dev/null; then PYTHON=.venv/bin/python
  else PYTHON=python3; fi
fi
say "python: $PYTHON"
if ! "$PYTHON" benchmarks/device_imports.py; then
  compgen -G ".whl/*.whl" >/dev/null || exit 2
  say "installing $(ls .whl/*.whl | wc -l) carried wheels into /tmp/clstream-site"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/clstream-site .whl/*.whl || { say "installing the wheels in .whl failed"; exit 2; }
  export PYTHONPATH=/tmp/clstream-site${PYTHONPATH:+:$PYTHONPATH}
  "$PYTHON" benchmarks/device_imports.py || exit 2
fi

# 2. the CUDA-marked tests
tests=() rc=0
if [ $cpu = 1 ]; then
  say "a CPU run: the CUDA-marked tests are left out"
else
  say "CUDA-marked tests (at most ${TEST_SECONDS}s)"
  timeout "$TEST_SECONDS" "$PYTHON" -m pytest -q -m cuda --require-cuda -p no:cacheprovider --continue-on-collection-errors \
    --junitxml "$OUT/cuda_tests.xml" tests > "$OUT/cuda_tests.log" 2>&1
  rc=$?
  tail -n 15 "$OUT/cuda_tests.log" >&2
  say "CUDA-marked tests: exit $rc$([ $rc = 124 ] && echo ' (timed out)')"
  tests=(--tests "$OUT/cuda_tests.xml")
fi

# 3. the measurement
say "measurement (at most ${BENCH_SECONDS}s)"
timeout "$BENCH_SECONDS" "$PYTHON" benchmarks/device_check.py --out "$OUT/device_check.json" \
  --budget-seconds $((BENCH_SECONDS * 3 / 4)) "${tests[@]}" "$@"
bench=$?
[ $cpu = 1 ] || cp BENCHMARKS.md "$OUT/BENCHMARKS.md"
say "done: tests exit $rc, measurement exit $bench; files in $OUT"
[ $bench != 0 ] && exit $bench
[ $rc != 0 ] && exit 1
exit 0
