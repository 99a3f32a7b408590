"""The config tree: defaults, YAML plus `key.path=value` overrides, errors naming the bad key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from adaptext.core.config import (
    CONFIG_FORMAT_VERSION,
    Config,
    build_config,
    config_changes,
    config_to_yaml,
    default_value,
    dotted_value,
    load_config,
)
from adaptext.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write_yaml(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    config = load_config(None)
    assert config == Config() == build_config({})
    assert config.format_version == CONFIG_FORMAT_VERSION
    assert config.model.name == "minilm"
    assert config.data.train is None
    assert config.data.validation_fraction == "auto"
    assert config.data.test_fraction is None
    assert config.data.label_delimiter == "|"
    assert config.train.batch_size == 32
    assert config.train.learning_rate == "auto"
    assert config.train.epochs == "auto"
    assert config.train.precision == "auto"
    assert config.seed == 42
    assert config.output_dir == Path("runs/latest")


def test_empty_yaml_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write_yaml(tmp_path, "# nothing set\n")) == Config()


def test_override_wins_over_file_and_merges_nested_keys(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        "seed: 1\ndata:\n  train: a.csv\n  text_column: body\ntrain:\n  batch_size: 16\n  epochs: 5\n",
    )
    config = load_config(path, ["train.batch_size=8", "data.label_column=intent", "seed=3"])
    assert config.train.batch_size == 8  # override wins
    assert config.seed == 3
    assert config.train.epochs == 5  # the rest of the file's section is kept
    assert config.data.train == Path("a.csv")
    assert config.data.text_column == "body"
    assert config.data.label_column == "intent"  # a nested key only the override sets


def test_later_override_wins_over_earlier() -> None:
    assert load_config(None, ["train.epochs=2", "train.epochs=4"]).train.epochs == 4


def test_override_values_are_parsed_as_yaml_scalars() -> None:
    config = load_config(
        None,
        [
            "train.max_steps=100",
            "data.multi_label=true",
            "train.max_grad_norm=null",
            "train.class_weights={a: 2, b: 0.5}",
            "output_dir=some/run",
            "model.name=bert-base-uncased",
            "train.learning_rate=1e-3",
        ],
    )
    assert config.train.max_steps == 100
    assert isinstance(config.train.max_steps, int)
    assert config.data.multi_label is True
    assert config.train.max_grad_norm is None
    assert config.train.class_weights == {"a": 2.0, "b": 0.5}
    assert config.output_dir == Path("some/run")
    assert config.model.name == "bert-base-uncased"
    assert config.train.learning_rate == 0.001


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("train:\n  learning_rate: 1e-3\n", 0.001),  # PyYAML reads this as the string '1e-3'
        ("train:\n  learning_rate: 5E-5\n", 5e-5),
        ("train:\n  learning_rate: 2.0e-4\n", 2e-4),  # already a float for PyYAML
        ("train:\n  learning_rate: '3e-4'\n", 3e-4),
    ],
)
def test_exponent_floats_in_yaml_become_floats(tmp_path: Path, yaml_text: str, expected: float) -> None:
    config = load_config(write_yaml(tmp_path, yaml_text))
    assert isinstance(config.train.learning_rate, float)
    assert config.train.learning_rate == pytest.approx(expected, rel=1e-12)


def test_exponent_float_in_nested_mapping_and_other_fields(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        "data:\n  validation_fraction: 1e-1\ntrain:\n  weight_decay: 1e-2\n  class_weights: {a: 1e-3, b: 1}\n",
    )
    config = load_config(path)
    assert config.data.validation_fraction == pytest.approx(0.1)
    assert config.train.weight_decay == pytest.approx(0.01)
    assert config.train.class_weights == {"a": pytest.approx(0.001), "b": 1.0}


def test_non_numeric_string_for_a_float_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"train\.learning_rate"):
        load_config(None, ["train.learning_rate=fast"])


def test_unknown_top_level_key_lists_valid_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write_yaml(tmp_path, "seed: 1\nbogus_key: 3\n"))
    message = str(info.value)
    assert "bogus_key" in message
    assert "unknown key" in message
    for valid in ("output_dir", "seed", "model.name", "data.train", "train.epochs"):
        assert valid in message
    assert str(tmp_path / "config.yaml") in message  # names the file it came from


def test_unknown_key_inside_a_section_lists_that_sections_keys() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.epoch=3"])  # typo of train.epochs
    message = str(info.value)
    line = next(ln for ln in message.splitlines() if "train.epoch:" in ln)
    assert "unknown key" in line
    for valid in ("train.epochs", "train.batch_size", "train.learning_rate", "train.precision"):
        assert valid in line
    assert "data.text_column" not in line  # only the keys valid in this section


def test_unknown_section_key_in_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.text_col: unknown key.*data\.text_column"):
        load_config(write_yaml(tmp_path, "data:\n  text_col: body\n"))


@pytest.mark.parametrize(
    ("override", "key", "hint"),
    [
        ("train.batch_size=abc", "train.batch_size", "integer"),
        ("train.precision=fp8", "train.precision", "fp32"),
        ("train.batch_size=0", "train.batch_size", "greater than or equal to 1"),
        ("data.validation_fraction=0.7", "data.validation_fraction", "less than 0.5"),
        ("seed=1.5", "seed", "integer"),
        ("model=bert", "model", "dictionary"),
    ],
)
def test_wrong_type_or_value_names_the_dotted_key(override: str, key: str, hint: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert f"{key}:" in message
    assert hint in message


def test_bad_union_value_names_the_plain_dotted_key() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.class_weights=sometimes"])
    message = str(info.value)
    assert "train.class_weights:" in message
    assert "'auto'" in message


def test_every_bad_key_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.batch_size=abc", "train.precision=fp8", "nonsense=1"])
    message = str(info.value)
    for key in ("train.batch_size", "train.precision", "nonsense"):
        assert key in message


@pytest.mark.parametrize("override", ["train.epochs", "train.epochs 3", "=3", " =3"])
def test_malformed_override_is_rejected(override: str) -> None:
    with pytest.raises(ConfigError, match=r"key\.path=value"):
        load_config(None, [override])


def test_override_below_a_scalar_is_rejected() -> None:
    with pytest.raises(ConfigError, match="not a section"):
        load_config(None, ["train=5", "train.epochs=2"])


@pytest.mark.parametrize("override", ["data.text_column=[", "model.name={", "data.label_column=*x"])
def test_override_with_invalid_yaml_value_raises_config_error(override: str) -> None:
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        load_config(None, [override])


def test_pipe_label_delimiter_override() -> None:
    assert load_config(None, ["data.label_delimiter=|"]).data.label_delimiter == "|"


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("just a string\n", "str"), ("3\n", "int")])
def test_non_mapping_yaml_is_rejected(tmp_path: Path, text: str, kind: str) -> None:
    path = write_yaml(tmp_path, text)
    with pytest.raises(ConfigError, match="mapping") as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert kind in str(info.value)


def test_invalid_yaml_syntax_is_rejected(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_missing_config_file_is_rejected(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="not found") as info:
        load_config(missing)
    assert str(missing) in str(info.value)


def test_config_folder_instead_of_file_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path)


def test_test_file_and_test_fraction_are_exclusive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.test=test.csv", "data.test_fraction=0.2"])
    assert "data.test" in str(info.value)
    assert "data.test_fraction" in str(info.value)
    path = write_yaml(tmp_path, "data:\n  test: t.csv\n  test_fraction: 0.1\n")
    with pytest.raises(ConfigError, match="exclusive"):
        load_config(path)


def test_unsupported_format_version_is_rejected() -> None:
    with pytest.raises(ConfigError, match="format_version"):
        load_config(None, [f"format_version={CONFIG_FORMAT_VERSION + 1}"])


def test_every_example_config_loads() -> None:
    paths = sorted((REPO / "configs").glob("*.yaml"))
    assert paths, "no example configs found in configs/"
    for path in paths:
        assert isinstance(load_config(path), Config), path


def test_config_to_yaml_round_trips(tmp_path: Path) -> None:
    config = load_config(
        None,
        [
            f"output_dir={tmp_path / 'run'}",
            "seed=7",
            "model.name=some/model",
            "data.train=data/train.csv",
            "data.test_fraction=0.2",
            "data.text_pair_column=hypothesis",
            "data.multi_label=true",
            "data.label_delimiter=;",
            "train.learning_rate=3e-5",
            "train.epochs=0.5",
            "train.max_grad_norm=null",
            "train.class_weights={正面: 2.0, negative: 1e-3}",
            "train.precision=bf16",
        ],
    )
    text = config_to_yaml(config)
    assert f"format_version: {CONFIG_FORMAT_VERSION}" in text
    assert "正面" in text  # written as UTF-8, not escaped
    reloaded = load_config(write_yaml(tmp_path, text, "resolved.yaml"))
    assert reloaded == config
    assert config_to_yaml(reloaded) == text


def test_default_config_round_trips(tmp_path: Path) -> None:
    assert load_config(write_yaml(tmp_path, config_to_yaml(Config()))) == Config()


def test_config_module_does_not_import_torch() -> None:
    # `adaptext --help` and config validation must stay instant.
    code = "import sys, adaptext.core.config, adaptext.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("value", ["true", "2.5", "'8'"])
def test_integer_keys_reject_booleans_floats_and_strings(value: str) -> None:
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        load_config(None, [f"train.batch_size={value}"])


# --- ~ in paths, moved run folders (issue item 12) -------------------------------------------------


def test_tilde_in_path_keys_means_the_home_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "models" / "mine").mkdir(parents=True)
    config = load_config(
        None,
        [
            "output_dir=~/runs/a",
            "data.train=~/data/train.csv",
            "data.validation=~/data/validation.csv",
            "data.test=~/data/test.csv",
            "data.label_descriptions=~/data/labels.csv",
            "model.name=~/models/mine",
            "zeroshot.nli_model=~/models/nli",
        ],
    )
    assert config.output_dir == tmp_path / "runs" / "a"
    assert config.data.train == tmp_path / "data" / "train.csv"
    assert config.data.validation == tmp_path / "data" / "validation.csv"
    assert config.data.test == tmp_path / "data" / "test.csv"
    assert config.data.label_descriptions == tmp_path / "data" / "labels.csv"
    assert config.model.name == str(tmp_path / "models" / "mine")
    assert config.zeroshot.nli_model == str(tmp_path / "models" / "nli")
    # Hub ids and relative paths are left alone.
    plain = load_config(None, ["model.name=org/model~v2", "output_dir=runs/~a", "data.train=data/train.csv"])
    assert plain.model.name == "org/model~v2"
    assert plain.output_dir == Path("runs/~a")
    assert plain.data.train == Path("data/train.csv")


def test_tilde_in_the_config_file_and_the_config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    write_yaml(tmp_path, "output_dir: ~/runs/b\ndata:\n  train: ~/train.csv\n", name="mine.yaml")
    config = load_config("~/mine.yaml")
    assert config.output_dir == tmp_path / "runs" / "b"
    assert config.data.train == tmp_path / "train.csv"
    # The resolved config written into the run folder holds the expanded paths.
    assert f"output_dir: {tmp_path / 'runs' / 'b'}" in config_to_yaml(config)


def test_tilde_of_an_unknown_user_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"data\.train: .*cannot expand '~no-such-user-adaptext/x.csv'"):
        load_config(None, ["data.train=~no-such-user-adaptext/x.csv"])


def _fake_run_folder(folder: Path, output_dir: Path) -> Path:
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "labels.json").write_text('["a", "b"]\n', encoding="utf-8")
    return write_yaml(folder, f"output_dir: {output_dir}\ndata:\n  train: train.csv\n")


def test_a_moved_run_folders_config_names_the_folder_it_lies_in(tmp_path: Path) -> None:
    # After `mv runs/a runs/b`, runs/b/config.yaml still says output_dir: runs/a.
    moved = tmp_path / "runs" / "b"
    config_file = _fake_run_folder(moved, tmp_path / "runs" / "a")
    assert load_config(config_file).output_dir == moved
    assert load_config(config_file, ["train.epochs=3"]).output_dir == moved
    # An explicit output_dir wins.
    assert load_config(config_file, [f"output_dir={tmp_path / 'c'}"]).output_dir == tmp_path / "c"


def test_a_config_outside_a_run_folder_keeps_its_output_dir(tmp_path: Path) -> None:
    elsewhere = tmp_path / "runs" / "a"
    # Not named config.yaml: a user's own config file beside a run's files.
    folder = tmp_path / "project"
    _fake_run_folder(folder, elsewhere)
    mine = write_yaml(folder, f"output_dir: {elsewhere}\n", name="mine.yaml")
    assert load_config(mine).output_dir == elsewhere
    # A config.yaml in a folder that holds no run.
    (tmp_path / "configs").mkdir()
    plain = write_yaml(tmp_path / "configs", f"output_dir: {elsewhere}\n")
    assert load_config(plain).output_dir == elsewhere


def test_dotted_value_walks_sections_and_names_a_missing_key() -> None:
    tree = Config(train={"epochs": 7}).model_dump(mode="json")
    assert dotted_value(tree, "train.epochs") == 7
    assert dotted_value(tree, "train") == tree["train"]
    assert default_value("train.epochs") != 7 and default_value("train.epochs") == Config().train.epochs
    for missing in ("train.no_such_key", "no_such_section.epochs", "train.epochs.deeper"):
        with pytest.raises(KeyError, match=missing):
            dotted_value(tree, missing)


def test_config_changes_name_each_changed_key_and_skip_the_allowed_ones() -> None:
    saved = build_config({"train": {"epochs": 2, "class_weights": {"neg": 1.0, "pos": 2.0}}})
    given = build_config({"train": {"epochs": 3, "class_weights": {"neg": 1.0, "pos": 3.0}, "learning_rate": 1e-3}})
    assert config_changes(saved, saved) == []
    changed = config_changes(saved, given)
    assert changed[0] == "train.class_weights.pos: 2.0 -> 3.0"
    assert "train.epochs: 2.0 -> 3.0" in changed  # epochs may be fractional
    assert any(line.startswith("train.learning_rate: ") for line in changed)
    assert len(changed) == 3
    assert config_changes(saved, given, frozenset({"train.epochs", "train.learning_rate"})) == [
        "train.class_weights.pos: 2.0 -> 3.0"
    ]
