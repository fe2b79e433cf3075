# `make run`: set up .venv and start the app at http://127.0.0.1:7860
# `make test`: set up .venv with the test tools and run the whole test suite
# `make test-fast`: the same without the slow and browser tests (about a minute)
# `make lint`: ruff over the tree (its rules are in pyproject.toml)
# `make mutants`: break the code on purpose, one targeted bug at a time, and check that the tests catch each
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test test-fast lint mutants bench clean

run: $(VENV)/.app-installed
	$(PY) app.py

test: $(VENV)/.test-installed
	HF_HUB_OFFLINE=1 $(PY) -m pytest

lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check .

test-fast: $(VENV)/.test-installed
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow and not browser"

mutants: $(VENV)/.test-installed
	HF_HUB_OFFLINE=1 $(PY) tests/mutants.py

bench: $(VENV)/.app-installed
	HF_HUB_OFFLINE=1 $(PY) bench/data_bench.py
	HF_HUB_OFFLINE=1 $(PY) bench/train_bench.py
	HF_HUB_OFFLINE=1 $(PY) bench/jobs_bench.py
	HF_HUB_OFFLINE=1 $(PY) bench/explain_bench.py
	HF_HUB_OFFLINE=1 $(PY) bench/app_bench.py
	HF_HUB_OFFLINE=1 $(PY) bench/scratch_bench.py
	HF_HUB_OFFLINE=1 $(PY) bench/probe_bench.py
	HF_HUB_OFFLINE=1 $(PY) bench/estimate_bench.py
	HF_HUB_OFFLINE=1 $(PY) bench/diagnose_bench.py
	HF_HUB_OFFLINE=1 $(PY) bench/trust_bench.py
	HF_HUB_OFFLINE=1 $(PY) bench/hosting_bench.py
	HF_HUB_OFFLINE=1 $(PY) bench/remote_bench.py
	HF_HUB_OFFLINE=1 $(PY) bench/onnx_bench.py
	HF_HUB_OFFLINE=1 $(PY) bench/demo_bench.py

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.app-installed: requirements.txt pyproject.toml | $(PY)
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.test-installed: requirements-test.txt $(VENV)/.app-installed
	$(PY) -m pip install -r requirements-test.txt
	touch $@

clean:
	rm -rf $(VENV) tests/e2e/artifacts
