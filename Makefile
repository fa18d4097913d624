# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
COHORT ?= data/synthetic_demo
RUN ?= runs/demo

.PHONY: demo test test-fast bench venv clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Everything but torch first (and the package itself, without its dependencies): enough for
# `npc-msom synth`, which `make demo` runs while torch installs.
LIGHT := $(VENV)/.light
$(LIGHT): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $$($(BIN)/python -c "import re; t = open('pyproject.toml').read(); \
	  deps = re.search(r'^dependencies = \[(.*?)\]', t, re.S | re.M).group(1); \
	  print(' '.join(d for d in re.findall(r'\"([^\"]+)\"', deps) if not d.startswith('torch')))")
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(LIGHT)

# torch/torchvision pinned: those wheels install from this machine's disk; pyproject only sets
# lower bounds so that a GPU machine's versions fit too.
$(STAMP): $(LIGHT)
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# the inner loop: everything but the tests marked slow (CI runs them all through `make test`)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# The synthetic cohort is written (2 processes, ~2.5 min) while torch installs (~2 min of mostly
# disk): the set-up costs the demo almost nothing on a fresh machine.
demo: $(LIGHT)
	@$(BIN)/npc-msom synth --out $(COHORT) --config configs/demo.yaml & synth=$$!; \
	$(MAKE) --no-print-directory $(STAMP) || { kill $$synth; exit 1; }; \
	wait $$synth
	$(BIN)/npc-msom run --config configs/demo.yaml --cohort $(COHORT) --out $(RUN)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run --out benchmarks/results

clean:
	rm -rf $(VENV) runs data
