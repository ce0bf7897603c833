"""A pod template's node filter agrees with the scheduler's hard rules, so the admission never
reserves GPUs where the pod cannot be bound."""

from __future__ import annotations

import pytest

from distml.nodefit import NodeFilter

from .builders import make_node


def node(name="n0", taints=(), **node_labels):
    n = make_node(name, **node_labels)
    n["spec"]["taints"] = list(taints)
    return n


def required(*terms):
    return {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": list(terms)}}}}  # fmt: skip


def expr(key, op, *values):
    return {"key": key, "operator": op, **({"values": list(values)} if values else {})}


@pytest.mark.parametrize(
    ("requirement", "labels", "fits"),
    [
        (expr("zone", "In", "a", "b"), {"zone": "b"}, True),
        (expr("zone", "In", "a"), {"zone": "b"}, False),
        (expr("zone", "In", "a"), {}, False),
        (expr("zone", "NotIn", "a"), {"zone": "b"}, True),
        (expr("zone", "NotIn", "a"), {}, True),  # no label: not in the set
        (expr("zone", "NotIn", "a"), {"zone": "a"}, False),
        (expr("fast", "Exists"), {"fast": ""}, True),
        (expr("fast", "Exists"), {}, False),
        (expr("drained", "DoesNotExist"), {}, True),
        (expr("drained", "DoesNotExist"), {"drained": "yes"}, False),
        (expr("gen", "Gt", "3"), {"gen": "4"}, True),
        (expr("gen", "Gt", "3"), {"gen": "3"}, False),
        (expr("gen", "Lt", "3"), {"gen": "2"}, True),
        (expr("gen", "Lt", "3"), {"gen": "x"}, False),  # not an integer
        (expr("gen", "Gt", "3"), {}, False),
    ],
)
def test_label_expressions(requirement, labels, fits):
    assert (
        NodeFilter.of(required({"matchExpressions": [requirement]})).matches(node(**labels)) is fits
    )


def test_terms_are_ored_and_requirements_of_a_term_anded():
    spec = required(
        {"matchExpressions": [expr("zone", "In", "a"), expr("fast", "Exists")]},
        {"matchFields": [expr("metadata.name", "In", "special")]},
    )
    f = NodeFilter.of(spec)
    assert f.matches(node(zone="a", fast="1"))
    assert not f.matches(node(zone="a"))  # the first term needs both
    assert f.matches(node("special"))  # the second term alone
    assert not f.matches(node("other", zone="b", fast="1"))


def test_an_empty_term_matches_no_node_and_no_affinity_matches_every_node():
    assert not NodeFilter.of(required({})).matches(node())
    assert NodeFilter.of({}).matches(node(zone="anything"))


def test_node_selector_and_affinity_must_both_hold():
    spec = {"nodeSelector": {"pool": "a"}, **required({"matchFields": [
        expr("metadata.name", "NotIn", "n1")]})}  # fmt: skip
    f = NodeFilter.of(spec)
    assert f.matches(node("n0", pool="a"))
    assert not f.matches(node("n1", pool="a"))
    assert not f.matches(node("n2", pool="b"))


@pytest.mark.parametrize(
    ("taint", "toleration", "fits"),
    [
        ({"key": "gpu", "effect": "NoSchedule"}, None, False),
        ({"key": "gpu", "effect": "PreferNoSchedule"}, None, True),  # soft: the scheduler may
        ({"key": "gpu", "effect": "NoExecute"}, {"key": "gpu", "operator": "Exists"}, True),
        ({"key": "gpu", "value": "a100", "effect": "NoSchedule"},
         {"key": "gpu", "value": "a100", "effect": "NoSchedule"}, True),
        ({"key": "gpu", "value": "a100", "effect": "NoSchedule"},
         {"key": "gpu", "value": "h100"}, False),
        ({"key": "gpu", "effect": "NoExecute"},
         {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}, False),
        ({"key": "anything", "effect": "NoSchedule"}, {"operator": "Exists"}, True),
    ],
)  # fmt: skip
def test_taints_and_tolerations(taint, toleration, fits):
    spec = {"tolerations": [toleration]} if toleration else {}
    assert NodeFilter.of(spec).matches(node(taints=[taint])) is fits


def test_tolerating_adds_the_operators_own_tolerations():
    tainted = node(taints=[{"key": "nvidia.com/gpu", "effect": "NoSchedule"}])
    f = NodeFilter.of({})
    assert not f.matches(tainted)
    assert f.tolerating({"key": "nvidia.com/gpu", "operator": "Exists"}).matches(tainted)
