"""CRDs generated from the pydantic models: `python -m distml.api.crd crds charts/distml/crds`
(make crds).

Pure: the pydantic JSON schema is turned into a structural OpenAPI v3 schema (references inlined,
titles dropped, optional fields unwrapped, exclusive bounds in OpenAPI 3.0 form), the pod template
gets Kubernetes' own schema, and the CEL rules of models.py are attached.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from distml.api import models, serving
from distml.api.k8sschema import SNAPSHOT


def pod_template_schema() -> dict[str, Any]:
    return dict(json.loads(SNAPSHOT.read_text())["schema"])


def _structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        resolved = _structural(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        for key in ("description", "default"):
            if key in node:
                resolved[key] = node[key]
        return resolved
    options = [o for o in node.get("anyOf", []) if o.get("type") != "null"]
    if len(options) == 1 and len(node["anyOf"]) == 2:  # Optional[X]: X, not required
        merged = {k: v for k, v in node.items() if k != "anyOf"}
        inner = _structural(options[0], defs)
        if "description" in merged:
            inner["description"] = merged["description"]
        if merged.get("default") is not None:
            inner["default"] = merged["default"]
        return inner
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "$defs"):
            continue
        if key == "additionalProperties" and value is False:
            continue
        if key == "properties":
            out[key] = {k: _structural(v, defs) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _structural(value, defs)
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "default" and value is None:
            continue
        elif key == "description" and isinstance(value, str):
            # A docstring's line breaks are where its source wrapped, not where kubectl explain
            # should break a sentence.
            out[key] = " ".join(value.split())
        else:
            out[key] = value
    return out


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True)
    return _structural(raw, raw.get("$defs", {}))


def _kind_schema(
    spec_model: type[BaseModel],
    status_model: type[BaseModel],
    rules: list[dict[str, str]],
    name_rule: dict[str, str],
    kind: str,
    description: str,
) -> dict[str, Any]:
    spec = model_schema(spec_model)
    given = spec["properties"]["template"]
    spec["properties"]["template"] = {
        **pod_template_schema(),
        "description": given.get("description", ""),
        **({"default": given["default"]} if "default" in given else {}),
    }
    spec["x-kubernetes-validations"] = rules
    return {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": f"{models.GROUP}/{models.VERSION}"},
            "kind": {"type": "string", "description": kind},
            "metadata": {"type": "object"},  # the API server allows nothing else here
            "spec": spec,
            "status": model_schema(status_model),
        },
        "x-kubernetes-validations": [name_rule],
    }


def trainingjob_schema() -> dict[str, Any]:
    return _kind_schema(
        models.TrainingJobSpec,
        models.TrainingJobStatus,
        models.SPEC_RULES,
        models.NAME_RULE,
        models.KIND,
        "A distributed PyTorch training job: a gang of pods running torchrun, "
        "admitted and started together, restarted together on failure.",
    )


def servingjob_schema() -> dict[str, Any]:
    return _kind_schema(
        serving.ServingJobSpec,
        serving.ServingJobStatus,
        serving.SPEC_RULES,
        serving.NAME_RULE,
        serving.KIND,
        "A model served over the Open Inference Protocol by replicas of the runtime's server "
        "behind one Service, updated by rolling revisions that drop no request.",
    )


def _column(
    name: str, path: str, kind: str = "string", priority: int = 0, description: str = ""
) -> dict[str, Any]:
    col: dict[str, Any] = {"name": name, "type": kind, "jsonPath": path}
    if priority:
        col["priority"] = priority
    if description:
        col["description"] = description
    return col


def _crd(
    kind: str, plural: str, short: str, columns: list[dict[str, Any]], schema: dict[str, Any]
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{models.GROUP}"},
        "spec": {
            "group": models.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["distml"],
            },
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def trainingjob_crd() -> dict[str, Any]:
    columns = [
        _column("Phase", ".status.phase"),
        _column("Reason", ".status.reason", description="why, in one word"),
        _column("Ready", ".status.readyText", description="ready/desired pods"),
        _column("GPUs", ".status.gpus", "integer"),
        _column("Restarts", ".status.restarts", "integer"),
        _column(
            "Elastic",
            ".status.elasticRange",
            description="elastic jobs: the fewest-most workers",
        ),
        _column(
            "Queue",
            ".status.queuePosition",
            "integer",
            description="place among the gangs waiting for GPUs (1 = next)",
        ),
        _column("Age", ".metadata.creationTimestamp", "date"),
        _column("Replicas", ".spec.replicas", "integer", 1),
        _column("Restart-Policy", ".spec.restartPolicy", priority=1),
        _column(
            "BusBw-Gbps",
            ".status.preflight.busBwGbps",
            "number",
            1,
            description="all-reduce busbw the preflight measured",
        ),
        _column("Message", ".status.message", priority=1),
    ]
    return _crd(models.KIND, models.PLURAL, "tj", columns, trainingjob_schema())


def servingjob_crd() -> dict[str, Any]:
    columns = [
        _column("Ready", ".status.readyText", description="ready/desired replicas"),
        _column(
            "Up-To-Date",
            ".status.updatedReplicas",
            "integer",
            description="replicas of the update revision",
        ),
        _column(
            "Available",
            ".status.availableReplicas",
            "integer",
            description="Ready replicas in the Service",
        ),
        _column("Phase", ".status.phase"),
        _column("URL", ".status.url"),
        _column("Age", ".metadata.creationTimestamp", "date"),
        _column("Reason", ".status.reason", priority=1),
        _column("GPUs", ".status.gpus", "integer", 1),
        _column("Revision", ".status.updateRevision", priority=1),
        _column(
            "Stages",
            ".status.pipeline.text",
            priority=1,
            description="a pipeline replica's split: each stage's layers",
        ),
        _column("Message", ".status.message", priority=1),
    ]
    return _crd(serving.KIND, serving.PLURAL, "sj", columns, servingjob_schema())


def peering_crd(scope: str) -> dict[str, Any]:
    """kopf's peering resource (group kopf.dev): replicas of the operator announce themselves
    there, and only the one with the highest priority handles events (HA with one active)."""
    kind = "ClusterKopfPeering" if scope == "Cluster" else "KopfPeering"
    plural = kind.lower() + "s"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.kopf.dev"},
        "spec": {
            "group": "kopf.dev",
            "scope": scope,
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "status": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


def all_crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD, for every kind the operator serves or needs (kopf's peering for HA)."""
    return {
        f"{models.GROUP}_{models.PLURAL}.yaml": trainingjob_crd(),
        f"{models.GROUP}_{serving.PLURAL}.yaml": servingjob_crd(),
        "kopf.dev_clusterkopfpeerings.yaml": peering_crd("Cluster"),
        "kopf.dev_kopfpeerings.yaml": peering_crd("Namespaced"),
    }


def render(crd: dict[str, Any]) -> str:
    header = "# Generated from operator/distml/api/models.py by `make crds`. Do not edit.\n"
    return header + yaml.safe_dump(crd, sort_keys=False, width=100)


def main(argv: list[str]) -> int:
    """Writes every CRD into each folder given (crds/ and the chart's crds/)."""
    for folder in argv or ["crds"]:
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        for name, crd in all_crds().items():
            (out / name).write_text(render(crd))
            print(f"wrote {out / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
