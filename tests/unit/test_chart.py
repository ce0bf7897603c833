"""The Helm chart, rendered by the real helm binary: what a platform team would get from
`helm install`, checked object by object."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "distml"
HELM = REPO / "bin" / "helm"
KUBE_VERSION = "1.34.4"
MONITORING = ["monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PodMonitor"]


def render(*sets: str, api_versions: tuple[str, ...] = ()) -> list[dict]:
    args = [str(HELM), "template", "rel", str(CHART), "-n", "distml-system"]
    args += ["--kube-version", KUBE_VERSION]
    for s in sets:
        args += ["--set", s]
    for v in api_versions:
        args += ["--api-versions", v]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def refused(*sets: str) -> str:
    args = [str(HELM), "template", "rel", str(CHART), "--kube-version", KUBE_VERSION]
    for s in sets:
        args += ["--set", s]
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode != 0, f"helm accepted {sets}"
    return done.stderr


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def test_helm_lint_is_clean():
    done = subprocess.run(
        [str(HELM), "lint", "--strict", str(CHART)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_operator_deployment_meets_the_restricted_pod_security_standard():
    (deploy,) = by_kind(render(), "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert container["image"] == "ghcr.io/distml/distml-operator:0.1.0"


def test_zero_replicas_installs_everything_for_an_operator_run_elsewhere():
    docs = render("replicas=0")
    (deploy,) = by_kind(docs, "Deployment")
    assert deploy["spec"]["replicas"] == 0
    assert by_kind(docs, "ServiceAccount") and by_kind(docs, "ClusterRoleBinding")
    assert not by_kind(docs, "ClusterKopfPeering")


def test_more_than_one_replica_runs_with_kopf_peering_so_exactly_one_is_active():
    docs = render()
    (deploy,) = by_kind(docs, "Deployment")
    assert deploy["spec"]["replicas"] == 2
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--peering=rel-distml" in args
    (peering,) = by_kind(docs, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "rel-distml"
    single = render("replicas=1")
    assert not by_kind(single, "ClusterKopfPeering")
    assert not any(
        a.startswith("--peering")
        for a in by_kind(single, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0][
            "args"
        ]
    )


AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"


def _aggregated(role: dict) -> bool:
    return any(k.startswith(AGGREGATE) for k in role["metadata"].get("labels") or {})


def _rules(docs: list[dict], kind: str) -> list[dict]:
    """The operator's own rules: every role of `kind` but those aggregated to users' roles."""
    return [r for d in by_kind(docs, kind) if not _aggregated(d) for r in d["rules"]]


def test_namespace_users_get_trainingjobs_through_the_standard_roles():
    roles = {
        k[len(AGGREGATE) :]: d
        for d in by_kind(render(), "ClusterRole")
        for k in d["metadata"].get("labels") or {}
        if k.startswith(AGGREGATE)
    }
    assert set(roles) == {"edit", "admin", "view"}
    edit = {
        (r, v) for rule in roles["edit"]["rules"] for r in rule["resources"] for v in rule["verbs"]
    }
    assert {("trainingjobs", "create"), ("trainingjobs/scale", "update")} <= edit
    assert not any(r == "trainingjobs/status" and v != "get" for r, v in edit), "status is ours"
    view = {v for rule in roles["view"]["rules"] for v in rule["verbs"]}
    assert view == {"get", "list", "watch"}
    assert not by_kind(render("aggregateRoles.enabled=false"), "ClusterRole")[1:]


@pytest.mark.parametrize("sets", [(), ("watchNamespaces={team-a,team-b}",)])
def test_rbac_names_every_verb_and_resource_without_wildcards(sets):
    docs = render(*sets)
    for rule in _rules(docs, "ClusterRole") + _rules(docs, "Role"):
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key], rule
    granted = {
        (g, r, v)
        for rule in _rules(docs, "ClusterRole") + _rules(docs, "Role")
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    assert ("", "secrets", "get") not in granted
    assert not any(r == "secrets" or r == "configmaps" for _, r, _ in granted)
    assert not any(v in ("escalate", "bind", "impersonate") for *_, v in granted)


def test_cluster_wide_by_default():
    docs = render()
    assert not by_kind(docs, "Role")
    verbs = {
        (r, v)
        for rule in _rules(docs, "ClusterRole")
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    assert ("pods", "create") in verbs and ("trainingjobs/status", "patch") in verbs
    args = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not any(a.startswith("--namespace") for a in args)


def test_watch_namespaces_gives_roles_there_and_only_reads_cluster_wide():
    docs = render("watchNamespaces={team-a,team-b}")
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    bindings = by_kind(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for b in bindings:
        assert b["subjects"] == [
            {"kind": "ServiceAccount", "name": "rel-distml", "namespace": "distml-system"}
        ]
    cluster_verbs = {v for rule in _rules(docs, "ClusterRole") for v in rule["verbs"]}
    assert cluster_verbs <= {"get", "list", "watch"}, "cluster-wide, the operator only reads"
    args = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    peerings = by_kind(docs, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]


def test_monitors_appear_only_where_the_prometheus_operator_is():
    assert not by_kind(render(), "ServiceMonitor")
    docs = render(api_versions=tuple(MONITORING))
    (sm,) = by_kind(docs, "ServiceMonitor")
    (svc,) = by_kind(docs, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"] == "metrics"
    (pm,) = by_kind(docs, "PodMonitor")
    assert pm["spec"]["selector"]["matchExpressions"][0]["key"] == "distml.io/job-name"
    forced_off = render("prometheus.serviceMonitor.enabled=false", api_versions=tuple(MONITORING))
    assert not by_kind(forced_off, "ServiceMonitor")
    forced_on = render("prometheus.podMonitor.enabled=true")
    assert by_kind(forced_on, "PodMonitor")


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("bogus=1",), "additional properties 'bogus' not allowed"),
        (("replicas=two",), "/replicas"),
        (("replicas=-1",), "/replicas"),
        (("image.pullPolicy=Sometimes",), "/image/pullPolicy"),
        (("watchNamespaces={Team_A}",), "/watchNamespaces/0"),
        (("prometheus.serviceMonitor.enabled=maybe",), "/prometheus/serviceMonitor/enabled"),
        (
            ("operator.backofBaseSeconds=3",),
            "additional properties 'backofBaseSeconds' not allowed",
        ),
    ],
)
def test_values_schema_refuses_unknown_keys_and_wrong_types(sets, message):
    assert message in refused(*sets)


def test_every_value_is_documented():
    """Each setting has a comment right above it; only the default resources' own keys, which
    the comment on `resources` covers, are exempt."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    parents: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")):
            continue
        indent = len(line) - len(line.lstrip())
        key, _, value = stripped.partition(":")
        parents = [(d, k) for d, k in parents if d < indent]
        if value.strip() and not any(k == "resources" for _, k in parents):
            assert lines[i - 1].strip().startswith("#"), (
                f"values.yaml:{i + 1} `{key}` has no comment"
            )
        if not value.strip():
            parents.append((indent, key))


def test_alerts_pass_promtool_and_use_only_metrics_the_operator_exports(tmp_path):
    import re

    from prometheus_client import REGISTRY

    import distml.metrics  # noqa: F401  (registers the operator's metrics)

    exported = {"up"}
    for family in REGISTRY.collect():
        exported |= {s.name for s in family.samples} | {family.name}
    docs = render(
        "prometheus.rules.queuedMinutes=45",
        api_versions=("monitoring.coreos.com/v1/PrometheusRule",),
    )
    (rule,) = by_kind(docs, "PrometheusRule")
    alerts = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    assert set(alerts) >= {
        "DistmlOperatorDown",
        "DistmlJobsFailing",
        "DistmlGangTimeouts",
        "DistmlJobsStuckQueued",
    }
    assert alerts["DistmlJobsStuckQueued"]["for"] == "45m"
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    checked = subprocess.run([str(REPO / "bin" / "promtool"), "check", "rules", str(rules_file)],
                             capture_output=True, text=True)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for alert in alerts.values():
        names = set(re.findall(r"\b([a-z_]+)(?:\{|\[)", alert["expr"])) - {
            "absent",
            "delta",
            "increase",
            "rate",
        }
        assert names and names <= exported, (alert["alert"], names - exported)


def test_dashboards_are_generated_from_code_and_shipped_for_the_grafana_sidecar():
    import json

    from distml.dashboards import DASHBOARDS
    from distml.dashboards import render as render_dashboard

    for uid in DASHBOARDS:
        on_disk = (CHART / "dashboards" / f"{uid}.json").read_text()
        assert on_disk == render_dashboard(uid), (
            f"dashboards/{uid}.json is stale: run `make dashboards`"
        )
    maps = {
        m["metadata"]["name"]: m
        for m in by_kind(render("grafana.dashboards.label=my_dash"), "ConfigMap")
    }
    assert sorted(maps) == [f"rel-distml-dashboard-{uid}" for uid in sorted(DASHBOARDS)]
    for uid in DASHBOARDS:
        cm = maps[f"rel-distml-dashboard-{uid}"]
        assert cm["metadata"]["labels"]["my_dash"] == "1"
        board = json.loads(cm["data"][f"distml-{uid}.json"])
        assert board["uid"] == f"distml-{uid}" and board["panels"]
        assert all(t["expr"] for p in board["panels"] for t in p["targets"])
    assert not by_kind(render("grafana.dashboards.enabled=false"), "ConfigMap")


def test_plain_helm_template_renders_with_no_cluster_and_no_kube_version():
    """As a new user would first try it: helm assumes the Kubernetes version it was built for
    (as helm's own release build stamps it), which the chart's kubeVersion accepts."""
    done = subprocess.run([str(HELM), "template", "t", str(CHART)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert by_kind([d for d in yaml.safe_load_all(done.stdout) if d], "Deployment")
    version = subprocess.run([str(HELM), "version", "--short"], capture_output=True, text=True)
    assert version.stdout.startswith("v3.")
