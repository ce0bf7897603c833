"""Kubernetes' own OpenAPI schema for the pod template, made structural for a CRD.

The TrainingJob's `template` is validated by the API server with the real PodTemplateSpec schema,
not preserve-unknown-fields. `inline_structural` (pure) turns Kubernetes' OpenAPI v3 document into
the self-contained form a CRD needs: references inlined, descriptions dropped (size), Quantity and
IntOrString in the int-or-string form, and only the x-kubernetes extensions CRDs accept.
`make k8s-schema` refreshes the snapshot from the local cluster's API server.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SNAPSHOT = Path(__file__).with_name("podtemplatespec.schema.json")
POD_TEMPLATE = "io.k8s.api.core.v1.PodTemplateSpec"
_PREFIX = "#/components/schemas/"
_INT_OR_STRING = {
    "anyOf": [{"type": "integer"}, {"type": "string"}],
    "x-kubernetes-int-or-string": True,
}
# <sign?><digits>[.<digits>]<suffix?>, suffix a binary or decimal SI unit or an exponent.
_NUMBER = r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
QUANTITY_PATTERN = rf"^(\+|-)?{_NUMBER}(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?{_NUMBER}))?$"
_SPECIAL = {
    "io.k8s.apimachinery.pkg.api.resource.Quantity": {
        "anyOf": [{"type": "integer"}, {"type": "string", "pattern": QUANTITY_PATTERN}],
        "x-kubernetes-int-or-string": True,
    },
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": _INT_OR_STRING,
    # A template's metadata: only what a pod template may carry.
    "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta": {
        "type": "object",
        "properties": {
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
}
_KEEP = {
    "type",
    "format",
    "enum",
    "required",
    "items",
    "properties",
    "additionalProperties",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "pattern",
    "nullable",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
}


def inline_structural(schemas: dict[str, Any], name: str) -> dict[str, Any]:
    """The schema `name` with every reference inlined, ready to embed in a CRD."""
    return _convert(schemas, schemas[name], name)


def _convert(schemas: dict[str, Any], node: dict[str, Any], name: str = "") -> dict[str, Any]:
    if name in _SPECIAL:
        return json.loads(json.dumps(_SPECIAL[name]))
    ref = node.get("$ref") or next((a["$ref"] for a in node.get("allOf", []) if "$ref" in a), None)
    if ref:
        target = ref.removeprefix(_PREFIX)
        resolved = _convert(schemas, schemas[target], target)
        if _meaningful_default(node.get("default")):
            resolved["default"] = node["default"]
        return resolved
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {k: _convert(schemas, v) for k, v in value.items()}
        elif key == "items" or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = _convert(schemas, value)
        elif (
            (key == "default" and _meaningful_default(value))
            or (key in _KEEP and key != "format")
            or (key == "format" and value not in ("int-or-string",))
        ):
            out[key] = value
    if "properties" in out and "type" not in out:
        out["type"] = "object"
    _default_list_map_keys(out)
    return out


def _default_list_map_keys(node: dict[str, Any]) -> None:
    """A list-map key must be required or defaulted: restore the zero default where needed."""
    items = node.get("items", {})
    for key in node.get("x-kubernetes-list-map-keys", []):
        prop = items.get("properties", {}).get(key)
        if prop is not None and key not in items.get("required", []) and "default" not in prop:
            prop["default"] = 0 if prop.get("type") == "integer" else ""


def _meaningful_default(value: object) -> bool:
    """Scalar defaults such as protocol: TCP are kept (list-map keys need them); Go's zero values
    ("" and 0) that the OpenAPI document lists as defaults are not: they would fill every field."""
    return isinstance(value, (str, int, float, bool)) and value not in ("", 0, False)


def main(argv: list[str]) -> int:
    """Reads Kubernetes' /openapi/v3/api/v1 on stdin and rewrites the snapshot:
    kubectl get --raw /openapi/v3/api/v1 | python -m distml.api.k8sschema v1.34.4"""
    version = argv[0] if argv else "unknown"
    schemas = json.load(sys.stdin)["components"]["schemas"]
    doc = {"kubernetesVersion": version, "schema": inline_structural(schemas, POD_TEMPLATE)}
    SNAPSHOT.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT} from Kubernetes {version}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
