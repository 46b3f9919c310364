# The two commands of the README's quick start. Both set up .venv first (idempotent).
.PHONY: demo test setup
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/layerwise inspect --model minilm --task rotten-tomatoes

test: setup
	.venv/bin/python -m pytest -q
