import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.config import ParamsError, load_params, params_reference, validate_params
from conftest import REPO


def test_committed_params_and_configs_are_valid():
    load_params(REPO / "params.yaml")
    for cfg in sorted((REPO / "configs").glob("*.yaml")):
        load_params(cfg)


def _with(raw: dict, key: str, value) -> dict:
    section, name = key.split(".")
    raw = {k: dict(v) for k, v in raw.items()}
    raw[section][name] = value
    return raw


@pytest.mark.parametrize("key,value,expected", [
    ("data.img_sise", 64, "data.img_sise is not a known key of section 'data'"),
    ("data.img_size", "64", "data.img_size = '64' is not allowed: it should be a valid integer"),
    ("data.img_size", 8, "data.img_size = 8 is not allowed: it should be greater than or equal to 16"),
    ("data.split", 4, "data.split = 4 is not allowed"),
    ("data.img_size", 60, "data.img_size = 60 is not allowed: it must be a multiple of the CoordTok-tiny"),
    ("data.num_frames", 30, "data.num_frames = 30 is not allowed: it must be a multiple of"),
    ("data.max_bad_fraction", 1.5, "data.max_bad_fraction = 1.5 is not allowed"),
    ("preprocess.compression", "lz4", "preprocess.compression = 'lz4' is not allowed"),
    ("synthesize.min_seconds", 7.0, "synthesize.min_seconds = 7.0 is not allowed: it must not exceed"),
    ("tokenizer.preset", "CoordTok-XXL", "tokenizer.preset = 'CoordTok-XXL' is not allowed: choose one of"),
    ("ray.num_cpus", 0, "ray.num_cpus = 0 is not allowed"),
])
def test_bad_values_give_one_sentence_naming_key_value_and_rule(raw_params, key, value, expected):
    with pytest.raises(ParamsError) as info:
        validate_params(_with(raw_params, key, value))
    message = str(info.value)
    assert expected in message
    assert "\n" not in message and "Traceback" not in message


def test_unknown_section_and_non_mapping(raw_params):
    with pytest.raises(ParamsError, match="trainer is not a known key of params.yaml"):
        validate_params({**raw_params, "trainer": {"lr": 1}})
    with pytest.raises(ParamsError, match="must be a mapping"):
        validate_params([1, 2])


def test_yaml_syntax_error_and_missing_file(tmp_path: Path):
    bad = tmp_path / "params.yaml"
    bad.write_text("data: {img_size: 64\n")
    with pytest.raises(ParamsError, match="is not valid YAML at line"):
        load_params(bad)
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_digest_is_stable_and_sensitive(raw_params):
    a = validate_params(raw_params)
    assert a.digest() == validate_params(raw_params).digest()
    assert a.digest() != validate_params(_with(raw_params, "data.img_size", 128)).digest()


def test_reference_lists_every_key():
    ref = params_reference()
    for key in ("data.raw_dir", "data.max_bad_fraction", "preprocess.chunk_frames", "ray.address",
                "mlflow.tracking_uri", "tokenizer.preset", "synthesize.seed"):
        assert f"`{key}`" in ref


@pytest.mark.parametrize("stage", ["synthesize", "preprocess"])
def test_stage_cli_rejects_bad_params_before_compute(tmp_path: Path, raw_params, stage):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(_with(raw_params, "data.img_size", 60)))
    proc = subprocess.run([sys.executable, "-m", f"pipelines.{stage}", "--params", str(path)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert "data.img_size = 60 is not allowed" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "mlruns.db").exists()


def test_readme_params_reference_is_current():
    text = (REPO / "README.md").read_text()
    start = text.index("<!-- params-reference:start")
    start = text.index("\n", start) + 1
    end = text.index("<!-- params-reference:end -->")
    assert text[start:end].strip() == params_reference().strip(), \
        "README params table is stale: regenerate it with `python -m pipelines.params reference`"


def test_shared_root_maps_a_dvc_experiment_workspace_to_its_repository(tmp_path):
    from components.config import shared_root

    repo = tmp_path / "repo"
    exp = repo / ".dvc" / "tmp" / "exps" / "tmpabc123"
    exp.mkdir(parents=True)
    assert shared_root(exp) == repo.resolve()
    assert shared_root(exp / "sub") == repo.resolve()
    assert shared_root(repo) == repo.resolve()
    assert shared_root(tmp_path / "other" / ".dvc" / "tmp") == (tmp_path / "other" / ".dvc" / "tmp").resolve()
