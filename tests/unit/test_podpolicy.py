"""What worker pods may ask for, checked before the operator creates them with its own rights."""

from __future__ import annotations

import pytest

from distml.podpolicy import PodRules, check_template, namespace_level

RULES = PodRules()
RESTRICTED_OK = {
    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
    "containers": [
        {
            "name": "t",
            "image": "i",
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            },
        }
    ],
    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "ckpt"}}],
}


def fields(spec, level="baseline", rules=RULES, scheduler=None):
    return [v.field for v in check_template({"spec": spec}, level, rules, scheduler)]


def container(**sc):
    return {"containers": [{"name": "t", "image": "i", "securityContext": sc}]}


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (container(privileged=True), "spec.template.spec.containers[0].securityContext.privileged"),
        ({**container(), "hostNetwork": True}, "spec.template.spec.hostNetwork"),
        ({**container(), "hostPID": True}, "spec.template.spec.hostPID"),
        (
            {**container(), "volumes": [{"name": "root", "hostPath": {"path": "/"}}]},
            "spec.template.spec.volumes[0].hostPath",
        ),
        (
            container(capabilities={"add": ["SYS_ADMIN"]}),
            "spec.template.spec.containers[0].securityContext.capabilities.add",
        ),
        (
            {"containers": [{"name": "t", "ports": [{"containerPort": 80, "hostPort": 80}]}]},
            "spec.template.spec.containers[0].ports[0].hostPort",
        ),
        (
            {
                **container(),
                "initContainers": [{"name": "x", "securityContext": {"privileged": True}}],
            },
            "spec.template.spec.initContainers[0].securityContext.privileged",
        ),
        (
            container(seccompProfile={"type": "Unconfined"}),
            "spec.template.spec.containers[0].securityContext.seccompProfile.type",
        ),
    ],
)
def test_baseline_refuses_known_escalations_naming_the_field(spec, field):
    assert fields(spec) == [field]
    assert fields(spec, "privileged") == []


def test_an_ordinary_gpu_worker_passes_baseline():
    gpu = {"limits": {"nvidia.com/gpu": "8"}}
    spec = {
        "containers": [{"name": "t", "image": "i", "resources": gpu}],
        "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory"}}],
    }
    assert fields(spec) == []


def test_restricted_wants_non_root_no_escalation_seccomp_and_dropped_capabilities():
    assert fields(RESTRICTED_OK, "restricted") == []
    got = fields(container(), "restricted")
    base = "spec.template.spec.containers[0].securityContext"
    assert got == [
        f"{base}.allowPrivilegeEscalation",
        f"{base}.runAsNonRoot",
        f"{base}.seccompProfile.type",
        f"{base}.capabilities.drop",
    ]
    nfs = {**RESTRICTED_OK, "volumes": [{"name": "n", "nfs": {"server": "x", "path": "/"}}]}
    assert fields(nfs, "restricted") == ["spec.template.spec.volumes[0].nfs"]


def test_node_name_and_foreign_schedulers_need_the_charts_consent():
    spec = {**container(), "nodeName": "gpu-node-001", "schedulerName": "volcano"}
    assert fields(spec) == ["spec.template.spec.nodeName", "spec.template.spec.schedulerName"]
    allowed = PodRules(allow_node_name=True, allowed_schedulers=("default-scheduler", "volcano"))
    assert fields(spec, rules=allowed) == []
    assert fields(container(), scheduler="kube-batch") == ["spec.gang.schedulerName"]


def test_the_namespace_label_wins_over_the_charts_default():
    ns = {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}
    assert namespace_level(ns, "baseline") == "restricted"
    assert namespace_level({"metadata": {}}, "baseline") == "baseline"
    assert namespace_level(None, "privileged") == "privileged"
    odd = {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "bogus"}}}
    assert namespace_level(odd, "baseline") == "restricted"


def test_host_paths_the_chart_allows_pass_baseline_but_never_restricted():
    rules = PodRules(allowed_host_paths=("/mnt/distml",))
    spec = {**container(), "volumes": [{"name": "c", "hostPath": {"path": "/mnt/distml/ckpt/a"}}]}
    assert fields(spec, rules=rules) == []
    for path in ("/", "/mnt/distml-other", "/etc"):
        spec["volumes"][0]["hostPath"]["path"] = path
        assert fields(spec, rules=rules) == ["spec.template.spec.volumes[0].hostPath"], path
    spec = {**RESTRICTED_OK, "volumes": [{"name": "c", "hostPath": {"path": "/mnt/distml"}}]}
    assert fields(spec, "restricted", rules) == ["spec.template.spec.volumes[0].hostPath"]
