"""Hostile and mistaken config files end in one clear ConfigError, in bounded time and memory:
alias bombs, FIFOs, devices, directories, deep nesting, duplicate keys, bad encodings,
unreadable paths, oversized files, and messages that would echo too much."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from pypto_serving.core.config_files import MAX_CONFIG_BYTES, MAX_DEPTH
from pypto_serving.core.errors import MAX_LINE, ConfigError
from pypto_serving.core.loader import load_config, parse_config


def error_of(path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = info.value.render()
    assert "Traceback" not in text
    return text


def billion_laughs(levels: int = 9) -> str:
    """The classic alias bomb: each level is nine aliases of the one before (9**9 values)."""
    names = "abcdefghijklmnop"
    lines = ["a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]"]
    for prev, name in zip(names[: levels - 1], names[1:levels], strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def peak_rss_mb_of_loading(path) -> tuple[str, float]:
    """Load `path` in a fresh interpreter; its error and its own peak RSS in MiB (VmHWM, which
    belongs to the new address space: getrusage's maxrss would carry over pytest's own peak
    across exec)."""
    code = textwrap.dedent("""
        import sys
        from pypto_serving.core.errors import ConfigError
        from pypto_serving.core.loader import load_config
        try:
            load_config(sys.argv[1])
            message = "loaded"
        except ConfigError as e:
            message = e.render()
        print(message)
        status = open("/proc/self/status").read().split("VmHWM:")[1]
        print(int(status.split()[0]) / 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    message, rss = out.rsplit("\n", 2)[:2]
    return message, float(rss)


def test_yaml_alias_bomb_is_refused_in_bounded_memory(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(billion_laughs())
    assert path.stat().st_size < 400
    message, rss_mb = peak_rss_mb_of_loading(path)
    assert "the document expands to more than 100,000 values (an alias counts" in message
    assert "use fewer aliases" in message and len(message) < 400
    assert rss_mb < 200, f"peak RSS {rss_mb:.0f} MiB"


def test_a_few_aliases_still_work(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text("parallel: &p {tensor_parallel_size: 2}\n"
                    "cluster: {devices_per_node: 2, platform: &cpu cpu}\n")
    assert load_config(path).parallel.tensor_parallel_size == 2


def test_recursive_alias_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("parallel: &p\n  x: *p\n")
    assert "recursive alias" in error_of(path)


@pytest.mark.timeout(20)
def test_fifo_is_refused_without_blocking(tmp_path):
    path = tmp_path / "pipe.yaml"
    os.mkfifo(path)
    # Run in a child with a timeout: a reader that opened the FIFO would block for ever.
    code = ("from pypto_serving.core.loader import load_config\n"
            "from pypto_serving.core.errors import ConfigError\n"
            "import sys\n"
            "try: load_config(sys.argv[1])\n"
            "except ConfigError as e: print(e.render())\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=15, check=True).stdout
    assert f"{path}: is a FIFO (named pipe), not a regular file" in out


def test_character_device_is_refused(tmp_path):
    link = tmp_path / "zero.yaml"
    link.symlink_to("/dev/zero")
    assert "is a character device, not a regular file" in error_of(link)


def test_directory_is_refused(tmp_path):
    (tmp_path / "d.toml").mkdir()
    assert error_of(tmp_path / "d.toml").endswith(
        f"{tmp_path / 'd.toml'}: is a directory, not a regular file; give the path of a "
        "config file")


def test_path_under_a_file_is_unreadable(tmp_path):
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "c.yaml"
    assert error_of(path).endswith(
        f"{path}: cannot read: a part of the path is a file, not a folder")


def test_permission_denied(tmp_path):
    path = tmp_path / "secret.yaml"
    path.write_text("parallel: {}\n")
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip("running as root: mode 0 does not stop reading")
    assert error_of(path).endswith(f"{path}: cannot read: permission denied")


def test_oversized_file_is_refused_by_size(tmp_path):
    path = tmp_path / "big.yaml"
    with open(path, "wb") as f:
        f.truncate(MAX_CONFIG_BYTES + 1)  # sparse: no need to write 4 MiB
    text = error_of(path)
    assert "is larger than the 4 MiB that is read" in text


@pytest.mark.parametrize("name, text", [
    ("deep.toml", "[" + ".".join(["a"] * 5000) + "]\nx = 1\n"),
    ("deep-dotted.toml", ".".join(["a"] * 5000) + " = 1\n"),
    ("deep-inline.toml", "a = " + "[" * 5000 + "]" * 5000 + "\n"),
    ("deep-table.toml", "a = " + "{b = " * 5000 + "1" + "}" * 5000 + "\n"),
    ("deep.json", "[" * 100_000 + "]" * 100_000),
    ("deep.yaml", "a: " + "[" * 5000 + "]" * 5000 + "\n"),
    ("deep-block.yaml", "".join(" " * i + "a:\n" for i in range(2000))),
])
def test_deep_nesting_is_refused_without_recursion_error(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    message = error_of(path)
    assert f"nested more than {MAX_DEPTH} levels deep" in message
    assert "Recursion" not in message


def test_brackets_inside_strings_and_comments_are_not_nesting(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('# [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n[model]\n'
                    'name = "' + "[" * 100 + '"\n')
    assert load_config(path).model.name == "[" * 100
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": {"name": "{" * 100 + '"'}}))
    assert load_config(path).model.name == "{" * 100 + '"'


def test_duplicate_yaml_key_names_key_and_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("parallel:\n  tensor_parallel_size: 2\n  tensor_parallel_size: 4\n")
    assert ("duplicate key 'tensor_parallel_size' at line 3 (first at line 2)"
            in error_of(path))


def test_duplicate_json_key_is_named(tmp_path):
    path = tmp_path / "dup.json"
    path.write_text('{"parallel": {"data_parallel_size": 2, "data_parallel_size": 1}}')
    assert "duplicate key 'data_parallel_size'" in error_of(path)


def test_duplicate_toml_key_is_refused(tmp_path):
    path = tmp_path / "dup.toml"
    path.write_text("[parallel]\ndata_parallel_size = 2\ndata_parallel_size = 1\n")
    assert "not valid TOML" in error_of(path)


def test_yaml_merge_keys_may_override(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("base: &b {tensor_parallel_size: 4, data_parallel_size: 1}\n")
    data = "parallel:\n  <<: {tensor_parallel_size: 4}\n  tensor_parallel_size: 2\n"
    path.write_text(data)
    assert load_config(path).parallel.tensor_parallel_size == 2


@pytest.mark.parametrize("suffix", [".yaml", ".json", ".toml"])
def test_invalid_utf8_names_the_byte_and_line(tmp_path, suffix):
    path = tmp_path / f"bin{suffix}"
    path.write_bytes(b"# ok\n# ok\n\xff\xfe bad\n")
    assert error_of(path).endswith(
        f"{path}: not valid UTF-8: byte 0xff at line 3 (offset 10); save the file as UTF-8")


def test_control_bytes_in_a_value_are_escaped(tmp_path):
    path = tmp_path / "ansi.json"
    path.write_text(json.dumps({"parallel": {"expert_placement_strategy": "\x1b[2J\x1b]0;x\x07",
                                             "\x1b[31mevil": 1}}))
    text = error_of(path)
    assert "\x1b" not in text and "\x07" not in text
    assert "'\\x1b[2J\\x1b]0;x\\x07'" in text
    assert "parallel.\\x1b[31mevil=1: unknown key" in text


def test_invisible_characters_in_a_key_are_escaped():
    with pytest.raises(ConfigError) as info:
        parse_config({"model": {"na\u202eme\u200b": 1}})
    assert "model.na\\u202eme\\u200b=1: unknown key" in info.value.render()


def test_long_values_are_cut_with_an_ellipsis():
    with pytest.raises(ConfigError) as info:
        parse_config({"model": {"dtype": "x" * 100_000, "k" * 10_000: 1},
                      "cluster": {"platform": [1] * 10**5}})
    lines = info.value.render().splitlines()
    assert len(lines) == 4 and all(len(line) <= MAX_LINE + 4 for line in lines)
    assert f"model.dtype='{'x' * 37}...{'x' * 38}': not a valid choice" in lines[1]
    assert lines[2].startswith("  - model.kkkkkkkk")
    assert "k…=1: unknown key; known keys: name," in lines[2]
    assert "cluster.platform=[1, 1, 1, 1, 1, 1, ...]: not a valid choice" in lines[3]


def test_200000_unknown_keys_print_a_bounded_message(tmp_path):
    path = tmp_path / "many.json"
    path.write_text(json.dumps({"model": {f"key{i}": i for i in range(200_000)}}))
    text = error_of(path)
    lines = text.splitlines()
    assert lines[0] == f"invalid config from {path}: 200,000 problems"
    assert lines[-1] == "  … and 199,980 more unknown keys"
    assert len(lines) == 22 and all(len(line) <= MAX_LINE + 4 for line in lines)


def test_huge_integers_are_one_line_errors(tmp_path):
    path = tmp_path / "big.json"
    path.write_text('{"model": {"num_layers": 1' + "0" * 5000 + "}}")
    assert "not valid JSON" in error_of(path)
    with pytest.raises(ConfigError) as info:
        parse_config({"model": {"dtype": 10**5000}})
    assert "model.dtype=<an integer of 16,610 bits>" in info.value.render()
