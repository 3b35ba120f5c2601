# Everything a fresh machine needs: `make test` and `make demo` create the virtual environment
# on first use and reinstall the project whenever pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo install clean proto prometheus-tools

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

test: $(STAMP) prometheus-tools
	$(PY) -m pytest -q

# tests/monitoring run promtool and a real Prometheus: Debian's `prometheus` package provides both.
# Installed here when missing and we may (apt-get, as root or by passwordless sudo); otherwise those tests say so (and fail
# under CI=true, where they must run).
prometheus-tools:
	@if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && { [ "$$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then \
		echo "installing Debian's prometheus package (promtool, prometheus) for tests/monitoring"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
		$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends prometheus; \
	else echo "note: promtool/prometheus missing and not installable here (needs apt-get and root):" \
		"apt-get install prometheus, or tests/monitoring report them skipped (failed under CI=true)"; fi

# The main job: a live clstream-server on a free loopback port learns digits-rotated from the replay
# client, answers predictions while it learns, and the report lands in out/demo/. More flags:
# make demo DEMO_ARGS="--strategy gem --memory-per-bucket 50"
demo: $(STAMP)
	$(PY) -m client demo --dataset digits-rotated --strategy replay --model mlp --lr 0.1 --batch-size 10 \
		--buffer-capacity 500 --report out/demo $(DEMO_ARGS)

proto: $(STAMP)  # regenerate proto/clstream_proto from proto/clstream/v1/*.proto (checked by a test)
	$(PY) proto/generate.py

clean:
	rm -rf $(VENV) out build *.egg-info
