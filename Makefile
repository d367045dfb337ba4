# bev-service: `make run` starts what exists of the product, `make test` sets up and runs every check.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
REAL_DATA ?= ../shared/data/real
BUILD ?= build

.PHONY: setup test lint typecheck pytest run bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch==2.13.0 resolves to the local CPU wheel on the project machines (pip's find-links).
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check bev_service tests bench
	$(BIN)/ruff format --check bev_service tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck pytest

# Until the service lands: the offline projection demo on the real surround-view recording.
run: $(STAMP)
	@mkdir -p $(BUILD)
	$(BIN)/bev calib import surround-view-yaml $(REAL_DATA)/surround-view-4fisheye --out $(BUILD)/surround-view.yaml
	$(BIN)/bev project --rig $(BUILD)/surround-view.yaml --out $(BUILD)/surround-view-bev.png \
		front=$(REAL_DATA)/surround-view-4fisheye/images/front.png back=$(REAL_DATA)/surround-view-4fisheye/images/back.png \
		left=$(REAL_DATA)/surround-view-4fisheye/images/left.png right=$(REAL_DATA)/surround-view-4fisheye/images/right.png
	@echo "wrote $(BUILD)/surround-view-bev.png and $(BUILD)/surround-view-bev.json"

bench: $(STAMP)
	$(BIN)/python bench/warp.py

clean:
	rm -rf $(VENV) $(BUILD) .mypy_cache .ruff_cache .pytest_cache
