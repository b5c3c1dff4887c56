"""Training configuration: defaults, YAML files, overrides, validation, steps."""
from pathlib import Path

import pytest

from bnn_helpers.config import (DEFAULTS, TrainError, is_float_model, load_config, parse_cli_overrides,
                                run_dir_of, steps_of)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_and_overrides_are_coerced():
    cfg = load_config(None, {"lr": "1e-3", "epochs": "2", "agc": "false", "width-mult": 0.5})
    assert cfg["lr"] == 1e-3 and cfg["epochs"] == 2 and cfg["agc"] is False and cfg["width_mult"] == 0.5
    assert {k: v for k, v in cfg.items() if k not in ("lr", "epochs", "agc", "width_mult")} == \
        {k: v for k, v in DEFAULTS.items() if k not in ("lr", "epochs", "agc", "width_mult")}


def test_cli_overrides_with_values_equals_signs_and_bare_flags():
    assert parse_cli_overrides(["--lr", "1e-3", "--agc=false", "--track-stats"]) == \
        {"lr": "1e-3", "agc": "false", "track_stats": "true"}


@pytest.mark.parametrize("overrides, message", [
    ({"learning_rate": 1}, "unknown config key"),
    ({"epochs": 0}, "epochs must be > 0"),
    ({"optimizer": "lamb"}, "unknown optimizer"),
    ({"dataset": "imagenet"}, "needs --data-dir"),
])
def test_invalid_settings_are_one_train_error(overrides, message):
    with pytest.raises(TrainError, match=message):
        load_config(None, overrides)


def test_shipped_recipes_load():
    recipes = sorted(p for p in CONFIGS.rglob("*.yaml") if "sweeps" not in p.parts)
    assert recipes
    for path in recipes:
        cfg = load_config(path, {"data_dir": "/data"} if "imagenet" in path.parts else None)
        assert cfg["model"]


def test_shipped_sweeps_name_valid_recipes_and_overrides():
    from bnn_helpers.sweep import load_sweep, planned_runs

    sweeps = sorted((CONFIGS / "sweeps").glob("*.yaml"))
    assert sweeps
    for path in sweeps:
        sweep = load_sweep(path)
        for _, _, mode, _, overrides in planned_runs(sweep):
            load_config(CONFIGS.parent / sweep["config"].format(mode=mode), overrides)


def test_steps_of_binary_and_real_valued_models():
    assert steps_of(load_config(None, {"step": "both"})) == [1, 2]
    assert steps_of(load_config(None, {"step": "2"})) == [2]
    teacher = load_config(None, {"model": "float_cnn", "step": "1"})
    assert is_float_model(teacher) and steps_of(teacher) == [1]
    with pytest.raises(TrainError, match="no step 2"):
        steps_of(load_config(None, {"model": "float_cnn", "step": "2"}))


def test_run_dir_of(tmp_path):
    assert run_dir_of(load_config(None, {"run_dir": str(tmp_path / "x")})) == tmp_path / "x"
    assert run_dir_of(load_config(None, {"output_dir": str(tmp_path), "name": "n"})) == tmp_path / "n"


def test_shipped_imagenet_configs_hold_the_published_recipe(monkeypatch):
    from bnn_helpers.config import PUBLISHED_RECIPE, recipe_rows

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    rows = recipe_rows(load_config("configs/imagenet/reactnet_a_bf.yaml", {"data_dir": "/d"}))
    assert len(rows) == len(PUBLISHED_RECIPE) and all(r["matches"] for r in rows)
    changed = recipe_rows(load_config("configs/imagenet/reactnet_a_bf.yaml", {"data_dir": "/d", "lr": 1e-3}))
    assert [r["config key"] for r in changed if not r["matches"]] == ["lr"]
