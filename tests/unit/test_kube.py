"""Which refusals of a create are worth retrying as they are, and which are the API's answer;
which request gets a connection first when all are busy."""

from __future__ import annotations

import asyncio
import json

import pytest

from distml.kube import BULK, URGENT, Slots, _passing_denial


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


async def _take_turns(slots, requests):
    """Runs `requests` ((name, level), in arrival order) through `slots`, each holding its slot
    until every request has arrived; returns the order they got a slot in, and the most in
    flight at once."""
    order, in_flight, most = [], 0, 0
    all_in = asyncio.Event()

    async def one(name, level):
        nonlocal in_flight, most
        async with slots.held(level):
            order.append(name)
            in_flight += 1
            most = max(most, in_flight)
            await all_in.wait()
            await asyncio.sleep(0)
            in_flight -= 1

    tasks = []
    for name, level in requests:
        tasks.append(asyncio.create_task(one(name, level)))
        await asyncio.sleep(0)  # arrives now, before the next
    all_in.set()
    await asyncio.gather(*tasks)
    return order, most


def test_a_freed_slot_goes_to_the_most_urgent_waiter_first_come_first_served_within_a_level():
    requests = [
        ("create-1", BULK),
        ("create-2", BULK),
        ("create-3", BULK),
        ("event", BULK),
        ("create-4", BULK),
        ("status-a", URGENT),
        ("status-b", URGENT),
    ]
    order, most = asyncio.run(_take_turns(Slots(2), requests))
    # The first two found free slots; of the rest, the status writes went first, in the order
    # they came, then the creates and the Event in theirs.
    assert order == [
        "create-1",
        "create-2",
        "status-a",
        "status-b",
        "create-3",
        "event",
        "create-4",
    ]
    assert most == 2


def test_a_waiter_cancelled_leaves_its_place_and_no_slot_is_lost():
    async def scenario():
        slots = Slots(1)
        await slots.acquire(BULK)
        gone = asyncio.create_task(slots.acquire(URGENT))
        later = asyncio.create_task(slots.acquire(BULK))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        slots.release()  # passes over the cancelled waiter to the next
        await asyncio.wait_for(later, 1)
        slots.release()
        # One slot again, free: taken at once, and a second acquire has to wait.
        await asyncio.wait_for(slots.acquire(BULK), 1)
        second = asyncio.create_task(slots.acquire(URGENT))
        await asyncio.sleep(0.01)
        assert not second.done()
        second.cancel()
        return gone.cancelled()

    assert asyncio.run(scenario())


def test_a_slot_handed_to_a_waiter_that_is_cancelled_at_once_goes_on_to_the_next():
    async def scenario():
        slots = Slots(1)
        await slots.acquire()
        first = asyncio.create_task(slots.acquire())
        second = asyncio.create_task(slots.acquire())
        await asyncio.sleep(0)
        slots.release()  # handed to `first`...
        first.cancel()  # ...which is cancelled before it runs again
        await asyncio.wait_for(second, 1)
        return first.cancelled()

    assert asyncio.run(scenario())
