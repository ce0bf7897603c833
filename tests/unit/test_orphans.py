"""Which of the operator's pods and Services have outlived their job."""

from __future__ import annotations

from distml import labels
from distml.policies.orphans import find


def obj(name, owner_uid="", kind="TrainingJob", managed=True, ref_uid="", deleting=False):
    lab = {labels.MANAGED_BY: labels.OPERATOR} if managed else {}
    if owner_uid:
        lab |= {labels.OWNER_UID: owner_uid, labels.OWNER_KIND: kind}
    meta = {"name": name, "namespace": "team", "uid": f"uid-{name}", "labels": lab}
    if ref_uid:
        meta["ownerReferences"] = [{"kind": kind, "uid": ref_uid, "controller": True}]
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta}


def test_objects_of_a_job_that_is_gone_are_orphans_and_of_a_live_one_are_not():
    objects = [obj("old-0", "job-1"), obj("new-0", "job-2"), obj("svc", "job-1")]
    found = find(objects, "TrainingJob", live={"job-2"})
    assert [(o.name, o.uid, o.owner_uid) for o in found] == [
        ("old-0", "uid-old-0", "job-1"),
        ("svc", "uid-svc", "job-1"),
    ]


def test_the_same_name_recreated_is_told_apart_by_uid():
    # llm was deleted and created again: the old incarnation's pod is an orphan, the new one's not
    objects = [obj("llm-worker-0-0", "llm-old"), obj("llm-worker-1-0", "llm-new")]
    assert [o.owner_uid for o in find(objects, "TrainingJob", {"llm-new"})] == ["llm-old"]


def test_pods_from_an_operator_before_the_owner_label_are_read_by_their_controller_reference():
    assert [o.name for o in find([obj("p", ref_uid="gone")], "TrainingJob", set())] == ["p"]
    assert find([obj("p", ref_uid="alive")], "TrainingJob", {"alive"}) == []


def test_what_is_not_ours_or_another_kinds_or_already_going_is_left_alone():
    objects = [
        obj("user-pod", "job-1", managed=False),
        obj("serving", "sj-1", kind="ServingJob"),
        obj("going", "job-1", deleting=True),
        obj("no-owner"),
    ]
    assert find(objects, "TrainingJob", set()) == []
