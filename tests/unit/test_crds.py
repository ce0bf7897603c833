"""crds/ is generated from the pydantic models and never drifts from them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from distml.api.crd import all_crds, render

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("folder", ["crds", "charts/distml/crds"])
def test_crds_folder_matches_the_models(folder):
    files = {p.name: p.read_text() for p in (REPO / folder).glob("*.yaml")}
    generated = {name: render(crd) for name, crd in all_crds().items()}
    assert files.keys() == generated.keys()
    for name, text in generated.items():
        assert files[name] == text, f"{folder}/{name} is stale: run `make crds`"


def test_trainingjob_crd_has_status_scale_and_printer_columns():
    crd = yaml.safe_load((REPO / "crds" / "distml.io_trainingjobs.yaml").read_text())
    version = crd["spec"]["versions"][0]
    assert crd["spec"]["names"]["shortNames"] == ["tj"]
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    assert "status" in version["subresources"]
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Phase", "Reason", "Ready", "GPUs", "Restarts", "Elastic", "Queue", "Age"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    container = spec["properties"]["template"]["properties"]["spec"]["properties"]["containers"]
    assert "x-kubernetes-preserve-unknown-fields" not in str(container)
    assert container["items"]["required"] == ["name"]
    assert {r["fieldPath"] for r in spec["x-kubernetes-validations"]} >= {
        ".replicas",
        ".parallelism",
    }


def test_every_field_has_a_description_kubectl_explain_shows():
    """`kubectl explain tj.spec.elastic.minReplicas` says what the field is, for every field the
    operator defines (the pod template's own come from Kubernetes' schema)."""
    crd = all_crds()["distml.io_trainingjobs.yaml"]
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    missing = []

    def walk(node: dict, path: str) -> None:
        if not node.get("description") and path != "trainingjob.metadata":  # (none allowed)
            missing.append(path)
        if path.endswith(".template"):
            return
        for name, child in (node.get("properties") or {}).items():
            walk(child, f"{path}.{name}")
        if "items" in node:
            walk(node["items"], f"{path}[]")

    walk(root, "trainingjob")
    assert missing == []
