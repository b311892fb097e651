# Two entry points: `make demo` and `make test`. Both create .venv and install into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= runs/demo

.PHONY: demo test install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(BIN)/gristmill sample --output $(DEMO_DIR)/sample
	$(BIN)/gristmill classifier train --positive $(DEMO_DIR)/sample/pages.jsonl --positive-where 'kind == "prose"' \
		--negative $(DEMO_DIR)/sample/pages.jsonl --negative-where 'kind in ["spam", "low_quality"]' \
		--output $(DEMO_DIR)/quality_model
	$(BIN)/gristmill run configs/quickstart.yaml --output $(DEMO_DIR)
	$(BIN)/gristmill tokenizer train $(DEMO_DIR)/clean --vocab-size 4096 --output $(DEMO_DIR)/tokenizer
	$(BIN)/gristmill run configs/quickstart-tokens.yaml --output $(DEMO_DIR)
	$(BIN)/gristmill export $(DEMO_DIR)/buckets --output $(DEMO_DIR)/shards
	$(BIN)/gristmill mix configs/quickstart-mixture.yaml --data $(DEMO_DIR)/shards --output $(DEMO_DIR)/plan
	@echo "demo outputs: $(DEMO_DIR)/ (one dataset per stage; run summary $(DEMO_DIR)/_summary.json," \
		"token buckets $(DEMO_DIR)/shards, mixture plan $(DEMO_DIR)/plan)"

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
