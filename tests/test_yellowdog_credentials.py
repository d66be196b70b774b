"""YellowDog credentials: one set from one source, the API URL with them, https only, no .env
from a parent folder; `doctor` says which source, never the secret."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from urllib3.util import parse_url

from raydog_backends.yellowdog import credentials
from raydog_backends.yellowdog.credentials import SECRET_FILE, load
from raydog_core import state
from raydog_core.errors import BackendError, ConfigError
from tests.yellowdog_fixtures import KEY_ID, SECRET, make_backend, make_spec

KEY = {"YD_API_KEY_ID": "key-id", "YD_API_KEY_SECRET": "the-secret-value"}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working directory of the command, inside a folder that has a .env of its own."""
    (tmp_path / ".env").write_text(
        "YD_API_KEY_ID=parent-key\nYD_API_KEY_SECRET=parent-secret\n"
        "YD_API_URL=https://attacker.example\n"
    )
    folder = tmp_path / "project"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def test_a_dotenv_in_a_parent_folder_is_never_read(workdir: Path) -> None:
    with pytest.raises(BackendError) as raised:
        load("c1", {}, None)
    assert "in a .env file in the working directory" in str(raised.value)
    found = load("c2", KEY, None)
    assert (found.url, found.source) == ("https://api.yellowdog.ai", "the environment")


def test_a_dotenv_naming_only_the_url_does_not_redirect_the_environments_key(
    workdir: Path,
) -> None:
    (workdir / ".env").write_text("YD_API_URL=https://elsewhere.example\n")
    found = load("c1", KEY, None)
    assert found.url == "https://api.yellowdog.ai"
    assert found.source == "the environment"


def test_a_source_with_part_of_a_set_is_an_error_not_mixed_with_another(workdir: Path) -> None:
    (workdir / ".env").write_text(
        "YD_API_KEY_ID=dotenv-key\nYD_API_KEY_SECRET=dotenv-secret\n"
        "YD_API_URL=https://api.yellowdog.ai\n"
    )
    with pytest.raises(BackendError) as raised:
        load("c1", {"YD_API_URL": "https://other.example"}, None)
    assert "the environment sets YD_API_URL but not YD_API_KEY_ID and YD_API_KEY_SECRET" in str(
        raised.value
    )
    assert "dotenv-secret" not in str(raised.value)
    assert state.read_secret("c1", SECRET_FILE) is None
    found = load("c2", {}, None)
    assert (found.key_id, found.source) == ("dotenv-key", str(workdir / ".env"))


@pytest.mark.parametrize(
    "url", ["http://api.example.com", "http://10.0.0.5:8080", "ftp://api.example.com"]
)
def test_the_key_goes_over_https_only(workdir: Path, url: str) -> None:
    with pytest.raises(BackendError) as raised:
        load("c1", {**KEY, "YD_API_URL": url}, None)
    assert "YD_API_URL from the environment" in str(raised.value)
    assert "the-secret-value" not in str(raised.value)
    assert state.read_secret("c1", SECRET_FILE) is None
    with pytest.raises(BackendError, match="from the option api_url"):
        load("c2", KEY, url)


READ_TWO_WAYS = [
    "http://127.0.0.1:8765\\@localhost:1",  # urlsplit: localhost; requests: 127.0.0.1:8765
    "http://evil.example\\@localhost:1/x",  # urlsplit: localhost; requests: evil.example
    "http://evil.example#@localhost/",
    "http://evil.example?@localhost/",
    "http://localhost:1@evil.example/",  # userinfo: requests sends it as Basic auth
    "https://user:pw@api.yellowdog.ai",
    "http://127.0.0.1%2f@evil.example/",
    "http://localhost\t.evil.example/",
    "https://api.yellowdog.ai ",
    "https://api.yellowdog.ai:99999",
]


@pytest.mark.parametrize("url", READ_TWO_WAYS)
def test_a_url_the_sdk_could_read_differently_is_refused(workdir: Path, url: str) -> None:
    """What RayDog checks must be what the SDK connects to: a URL urllib.parse and urllib3
    (under the SDK's requests) could read as different hosts is refused, from either source."""
    with pytest.raises(BackendError) as raised:
        load("c1", {**KEY, "YD_API_URL": url}, None)
    assert "YD_API_URL from the environment" in str(raised.value)
    assert "pw" not in str(raised.value) and "the-secret-value" not in str(raised.value)
    assert state.read_secret("c1", SECRET_FILE) is None
    with pytest.raises(ConfigError) as refused:
        make_backend(make_spec(), api_url=url)
    assert refused.value.key_path == "api_url"


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080", "http://localhost:9000", "http://[::1]:80", "https://x.ai"]
)
def test_the_sdk_connects_where_the_check_looked(workdir: Path, url: str) -> None:
    """The host requests would connect to for an accepted URL is the one that was checked."""
    found = load("c1", {**KEY, "YD_API_URL": url}, None)
    prepared = parse_url(requests.Request("GET", found.url + "/work").prepare().url or "")
    assert (prepared.host or "").strip("[]") == urlsplit(url).hostname
    assert prepared.scheme == "https" or prepared.host in ("127.0.0.1", "localhost", "[::1]")


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080", "http://localhost:9000", "http://[::1]:80", "https://x.ai"]
)
def test_loopback_http_is_for_the_emulator(workdir: Path, url: str) -> None:
    assert load("c1", {**KEY, "YD_API_URL": url}, None).url == url


def test_the_set_is_kept_for_the_head_with_its_url(workdir: Path) -> None:
    load("c1", {**KEY, "YD_API_URL": "https://eu.yellowdog.ai"}, None)
    on_head = load("c1", {}, None)
    assert (on_head.key_id, on_head.url) == ("key-id", "https://eu.yellowdog.ai")
    assert on_head.source == f"the saved copy {state.secret_path('c1', credentials.SECRET_FILE)}"


def test_doctor_says_which_source_and_never_the_secret(yd_env: str) -> None:
    backend = make_backend(make_spec())
    try:
        checks = {check.name: check for check in backend.preflight()}
    finally:
        backend.close()
    detail = checks["yellowdog credentials"].detail
    assert detail == f"key {KEY_ID} from the environment"
    assert all(SECRET not in check.detail + check.fix for check in checks.values())


def test_doctor_names_the_saved_copy_when_it_is_the_one_used(
    yd_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy an earlier `ray up` saved is read last, and `doctor` says when it is used."""
    spec = make_spec()
    load(spec.cluster_name, dict(os.environ), None)  # what `ray up` saves
    for variable in credentials.VARIABLES:
        monkeypatch.delenv(variable)
    backend = make_backend(spec)
    try:
        checks = {check.name: check for check in backend.preflight()}
    finally:
        backend.close()
    saved = state.secret_path(spec.cluster_name, SECRET_FILE)
    assert checks["yellowdog credentials"].detail == (
        f"key {KEY_ID} from the saved copy {saved} (neither the environment nor "
        f"{Path.cwd() / '.env'} sets one: the copy an earlier `ray up` saved is used; "
        "`ray down` removes it)"
    )
    assert checks["yellowdog api"].ok


TRICKY = [
    "a#b c #comment",
    "'single' and \"double\" quotes",
    "dollar $HOME and ${HOME} and $(id)",
    "back\\slash\\n",
    "ünïcødé ✓",
    "trailing space ",
    " leading space",
    "key=value; export X=1",
]


@pytest.mark.parametrize("secret", TRICKY)
def test_the_saved_set_comes_back_byte_for_byte_on_the_head(workdir: Path, secret: str) -> None:
    """The head reads what the client saved: a secret changed on the way is a wrong key."""
    key_id = f"id {secret}"
    load("c1", {"YD_API_KEY_ID": key_id, "YD_API_KEY_SECRET": secret}, None)
    on_head = load("c1", {}, None)
    assert (on_head.key_id, on_head.secret) == (key_id, secret)
    assert on_head.source == f"the saved copy {state.secret_path('c1', SECRET_FILE)}"


def test_an_unreadable_saved_set_is_replaced_by_the_next_one_found(workdir: Path) -> None:
    state.write_secret("c1", SECRET_FILE, "YD_API_KEY_ID=old\n")
    assert load("c1", KEY, None).key_id == "key-id"
    assert load("c1", {}, None).secret == "the-secret-value"
