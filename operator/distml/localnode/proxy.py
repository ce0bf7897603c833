"""The real kube-proxy (nftables mode) for process nodes: one for each node's network namespace,
as on a cluster's servers, so a pod reaches a Service's ClusterIP (or its name, from the node's
hosts file); and one for the cluster's Service router namespace (network.setup_router), which
this machine routes the Service range through, so a client here reaches ClusterIPs too.

A kube-proxy runs in this machine's namespace (the API server listens on its loopback only) and
programs its node's: the `nft` it finds first on its PATH runs the real one inside that
namespace. Each owns the nftables of one namespace: two clusters on one machine (a demo and a
CI run) never rewrite each other's rules, which one kube-proxy for the machine would."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from pathlib import Path

from distml.localnode.network import NodeNet, free_port


def available(binary: str | None) -> str | None:
    """None when kube-proxy can run here, else why not."""
    if not binary or not Path(binary).exists():
        return "kube-proxy is not built (make tools)"
    if shutil.which("nft") is None:
        return "kube-proxy's nftables mode needs `nft` (Debian: nftables; make tools installs it)"
    return None


def nft_wrapper(folder: Path, net: NodeNet) -> Path:
    """A folder holding an `nft` that runs Debian's inside `net`'s namespace; returns it."""
    real = shutil.which("nft", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if real is None:
        raise FileNotFoundError("nft is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    wrapper = folder / "nft"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {net.netns} {real} "$@"\n')
    wrapper.chmod(0o755)
    return folder


def command(binary: str, kubeconfig: str, node_name: str, net: NodeNet, state: Path,
            router: bool) -> tuple[list[str], dict[str, str]]:  # fmt: skip
    """kube-proxy for `net`'s namespace, and its environment. The router masquerades what it
    forwards (its clients, this machine among them, are on the node subnet: without SNAT a pod
    would answer them directly, from its own address, and they would drop the answer)."""
    argv = [
        binary,
        f"--kubeconfig={kubeconfig}",
        f"--hostname-override={node_name}",
        "--proxy-mode=nftables",
        f"--cluster-cidr={net.cluster.subnet}",
        f"--bind-address={net.address}",
        f"--metrics-bind-address=127.0.0.1:{free_port()}",
        f"--healthz-bind-address=127.0.0.1:{free_port()}",
        "--conntrack-max-per-core=0",  # leave the machine's conntrack table as it is
        "--v=1",
    ]
    if router:
        argv.append("--masquerade-all")
    wrapper = nft_wrapper(state / f"nft-{net.netns}", net)
    env = {**os.environ, "PATH": f"{wrapper}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    return argv, env


async def supervise(argv: list[str], env: dict[str, str], log: Path, stop: asyncio.Event) -> None:
    """Runs kube-proxy until `stop`, again after a second if it exits (as a DaemonSet would)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    while not stop.is_set():
        with open(log, "ab") as out:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                start_new_session=True,
            )  # fmt: skip
        waiting = asyncio.create_task(stop.wait())
        exited = asyncio.create_task(proc.wait())
        await asyncio.wait({waiting, exited}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), timeout=5)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            return
        await asyncio.sleep(1.0)
