"""YellowDog API credentials: one complete set from one source, the API URL with them.

Sources, first found wins: the environment (``YD_API_KEY_ID``, ``YD_API_KEY_SECRET``, optionally
``YD_API_URL``), then a ``.env`` file in the working directory of the ``ray`` or ``raydog`` command
(only there: never in a parent folder, where a file nobody chose could send the key to another URL),
then the copy kept in the cluster's private folder (``raydog doctor`` says when that copy is the one
used; ``ray down`` removes it with the folder). A source that names some of the variables but not
the key and its secret is an error, not a reason to mix it with another: the URL always comes from
the same source as the key (or from the backend's ``api_url`` option, or the default). The URL must
be ``https://``; ``http://`` only for a loopback address (the emulator); the SDK connects to the URL
as checked (``checked_url``). The set found on the client is kept 0600 in the cluster's private
folder, which the core uploads to the head over SSH with the bootstrap config; the head's
autoscaler, whose environment lacks them, reads them from there. That copy is JSON, written and read
by RayDog alone, so every value (a ``#``, quotes, ``$``, a trailing space) comes back byte for byte.
They never travel through YellowDog itself: not in a task's environment, data or userdata.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import dotenv_values
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from raydog_core import state
from raydog_core.errors import BackendError

logger = logging.getLogger(__name__)

KEY_ID = "YD_API_KEY_ID"
KEY_SECRET = "YD_API_KEY_SECRET"
API_URL = "YD_API_URL"
VARIABLES = (KEY_ID, KEY_SECRET, API_URL)
DEFAULT_URL = "https://api.yellowdog.ai"
SECRET_FILE = "yellowdog.json"
DOTENV = ".env"


@dataclass(frozen=True)
class Credentials:
    key_id: str
    secret: str = field(repr=False)
    url: str
    source: str
    """Where they were found, for ``raydog doctor`` and log lines (never the values)."""

    def saved_form(self) -> str:
        """What the cluster's folder keeps: JSON, not a dotenv line, whose quoting rules would
        change a value with ``#``, quotes, ``${...}`` or a trailing space on its way back."""
        return json.dumps({KEY_ID: self.key_id, KEY_SECRET: self.secret, API_URL: self.url})


def load(
    cluster_name: str, environ: Mapping[str, str], api_url: str | None, save: bool = True
) -> Credentials:
    """The first source that has any of the variables gives all of them.

    ``api_url`` (the backend's option) overrides the source's ``YD_API_URL``. A set found
    outside the cluster's folder is written there (unless not ``save``: the fleet commands
    look at clusters they did not start), so that the head finds it after the upload.
    """
    saved = state.read_secret(cluster_name, SECRET_FILE)
    for source, values in _sources(cluster_name, environ):
        present = [name for name in VARIABLES if values.get(name)]
        if not present:
            continue
        key_id, secret = values.get(KEY_ID), values.get(KEY_SECRET)
        if not key_id or not secret:
            missing = [name for name in (KEY_ID, KEY_SECRET) if not values.get(name)]
            raise _error(
                f"{source} sets {' and '.join(present)} but not {' and '.join(missing)}: "
                f"give {KEY_ID}, {KEY_SECRET} and {API_URL} together, in one place"
            )
        if api_url:
            url, url_source = api_url, "the option api_url"
        else:
            url, url_source = values.get(API_URL) or DEFAULT_URL, source
        found = Credentials(key_id, secret, checked_url(url, url_source), source)
        if save and saved != found.saved_form():
            state.write_secret(cluster_name, SECRET_FILE, found.saved_form())
        logger.debug("YellowDog API key %s from %s, API at %s", key_id, source, url)
        return found
    raise _error(
        f"no API key: set {KEY_ID} and {KEY_SECRET} (and {API_URL}) in the environment "
        f"or in a {DOTENV} file in the working directory"
    )


def known_secrets(cluster_name: str, environ: Mapping[str, str]) -> dict[str, str]:
    """Every API key secret this machine holds for the cluster, by source; reads only."""
    return {
        f"the YellowDog API key secret ({source})": secret
        for source, values in _sources(cluster_name, environ)
        if (secret := values.get(KEY_SECRET))
    }


def _sources(
    cluster_name: str, environ: Mapping[str, str]
) -> list[tuple[str, Mapping[str, str | None]]]:
    """Where a set may be, in the order ``load`` tries them."""
    sources: list[tuple[str, Mapping[str, str | None]]] = [("the environment", environ)]
    dotenv = Path.cwd() / DOTENV
    if dotenv.is_file():
        sources.append((str(dotenv), dotenv_values(dotenv)))
    saved = state.read_secret(cluster_name, SECRET_FILE)
    if saved:
        path = str(state.secret_path(cluster_name, SECRET_FILE))
        sources.append((saved_source(cluster_name), _parse_saved(saved, path)))
    return sources


def saved_source(cluster_name: str) -> str:
    """How a set read from the cluster's saved copy names its source (``raydog doctor``)."""
    return f"the saved copy {state.secret_path(cluster_name, SECRET_FILE)}"


def checked_url(url: str, source: str) -> str:
    """The API URL as RayDog checked it, for the SDK to connect to: https, or http to a loopback
    address, read the same by ``urllib.parse`` and by urllib3 (which the SDK's requests uses).

    A URL the two would read differently is refused rather than guessed at: with a backslash,
    ``http://evil.example\\@localhost`` is ``localhost`` to ``urlsplit`` but ``evil.example``
    to urllib3. So are a user name or password (``user@``), spaces and control characters, a
    query or a fragment (the SDK appends its paths to the URL). The error shows no more than
    the scheme and the host, never what came before an ``@``.
    """
    problem = _url_problem(url)
    if problem:
        raise _error(f"{API_URL} from {source} {problem}")
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "http" and not _loopback(host):
        raise _error(
            f"{API_URL} from {source} is http://{host}: the key would travel unencrypted; "
            "use https:// (http:// is for a loopback address only, such as the emulator's)"
        )
    return parts.geturl()


def _url_problem(url: str) -> str | None:
    """Why ``url`` is no URL to send the key to, or None."""
    if not url or any(not "!" <= char <= "~" for char in url):
        return "is not an http(s) URL (it holds a space, a control or a non-ASCII character)"
    if "\\" in url:
        return "holds a backslash, which URL parsers read differently: remove it"
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
        theirs = parse_url(url)
    except (ValueError, LocationParseError):
        return "is not an http(s) URL"
    if parts.scheme not in ("https", "http") or not host:
        return "is not an http(s) URL"
    if "@" in parts.netloc:
        return "holds a user name or password before '@': give the key as YD_API_KEY_ID/SECRET"
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        return f"has a query or fragment ('?', '#'): give {parts.scheme}://{host} and its path"
    theirs_host = (theirs.host or "").strip("[]").lower()
    if (theirs.scheme, theirs_host, theirs.port, theirs.auth) != (parts.scheme, host, port, None):
        return f"is read differently by the SDK's HTTP library ({theirs_host}, not {host})"
    return None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _error(reason: str) -> BackendError:
    return BackendError("connect to", "the YellowDog API", reason)


def _parse_saved(text: str, path: str) -> dict[str, str]:
    """The saved set; an unreadable file counts as none (the next set found replaces it)."""
    try:
        values = json.loads(text)
    except ValueError:
        values = None
    if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
        logger.warning("%s is not a set of credentials RayDog saved: ignored", path)
        return {}
    return values
