"""A local Kubernetes API mock server: the core/v1 REST paths KubeSpawner 7.1 uses, in memory.

There is no cluster, container engine or envtest on these machines (docs/kubernetes.md), so the
hub side of Kubernetes mode is exercised against this aiohttp server on 127.0.0.1. It serves
what ``kubespawner`` calls through ``kubernetes_asyncio``'s ``CoreV1Api``:

* ``/api/v1/namespaces/NS/{pods,events,persistentvolumeclaims,services,secrets}``: ``GET``
  lists (``labelSelector`` and ``fieldSelector`` by equality, as the reflectors send them) or,
  with ``watch=true``, streams watch events as JSON lines from ``resourceVersion`` on until
  ``timeoutSeconds``; ``POST`` creates (409 when the name exists);
* ``/api/v1/namespaces/NS/PLURAL/NAME``: ``GET`` reads, ``DELETE`` deletes (404 when absent);
* ``/api/v1/PLURAL``: the all-namespaces list and watch (``enable_user_namespaces``).

Objects get a uid, a resource version and a creation time from a deterministic clock; a new pod
is ``Pending`` and gets a ``Scheduled`` event. Nothing runs: the test plays the kubelet with
:meth:`KubeAPIMock.set_running`, :meth:`set_failed`, :meth:`set_waiting`,
:meth:`set_init_exited` and :meth:`add_event`, each of which a watcher sees as ``MODIFIED`` or
``ADDED``. A path or selector it does not implement is answered 400/404 with a ``Status`` body
naming it, so a KubeSpawner that starts using another API fails loudly here.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

PLURALS = {
    "pods": "Pod",
    "events": "Event",
    "persistentvolumeclaims": "PersistentVolumeClaim",
    "services": "Service",
    "secrets": "Secret",
}
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
NODE = "node-1"


class MockError(Exception):
    """The mock cannot do what a test asked (the message names the object)."""


class Conflict(MockError):
    """An object of that name exists already."""


@dataclass
class Change:
    """One watch event: what happened to which object, at which resource version."""

    version: int
    plural: str
    type: str
    object: dict[str, Any]


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)


def status(code: int, reason: str, message: str) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return web.json_response(body, status=code)


def _field(obj: dict[str, Any], dotted: str) -> Any:
    value: Any = obj
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def parse_selector(text: str, what: str) -> list[tuple[str, str]]:
    """``a=b,c=d`` (or ``==``) into pairs; anything else is refused by name."""
    pairs = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = term.replace("==", "=").partition("=")
        if not sep or "!" in key:
            raise MockError(f"{what} {term!r}: the mock supports only equality")
        pairs.append((key, value))
    return pairs


class KubeAPIMock:
    """The server and its objects; start it inside the test's event loop."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.changes: list[Change] = []
        self.requests: list[Request] = []
        self.url = ""
        self._version = 0
        self._next_ip = 10
        self._watchers: set[asyncio.Event] = set()
        self._closing = False
        self._runner: web.AppRunner | None = None

    # ---- lifecycle

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/api/v1/namespaces/{ns}/{plural}", self._collection)
        app.router.add_route("*", "/api/v1/namespaces/{ns}/{plural}/{name}", self._item)
        app.router.add_route("GET", "/api/v1/{plural}", self._collection)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        self._closing = True
        for woken in self._watchers:
            woken.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def kubeconfig(self, path: Path, namespace: str = "enclave") -> Path:
        """A kubeconfig whose current context is this server (plain HTTP, a dummy token)."""
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "mock", "cluster": {"server": self.url}}],
                    "users": [{"name": "mock", "user": {"token": "mock-token"}}],
                    "contexts": [
                        {
                            "name": "mock",
                            "context": {"cluster": "mock", "user": "mock", "namespace": namespace},
                        }
                    ],
                    "current-context": "mock",
                }
            )
        )
        return path

    # ---- what the tests do (the kubelet's and the scheduler's part)

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((plural, namespace, name))

    def pod(self, namespace: str, name: str) -> dict[str, Any]:
        found = self.get("pods", namespace, name)
        if found is None:
            raise MockError(f"no pod {namespace}/{name}")
        return found

    async def wait_for(
        self, plural: str, namespace: str, name: str, timeout: float = 10.0
    ) -> dict[str, Any]:
        """The object once it exists (a spawner creates it in the background)."""
        deadline = time.monotonic() + timeout
        while (found := self.get(plural, namespace, name)) is None:
            if time.monotonic() > deadline:
                raise MockError(f"no {plural} {namespace}/{name} after {timeout} s")
            await asyncio.sleep(0.02)
        return found

    def set_running(self, namespace: str, name: str, *, ready: bool = True) -> dict[str, Any]:
        """Scheduled, init containers done, every container running (and ready): a pod IP."""
        pod = self.pod(namespace, name)
        st = pod["status"]
        st["phase"] = "Running"
        st["hostIP"] = "192.168.0.2"
        st.setdefault("podIP", f"10.244.0.{self._next_ip}")
        if st["podIP"] == f"10.244.0.{self._next_ip}":
            self._next_ip += 1
        st["podIPs"] = [{"ip": st["podIP"]}]
        started = self._stamp()
        st["initContainerStatuses"] = [
            self._container_status(
                c, {"terminated": {"exitCode": 0, "reason": "Completed"}}, ready=True
            )
            for c in pod["spec"].get("initContainers") or []
        ]
        st["containerStatuses"] = [
            self._container_status(c, {"running": {"startedAt": started}}, ready=ready)
            for c in pod["spec"]["containers"]
        ]
        st["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
        self._record("pods", "MODIFIED", pod)
        for c in pod["spec"]["containers"]:
            self.add_event(namespace, name, "Started", f"Started container {c['name']}")
        return pod

    def set_failed(self, namespace: str, name: str, reason: str, message: str) -> dict[str, Any]:
        pod = self.pod(namespace, name)
        pod["status"].update({"phase": "Failed", "reason": reason, "message": message})
        self._record("pods", "MODIFIED", pod)
        return pod

    def set_waiting(
        self, namespace: str, name: str, container: str, reason: str, message: str
    ) -> dict[str, Any]:
        """A container stuck before it runs (``ErrImagePull``, ``ImagePullBackOff``...)."""
        pod = self.pod(namespace, name)
        spec, key = self._find_container(pod, container)
        statuses = pod["status"].setdefault(key, [])
        statuses[:] = [s for s in statuses if s["name"] != container]
        statuses.append(
            self._container_status(spec, {"waiting": {"reason": reason, "message": message}})
        )
        self._record("pods", "MODIFIED", pod)
        return pod

    def set_init_exited(
        self, namespace: str, name: str, container: str, code: int, message: str
    ) -> dict[str, Any]:
        """An init container that ended (its last log lines as the termination message)."""
        pod = self.pod(namespace, name)
        spec, key = self._find_container(pod, container)
        if key != "initContainerStatuses":
            raise MockError(f"{container!r} is not an init container of pod {namespace}/{name}")
        ended = {"exitCode": code, "reason": "Error" if code else "Completed", "message": message}
        pod["status"][key] = [self._container_status(spec, {"terminated": ended})]
        self._record("pods", "MODIFIED", pod)
        return pod

    def add_event(
        self, namespace: str, pod: str, reason: str, message: str, type: str = "Normal"
    ) -> dict[str, Any]:
        """An event about a pod, as the scheduler or kubelet would post it."""
        self._version += 1
        stamp = self._stamp()
        event: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{pod}.{self._version:08x}",
                "namespace": namespace,
                "uid": self._uid(),
                "resourceVersion": str(self._version),
                "creationTimestamp": stamp,
            },
            "involvedObject": {"kind": "Pod", "name": pod, "namespace": namespace},
            "reason": reason,
            "message": message,
            "type": type,
            "count": 1,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "eventTime": None,
            "source": {"component": "kubelet", "host": NODE},
        }
        self.objects[("events", namespace, event["metadata"]["name"])] = event
        self._record("events", "ADDED", event, bump=False)
        return event

    # ---- internals

    def _stamp(self) -> str:
        return (EPOCH + timedelta(seconds=self._version)).strftime("%Y-%m-%dT%H:%M:%SZ")

    def _uid(self) -> str:
        return f"00000000-0000-4000-8000-{self._version:012d}"

    def _record(self, plural: str, type: str, obj: dict[str, Any], bump: bool = True) -> None:
        if bump:
            self._version += 1
            obj["metadata"]["resourceVersion"] = str(self._version)
        self.changes.append(Change(self._version, plural, type, copy.deepcopy(obj)))
        for woken in self._watchers:
            woken.set()

    @staticmethod
    def _find_container(pod: dict[str, Any], name: str) -> tuple[dict[str, Any], str]:
        for key, status_key in (
            ("initContainers", "initContainerStatuses"),
            ("containers", "containerStatuses"),
        ):
            for c in pod["spec"].get(key) or []:
                if c["name"] == name:
                    return c, status_key
        raise MockError(f"pod {pod['metadata']['name']} has no container {name!r}")

    @staticmethod
    def _container_status(
        spec: dict[str, Any], state: dict[str, Any], ready: bool = False
    ) -> dict[str, Any]:
        return {
            "name": spec["name"],
            "image": spec.get("image", ""),
            "imageID": "",
            "ready": ready,
            "restartCount": 0,
            "started": "running" in state,
            "state": state,
        }

    @staticmethod
    def _matches(obj: dict[str, Any], labels: list[tuple[str, str]], fields: list[tuple[str, str]]):
        own = obj["metadata"].get("labels") or {}
        return all(own.get(k) == v for k, v in labels) and all(
            str(_field(obj, k)) == v for k, v in fields
        )

    def _create(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        meta = body.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            raise MockError(f"a {PLURALS[plural]} needs metadata.name")
        if meta.get("namespace", namespace) != namespace:
            raise MockError(f"{name}: namespace {meta['namespace']!r} is not {namespace!r}")
        if (plural, namespace, name) in self.objects:
            raise Conflict(f'{plural} "{name}" already exists in {namespace}')
        body["apiVersion"], body["kind"] = "v1", PLURALS[plural]
        meta.update(namespace=namespace, uid=self._uid(), creationTimestamp=self._stamp())
        if plural == "pods":
            body["spec"].setdefault("nodeName", NODE)
            body["status"] = {"phase": "Pending", "qosClass": "Burstable"}
        elif plural == "persistentvolumeclaims":
            body["status"] = {"phase": "Pending"}
        self.objects[(plural, namespace, name)] = body
        self._record(plural, "ADDED", body)
        if plural == "pods":
            self.add_event(
                namespace, name, "Scheduled", f"Successfully assigned {namespace}/{name} to {NODE}"
            )
        return body

    # ---- HTTP

    def _log(self, request: web.Request) -> None:
        self.requests.append(Request(request.method, request.path, dict(request.query)))

    async def _unknown(self, request: web.Request) -> web.StreamResponse:
        self._log(request)
        return status(404, "NotFound", f"the mock does not serve {request.method} {request.path}")

    async def _collection(self, request: web.Request) -> web.StreamResponse:
        self._log(request)
        plural, namespace = request.match_info["plural"], request.match_info.get("ns")
        if plural not in PLURALS:
            return status(404, "NotFound", f"the mock does not serve {plural}")
        if request.method == "POST" and namespace:
            try:
                created = self._create(plural, namespace, await request.json())
            except Conflict as exc:
                return status(409, "AlreadyExists", str(exc))
            except (MockError, ValueError, KeyError) as exc:
                return status(422, "Invalid", str(exc))
            return web.json_response(created, status=201)
        if request.method != "GET":
            return status(405, "MethodNotAllowed", f"{request.method} {request.path}")
        try:
            labels = parse_selector(request.query.get("labelSelector", ""), "labelSelector")
            fields = parse_selector(request.query.get("fieldSelector", ""), "fieldSelector")
        except MockError as exc:
            return status(400, "BadRequest", str(exc))
        if request.query.get("watch", "").lower() in ("true", "1"):
            return await self._watch(request, plural, namespace, labels, fields)
        items = [
            copy.deepcopy(obj)
            for (p, ns, _), obj in sorted(self.objects.items())
            if p == plural and namespace in (None, ns) and self._matches(obj, labels, fields)
        ]
        return web.json_response(
            {
                "apiVersion": "v1",
                "kind": f"{PLURALS[plural]}List",
                "metadata": {"resourceVersion": str(self._version)},
                "items": items,
            }
        )

    async def _watch(
        self,
        request: web.Request,
        plural: str,
        namespace: str | None,
        labels: list[tuple[str, str]],
        fields: list[tuple[str, str]],
    ) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or 0)
        deadline = time.monotonic() + float(request.query.get("timeoutSeconds") or 30)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)

        def wanted(change: Change) -> bool:
            obj = change.object
            return (
                change.plural == plural
                and namespace in (None, obj["metadata"]["namespace"])
                and self._matches(obj, labels, fields)
            )

        pending: list[Change]
        if since == 0:  # "any version": the current objects, as ADDED, then what follows
            pending = [
                Change(self._version, plural, "ADDED", copy.deepcopy(obj))
                for (p, _, _), obj in sorted(self.objects.items())
                if p == plural
            ]
            pending = [c for c in pending if wanted(c)]
            since = self._version
        else:
            pending = []
        woken = asyncio.Event()
        self._watchers.add(woken)
        try:
            while not self._closing:
                pending += [c for c in self.changes if c.version > since and wanted(c)]
                since = max(since, self.changes[-1].version if self.changes else 0)
                try:
                    for change in pending:
                        line = {"type": change.type, "object": change.object}
                        await response.write(json.dumps(line).encode() + b"\n")
                except ConnectionResetError:  # the watcher went away (a reflector stopped)
                    return response
                pending = []
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                woken.clear()
                if self.changes and self.changes[-1].version > since:
                    continue  # something happened while this watcher was writing
                try:
                    await asyncio.wait_for(woken.wait(), timeout=left)
                except TimeoutError:
                    break
        finally:
            self._watchers.discard(woken)
        await response.write_eof()
        return response

    async def _item(self, request: web.Request) -> web.StreamResponse:
        self._log(request)
        plural, namespace, name = (request.match_info[k] for k in ("plural", "ns", "name"))
        if plural not in PLURALS:
            return status(404, "NotFound", f"the mock does not serve {plural}")
        found = self.get(plural, namespace, name)
        if found is None:
            return status(404, "NotFound", f'{plural} "{name}" not found in {namespace}')
        if request.method == "GET":
            return web.json_response(found)
        if request.method == "DELETE":
            del self.objects[(plural, namespace, name)]
            found["metadata"]["deletionTimestamp"] = self._stamp()
            self._record(plural, "DELETED", found)
            return web.json_response(found)
        return status(405, "MethodNotAllowed", f"{request.method} {request.path}")
