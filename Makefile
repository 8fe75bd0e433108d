# memproxy — the two commands: `make run` and `make test`. Both bootstrap .venv from nothing.
SHELL := /bin/bash
PY    := $(shell scripts/find-python)
UV_VERSION := 0.13.8
VENV  := .venv
UV    := .tools/bin/uv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
export LITELLM_LOCAL_MODEL_COST_MAP := True

LISTEN_HOST ?= 127.0.0.1
LISTEN_PORT ?= 8080

.PHONY: run web test test-slow lint bench bench-callgrind bench-ab bench-recall bench-sdk lock clean

$(UV):
	@test -n "$(PY)" || exit 1
	$(PY) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --extra test --python $(PY) --quiet
	@touch $@

run: $(VENV)/.synced
	$(VENV)/bin/memproxy run --host $(LISTEN_HOST) -p $(LISTEN_PORT) $(ARGS)

web: $(VENV)/.synced
	$(VENV)/bin/memproxy run --web --host $(LISTEN_HOST) -p $(LISTEN_PORT) $(ARGS)

# Real clients for the end-to-end tests (tests/clients: Claude Code, Codex CLI, Gemini CLI, Qwen Code, opencode,
# pinned with their hashes in package-lock.json). Platform packages the registry does not serve stay in the lock as
# version-only optional entries, which npm ci needs and never fetches on Linux x64.
CLIENTS := tests/clients/node_modules/.installed

$(CLIENTS): tests/clients/package.json tests/clients/package-lock.json
	@if command -v npm >/dev/null; then \
		npm ci --prefix tests/clients --no-audit --no-fund --loglevel=error && touch $@; \
	else \
		echo "npm not found: tests/test_e2e_clients.py will skip (under CI it fails)"; \
	fi

test: $(VENV)/.synced $(CLIENTS)
	$(VENV)/bin/pytest -m "not slow" $(ARGS)

test-slow: $(VENV)/.synced
	$(VENV)/bin/pytest -m slow $(ARGS)

lint: $(VENV)/.synced
	$(VENV)/bin/ruff check addons tests
	$(VENV)/bin/lint-imports

bench: $(VENV)/.synced
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	test -x bench/out/venv/bin/python || $(UV) venv --quiet bench/out/venv --python $(VENV)/bin/python
	bench/out/venv/bin/python -c "import matplotlib" 2>/dev/null || $(UV) pip install --quiet --python bench/out/venv/bin/python matplotlib
	test -x bench/out/peer-venv/bin/python || $(UV) venv --quiet bench/out/peer-venv --python $(VENV)/bin/python
	$(UV) pip install --quiet --python bench/out/peer-venv/bin/python -r bench/peer-requirements.txt
	$(VENV)/bin/python bench/run.py
	bench/out/venv/bin/python bench/plot.py

# Instructions and cache misses per request of setups (a), (c), (d) under callgrind: repeatable where time is not.
bench-callgrind: $(VENV)/.synced
	command -v valgrind >/dev/null || (apt-get update -qq && apt-get install -y -qq valgrind)
	$(VENV)/bin/python bench/callgrind.py $(ARGS)

# Setup (d) of two or more revisions side by side, ratios paired turn by turn: make bench-ab ARGS="HEAD~1 worktree";
# or two setups of one revision: ARGS="HEAD:a HEAD:d".
bench-ab: $(VENV)/.synced
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(VENV)/bin/python bench/ab.py $(ARGS)

# The SDK path's cost: the direct path against the gateway's forward and its litellm translation.
bench-sdk: $(VENV)/.synced
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(VENV)/bin/python bench/sdkpath.py $(ARGS)

# Recall on LoCoMo's dev half, read from ../shared/recall (never copied here): ARGS="--data PATH --json OUT".
bench-recall: $(VENV)/.synced
	$(VENV)/bin/python bench/recall.py $(ARGS)

lock: $(UV)
	$(UV) lock --python $(PY)

clean:
	rm -rf $(VENV) .tools .pytest_cache
