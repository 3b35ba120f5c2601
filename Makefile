# Everything a fresh machine needs: `make test` and `make demo` create the virtual environment
# on first use and reinstall the project whenever pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo install clean proto

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

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
