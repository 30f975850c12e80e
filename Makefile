# Two commands on a fresh machine with python3: `make run` (the main job) and `make test`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp
PIP_OPTS ?= -q --disable-pip-version-check

.PHONY: run test lint bench clean install

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install $(PIP_OPTS) --upgrade "pip>=24"
	$(PY) -m pip install $(PIP_OPTS) -c constraints.txt -e ".[dask,discover,doublets,explain,server,test]"
	touch $(STAMP)

install: $(STAMP)

## The main job: the default experiment on the embedded simulated cohort, tracked in ./mlflow.db + ./mlruns
run: $(STAMP)
	$(VENV)/bin/biomarkers run experiments/anti_tnf_default.yaml

## The test suite (offline; a few minutes)
test: $(STAMP)
	$(VENV)/bin/ruff check biomarkers tests benchmarks
	$(VENV)/bin/pytest -q

## Speed and memory benchmarks (not tests); see benchmarks/README.md
bench: $(STAMP)
	$(PY) benchmarks/scale.py --cells 100000
	$(PY) benchmarks/predict_latency.py

lint: $(STAMP)
	$(VENV)/bin/ruff check biomarkers tests benchmarks

clean:
	rm -rf $(VENV) mlflow.db mlruns/*/ .pytest_cache
