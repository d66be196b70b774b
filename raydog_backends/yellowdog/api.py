"""The YellowDog API as the backend uses it: two SDK clients and one way to report a failure.

The SDK retries every request on 429 and 5xx, POST included (``platform_client.py``,
``full_jitter_retry.py``). That is right for reads and for requests the platform refuses to
apply twice, but a retried ``add_tasks_to_task_group`` whose first reply was lost adds its batch
twice. So the backend has a second client that never retries, for the calls it makes idempotent
itself: it names what it creates and looks the names up after a failure (``launch.py``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

import requests
from yellowdog_client.common import SearchClient
from yellowdog_client.model import (
    ApiKey,
    RetryProperties,
    ServicesSchema,
    SliceReference,
    Task,
)
from yellowdog_client.model.exceptions import BaseCustomException, InvalidRequestException
from yellowdog_client.platform_client import PlatformClient

from raydog_backends.yellowdog import credentials
from raydog_core.errors import BackendError

T = TypeVar("T")

API_ERRORS = (BaseCustomException, requests.RequestException)
REFUSALS = (400, 404, 409)


class Api:
    """The cluster's SDK clients, made on first use from the credentials; thread-safe."""

    def __init__(self, cluster_name: str, api_url: str | None, max_attempts: int) -> None:
        self.cluster_name = cluster_name
        self.api_url = api_url
        self.max_attempts = max_attempts
        self._lock = threading.Lock()
        self._clients: dict[int, PlatformClient] = {}

    @property
    def sdk(self) -> PlatformClient:
        """The client that retries (``api_max_attempts`` attempts in all)."""
        return self._client(self.max_attempts)

    @property
    def once(self) -> PlatformClient:
        """The client that sends each request once; a caller that uses it retries itself."""
        return self._client(1)

    def credentials(self) -> credentials.Credentials:
        return credentials.load(self.cluster_name, os.environ, self.api_url)

    def _client(self, attempts: int) -> PlatformClient:
        with self._lock:
            client = self._clients.get(attempts)
            if client is None:
                found = self.credentials()
                # The SDK hands maxAttempts to urllib3 as the number of retries.
                retry = RetryProperties(maxAttempts=attempts - 1)
                schema = ServicesSchema(defaultUrl=found.url, retry=retry)
                client = PlatformClient.create(schema, ApiKey(found.key_id, found.secret))
                self._clients[attempts] = client
            return client

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()


def call(action: str, resource: str, request: Callable[[], T]) -> T:
    """``request()``, its API errors raised as a BackendError saying what failed on what."""
    try:
        return request()
    except API_ERRORS as exc:
        raise BackendError(action, resource, reason(exc)) from exc


def all_items(search: SearchClient[T]) -> list[T]:
    """Every item of a sliced search, in slices as large as YellowDog allows."""
    items: list[T] = []
    reference = SliceReference(size=SliceReference.MAX_SIZE)
    while True:
        page = search.slice(reference)
        items.extend(page.items or [])
        if not page.nextSliceId:
            return items
        reference = SliceReference(page.nextSliceId, SliceReference.MAX_SIZE)


def is_refusal(exc: BaseException) -> bool:
    """YellowDog refused the request as such (unknown id, already finished), not a fault."""
    if isinstance(exc, InvalidRequestException):
        return True
    response = getattr(exc, "response", None)
    return isinstance(exc, requests.HTTPError) and getattr(response, "status_code", 0) in REFUSALS


def reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def task_errors(task: Task) -> str:
    """A task's error messages, as `` (message; message)``, or ""."""
    messages = [error.error for error in task.errors or [] if error.error]
    return f" ({'; '.join(messages)})" if messages else ""
