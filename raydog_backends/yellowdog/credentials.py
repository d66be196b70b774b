"""YellowDog API credentials: from the environment, a ``.env`` file, or the cluster's folder.

On the client they come from ``YD_API_KEY_ID``, ``YD_API_KEY_SECRET`` and ``YD_API_URL`` (the
environment first, then a ``.env`` file found from the working directory up). They are then kept
0600 in the cluster's private folder, which the core uploads to the head over SSH with the
bootstrap config; the head's autoscaler, whose environment lacks them, reads them from there.
They never travel through YellowDog itself: not in a task's environment, data or userdata.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from dotenv import dotenv_values, find_dotenv

from raydog_core import state
from raydog_core.errors import BackendError

logger = logging.getLogger(__name__)

KEY_ID = "YD_API_KEY_ID"
KEY_SECRET = "YD_API_KEY_SECRET"
API_URL = "YD_API_URL"
DEFAULT_URL = "https://api.yellowdog.ai"
SECRET_FILE = "yellowdog.env"


@dataclass(frozen=True)
class Credentials:
    key_id: str
    secret: str = field(repr=False)
    url: str
    source: str
    """Where they were found, for log lines (never the values)."""

    def as_dotenv(self) -> str:
        return f"{KEY_ID}={self.key_id}\n{KEY_SECRET}={self.secret}\n{API_URL}={self.url}\n"


def load(cluster_name: str, environ: Mapping[str, str], api_url: str | None) -> Credentials:
    """The first complete key from the environment, a ``.env`` file or the cluster's folder.

    ``api_url`` (the backend's option) overrides every ``YD_API_URL``. A key found outside the
    cluster's folder is written there, so that the head finds it after the core's upload.
    """
    sources: list[tuple[str, Mapping[str, str | None]]] = [("the environment", environ)]
    dotenv_path = find_dotenv(usecwd=True)
    if dotenv_path:
        sources.append((dotenv_path, dotenv_values(dotenv_path)))
    saved = state.read_secret(cluster_name, SECRET_FILE)
    if saved:
        sources.append((str(state.secret_path(cluster_name, SECRET_FILE)), _parse(saved)))
    for source, values in sources:
        key_id, secret = values.get(KEY_ID), values.get(KEY_SECRET)
        if key_id and secret:
            url = api_url or values.get(API_URL) or _first_url(sources) or DEFAULT_URL
            found = Credentials(key_id, secret, url, source)
            if saved != found.as_dotenv():
                state.write_secret(cluster_name, SECRET_FILE, found.as_dotenv())
            logger.debug("YellowDog API key %s from %s, API at %s", key_id, source, url)
            return found
    raise BackendError(
        "connect to",
        "the YellowDog API",
        f"no API key: set {KEY_ID} and {KEY_SECRET} in the environment or in a .env file",
    )


def _first_url(sources: list[tuple[str, Mapping[str, str | None]]]) -> str | None:
    for _, values in sources:
        url = values.get(API_URL)
        if url:
            return url
    return None


def _parse(text: str) -> dict[str, str | None]:
    return dotenv_values(stream=io.StringIO(text))
