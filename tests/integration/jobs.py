"""Helpers for TrainingJob integration tests: build, apply, read status and events."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from distml.api.models import training_job_manifest

from .helpers import wait_for

GROUP, VERSION, PLURAL = "distml.io", "v1alpha1", "trainingjobs"
SERVING = "servingjobs"


def training_job(
    name: str, replicas: int = 2, gpus: int = 8, node_selector: dict | None = None, **spec: Any
) -> dict:
    pod_spec: dict[str, Any] = {"containers": [{"name": "trainer", "image": "distml-runtime:test"}]}
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    return training_job_manifest(name, replicas, gpus, pod_spec, **spec)


def create(custom: client.CustomObjectsApi, ns: str, body: dict) -> dict:
    return custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)


def get(custom: client.CustomObjectsApi, ns: str, name: str) -> dict:
    return custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)


def delete(custom: client.CustomObjectsApi, ns: str, name: str) -> None:
    custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)


def patch_spec(custom: client.CustomObjectsApi, ns: str, name: str, spec: dict) -> None:
    custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, {"spec": spec})


def status(custom, ns: str, name: str) -> dict:
    return get(custom, ns, name).get("status") or {}


def create_serving(custom: client.CustomObjectsApi, ns: str, body: dict) -> dict:
    return custom.create_namespaced_custom_object(GROUP, VERSION, ns, SERVING, body)


def serving_status(custom, ns: str, name: str) -> dict:
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, ns, SERVING, name)
    return obj.get("status") or {}


def wait_phase(custom, ns: str, name: str, phase: str, timeout: float = 60) -> dict:
    return wait_reporting(
        custom,
        ns,
        name,
        f"{name} {phase}",
        lambda: (s := status(custom, ns, name)).get("phase") == phase and s,
        timeout=timeout,
    )


def pods(core: client.CoreV1Api, ns: str, job: str) -> list:
    return core.list_namespaced_pod(ns, label_selector=f"distml.io/job-name={job}").items


def live_pods(core, ns: str, job: str) -> list:
    return [p for p in pods(core, ns, job) if p.metadata.deletion_timestamp is None]


def events(core: client.CoreV1Api, ns: str, name: str, kind: str = "TrainingJob") -> list:
    """The job's Events, oldest first."""
    items = core.list_namespaced_event(
        ns, field_selector=f"involvedObject.name={name},involvedObject.kind={kind}"
    ).items
    # Timestamps have one-second resolution; etcd's revision orders events within a second.
    return sorted(items, key=lambda e: int(e.metadata.resource_version))


def event_reasons(
    core: client.CoreV1Api, ns: str, name: str, kind: str = "TrainingJob"
) -> list[str]:
    return [e.reason for e in events(core, ns, name, kind)]


def reasons_once(core: client.CoreV1Api, ns: str, name: str, reason: str, count: int = 1,
                 timeout: float = 30, kind: str = "TrainingJob") -> list[str]:  # fmt: skip
    """The job's Event reasons, once `reason` is among them `count` times. A decision's Event goes
    out after the status that records it, so a test that has seen the status waits for it."""
    return wait_for(
        f"{count} {reason} Event(s) of {name}",
        lambda: (r := event_reasons(core, ns, name, kind)).count(reason) >= count and r,
        timeout=timeout,
    )


def running_pods(core, ns: str, name: str, n: int, gen: int = 0, timeout: float = 60) -> list:
    """Waits for `n` live, Running pods of the job's restart generation `gen`."""

    def ok():
        ps = [
            p
            for p in live_pods(core, ns, name)
            if p.metadata.labels["distml.io/restart-generation"] == str(gen)
        ]
        return ps if len(ps) == n and all(p.status.phase == "Running" for p in ps) else None

    custom = client.CustomObjectsApi(core.api_client)
    return wait_reporting(custom, ns, name, f"{n} Running pods of {name} generation {gen}", ok,
                          timeout)  # fmt: skip


def wait_reporting(custom, ns: str, name: str, what: str, probe, timeout: float = 60):
    """wait_for; on a timeout, says what the job itself reports, for whoever reads the failure."""
    try:
        return wait_for(what, probe, timeout=timeout)
    except AssertionError as err:
        raise AssertionError(f"{err}; the job's status: {status(custom, ns, name)}") from None
