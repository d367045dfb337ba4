# bev-service: `make run` starts what exists of the product, `make test` sets up and runs every check.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
REAL_DATA ?= ../shared/data/real
BUILD ?= build

.PHONY: setup test lint typecheck pytest run bench train clean

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

# Until the service lands (issue 5): the offline projection demo. A synthetic frame set of the default rig
# is rendered and projected (RGB surround view and class ids); the real surround-view recording too when present.
DEMO := $(BUILD)/demo
run: $(STAMP)
	@mkdir -p $(DEMO)
	$(BIN)/bev synth --count 1 --seed 1 --out $(DEMO)/synth
	$(BIN)/bev project --rig calibration/default_rig.yaml --out $(DEMO)/synth-bev.png \
		$(foreach c,front left rear right,$(c)=$(DEMO)/synth/000000/$(c).jpg)
	$(BIN)/bev project --rig calibration/default_rig.yaml --labels --out $(DEMO)/synth-bev-labels.png \
		$(foreach c,front left rear right,$(c)=$(DEMO)/synth/000000/$(c)_labels.png)
	$(BIN)/bev calib check --rig calibration/default_rig.yaml --out $(DEMO)/coverage.png
	@if [ -d $(REAL_DATA)/surround-view-4fisheye ]; then \
		$(BIN)/bev calib import surround-view-yaml $(REAL_DATA)/surround-view-4fisheye --out $(DEMO)/surround-view.yaml && \
		$(BIN)/bev project --rig $(DEMO)/surround-view.yaml --out $(DEMO)/surround-view-bev.png \
			$(foreach c,front back left right,$(c)=$(REAL_DATA)/surround-view-4fisheye/images/$(c).png); \
	else echo "($(REAL_DATA) absent: skipping the real surround-view recording)"; fi
	@echo "demo outputs in $(DEMO)/: synth-bev.png (surround view), synth-bev-labels.png (class ids), coverage.png, surround-view-bev.png"

bench: $(STAMP)
	$(BIN)/python bench/warp.py
	$(BIN)/python bench/synth.py

# Trains, prunes, exports and evaluates the shipped network (issue 4; up to 60 min on 2 cores).
train: $(STAMP)
	$(BIN)/bev train --out-dir $(BUILD)/train --steps 4000 --seed 0 --threads 2 --resume
	$(BIN)/bev prune --model $(BUILD)/train/model.pt --out $(BUILD)/prune/model.pt --ratio 0.5 --threads 2
	cp $(BUILD)/train/model.pt models/enet.pt && cp $(BUILD)/prune/model.pt models/enet-pruned.pt
	$(BIN)/bev export --model models/enet.pt --out models/enet.onnx
	$(BIN)/bev export --model models/enet-pruned.pt --out models/enet-pruned.onnx
	$(BIN)/bev eval --model models/enet.pt --json $(BUILD)/eval-enet.json
	$(BIN)/bev eval --model models/enet-pruned.pt --json $(BUILD)/eval-enet-pruned.json

clean:
	rm -rf $(VENV) $(BUILD) .mypy_cache .ruff_cache .pytest_cache
