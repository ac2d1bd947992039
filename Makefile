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

# pip runs with --quiet (its resolver output is pages long), so each slow step says what it does first
$(VENV)/.installed: pyproject.toml
	@echo "creating $(VENV) ..."
	@$(PYTHON) -m venv $(VENV)
	@echo "upgrading pip ..."
	@$(PIP) install --quiet --upgrade pip
	@echo "installing $(TORCH) (the largest download; minutes) ..."
	@$(PIP) install --quiet $(TORCH)
	@echo "installing fmri2img[all] pinned by constraints.txt (Dask, Zarr, xarray, diffusers, cloud clients; minutes) ..."
	@$(PIP) install --quiet -c constraints.txt -e ".[all]"
	@touch $@
	@echo "installed into $(VENV)"

demo: setup
	$(VENV)/bin/fmri2img demo --workdir runs/demo

test: setup
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf runs .pytest_cache
