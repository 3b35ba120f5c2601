# Everything a fresh machine needs: `make test` and `make demo` create the virtual environment
# on first use and reinstall the project whenever pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo readme install clean proto test-tools

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

test: $(STAMP) test-tools
	$(PY) -m pytest -q

# The broker tests (tests/client/test_client_broker.py) run a real redis-server: Debian's `redis-server`
# and `redis-tools` (which holds the binary) with the libraries it links that a fresh machine lacks,
# unpacked into .tools/redis the same way; the tests put .tools/redis/usr/lib/... on LD_LIBRARY_PATH.
REDIS_LIBS := redis-tools liblzf1 libjemalloc2 libatomic1
# tests/monitoring run promtool and a real Prometheus. They come from Debian's `prometheus` package,
# unpacked into .tools/ (not installed: no dpkg entry, no service, nothing outside this folder).
# Without apt-get, put promtool and prometheus (e.g. from the upstream release tarball) on PATH;
# otherwise those tests report themselves skipped (and fail under CI=true, where they must run).
test-tools:
	@if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then :; \
	else tests/tools/debian_tool.sh prometheus .tools/prometheus || echo "note: promtool/prometheus" \
		"missing and apt-get absent: put both on PATH, or tests/monitoring report them skipped"; fi
	@if command -v redis-server >/dev/null 2>&1; then :; \
	else tests/tools/debian_tool.sh redis-server .tools/redis $(REDIS_LIBS) || echo "note: redis-server" \
		"missing and apt-get absent: put it on PATH, or the broker tests report themselves skipped"; fi

# The main job: a live clstream-server on a free loopback port learns digits-rotated from the replay
# client, answers predictions while it learns, and the report lands in out/demo/. More flags:
# make demo DEMO_ARGS="--strategy gem --memory-per-bucket 50"
DEMO_FLAGS := --dataset digits-rotated --strategy replay --model mlp --lr 0.1 --batch-size 10 --buffer-capacity 500
demo: $(STAMP)
	$(PY) -m client demo $(DEMO_FLAGS) --report out/demo $(DEMO_ARGS)

readme: $(STAMP)  # rewrite README.md's demo output, its figure and caption from a real demo run (checked by a test)
	$(PY) tests/tools/readme_demo.py

proto: $(STAMP)  # regenerate proto/clstream_proto from proto/clstream/v1/*.proto (checked by a test)
	$(PY) proto/generate.py

clean:
	rm -rf $(VENV) .tools out build *.egg-info
