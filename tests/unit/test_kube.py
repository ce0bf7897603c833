"""Which refusals of a create are worth retrying as they are, and which are the API's answer."""

from __future__ import annotations

import json

import pytest

from distml.kube import _passing_denial


def status(message: str) -> str:
    return json.dumps({"kind": "Status", "message": message, "code": 403})


@pytest.mark.parametrize(
    ("message", "passes"),
    [
        ('pods is forbidden: User "system:serviceaccount:x:y" cannot create resource "pods"', True),
        ('pods "a" is forbidden: error looking up service account t/default: serviceaccount '
         '"default" not found', True),
        ('pods "a" is forbidden: violates PodSecurity "restricted:latest": privileged', False),
        ('pods "a" is forbidden: exceeded quota: q, requested: pods=1, used: pods=2', False),
    ],
)  # fmt: skip
def test_only_a_refusal_of_who_asked_is_retried_as_it_is(message, passes):
    assert _passing_denial(403, status(message)) is passes
    assert not _passing_denial(422, status(message))
