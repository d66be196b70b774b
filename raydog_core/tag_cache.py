"""The provider's view of the tag store: cached, buffered, batched and thread-safe.

Every plugin gets this for free. Reads answer from memory. Writes land in the cache at once and
return: Ray's threads never wait on the network to write. One background thread, the sender, does
all of the store's I/O in order: it sends everything pending in one batch (so 1,000 writes from 8
threads cost a few round trips, not 1,000), then reads what changed when a tick asks. A tick waits
for that read at most ``read_timeout`` seconds, then answers from the cache.

While the store cannot be reached (a first ``ray up`` before the head exists, a dropped tunnel, a
stalled server) writes wait in memory and are sent once it is back. A batch that fails, whatever
the error (unreachable, or a READONLY/OOM/MISCONF reply), goes back to the queue under any newer
write. A bad value is refused to its caller alone, before it is queued.

With a store that offers ``changes_since``, a tick reads only what changed. A new epoch (the
store restarted empty, was flushed or failed over) means a full reload, and whatever this process
knows that the store lost is sent back (so Ray's autoscaler finds its launch config hashes and
replaces no worker). A store with only ``load_all`` is reloaded whole every tick; an empty answer
after a non-empty one counts as a restart there.

A process that ends sends what it holds first (bounded by ``CLOSE_TIMEOUT``): at its normal exit,
and on SIGTERM or SIGHUP, which would otherwise skip the exit's hooks; the signal then does what
it did before (Ray's own handler runs, or the process ends by it).
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable, Collection, Mapping
from sys import intern
from typing import TypeVar

from raydog_core.errors import TagValueError, UnreachableError
from raydog_core.interfaces import (
    Changes,
    ChangeToken,
    Endpoint,
    Tags,
    TagStore,
    offers_changes,
    offers_tombstones,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_READ_TIMEOUT = 2.0
# How long closing the cache (the end of `ray up`, `ray down`) waits for held writes to be sent.
CLOSE_TIMEOUT = 30.0
# The deletes of this process remembered to be made again should the store come back older.
DELETES_KEPT = 10_000


class NotReady(Exception):
    """The store's location is not known yet (the head node does not run yet)."""


Locate = Callable[[], "Endpoint | None"]


class TagCache:
    def __init__(
        self,
        store: TagStore,
        locate: Locate,
        retry_seconds: float = 5.0,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
    ) -> None:
        self._store = store
        self._locate = locate
        self._retry_seconds = retry_seconds
        self._read_timeout = read_timeout
        self._incremental = offers_changes(store)
        self._tombstones = offers_tombstones(store)
        # _cond guards the cache's state (held for microseconds, never across I/O); _io_lock
        # serialises the store's calls (the sender's, and close's).
        self._cond = threading.Condition()
        self._io_lock = threading.Lock()
        # Each node's dict is replaced on change, never mutated, so readers may hold one.
        self._tags: dict[str, Tags] = {}
        self._pending_updates: dict[str, Tags] = {}
        self._pending_deletes: set[str] = set()
        # Nodes whose held writes include their own launch's: a tombstone does not stop those.
        self._pending_launches: set[str] = set()
        self._in_flight: set[str] = set()
        # What this process wrote and the store acknowledged (each node's last value of every
        # tag it wrote; the nodes it deleted, newest last): sent again should the store come
        # back older than it (restored from a backup). Changed by the sender only.
        self._written: dict[str, Tags] = {}
        self._deleted: dict[str, None] = {}
        self._reads_wanted = 0
        self._reads_done = 0
        self._reads_ok = 0
        self._send_attempts = 0
        self._last_failed_attempt = 0
        self._round_trips = 0
        self._bytes_written = 0
        self._sender_stop: threading.Event | None = None
        self._connected = False
        self._waiting_for_location = False
        self._token: ChangeToken | None = None
        self._store_had_nodes = False
        self._read_once = False
        self._reloads = 0
        self._next_attempt = 0.0
        self._last_problem: str | None = None
        _send_held_writes_on_signals()

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def reloads(self) -> int:
        """How many times this cache took the store's content whole: its first read, and each
        time the store lost data. What no process remembers may be missing after one."""
        return self._reloads

    @property
    def waiting_for_location(self) -> bool:
        """The last try found no store to connect to yet (``locate`` raised NotReady)."""
        return self._waiting_for_location

    # --- reads: memory only ------------------------------------------------------------------

    def get(self, node_id: str) -> Tags:
        """A copy of one node's tags."""
        return dict(self._tags.get(node_id, {}))

    def view(self, node_id: str) -> Mapping[str, str] | None:
        """One node's tags, shared: never modify it (it is replaced, not changed, on writes)."""
        return self._tags.get(node_id)

    def node_ids(self) -> set[str]:
        with self._cond:
            return set(self._tags)

    def all(self) -> dict[str, Tags]:
        """A copy of every node's tags (for reports; a tick needs none)."""
        with self._cond:
            return {node: dict(tags) for node, tags in self._tags.items()}

    def figures(self) -> dict[str, int]:
        """Round trips to the store and bytes of tags written (node ids, keys and values): the
        provider's metrics copy these at each tick (held writes, ``unsent``, are read live)."""
        return {"round_trips": self._round_trips, "bytes_written": self._bytes_written}

    def unsent(self) -> int:
        """How many nodes have writes that have not reached the store yet."""
        with self._cond:
            return len(self._pending_updates.keys() | self._pending_deletes | self._in_flight)

    # --- writes: return at once ----------------------------------------------------------------

    def update(self, updates: Mapping[str, Mapping[str, str]], launched: bool = False) -> None:
        """Merge tags; refuses the whole call (TagValueError) if any name or value is not text,
        or is longer than the store can hold. ``launched``: the nodes' own launch writes them,
        which brings back a node deleted before (any other write to a deleted node is dropped
        by a store that keeps tombstones)."""
        # Node ids are interned: the provider's lookups then match by identity (10,000 a tick).
        limit = self._store.max_value_bytes
        checked = [(node_id, _checked(node_id, tags, limit)) for node_id, tags in updates.items()]
        checked = [(intern(node_id), tags) for node_id, tags in checked]
        with self._cond:
            for node_id, tags in checked:
                self._tags[node_id] = {**self._tags.get(node_id, {}), **tags}
                held = self._pending_updates.get(node_id)
                self._pending_updates[node_id] = {**held, **tags} if held else tags
                if launched:
                    self._pending_launches.add(node_id)
            self._wake_sender()

    def delete(self, node_ids: Collection[str]) -> None:
        for node_id in node_ids:
            _check_text(node_id, f"node id {node_id!r}")
        with self._cond:
            for node_id in node_ids:
                self._tags.pop(node_id, None)
                self._pending_updates.pop(node_id, None)
                self._pending_launches.discard(node_id)
                self._pending_deletes.add(node_id)
            self._wake_sender()

    # --- waiting for the sender ----------------------------------------------------------------

    def refresh(self, timeout: float | None = None) -> bool:
        """Ask for the store's changes and wait for them at most ``timeout`` seconds (default:
        ``read_timeout``). True when they arrived; False: the cache answers as it is."""
        with self._cond:
            self._reads_wanted += 1
            target = self._reads_wanted
            self._waiting_for_location = False
            self._wake_sender()
            self._cond.wait_for(
                lambda: self._reads_done >= target,
                self._read_timeout if timeout is None else timeout,
            )
            return self._reads_ok >= target

    def flush(self, timeout: float = CLOSE_TIMEOUT) -> bool:
        """Try to send every held write now, waiting at most ``timeout`` seconds for the
        outcome; True when nothing is held any more."""
        with self._cond:
            begun = self._send_attempts
            self._next_attempt = 0.0
            self._waiting_for_location = False
            self._wake_sender()
            self._cond.wait_for(
                lambda: self._all_sent() or self._last_failed_attempt > begun, timeout
            )
            return self._all_sent()

    def store_ended(self) -> None:
        """The store ended and its data with it (the head's own store, on a head that ended):
        the deletes held for it have nothing left to delete, and its address is stale. The
        next use locates the store anew."""
        with self._io_lock:  # after the sender's call in progress
            self._disconnect()
            with self._cond:
                self._pending_deletes.clear()

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Send what is held (waiting at most ``timeout`` seconds), then disconnect: now, or
        when the sender's call in progress on a silent store ends (it does, then)."""
        if self.unsent():
            self.flush(timeout)
        with self._cond:
            stop, self._sender_stop = self._sender_stop, None
            if stop is not None:
                stop.set()
            self._cond.notify_all()
        if self._io_lock.acquire(timeout=1.0):
            try:
                self._disconnect()
            finally:
                self._io_lock.release()

    def _all_sent(self) -> bool:
        return not self._pending_updates and not self._pending_deletes and not self._in_flight

    def _wake_sender(self) -> None:
        """With ``_cond`` held: start the sender if needed and tell it there is work."""
        if self._sender_stop is None:
            self._sender_stop = threading.Event()
            threading.Thread(
                target=_serve,
                args=(weakref.ref(self), self._sender_stop),
                name="raydog-tag-sender",
                daemon=True,
            ).start()
        _unsent_at_exit.add(self)
        self._cond.notify_all()

    # --- the sender ----------------------------------------------------------------------------

    def _next_work(self, stop: threading.Event) -> tuple[bool, bool] | None:
        """With ``_cond`` held: wait (bounded) for (write, read) work; None once stopped."""
        while True:
            now = time.monotonic()
            held = bool(self._pending_updates or self._pending_deletes)
            write = held and now >= self._next_attempt and not self._waiting_for_location
            read = self._reads_wanted > self._reads_done
            if write or read:
                return write, read
            if stop.is_set():
                return None
            late = self._next_attempt - now
            self._cond.wait(late if held and late > 0 else 1.0)

    def _work_once(self, write: bool, read: bool) -> None:
        with self._cond:
            serving = self._reads_wanted
        read_ok = False
        try:
            with self._io_lock:
                sent = self._send_held() if write else True
                if read and (sent or self._connected) and self._ensure_connected():
                    self._read()
                    read_ok = True
        except Exception as exc:  # no plugin error may stop the sender
            logger.warning("RayDog: reading the tag store failed: %s", exc)
        finally:
            with self._cond:
                if read:
                    self._reads_done = max(self._reads_done, serving)
                    if read_ok:
                        self._reads_ok = max(self._reads_ok, serving)
                self._cond.notify_all()

    def _send_held(self) -> bool:
        """Send every held write in one batch; a batch that fails goes back, under newer writes."""
        with self._cond:
            self._send_attempts += 1
            attempt = self._send_attempts
        if not self._ensure_connected():
            with self._cond:
                self._last_failed_attempt = attempt
            return False
        with self._cond:
            updates, self._pending_updates = self._pending_updates, {}
            deletes, self._pending_deletes = self._pending_deletes, set()
            launches, self._pending_launches = self._pending_launches, set()
            self._in_flight = updates.keys() | deletes
        updates = self._within_limit(updates)
        self._bytes_written += sum(
            len(node_id) + sum(len(k) + len(v) for k, v in tags.items())
            for node_id, tags in updates.items()
        )
        sent_deletes = sent_updates = False
        problem = None
        try:
            if deletes:
                self._call(lambda: self._store.delete(deletes))
                self._acknowledged_deletes(deletes)
            sent_deletes = True
            if updates:
                dropped = self._call(lambda: self._send_updates(updates, launches))
                self._acknowledged_updates(updates, dropped)
            sent_updates = True
        except Exception as exc:  # whatever the store said, the batch is kept
            problem = str(exc)
        finally:
            with self._cond:
                if not sent_updates:
                    self._requeue(updates, set() if sent_deletes else deletes)
                    self._pending_launches |= launches & self._pending_updates.keys()
                    self._last_failed_attempt = attempt
                self._in_flight = set()
        if problem is not None:
            self._next_attempt = time.monotonic() + self._retry_seconds
            self._note_problem(problem)
        elif self._last_problem is not None and self._connected:
            logger.info("RayDog: held tag writes sent to the tag store")
            self._last_problem = None
        return sent_updates

    def _acknowledged_deletes(self, deletes: Collection[str]) -> None:
        for node_id in deletes:
            self._written.pop(node_id, None)
            self._deleted.pop(node_id, None)
            self._deleted[node_id] = None
        extra = len(self._deleted) - DELETES_KEPT
        for node_id in list(itertools.islice(self._deleted, max(extra, 0))):
            del self._deleted[node_id]

    def _send_updates(self, updates: dict[str, Tags], launches: set[str]) -> Collection[str]:
        """The updates, in one call; the nodes whose writes the store's tombstones dropped."""
        if not self._tombstones:
            self._store.update(updates)
            return ()
        return self._store.update_unless_deleted(updates, launches & updates.keys())

    def _acknowledged_updates(self, updates: Mapping[str, Tags], dropped: Collection[str]) -> None:
        dropped = set(dropped)
        for node_id, tags in updates.items():
            if node_id in dropped:
                continue
            self._deleted.pop(node_id, None)
            known = self._written.get(node_id)
            self._written[node_id] = {**known, **tags} if known else tags
        if not dropped:
            return
        with self._cond:
            for node_id in dropped:
                if node_id not in self._pending_updates:
                    self._tags.pop(node_id, None)
        logger.info(
            "RayDog: tag writes for %d deleted node(s) dropped (the tag store keeps their "
            "deletes): %s",
            len(dropped),
            ", ".join(sorted(dropped)[:10]) + (" ..." if len(dropped) > 10 else ""),
        )

    def _within_limit(self, updates: dict[str, Tags]) -> dict[str, Tags]:
        """The batch without the values the store cannot hold (its limit can drop once
        connected): each is dropped with one line, never retried for ever nor holding back
        the rest."""
        limit = self._store.max_value_bytes
        if limit is None:
            return updates
        kept = {}
        for node_id, tags in updates.items():
            fitting = {}
            for name, value in tags.items():
                problem = _too_long(name, value, limit)
                if problem is None:
                    fitting[name] = value
                else:
                    logger.error(
                        "RayDog: tag %r of node %s dropped: %s; the rest was sent",
                        name,
                        node_id,
                        problem,
                    )
            if fitting:
                kept[node_id] = fitting
        return kept

    def _requeue(self, updates: dict[str, Tags], deletes: set[str]) -> None:
        """With ``_cond`` held: a batch that was not sent goes back, under newer writes."""
        newer_updates, newer_deletes = self._pending_updates, self._pending_deletes
        merged = {
            node_id: {**tags, **newer_updates.get(node_id, {})}
            for node_id, tags in updates.items()
            if node_id not in newer_deletes
        }
        for node_id, tags in newer_updates.items():
            merged.setdefault(node_id, tags)
        self._pending_updates = merged
        self._pending_deletes = deletes | newer_deletes

    def _read(self) -> None:
        first = not self._read_once
        if self._incremental:
            previous = self._token
            changes = self._call(lambda: self._store.changes_since(previous))
            restored = previous is not None and (
                changes.token.epoch == previous.epoch
                and (changes.token.version < previous.version or changes.rewound)
            )
            lost = restored or (previous is not None and changes.token.epoch != previous.epoch)
            self._token = changes.token
        else:
            nodes = self._call(self._store.load_all)
            lost = not nodes and self._store_had_nodes
            restored = False
            self._store_had_nodes = bool(nodes)
            changes = Changes(ChangeToken("", 0), True, nodes)
        self._read_once = True
        with self._cond:
            if lost or first:
                self._reloads += 1
            if lost:
                self._refill(changes.updated, restored)
            if changes.full:
                fresh: dict[str, Tags] = {}
                for node_id in changes.updated.keys() | self._pending_updates.keys():
                    tags = self._overlaid(node_id, changes.updated.get(node_id))
                    if tags is not None:
                        fresh[intern(node_id)] = tags
                self._tags = fresh
                return
            for node_id in changes.deleted:
                self._set(node_id, self._overlaid(node_id, None))
            for node_id, remote in changes.updated.items():
                self._set(intern(node_id), self._overlaid(node_id, remote))

    def _refill(self, remote: Mapping[str, Tags], restored: bool) -> None:
        """With ``_cond`` held: the store lost data. Queue every tag this cache knows that the
        store lacks, and every delete this process made (a tombstone then stops a writer that
        missed the delete from bringing the node back). A store ``restored`` to an older copy
        (same epoch, behind what this cache saw) also gets back each value this process wrote
        (and the store acknowledged) that it holds otherwise: the copy has the value from
        before. After a new epoch, what the store holds was written since: newer, so it stays."""
        refilled: set[str] = set()
        for node_id, known in self._tags.items():
            there = remote.get(node_id, {})
            mine = self._written.get(node_id, {})
            newer = {
                name: value
                for name, value in known.items()
                if name not in there or (restored and name in mine and there[name] != value)
            }
            if newer and node_id not in self._pending_deletes:
                held = self._pending_updates.get(node_id, {})
                self._pending_updates[node_id] = {**newer, **held}
                refilled.add(node_id)
        deleted_again = [
            node_id for node_id in self._deleted if node_id not in self._pending_updates
        ]
        self._pending_deletes.update(deleted_again)
        if refilled or deleted_again:
            logger.warning(
                "RayDog: the tag store lost data or came back older (restarted empty, flushed, "
                "failed over or restored from a copy); sending back the tags of %d node(s) and "
                "the deletes of %d node(s) this provider knows",
                len(refilled),
                len(deleted_again),
            )

    def _overlaid(self, node_id: str, remote: Tags | None) -> Tags | None:
        """With ``_cond`` held: the store's tags of a node with this cache's unsent writes on top
        (a held delete then update means the node comes back with the update alone)."""
        held = self._pending_updates.get(node_id)
        if node_id in self._pending_deletes:
            return held
        if held is None:
            return remote
        return {**remote, **held} if remote else held

    def _set(self, node_id: str, tags: Tags | None) -> None:
        if tags is None:
            self._tags.pop(node_id, None)
        else:
            self._tags[node_id] = tags

    # --- connection ----------------------------------------------------------------------------

    def _call(self, operation: Callable[[], T]) -> T:
        """A store call. On a dropped connection, reconnect (the transport reopens its path) and
        try once more; a second failure is raised."""
        self._round_trips += 1
        try:
            return operation()
        except UnreachableError as exc:
            self._disconnect()
            self._note_problem(str(exc))
            if not self._ensure_connected(force=True):
                raise
        return operation()

    def _ensure_connected(self, force: bool = False) -> bool:
        if self._connected:
            return True
        if not force and time.monotonic() < self._next_attempt:
            return False
        try:
            endpoint = self._locate()
            self._store.connect(endpoint)
        except NotReady:
            self._waiting_for_location = True
            return False
        except Exception as exc:  # any failure to connect is retried later
            self._next_attempt = time.monotonic() + self._retry_seconds
            self._note_problem(str(exc))
            return False
        self._connected = True
        self._waiting_for_location = False
        if self._last_problem is not None:
            logger.info("RayDog: tag store reachable again")
        self._last_problem = None
        return True

    def _disconnect(self) -> None:
        if self._connected:
            self._connected = False
            try:
                self._store.close()
            except UnreachableError:
                logger.debug("RayDog: closing an unreachable tag store", exc_info=True)

    def _note_problem(self, problem: str) -> None:
        if problem != self._last_problem:
            logger.warning(
                "RayDog: %s; tag writes are held in memory (%d node(s)) and sent once it is back",
                problem,
                self.unsent(),
            )
        self._last_problem = problem


def _serve(cache_ref: weakref.ref[TagCache], stop: threading.Event) -> None:
    """The sender's loop; it holds its cache weakly between rounds so an unused cache can go."""
    while True:
        cache = cache_ref()
        if cache is None:
            return
        with cache._cond:
            work = cache._next_work(stop)
        if work is None:
            with cache._io_lock:
                cache._disconnect()
            return
        cache._work_once(*work)
        del cache


_unsent_at_exit: weakref.WeakSet[TagCache] = weakref.WeakSet()


@atexit.register
def _send_held_writes_at_exit() -> None:
    """`ray up` and `ray down` end soon after their last write: send it before the process goes."""
    for cache in list(_unsent_at_exit):
        if cache.unsent() and not cache.flush(CLOSE_TIMEOUT):
            logger.warning(
                "RayDog: tag writes for %d node(s) could not reach the tag store of cluster %s "
                "before this command ended; the head's autoscaler writes back what the compute "
                "backend records of each node (kind, node type, launch config), but other tags "
                "set by this command are lost",
                cache.unsent(),
                cache._store.cluster_name,
            )


_FLUSHED_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_previous_handlers: dict[int, object] = {}
_flushing_for_signal = threading.Event()


def _send_held_writes_on_signals() -> None:
    """SIGTERM and SIGHUP (a cancelled CI job, a closed terminal) end a process without its
    atexit hooks: send held writes first, then do what the signal did before (Ray's handler,
    which exits through atexit, or the default: the process ends by the signal). Installed
    once, from the main thread only (where Python runs signal handlers)."""
    if _previous_handlers or threading.current_thread() is not threading.main_thread():
        return
    for signum in _FLUSHED_SIGNALS:
        previous = signal.getsignal(signum)
        if previous is signal.SIG_IGN:
            continue
        _previous_handlers[signum] = previous
        signal.signal(signum, _on_ending_signal)


def _on_ending_signal(signum: int, frame: object) -> None:
    if not _flushing_for_signal.is_set():
        _flushing_for_signal.set()
        logger.info("RayDog: %s: sending held tag writes first", signal.Signals(signum).name)
        _send_held_writes_at_exit()
        _unsent_at_exit.clear()  # sent (or reported) once: the exit that follows has no more
    previous = _previous_handlers.get(signum)
    if callable(previous):
        previous(signum, frame)
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _checked(node_id: str, tags: Mapping[str, str], limit: int | None) -> Tags:
    _check_text(node_id, f"node id {node_id!r}")
    if not isinstance(tags, Mapping):
        raise TagValueError(
            f"tags of node {node_id!r}: expected a mapping of str to str, got {type(tags).__name__}"
        )
    for name, value in tags.items():
        _check_text(name, f"node {node_id!r}: tag name {name!r}")
        _check_text(value, f"node {node_id!r}: tag {name!r}")
        problem = _too_long(name, value, limit)
        if problem is not None:
            raise TagValueError(
                f"node {node_id!r}: tag {name!r}: {problem}; nothing of this call was stored"
            )
    return dict(tags)


def _too_long(name: str, value: str, limit: int | None) -> str | None:
    """Why the store cannot hold this tag, or None. A character is 1 to 4 bytes of UTF-8, so
    only a text longer than a quarter of the limit is encoded to be measured."""
    if limit is None:
        return None
    for what, text in (("its name", name), ("its value", value)):
        if len(text) * 4 > limit:
            size = len(text.encode("utf-8"))
            if size > limit:
                return f"{what} is {size:,} bytes, over the tag store's limit of {limit:,}"
    return None


def _check_text(value: object, what: str) -> None:
    """Only text a store can hold: str, encodable as UTF-8 (no lone surrogate)."""
    if not isinstance(value, str):
        raise TagValueError(f"{what}: expected a str, got {type(value).__name__}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise TagValueError(
                f"{what}: not valid text (a lone surrogate at index {exc.start}); "
                "nothing of this call was stored"
            ) from None
