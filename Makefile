# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
COHORT ?= data/synthetic_demo
RUN ?= runs/demo

.PHONY: demo test bench venv clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch/torchvision first, pinned: those wheels install from this machine's disk; pyproject
# only sets lower bounds so that a GPU machine's versions fit too.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/npc-msom synth --out $(COHORT) --config configs/demo.yaml
	$(BIN)/npc-msom run --config configs/demo.yaml --cohort $(COHORT) --out $(RUN)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run --out benchmarks/results

clean:
	rm -rf $(VENV) runs data
