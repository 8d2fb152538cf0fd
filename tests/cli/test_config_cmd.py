"""`pypto config validate | schema | init` through typer's runner."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pypto_serving.core.errors import ConfigError
from pypto_serving.core.loader import (
    load_config,
    load_profile,
    parse_config,
    profile_names,
    read_mapping,
)
from pypto_serving.core.serialize import dump_config


def write(path, text):
    path.write_text(text)
    return path


def test_validate_ok_prints_summary(cli, tmp_path):
    f = write(tmp_path / "c.yaml", "parallel: {tensor_parallel_size: 2}\n")
    r = cli(["config", "validate", str(f)])
    assert r.exit_code == 0, r.output
    assert "OK" in r.output and "world 2 = DP 1 x PP 1 x TP 2" in r.output


def test_validate_reports_every_problem_at_once(cli, tmp_path):
    f = write(tmp_path / "c.json", json.dumps({
        "parallel": {"tensor_parallel_size": 3, "pipeline_parallel_size": 9},
        "model": {"num_layers": 4},
    }))
    r = cli(["config", "validate", str(f)])
    assert r.exit_code == 2
    assert "2 problems" in r.output
    assert ("parallel.tensor_parallel_size=3: model.num_attention_heads=8 is not divisible by 3"
            in r.output)
    assert "use 1, 2, 4 or 8" in r.output
    assert "parallel.pipeline_parallel_size=9" in r.output and "use at most 4" in r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize("name, text, expect", [
    ("missing.yaml", None, "no such file"),
    ("bad.yaml", "parallel: [1, 2\n", "not valid YAML"),
    ("bad.json", "{\"parallel\": ", "not valid JSON"),
    ("bad.toml", "[parallel\n", "not valid TOML"),
    ("list.yaml", "- 1\n- 2\n", "top level must be a mapping"),
    ("c.ini", "x=1", "unknown config format '.ini'"),
    ("typo.yaml", "parallel: {tensor_paralel_size: 2}\n", "did you mean 'tensor_parallel_size'"),
    ("choice.yaml", "parallel: {expert_placement_strategy: random}\n", "'linear' or 'round_robin'"),
])
def test_validate_bad_files_exit_2_without_traceback(cli, tmp_path, name, text, expect):
    f = tmp_path / name
    if text is not None:
        f.write_text(text)
    r = cli(["config", "validate", str(f)])
    assert r.exit_code == 2
    assert expect in r.output
    assert "Traceback" not in r.output


def test_validate_flag_error_names_the_flag(cli, tmp_path):
    f = write(tmp_path / "c.yaml", "model: {num_layers: 4}\n")
    r = cli(["config", "validate", str(f), "-pp", "8"])
    assert r.exit_code == 2
    assert "parallel.pipeline_parallel_size=8 (from --pipeline-parallel-size)" in r.output


@pytest.mark.parametrize("suffix, parse", [(".yaml", yaml.safe_load), (".json", json.loads)])
def test_validate_show_prints_resolved_config_in_file_format(cli, tmp_path, suffix, parse):
    f = write(tmp_path / f"c{suffix}", json.dumps({"parallel": {"data_parallel_size": 2}}))
    r = cli(["config", "validate", str(f), "--show", "-tp", "2"])
    assert r.exit_code == 0, r.output
    shown = parse(r.stdout)
    assert shown["parallel"]["tensor_parallel_size"] == 2  # the flag
    assert shown["parallel"]["data_parallel_size"] == 2  # the file
    assert shown["cluster"]["devices_per_node"] == 4  # derived default
    assert shown["model"]["num_layers"] == 4  # built-in default


def test_schema_accepts_every_profile_and_rejects_broken(cli):
    r = cli(["config", "schema"])
    assert r.exit_code == 0
    schema = json.loads(r.stdout)
    validator = jsonschema.Draft202012Validator(schema)
    assert "tensor_parallel_size" in schema["$defs"]["ParallelConfig"]["properties"]
    desc = schema["$defs"]["ParallelConfig"]["properties"]["tensor_parallel_size"]["description"]
    assert "Example:" in desc
    for name in profile_names():
        data = load_profile(name).model_dump(mode="json")
        validator.validate(data)
    broken = {"parallel": {"tensor_parallel_size": 0, "expert_placement_strategy": "random"},
              "extra": 1}
    errors = list(validator.iter_errors(broken))
    assert len(errors) >= 2
    with pytest.raises(ConfigError, match="tensor_parallel_size"):
        from pypto_serving.core.loader import parse_config

        parse_config(broken)


@pytest.mark.parametrize("fmt", ["yaml", "toml", "json"])
def test_init_round_trips_and_refuses_to_overwrite(cli, tmp_path, fmt):
    out = tmp_path / f"serving.{fmt}"
    r = cli(["config", "init", "--profile", "cpu-demo", "-o", str(out)])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    if fmt != "json":
        assert "# Independent serving replicas (DP)" in text  # descriptions as comments
    cfg = load_config(out)
    assert cfg == load_profile("cpu-demo")
    again = tmp_path / f"again.{fmt}"
    again.write_text(cli(["config", "validate", str(out), "--show"]).stdout)
    assert load_config(again) == cfg  # load -> dump -> load
    before = out.read_text()
    r = cli(["config", "init", "-o", str(out)])
    assert r.exit_code == 2 and "--force" in r.output
    assert out.read_text() == before
    assert cli(["config", "init", "-o", str(out), "--force"]).exit_code == 0


def test_init_unknown_profile_and_format(cli, tmp_path):
    r = cli(["config", "init", "--profile", "nope"])
    assert r.exit_code == 2 and "unknown profile 'nope'" in r.output
    r = cli(["config", "init", "--format", "xml"])
    assert r.exit_code == 2 and "--format 'xml'" in r.output


def test_every_profile_validates_through_the_cli(cli, repo_root):
    for name in profile_names():
        path = repo_root / "profiles" / f"{name}.yaml"
        assert read_mapping(path)
        r = cli(["config", "validate", str(path)])
        assert r.exit_code == 0, (name, r.output)


_FIELDS = {
    "parallel": ["data_parallel_size", "tensor_parallel_size", "pipeline_parallel_size",
                 "enable_expert_parallel", "expert_placement_strategy", "pipeline_layer_partition",
                 "data_parallel_size_local", "tensor_paralel_size"],
    "model": ["num_layers", "num_attention_heads", "num_kv_heads", "num_experts",
              "experts_per_token", "hidden_size", "intermediate_size", "dtype"],
    "cluster": ["nnodes", "devices_per_node", "platform"],
}
_values = st.one_of(st.integers(-3, 10**12), st.booleans(), st.none(), st.text(max_size=5),
                    st.lists(st.integers(-1, 9), max_size=3), st.floats(allow_nan=True))
_configs = st.fixed_dictionaries({}, optional={
    section: st.dictionaries(st.sampled_from(keys), _values, max_size=4)
    for section, keys in _FIELDS.items()
})


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_configs)
def test_random_configs_never_traceback(cli, tmp_path, data):
    f = tmp_path / "fuzz.json"
    f.write_text(json.dumps(data))
    r = cli(["config", "validate", str(f)])
    assert r.exit_code in (0, 2), r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    if r.exit_code == 2:
        assert "problem" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("value", [True, "2", "two", [2], 2.5])
def test_loader_and_schema_agree_on_types(cli, value):
    """A value the exported schema rejects is rejected by the loader too (no coercion)."""
    from pypto_serving.core.loader import parse_config

    schema = json.loads(cli(["config", "schema"]).stdout)
    data = {"parallel": {"tensor_parallel_size": value}, "cluster": {"devices_per_node": 2}}
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(data))
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    assert e.value.issues[0].field == "parallel.tensor_parallel_size"
    assert "must be an integer" in e.value.render()


@pytest.mark.parametrize("args, expect", [
    (["--format", "toml", "-o", "{tmp}/s.yaml"], "--format toml does not match s.yaml"),
    (["-o", "{tmp}/s.txt"], "use a .yaml, .yml, .toml or .json name"),
    (["--profile", "cpu-dem"], "did you mean 'cpu-demo'?"),
])
def test_init_refuses_what_could_not_be_loaded(cli, tmp_path, args, expect):
    r = cli(["config", "init", *[a.format(tmp=tmp_path) for a in args]])
    assert r.exit_code == 2 and expect in r.output
    assert not list(tmp_path.iterdir())


def test_a_whole_float_is_an_integer_to_both(cli):
    """JSON Schema's "integer" admits 2.0; so does the loader (and stores 2)."""
    from pypto_serving.core.loader import parse_config

    schema = json.loads(cli(["config", "schema"]).stdout)
    data = {"parallel": {"tensor_parallel_size": 2.0}, "cluster": {"devices_per_node": 2}}
    assert not list(jsonschema.Draft202012Validator(schema).iter_errors(data))
    assert parse_config(data).parallel.tensor_parallel_size == 2


def _bad_inputs(tmp_path):
    """One file per class of hostile input (core/config_files.py bounds each)."""
    import os

    names = "abcdefghi"
    bomb = ["a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]"] + [
        f"{n}: &{n} [" + ",".join([f"*{p}"] * 9) + "]" for p, n in zip(names, names[1:],
                                                                         strict=False)]
    (tmp_path / "bomb.yaml").write_text("\n".join(bomb) + "\n")
    os.mkfifo(tmp_path / "fifo.yaml")
    (tmp_path / "dir.json").mkdir()
    (tmp_path / "deep.toml").write_text("[" + ".".join(["a"] * 5000) + "]\n")
    (tmp_path / "dup.yaml").write_text("serve:\n  port: 1\n  port: 2\n")
    (tmp_path / "dup.json").write_text('{"serve": {"port": 1, "port": 2}}')
    (tmp_path / "bin.toml").write_bytes(b"\x80\x81")
    (tmp_path / "file").write_text("")
    (tmp_path / "many.json").write_text(json.dumps({f"k{i}": 0 for i in range(200_000)}))
    (tmp_path / "ansi.yaml").write_text('serve: {policy: "\\e[31mred"}\n')
    return {
        "bomb.yaml": "the document expands to more than 100,000 values",
        "fifo.yaml": "is a FIFO (named pipe), not a regular file",
        "dir.json": "is a directory, not a regular file",
        "deep.toml": "nested more than 32 levels deep",
        "dup.yaml": "duplicate key 'port' at line 3 (first at line 2)",
        "dup.json": "duplicate key 'port'",
        "bin.toml": "not valid UTF-8: byte 0x80 at line 1",
        "file/c.yaml": "cannot read: a part of the path is a file, not a folder",
        "many.json": "… and 199,980 more unknown keys",
        "ansi.yaml": "serve.policy='\\x1b[31mred': not a valid choice",
    }


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", [["config", "validate"], ["topo", "show"]])
def test_hostile_files_exit_2_with_one_clear_error(tmp_path, command):
    """Through the real console script: exit 2, the reason, no traceback, nothing raw."""
    import subprocess
    import sys

    for name, expect in _bad_inputs(tmp_path).items():
        r = subprocess.run([sys.executable, "-m", "pypto_serving.cli.entry", command[0],
                            command[1], str(tmp_path / name), *command[2:]],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, (name, r.stderr[-2000:])
        assert expect in r.stderr, (name, r.stderr[-2000:])
        assert "Traceback" not in r.stderr and "\x1b" not in r.stderr
        assert len(r.stderr) < 10_000 and r.stdout == ""


@pytest.mark.parametrize("fmt", ["yaml", "toml", "json"])
def test_show_round_trips_unicode_quotes_controls_and_extreme_floats(cli, tmp_path, fmt):
    """An emoji once broke the TOML output; every string and float must survive a trip."""
    data = {"model": {"name": 'm😀 "深度" \\ \t\x00\x1b\u2028 ½', "rope_theta": 5e-324},
            "serve": {"host": "::1", "prefix_balance_rel_threshold": 1.7976931348623157e308,
                      "gpu_memory_utilization": 1e-300}}
    cfg = parse_config(data)
    first = tmp_path / f"first.{fmt}"
    first.write_text(dump_config(cfg, fmt), encoding="utf-8")
    r = cli(["config", "validate", str(first), "--show"])
    assert r.exit_code == 0, r.output
    shown = tmp_path / f"shown.{fmt}"
    shown.write_bytes(r.stdout_bytes)
    assert load_config(shown) == cfg
    assert "\x1b" not in r.stdout  # escaped, not sent raw to the terminal



def test_usage_errors_escape_what_they_echo(cli, tmp_path):
    r = cli(["config", "init", "-o", str(tmp_path / "x\x1b[2J.txt")])
    assert r.exit_code == 2
    assert "x\\x1b[2J.txt: use a .yaml" in r.output and "\x1b" not in r.output
