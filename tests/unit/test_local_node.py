"""What a process node decides about a pod: argv from the image contract, env with the downward
API, volume paths translated, status phases as kubelet reports them, hosts-file DNS, link names
and shaping arguments."""

from __future__ import annotations

from pathlib import Path

import pytest

from distml.localnode import network, pods
from distml.localnode.pods import ContainerState

RUNTIME = pods.parse_dockerfile(
    (Path(__file__).parents[2] / "images/runtime/Dockerfile").read_text()
)
IMAGES = {"distml-runtime": RUNTIME}


def _pod(**spec):
    return {
        "metadata": {"name": "w-0", "namespace": "team", "uid": "u1", "labels": {"rank": "0"}},
        "spec": {"nodeName": "proc-node-001", "containers": [], **spec},
    }


def test_dockerfile_contract_is_the_runtime_images_entrypoint():
    assert RUNTIME.entrypoint == ("python", "-m", "distml_runtime.launch", "--")
    assert RUNTIME.cmd[:3] == ("python", "-m", "distml_runtime.train.ddp")


@pytest.mark.parametrize(
    ("container", "argv"),
    [
        ({"args": ["python", "x.py"]}, [*RUNTIME.entrypoint, "python", "x.py"]),
        ({}, [*RUNTIME.entrypoint, *RUNTIME.cmd]),
        ({"command": ["sh", "-c"], "args": ["true"]}, ["sh", "-c", "true"]),
        ({"command": ["echo"]}, ["echo"]),  # a command drops the image's CMD
    ],
)  # fmt: skip
def test_command_and_args_follow_kubernetes_rules(container, argv):
    c = {"name": "c", "image": "registry.local:5000/ml/distml-runtime:0.1.0", **container}
    assert pods.container_argv(c, IMAGES) == argv


def test_unknown_image_without_command_is_a_config_error_naming_it():
    with pytest.raises(pods.ContainerConfigError, match=r"pytorch/pytorch:2\.5"):
        pods.container_argv({"name": "c", "image": "pytorch/pytorch:2.5"}, IMAGES)


def test_env_resolves_references_and_the_downward_api():
    c = {
        "env": [
            {"name": "A", "value": "x"},
            {"name": "B", "value": "$(A)-y-$(NOPE)"},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "R", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['rank']"}}},
        ]
    }
    env = pods.container_env(c, _pod(), "10.242.0.11")
    assert env == {"A": "x", "B": "x-y-$(NOPE)", "NODE": "proc-node-001", "IP": "10.242.0.11",
                   "R": "0"}  # fmt: skip
    with pytest.raises(pods.ContainerConfigError, match="secretKeyRef"):
        pods.container_env(
            {"env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]},
            _pod(), "10.242.0.11",
        )  # fmt: skip


def test_mount_paths_translate_in_args_and_flag_values(tmp_path):
    pod = _pod(volumes=[
        {"name": "ckpt", "hostPath": {"path": "/mnt/ckpt"}},
        {"name": "scratch", "emptyDir": {}},
        {"name": "token", "projected": {"sources": []}},
    ])  # fmt: skip
    c = {"volumeMounts": [
        {"name": "ckpt", "mountPath": "/checkpoints"},
        {"name": "scratch", "mountPath": "/checkpoints/tmp"},
        {"name": "token", "mountPath": "/var/run/secrets"},
    ]}  # fmt: skip
    folders = pods.volume_folders(pod, tmp_path / "pod", tmp_path / "shared")
    paths = pods.mounts(c, folders)
    assert pods.translate("/checkpoints", paths) == str(tmp_path / "shared/hostpath/mnt/ckpt")
    assert pods.translate("/checkpoints/tmp/a", paths) == str(tmp_path / "pod/volumes/scratch/a")
    assert pods.translate("--dir=/checkpoints/x", paths).endswith("shared/hostpath/mnt/ckpt/x")
    assert pods.translate("/checkpointsX", paths) == "/checkpointsX"
    assert pods.translate("/var/run/secrets/t", paths) == "/var/run/secrets/t"


def test_gpus_are_given_as_the_device_plugin_would():
    assert pods.gpu_env([2, 3]) == {"CUDA_VISIBLE_DEVICES": "2,3", "NVIDIA_VISIBLE_DEVICES": "2,3"}
    assert pods.gpu_env([])["NVIDIA_VISIBLE_DEVICES"] == "void"


def _state(name, state, code=None):
    return ContainerState(name, "img", state=state, exit_code=code)


@pytest.mark.parametrize(
    ("inits", "mains", "policy", "phase"),
    [
        ([], [("waiting", None)], "Never", "Pending"),
        ([("running", None)], [("waiting", None)], "Never", "Pending"),
        ([("terminated", 3)], [("waiting", None)], "Never", "Failed"),
        ([("terminated", 0)], [("running", None)], "Never", "Running"),
        ([], [("terminated", 0), ("terminated", 0)], "Never", "Succeeded"),
        ([], [("terminated", 0), ("terminated", 137)], "Never", "Failed"),
        ([], [("terminated", 0), ("running", None)], "Never", "Running"),
        ([], [("terminated", 1)], "OnFailure", "Running"),  # the node restarts it
    ],
)
def test_pod_phase_follows_its_containers(inits, mains, policy, phase):
    i = [_state(f"i{k}", *s) for k, s in enumerate(inits)]
    m = [_state(f"m{k}", *s) for k, s in enumerate(mains)]
    status = pods.pod_status(i, m, policy, "10.242.0.10", "t0", "t1")
    assert status["phase"] == phase
    assert status["podIP"] == "10.242.0.10"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"] == "True") == (
        phase == "Running" and all(s == "running" for s, _ in mains)
    )


def test_signal_deaths_exit_128_plus_the_signal_and_failures_fall_back_to_the_log():
    assert pods.exit_code(-9) == 137 and pods.exit_code(3) == 3
    log = "\n".join(f"line {i}" for i in range(200))
    msg = pods.termination_message("", log, "FallbackToLogsOnError", 1)
    assert msg.endswith("line 199") and "line 100" not in msg
    assert pods.termination_message("", log, "File", 1) == ""
    assert pods.termination_message('{"ok":1}', log, "FallbackToLogsOnError", 1) == '{"ok":1}'


def test_hosts_file_names_the_pods_a_headless_service_selects():
    def pod(name, host, node, ip=None, phase="Running", rank="0", ready=True):
        return {
            "metadata": {"name": name, "namespace": "team", "labels": {"job": "a", "rank": rank}},
            "spec": {"hostname": host, "subdomain": "job", "nodeName": node},
            "status": {
                "phase": phase,
                "conditions": [{"type": "Ready", "status": str(ready)}],
                **({"podIP": ip} if ip else {}),
            },
        }

    def service(selector, name="job", namespace="team", not_ready=False, cluster_ip="None"):
        return {
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterIP": cluster_ip, "selector": selector,
                     "publishNotReadyAddresses": not_ready},
        }  # fmt: skip

    everyone = [service({"job": "a"})]
    text = pods.hosts_file("proc-node-000", "10.242.0.10", [
        pod("w0", "job-0", "proc-node-000"),  # here: known before its status has an IP
        pod("w1", "job-1", "proc-node-001", "10.242.0.11"),
        pod("w2", "job-2", "proc-node-001"),  # elsewhere and no IP yet: not resolvable
        pod("old", "job-3", "proc-node-001", "10.242.0.11", phase="Failed"),
    ], everyone)  # fmt: skip
    lines = text.splitlines()
    assert "10.242.0.10 job-0.job.team.svc.cluster.local job-0.job.team.svc job-0" in lines
    assert "10.242.0.11 job-1.job.team.svc.cluster.local job-1.job.team.svc" in lines
    assert "job-2" not in text and "job-3" not in text
    # After the pods, so reverse lookups of the node's address name a pod.
    assert lines.index("10.242.0.10 proc-node-000") == 4
    assert "::ffff:10.242.0.11 job-1.job.team.svc.cluster.local" in lines

    # Another node's pod has a name only if a headless Service named after its subdomain, in
    # its namespace, selects it, and it is ready or the Service publishes not-ready addresses.
    remote = [pod("w1", "job-1", "proc-node-001", "10.242.0.11", rank="1", ready=False)]
    named = {
        "rank 0 only": [service({"job": "a", "rank": "0"}, not_ready=True)],
        "other name": [service({"job": "a"}, name="other", not_ready=True)],
        "other namespace": [service({"job": "a"}, namespace="prod", not_ready=True)],
        "not headless": [service({"job": "a"}, not_ready=True, cluster_ip="10.96.0.9")],
        "not ready": [service({"job": "a"})],
        "no Service": [],
    }
    for why, services in named.items():
        assert "job-1" not in pods.hosts_file("proc-node-000", "10.0.0.1", remote, services), why
    ok = [service({"job": "a", "rank": "1"}, not_ready=True)]
    assert "job-1.job.team.svc" in pods.hosts_file("proc-node-000", "10.0.0.1", remote, ok)
    # A pod on this node keeps its own names, as kubelet writes them into its hosts.
    local = [pod("w1", "job-1", "proc-node-000", rank="1")]
    assert "job-1.job.team.svc" in pods.hosts_file("proc-node-000", "10.0.0.1", local, [])
    # A Service with a cluster IP is named by it (kube-proxy takes it from there).
    clusterip = [service({"job": "a"}, name="web", cluster_ip="10.243.0.9")]
    assert (
        "10.243.0.9 web.team.svc.cluster.local web.team.svc"
        in pods.hosts_file("proc-node-000", "10.0.0.1", [], clusterip).splitlines()
    )


def test_probes_count_like_kubelet():
    ready = pods.Probe.of({"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1,
                           "failureThreshold": 2}, {"http": 8000})  # fmt: skip
    assert ready is not None and (ready.path, ready.port, ready.period) == ("/ready", 8000, 1.0)
    # The first pass makes it ready; one failure does not take that back, two in a row do.
    assert [ready.observe(ok) for ok in (False, True, False, True, False, False)] == [
        False, True, False, False, False, True,
    ]  # fmt: skip
    assert ready.verdict is False
    tcp = pods.Probe.of({"tcpSocket": {"port": 9000}, "successThreshold": 2}, {})
    assert tcp is not None and tcp.path is None and tcp.port == 9000
    assert [tcp.observe(True), tcp.observe(True)] == [False, True] and tcp.verdict is True
    assert pods.Probe.of({"exec": {"command": ["true"]}}, {}) is None  # not run here
    # A container with a readiness probe is not ready before its first pass.
    c = ContainerState("server", "img", state="running", probe_ready=False)
    assert c.status()["ready"] is False and ContainerState("x", "i", state="running").ready


def test_node_networks_get_distinct_names_and_addresses(tmp_path):
    cluster = network.ClusterNet.for_folder(tmp_path / "a" / ".cluster", "10.242.3.0/24")
    other = network.ClusterNet.for_folder(tmp_path / "b" / ".cluster", "10.242.4.0/24")
    a, b = cluster.node(0), cluster.node(7)
    assert (a.address, b.address) == ("10.242.3.10", "10.242.3.17")
    assert cluster.gateway == "10.242.3.1/24"
    assert a.netns != b.netns and a.host_veth != b.host_veth
    # Two checkouts' clusters on one machine share no name.
    assert cluster.bridge != other.bridge and other.node(0).netns != a.netns
    assert all(len(n) <= 15 for n in (a.host_veth, b.host_veth, cluster.bridge))
    with pytest.raises(ValueError, match="does not fit"):
        cluster.node(250)


def test_each_cluster_takes_a_slash_24_nothing_on_the_machine_uses():
    assert network.free_subnet(["127.0.0.1/8", "172.17.0.2/16"]) == "10.242.0.0/24"
    used = ["10.242.0.1/24", "10.242.1.1/24", "10.242.2.17/28"]
    assert network.free_subnet(used) == "10.242.3.0/24"


def test_link_rates_are_checked_and_shaped_with_a_token_bucket():
    assert network.rate_bits("10gbit") == 10**10 and network.rate_bits("2.5mbit") == 2_500_000
    with pytest.raises(ValueError, match="like 100mbit"):
        network.rate_bits("10 Gbps")
    args = network.tbf_args("10gbit")
    assert args[:3] == ["tbf", "rate", "10gbit"]
    assert int(args[args.index("burst") + 1]) == 10**10 // 8 // 100
    assert int(network.tbf_args("1mbit")[4]) == 64 * 1024


def test_pods_with_a_metrics_port_become_scrape_targets():
    def pod(name, ports):
        return {
            "metadata": {"name": name, "namespace": "team"},
            "spec": {"containers": [{"name": "c", "ports": ports}]},
        }

    targets = pods.scrape_targets("10.242.0.10", [
        pod("b", [{"name": "metrics", "containerPort": 9400}]),
        pod("a", [{"name": "http", "containerPort": 80}]),
    ])  # fmt: skip
    assert targets == [
        {"targets": ["10.242.0.10:9400"], "labels": {"namespace": "team", "pod": "b"}}
    ]
