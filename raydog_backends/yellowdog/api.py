"""The YellowDog API as the backend uses it: two SDK clients and one way to report a failure.

The SDK retries every request on 429 and 5xx, POST included (``platform_client.py``,
``full_jitter_retry.py``), as the platform asks: a 429's ``Retry-After``, else full jitter from
10 s growing to 60 s (``RetryProperties``' defaults, which the backend keeps); never a POST after
a read timeout. That is right for reads and for requests the platform refuses to apply twice.
Adding tasks is retried by the backend itself, through a second client that never retries: it
names what it creates, waits as the SDK would, and looks the names up after a failure, so that
a batch applied but whose reply was lost is neither sent twice nor taken for a failure
(``launch.py``).
"""

from __future__ import annotations

import email.utils
import os
import threading
from collections.abc import Callable
from datetime import datetime, timezone
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
TOO_MANY_REQUESTS = 429
MAX_TASKS_PER_ADD = 10_000
"""The most tasks one add request may carry (yellowdog-cli ``submit.py``, batch size 1-10,000)."""
DUPLICATE_TASK_NAME = "Task names must be unique within task group"
"""How the platform refuses a batch that repeats a task name (yellowdog-cli ``submit.py``)."""


class Api:
    """The cluster's SDK clients, made on first use from the credentials; thread-safe."""

    def __init__(self, cluster_name: str, api_url: str | None, max_attempts: int) -> None:
        self.cluster_name = cluster_name
        self.api_url = api_url
        self.max_attempts = max_attempts
        self.save_credentials = True
        """Whether the credentials found are copied to the cluster's folder (for its head)."""
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
        return credentials.load(self.cluster_name, os.environ, self.api_url, self.save_credentials)

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


def is_duplicate_task_name(exc: BaseException) -> bool:
    """The platform refused a batch because a task name is taken; whatever the error's type
    (unconfirmed), its text says so (``str`` of an HTTPError holds the response body)."""
    return DUPLICATE_TASK_NAME in str(exc)


def is_too_many_requests(exc: BaseException | None) -> bool:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", 0) == TOO_MANY_REQUESTS


def retry_after(exc: BaseException | None) -> float | None:
    """The seconds a response's ``Retry-After`` asks for (a number or an HTTP date), or None."""
    response = getattr(exc, "response", None)
    value = getattr(response, "headers", {}).get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def task_errors(task: Task) -> str:
    """A task's error messages, as `` (message; message)``, or ""."""
    messages = [error.error for error in task.errors or [] if error.error]
    return f" ({'; '.join(messages)})" if messages else ""
