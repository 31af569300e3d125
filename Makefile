# make demo: set up .venv (first run only) and fine-tune MiniLM offline; make test: set up and run the tests.
# Both install the exact versions in requirements.lock (what CI installs and the parity tests were proven against);
# pyproject.toml keeps compatible ranges for users. make test-latest tries the newest versions those ranges allow.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements.lock
LATEST_VENV ?= .venv-latest
# pytest processes the suite runs in (pytest-xdist), each taking whole test files, so a file's shared fits run once
TEST_WORKERS ?= 2
# the tests that compare litembed with sentence-transformers and open_clip themselves
PARITY_TESTS := tests/test_losses.py tests/test_mining.py tests/test_retrieval.py tests/test_sampler.py \
	tests/test_text.py tests/test_encode.py tests/test_clip_backends.py
export HF_HUB_OFFLINE := 1

.PHONY: install demo demo-clip test test-slow test-latest lock

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP)

# ARGS: more flags for the demo run, e.g. make demo-clip ARGS="--model.init_args.loss losses.SigLipLoss"
ARGS ?=

demo: $(STAMP)
	$(PY) train.py fit --config configs/demo/text.yaml $(ARGS)

demo-clip: $(STAMP)
	$(PY) train.py fit --config configs/demo/clip.yaml $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow -n $(TEST_WORKERS) --dist loadfile

# The newest versions pyproject.toml allows, in a venv of their own, against the parity tests: a new
# sentence-transformers release becomes a deliberate bump of requirements.lock (make lock), not a red CI.
test-latest:
	test -x $(LATEST_VENV)/bin/python || $(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e ".[dev]"
	$(LATEST_VENV)/bin/python -m pip freeze --exclude-editable | diff $(LOCK) - || true
	$(LATEST_VENV)/bin/python -m pytest -q $(PARITY_TESTS)

# Rewrite requirements.lock from the latest venv (after make test-latest passed and the whole suite ran there).
lock:
	$(LATEST_VENV)/bin/python -m pip freeze --exclude-editable > $(LOCK)
