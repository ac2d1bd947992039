# Two commands do all set-up on a fresh machine:
#   make demo   → creates .venv, installs fmri2img, runs `fmri2img demo`
#   make test   → creates .venv, installs fmri2img with test extras, runs the test suite
PYTHON ?= python3
VENV   ?= .venv
# constraints.txt pins the versions the test suite last passed with (the resolver otherwise
# backtracks for minutes between moto, pydrive2 and cryptography); edit it to upgrade.
# CPU machines: install this torch first so no multi-GB CUDA build is pulled in; override for GPUs,
# e.g. make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH  ?= torch==2.13.0
PIP     = $(VENV)/bin/python -m pip

.PHONY: setup demo test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -c constraints.txt -e ".[all]"
	touch $@

demo: setup
	$(VENV)/bin/fmri2img demo --workdir runs/demo

test: setup
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf runs .pytest_cache
