"""Training and pruning settings: the shared base, stored configs, the shipped recipe and ``--recipe``."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

import pytest

from bev_service.cli.main import build_parser
from bev_service.cli.model import config_from_args
from bev_service.errors import FrameError
from bev_service.shipped import MODELS
from bev_service.training.config import (
    RESUMABLE_CHANGES,
    SHIPPED_RECIPE,
    PruneConfig,
    RunConfig,
    TrainConfig,
    read_recipe,
)

# The flags `make train` passed before the recipe file held them, and those the recipe has since gained.
MIX = "default:0.35,surround:0.45,front_pinhole:0.2"
DATA_FLAGS = ["--train-frame-sets", "448", "--rigs", MIX, "--augment", "full"]
DATA_FLAGS += ["--val-rigs", MIX, "--val-frame-sets", "32", "--body", "ignore"]
OLD_TRAIN_FLAGS = [
    *DATA_FLAGS,
    "--out-dir",
    "build/train",
    "--steps",
    "10000",
    "--seed",
    "0",
    "--threads",
    "2",
    "--render-cache",
    "c",
    "--resume",
]
OLD_PRUNE_FLAGS = [*DATA_FLAGS, "--model", "build/train/model.pt", "--out", "build/prune/model.pt", "--ratio", "0.4"]
OLD_PRUNE_FLAGS += ["--final-finetune-steps", "8000", "--precision", "fp32", "--threads", "2", "--render-cache", "c"]


def parsed(command: str, *argv: str) -> TrainConfig | PruneConfig:
    args = build_parser().parse_args([command, *argv])
    return config_from_args(TrainConfig if command == "train" else PruneConfig, args, command=command)


def test_the_shipped_recipe_gives_the_configs_of_the_old_make_train_flags() -> None:
    recipe = ["--recipe", str(SHIPPED_RECIPE)]
    assert parsed("train", *recipe, "--out-dir", "build/train", "--threads", "2", "--render-cache", "c", "--resume") == parsed(
        "train", *OLD_TRAIN_FLAGS
    )
    prune = ["--model", "build/train/model.pt", "--out", "build/prune/model.pt", "--threads", "2", "--render-cache", "c"]
    assert parsed("prune", *recipe, *prune) == parsed("prune", *OLD_PRUNE_FLAGS)
    assert parsed("prune", "--recipe", "shipped", *prune) == parsed("prune", *OLD_PRUNE_FLAGS)  # by name


def test_flags_override_the_recipe_and_unknown_settings_fail(tmp_path: Path) -> None:
    assert parsed("train", "--recipe", "shipped").steps == 10000
    assert parsed("train", "--recipe", "shipped", "--steps", "10").steps == 10
    assert parsed("train", "--recipe", "shipped", "--no-prior-correction").prior_correction is False
    assert parsed("train").steps == TrainConfig().steps  # no recipe: the defaults
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "bev-service/recipe", "prune": {"ratio": 0.4, "stepz": 3}}))
    assert read_recipe(bad, "train") == {}
    with pytest.raises(ValueError, match="stepz"):
        read_recipe(bad, "prune")
    with pytest.raises(FrameError, match="bad settings"):
        parsed("prune", "--recipe", str(bad))
    with pytest.raises(FrameError, match="cannot read recipe"):
        parsed("train", "--recipe", str(tmp_path / "missing.json"))


def test_the_recipe_holds_the_seed_once() -> None:
    recipe = json.loads(SHIPPED_RECIPE.read_text())
    assert [section for section in ("common", "train", "prune") if "seed" in recipe[section]] == ["common"]
    assert read_recipe(SHIPPED_RECIPE, "prune")["seed"] == read_recipe(SHIPPED_RECIPE, "train")["seed"] == 0


def test_pruning_fine_tunes_with_its_shared_settings() -> None:
    config = PruneConfig(lr=1e-3, crop_height=0, focus=0.0, seed=7, finetune_steps=12, precision="fp32")
    finetune = config.finetune_config()
    assert finetune.steps == 12
    assert all(getattr(finetune, f.name) == getattr(config, f.name) for f in fields(RunConfig))
    assert PruneConfig().lr == 6e-3 and TrainConfig().lr == 4e-3  # each command's own defaults
    with pytest.raises(ValueError, match="precision"):
        PruneConfig(precision="fp8")  # checked at once, not after the pruning steps


def test_stored_flat_configs_still_load() -> None:
    report = json.loads((MODELS / "enet-pruned-report.json").read_text())
    config = PruneConfig.from_dict(report["config"])  # it stores the removed distill settings, unused
    assert (config.ratio, config.final_finetune_steps, config.lr, config.seed) == (0.4, 8000, 6e-3, 0)
    assert asdict(PruneConfig.from_dict(asdict(config))) == asdict(config)
    assert TrainConfig.from_dict({**asdict(TrainConfig(steps=5)), "lovasz": 0.0, "focus_unit": "pixel"}).steps == 5
    with pytest.raises(ValueError, match="no longer supported"):
        TrainConfig.from_dict({"lovasz": 1.0})
    with pytest.raises(ValueError, match="no longer supported"):
        PruneConfig.from_dict({**report["config"], "distill": 0.5})


def test_the_validation_rigs_and_the_body_are_flags_of_both_commands() -> None:
    mix = "default:0.5,surround:0.5"
    for command in ("train", "prune"):
        extra = ["--model", "m.pt"] if command == "prune" else []
        config = parsed(command, *extra, "--val-rigs", mix, "--body", "ignore", "--augment", "style")
        assert (config.val_rigs, config.body, config.augment) == (mix, "ignore", "style")
        assert parsed(command, *extra).body == "background", "the body is learnt as background unless asked"
    stored = {k: v for k, v in asdict(TrainConfig()).items() if k not in ("val_rigs", "body")}
    assert TrainConfig.from_dict(stored) == TrainConfig(), "configs stored before the settings existed still load"
    assert "val_rigs" in RESUMABLE_CHANGES and "body" not in RESUMABLE_CHANGES  # the body changes what is learnt
