"""The only module that talks to the Kubernetes API. Everything returns plain JSON dicts as the API
sends them (camelCase), which is what the pure modules read. Blocking calls; the handlers run them
in a thread pool so a gang's pods are created concurrently."""

from __future__ import annotations

import json
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from distml import labels
from distml.api.models import GROUP, PLURAL, VERSION

Obj = dict[str, Any]


def _json(resp: Any) -> Any:
    return json.loads(resp.data)


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def get_job(self, namespace: str, name: str) -> Obj | None:
        try:
            job = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            return cast(Obj, job)
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def list_job_pods(self, namespace: str, job: str) -> list[Obj]:
        resp = self.core.list_namespaced_pod(
            namespace, label_selector=f"{labels.JOB_NAME}={job}", _preload_content=False
        )
        return list(_json(resp)["items"])

    def list_nodes(self) -> list[Obj]:
        return list(_json(self.core.list_node(_preload_content=False))["items"])

    def list_live_pods(self) -> list[Obj]:
        """Every pod in the cluster that has not finished."""
        resp = self.core.list_pod_for_all_namespaces(
            field_selector="status.phase!=Succeeded,status.phase!=Failed", _preload_content=False
        )
        return list(_json(resp)["items"])

    def create(self, obj: Obj) -> bool:
        """Creates a Pod or Service; False if it exists already (a repeated plan, not an error)."""
        ns = obj["metadata"]["namespace"]
        try:
            if obj["kind"] == "Pod":
                self.core.create_namespaced_pod(ns, obj, _preload_content=False)  # type: ignore[arg-type]
            elif obj["kind"] == "Service":
                self.core.create_namespaced_service(ns, obj, _preload_content=False)  # type: ignore[arg-type]
            else:
                raise ValueError(f"cannot create a {obj['kind']}")
        except ApiException as err:
            if err.status == 409:
                return False
            raise
        return True

    def delete_pod(self, namespace: str, name: str, force: bool) -> None:
        try:
            self.core.delete_namespaced_pod(
                name, namespace, grace_period_seconds=0 if force else None, _preload_content=False
            )
        except ApiException as err:
            if err.status != 404:
                raise

    def patch_status(self, namespace: str, name: str, status: Obj) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": status}
        )

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Background"
            )
        except ApiException as err:
            if err.status != 404:
                raise

    def post_event(self, job: Obj, type_: str, reason: str, message: str, now: str) -> None:
        meta = job["metadata"]
        self.core.create_namespaced_event(
            meta["namespace"],
            {  # type: ignore[arg-type]
                "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
                "involvedObject": {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "TrainingJob",
                    "name": meta["name"],
                    "namespace": meta["namespace"],
                    "uid": meta["uid"],
                },
                "type": type_,
                "reason": reason,
                "message": message[:1024],
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
                "source": {"component": labels.OPERATOR},
                "reportingComponent": labels.OPERATOR,
                "reportingInstance": labels.OPERATOR,
            },
            _preload_content=False,
        )
