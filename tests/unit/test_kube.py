"""Which refusals of a create are worth retrying as they are, and which are the API's answer;
which request gets a connection first when all are busy; how long an idle connection is kept."""

from __future__ import annotations

import asyncio
import json
import socket

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


def test_idle_connections_are_kept_for_the_keepalive_and_closed_after(tmp_path, monkeypatch):
    """The operator's pool keeps an idle connection open for KEEPALIVE_SECONDS (a burst after a
    quiet spell finds it open), and lets it go after: a stand-in API server counts the
    connections three requests arrive on."""
    from aiohttp import web

    from distml import kube

    monkeypatch.setattr(kube, "KEEPALIVE_SECONDS", 0.6)  # the setting, scaled down
    peers: list[int] = []

    async def answer(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername")[1])
        return web.json_response({"kind": "Status", "code": 200})

    async def go() -> None:
        app = web.Application()
        app.router.add_get("/version", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        await web.SockSite(runner, sock).start()
        config = tmp_path / "kubeconfig"
        config.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        }))  # fmt: skip
        writer = kube.AsyncWriter(str(config))
        try:
            assert (await writer.request("GET", "/version"))[0] == 200
            await asyncio.sleep(0.2)  # idle, within the keepalive
            assert (await writer.request("GET", "/version"))[0] == 200
            await asyncio.sleep(1.5)  # idle past it
            assert (await writer.request("GET", "/version"))[0] == 200
        finally:
            await writer.close()
            await runner.cleanup()

    asyncio.run(go())
    assert len(peers) == 3
    assert peers[0] == peers[1] and peers[2] != peers[1]
