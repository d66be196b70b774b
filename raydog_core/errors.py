"""RayDog's exceptions: one base, a few kinds a caller can act on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence


class RayDogError(Exception):
    """Base of every error RayDog raises on purpose."""


class ConfigError(RayDogError):
    """The cluster config is wrong; ``key_path`` says where (``provider.tag_store.port``)."""

    def __init__(self, key_path: str, problem: str, choices: Iterable[str] = ()) -> None:
        self.key_path = key_path
        self.problem = problem
        self.choices = tuple(choices)
        message = f"{key_path}: {problem}"
        if self.choices:
            message += f" (choices: {', '.join(self.choices)})"
        super().__init__(message)


class ConfigErrors(ConfigError):
    """Every problem found in one config, so a user fixes them in one round, not one per run.

    Its key path and problem are the first one's; ``errors`` holds them all, one per line.
    """

    errors: tuple[ConfigError, ...]

    def __init__(self, errors: Iterable[ConfigError]) -> None:
        flat: list[ConfigError] = []
        for error in errors:
            flat.extend(error.errors if isinstance(error, ConfigErrors) else [error])
        if not flat:
            raise ValueError("ConfigErrors needs at least one error")
        self.errors = tuple(flat)
        first = flat[0]
        super().__init__(first.key_path, first.problem, first.choices)
        self.args = ("\n".join(str(error) for error in flat),)

    def __str__(self) -> str:
        return str(self.args[0])


class Problems:
    """Collects ConfigErrors from independent checks; ``raise_any`` raises them together."""

    def __init__(self) -> None:
        self.found: list[ConfigError] = []

    @contextlib.contextmanager
    def collect(self) -> Iterator[None]:
        """Run one check; a ConfigError it raises is kept and the caller goes on."""
        try:
            yield
        except ConfigError as error:
            self.found.append(error)

    def raise_any(self) -> None:
        raise_together(self.found)


def raise_together(errors: Sequence[ConfigError]) -> None:
    """Raise these errors: one as itself, several as ConfigErrors; none, nothing."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigErrors(errors)


class UnreachableError(RayDogError):
    """A server (tag store, head node, tunnel) did not answer within a bounded time."""

    def __init__(self, what: str, host: str, port: int | None = None, reason: str = "") -> None:
        self.what = what
        self.host = host
        self.port = port
        where = host if port is None else f"{host}:{port}"
        message = f"{what} at {where} is unreachable"
        if reason:
            message += f": {reason}"
        super().__init__(message)


class BackendError(RayDogError):
    """A compute backend action failed; says on what, and what was cleaned up after it."""

    def __init__(
        self, action: str, resource: str, reason: str, cleaned_up: Iterable[str] = ()
    ) -> None:
        self.action = action
        self.resource = resource
        self.reason = reason
        self.cleaned_up = tuple(cleaned_up)
        message = f"{action} {resource} failed: {reason}"
        if self.cleaned_up:
            message += f" (cleaned up: {', '.join(self.cleaned_up)})"
        super().__init__(message)


class TagValueError(RayDogError, ValueError):
    """A tag write the store could not hold (not text); refused before anything is queued."""
