# The two commands of the README's quick start. Both set up .venv first (idempotent).
.PHONY: demo test setup
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

setup:
	bash scripts/setup.sh

# Runs again only what is missing under runs/demo (delete the folder for a fresh run).
demo: setup
	.venv/bin/layerwise run --model minilm --task rotten-tomatoes --out runs/demo --resume

test: setup
	.venv/bin/python -m pytest -q
