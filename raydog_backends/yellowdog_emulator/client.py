"""A small client of the emulator's ``/emulator/`` endpoints, for tests and scripts."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class EmulatorClient:
    """Inspect an emulator and make things go wrong in it."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.url}/emulator/{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise RuntimeError(f"emulator {method} {path}: HTTP {exc.code} {detail}") from None
        return json.loads(raw) if raw else None

    # --- looking ---------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Every work requirement, task, pool and node, live or finished."""
        result: dict[str, Any] = self._call("GET", "state")
        return result

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        """Every API request served (method, path, query, body, key id, status), oldest first."""
        result: list[dict[str, Any]] = self._call("GET", f"requests?since={since}")["requests"]
        return result

    def request_count(self) -> int:
        return int(self.state()["request_count"])

    def searches_with_a_node_left_out(self) -> int:
        """How many node searches :meth:`hide_node_from_searches` has changed so far."""
        return int(self.state()["searches_with_a_node_left_out"])

    def live_work_requirements(self) -> list[dict[str, Any]]:
        return [r for r in self.state()["work_requirements"] if r["live"]]

    def live_pools(self) -> list[dict[str, Any]]:
        return [p for p in self.state()["pools"] if p["live"]]

    def live_nodes(self) -> list[dict[str, Any]]:
        return [n for n in self.state()["nodes"] if n["live"]]

    def live_compute_requirements(self) -> list[dict[str, Any]]:
        return [c for c in self.state()["compute_requirements"] if c["live"]]

    def leaks(self) -> list[str]:
        """What would still cost money: unfinished work requirements, live worker pools, compute
        requirements not terminated and their live instances (the third word names each)."""
        state = self.state()
        computes = state["compute_requirements"]
        return (
            [
                f"work requirement {r['name']} ({r['status']})"
                for r in state["work_requirements"]
                if r["live"]
            ]
            + [f"worker pool {p['name']} ({p['status']})" for p in state["pools"] if p["live"]]
            + [f"compute requirement {c['name']} ({c['status']})" for c in computes if c["live"]]
            + [
                f"instance of {c['name']} {i['id']} ({i['status']})"
                for c in computes
                for i in c["instances"]
                if i["live"]
            ]
        )

    # --- changing --------------------------------------------------------------------------

    def fail(
        self,
        path: str,
        status: int = 500,
        *,
        method: str | None = None,
        nth: int | None = None,
        times: int | None = None,
        latency: float = 0.0,
        after_apply: bool = False,
        retry_after: int | None = None,
    ) -> None:
        """Fail API calls whose path matches the regex ``path``: only the ``nth`` one (counting
        from 1) if given, else every one (or the first ``times``). ``after_apply``: the request
        is served first (its change made) and only its reply fails, as when a reply is lost; a
        client that retries (the SDK retries POSTs on 429 and 5xx) then sends it twice.
        ``retry_after``: the failure's ``Retry-After`` header, in seconds (with status 429, the
        SDK raises requests' HTTPError, whose response shows both)."""
        body: dict[str, Any] = {
            "path": path,
            "status": status,
            "latency": latency,
            "after_apply": after_apply,
        }
        if method is not None:
            body["method"] = method
        if nth is not None:
            body["nth"] = nth
        if times is not None:
            body["times"] = times
        if retry_after is not None:
            body["retry_after"] = retry_after
        self._call("POST", "faults", body)

    def delay(self, path: str, seconds: float, *, method: str | None = None) -> None:
        """Answer every matching API call ``seconds`` late."""
        body: dict[str, Any] = {"path": path, "latency": seconds}
        if method is not None:
            body["method"] = method
        self._call("POST", "faults", body)

    def clear_faults(self) -> None:
        """No more injected failures, provisioning failures or node search glitches."""
        self._call("DELETE", "faults")

    def clear_requests(self) -> None:
        self._call("DELETE", "requests")

    def settings(self, **values: Any) -> None:
        """Change the emulator's settings (``boot_delay``, ``time_scale``, ...) while it runs."""
        self._call("POST", "settings", values)

    def lose_node(self, node_id: str, fail_tasks: bool | None = None) -> None:
        self._call("POST", f"nodes/{node_id}/lose", {"fail_tasks": fail_tasks})

    def lose_node_of_task(self, task_id: str, fail_tasks: bool | None = None) -> None:
        """Lose the node a task runs on (a Ray node id is a task id)."""
        self._call("POST", f"tasks/{task_id}/lose-node", {"fail_tasks": fail_tasks})

    def fail_task(self, task_id: str) -> None:
        self._call("POST", f"tasks/{task_id}/fail", {})

    def fail_provisioning(self, reason: str, template_id: str | None = None) -> None:
        """From now on, pools provisioned from ``template_id`` (None: any template) get no
        instance: quota exhausted, wrong image... Each such pool's compute requirement ends
        TERMINATED, its source ERRORED with ``reason`` as ``statusMessage``; the pool ends
        TERMINATED without a node; tasks for it stay READY. Until :meth:`clear_faults`."""
        self._call("POST", "provisioning-failures", {"template_id": template_id, "reason": reason})

    def hide_node_from_searches(self, node_id: str | None = None, times: int = 1) -> None:
        """The next ``times`` node searches that would list ``node_id`` (None: any node; the
        first one listed) leave it out, as an inconsistent search result does. Looking the node
        up by id still finds it."""
        self._call("POST", "node-search-glitches", {"node_id": node_id, "times": times})

    def reset(self) -> None:
        """Forget every object, fault, provisioning failure and request; stop every task
        process."""
        self._call("POST", "reset", {})
