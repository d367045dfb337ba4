# bev-service: `make run` starts what exists of the product, `make test` sets up and runs every check.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
REAL_DATA ?= ../shared/data/real
BUILD ?= build
# The shipped default rig and networks: package data, so that an installed bev finds them from anywhere.
SHIPPED := bev_service/shipped
MODELS := $(SHIPPED)/models

.PHONY: setup browser test lint typecheck pytest run demo-offline bench train eval docker-test docker-test-ray clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The torch extra (torch backend, training, export): torch==2.13.0 resolves to the local CPU wheel on the
	# project machines (pip's find-links). Serving alone needs neither: pip install . (ONNX Runtime).
	$(BIN)/pip install --quiet -e '.[torch,test]'
	touch $(STAMP)

setup: $(STAMP)

# The viewer test drives Debian's Chromium through chromedriver; installed here when missing (needs root and
# the Debian mirror; without them the viewer test skips and says why).
browser:
	@command -v chromedriver >/dev/null 2>&1 || { \
		echo "installing chromium and chromium-driver (apt)"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
		|| echo "could not install chromium: the viewer test will skip"; }

lint: $(STAMP)
	$(BIN)/ruff check bev_service tests bench
	$(BIN)/ruff format --check bev_service tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) browser
	$(BIN)/pytest -q

test: lint typecheck pytest

# The service on the shipped model and the default rig: the viewer at http://127.0.0.1:8000/ (its "Play demo
# drive" button streams the built-in synthetic drive), the API under /v1 (OpenAPI at /docs). HOST/PORT override.
HOST ?= 127.0.0.1
PORT ?= 8000
run: $(STAMP)
	$(BIN)/bev serve --host $(HOST) --port $(PORT)

# The offline projection demo (no service): a synthetic frame set of the default rig rendered and projected
# (RGB surround view and class ids), the coverage picture, and the real surround-view recording when present.
DEMO := $(BUILD)/demo
demo-offline: $(STAMP)
	@mkdir -p $(DEMO)
	$(BIN)/bev synth --count 1 --seed 1 --out $(DEMO)/synth
	$(BIN)/bev project --rig $(SHIPPED)/default_rig.yaml --out $(DEMO)/synth-bev.png \
		$(foreach c,front left rear right,$(c)=$(DEMO)/synth/000000/$(c).jpg)
	$(BIN)/bev project --rig $(SHIPPED)/default_rig.yaml --labels --out $(DEMO)/synth-bev-labels.png \
		$(foreach c,front left rear right,$(c)=$(DEMO)/synth/000000/$(c)_labels.png)
	$(BIN)/bev calib check --rig $(SHIPPED)/default_rig.yaml --out $(DEMO)/coverage.png
	@if [ -d $(REAL_DATA)/surround-view-4fisheye ]; then \
		$(BIN)/bev calib import surround-view-yaml $(REAL_DATA)/surround-view-4fisheye --out $(DEMO)/surround-view.yaml && \
		$(BIN)/bev project --rig $(DEMO)/surround-view.yaml --out $(DEMO)/surround-view-bev.png \
			$(foreach c,front back left right,$(c)=$(REAL_DATA)/surround-view-4fisheye/images/$(c).png); \
	else echo "($(REAL_DATA) absent: skipping the real surround-view recording)"; fi
	@echo "demo outputs in $(DEMO)/: synth-bev.png (surround view), synth-bev-labels.png (class ids), coverage.png, surround-view-bev.png"

bench: $(STAMP)
	$(BIN)/python -m bench.warp
	$(BIN)/python -m bench.synth
	$(BIN)/python -m bench.model
	$(BIN)/python -m bench.pipeline
	$(BIN)/python -m bench.service
	$(BIN)/python -m bench.load

# Trains, prunes, exports, quantizes and evaluates the shipped network (about 125 min on 2 idle cores:
# $(MODELS)/README.md). The evaluation drive (seed 200000) is a world no training or validation frame set
# comes from. --resume picks an interrupted run up where its last checkpoint left it.
EVAL_DRIVE := $(BUILD)/eval-drive
train: $(STAMP)
	$(BIN)/bev train --recipe bev_service/training/recipes/shipped.json --out-dir $(BUILD)/train --threads 2 --render-cache $(BUILD)/cache --resume
	$(BIN)/bev prune --recipe bev_service/training/recipes/shipped.json --model $(BUILD)/train/model.pt --out $(BUILD)/prune/model.pt --threads 2 --render-cache $(BUILD)/cache
	cp $(BUILD)/train/model.pt $(MODELS)/enet.pt && cp $(BUILD)/prune/model.pt $(MODELS)/enet-pruned.pt
	cp $(BUILD)/train/curves.png $(MODELS)/enet-training-curves.png && cp $(BUILD)/prune/model.json $(MODELS)/enet-pruned-report.json
	$(BIN)/bev export --model $(MODELS)/enet.pt --out $(MODELS)/enet.onnx
	$(BIN)/bev export --model $(MODELS)/enet-pruned.pt --out $(MODELS)/enet-pruned.onnx
	$(BIN)/bev quantize --model $(MODELS)/enet-pruned.onnx --out $(MODELS)/enet-pruned-int8.onnx --render-cache $(BUILD)/cache
	$(MAKE) eval

# The drive is rendered at the cameras' 960x640, as JPEGs: the networks see it through the pipeline's resize.
# Scored at the network's input size (labels resized, nearest), at 960x640 (--labels-at frame), and without the
# car's own body (--body ignore: the pixels the rig's masks keep off the grid).
eval: $(STAMP)
	rm -rf $(EVAL_DRIVE)
	$(BIN)/bev synth --drive --frames 24 --speed-mps 8 --fps 2 --seed 200000 --out $(EVAL_DRIVE) --no-progress
	for m in enet enet-pruned; do \
		$(BIN)/bev eval --model $(MODELS)/$$m.pt --data $(EVAL_DRIVE) --json $(BUILD)/eval-$$m.json && \
		$(BIN)/bev eval --model $(MODELS)/$$m.pt --data $(EVAL_DRIVE) --labels-at frame --json $(BUILD)/eval-$$m-frame.json && \
		$(BIN)/bev eval --model $(MODELS)/$$m.pt --data $(EVAL_DRIVE) --body ignore --json $(BUILD)/eval-$$m-nobody.json \
		|| exit 1; \
	done
	$(BIN)/bev eval --model $(MODELS)/enet-pruned-int8.onnx --data $(EVAL_DRIVE) --json $(BUILD)/eval-enet-pruned-int8.json
	$(BIN)/bev eval --model $(MODELS)/enet-pruned-int8.onnx --data $(EVAL_DRIVE) --body ignore --json $(BUILD)/eval-enet-pruned-int8-nobody.json

# Builds the image on a local base, brings the compose demo up, checks the demo streamer's grids, tears down.
docker-test:
	bash docker/test.sh

# The same on docker/compose.ray.yaml: a Ray head and a worker, a replica on each, the rigs volume shared.
docker-test-ray:
	BEV_DOCKER_COMPOSE=ray bash docker/test.sh

clean:
	rm -rf $(VENV) $(BUILD) .mypy_cache .ruff_cache .pytest_cache
