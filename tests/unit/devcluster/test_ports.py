"""The node agent's port mapping: declared container ports to free host ports, rewritten
into the command line and env as a kubelet's network namespace would make unnecessary."""

from __future__ import annotations

import json
import socket

from spatialforge.devcluster import ports

CONTAINER = {
    "name": "operator",
    "ports": [{"name": "health", "containerPort": 8080}, {"name": "metrics", "containerPort": 9090},
              {"name": "again", "containerPort": 8080, "protocol": "UDP"}],
}


def test_each_declared_port_gets_a_distinct_free_host_port() -> None:
    a, b = ports.allocate(CONTAINER), ports.allocate(CONTAINER)
    try:
        assert list(a) == [8080, 9090] and list(b) == [8080, 9090]
        hosts = list(a.values()) + list(b.values())
        assert len(set(hosts)) == 4, "two replicas must not share a host port"
        for host in hosts:
            with socket.socket() as s:
                s.bind(("0.0.0.0", host))  # free: the process can bind it
    finally:
        ports.release(a)
        ports.release(b)


def test_no_ports_declared_maps_nothing() -> None:
    assert ports.allocate({"name": "runner"}) == {}


def test_argv_tokens_exact_or_after_equals_or_colon() -> None:
    m = {8000: 41234}
    argv = ["python", "-m", "uvicorn", "--host=0.0.0.0", "--port=8000", "--port", "8000", "--bind", "0.0.0.0:8000",
            "18000", "8000x", "--workers=8000000", "--other=18000"]
    assert ports.rewrite_argv(argv, m) == [
        "python", "-m", "uvicorn", "--host=0.0.0.0", "--port=41234", "--port", "41234", "--bind", "0.0.0.0:41234",
        "18000", "8000x", "--workers=8000000", "--other=18000"]


def test_env_values_equal_to_the_port_only() -> None:
    m = {8080: 40001, 9090: 40002}
    env = {"SPATIALFORGE_HEALTH_PORT": "8080", "SPATIALFORGE_METRICS_PORT": "9090", "WORKERS": "8",
           "URL": "http://x:8080", "OTHER": "80800"}
    assert ports.rewrite_env(env, m) == {"SPATIALFORGE_HEALTH_PORT": "40001", "SPATIALFORGE_METRICS_PORT": "40002",
                                         "WORKERS": "8", "URL": "http://x:8080", "OTHER": "80800"}


def test_annotation_round_trip() -> None:
    value = ports.annotation_value({8080: 40001, 9090: 40002})
    assert json.loads(value) == {"8080": 40001, "9090": 40002}
    pod = {"metadata": {"annotations": {ports.ANNOTATION: value}}}
    assert ports.parse_annotation(pod) == {8080: 40001, 9090: 40002}
    assert ports.parse_annotation({"metadata": {}}) == {}


def test_each_pod_has_its_own_stable_address(monkeypatch) -> None:
    import ipaddress

    from spatialforge.devcluster import podnet

    for routable, net in ((False, "127.0.0.0/8"), (True, podnet.ROUTABLE_PREFIX)):
        monkeypatch.setattr(podnet, "_routable", routable)
        a, b = podnet.pod_ip("uid-a"), podnet.pod_ip("uid-b")
        assert a == podnet.pod_ip("uid-a") and a != b
        for ip in (a, b):
            assert ipaddress.ip_address(ip) in ipaddress.ip_network(net) and ip != "127.0.0.1"


def test_a_container_told_its_pod_ip_keeps_its_ports() -> None:
    own = {"env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]}
    assert ports.binds_pod_ip(own)
    assert not ports.binds_pod_ip({"env": [{"name": "X", "value": "1"}]}) and not ports.binds_pod_ip({})


def test_free_port_is_one_a_server_can_bind_on_that_host() -> None:
    for host in ("127.0.0.1", "0.0.0.0"):
        port = ports.free_port(host)
        with socket.socket() as s:
            s.bind((host, port))
