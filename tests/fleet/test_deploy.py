"""The shipped configurations in ``deploy/`` are valid and agree with each other and with the
server: HAProxy's (checked by ``haproxy -c``; the fleet tests run it), nginx's (``nginx -t``
when nginx is installed), and the Kubernetes manifest, whose drain values must fit together."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mediastream.cli import build_parser
from mediastream.config import INSTANCE_ID_ENV, StreamOptions
from mediastream.instance import is_instance_id
from tests.fleet.conftest import HAPROXY_CFG, haproxy_binary, haproxy_env
from tests.processes import REPO

DEPLOY = REPO / "deploy"


def manifests() -> dict[str, dict[str, Any]]:
    documents = list(yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()))
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in documents}


def container(kind_name: str) -> dict[str, Any]:
    (only,) = manifests()[kind_name]["spec"]["template"]["spec"]["containers"]
    return only


def test_haproxy_accepts_the_shipped_configuration() -> None:
    binary = haproxy_binary()
    servers = [("a", "127.0.0.1:18001"), ("b", "127.0.0.1:18002"), ("c", "127.0.0.1:18003")]
    checked = subprocess.run(
        [binary, "-c", "-f", str(HAPROXY_CFG)],
        env=haproxy_env("127.0.0.1:18000", servers),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "ALERT" not in checked.stdout + checked.stderr


def test_nginx_accepts_the_shipped_configuration(tmp_path: Path) -> None:
    binary = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if binary is None:
        pytest.skip("nginx is not installed (the HAProxy configuration is the one tested live)")
    checked = subprocess.run(
        [binary, "-t", "-p", str(tmp_path), "-e", "stderr", "-c", str(DEPLOY / "nginx.conf"),
         "-g", f"pid {tmp_path}/nginx.pid;"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr


def test_the_configurations_route_by_the_path_element_the_server_hands_out() -> None:
    haproxy = HAPROXY_CFG.read_text()
    assert "use-server %[path,field(3,/)] if { path_beg /i/ }" in haproxy  # /i/<id>/...
    assert "http-check send meth GET uri /healthz" in haproxy
    assert re.search(r"^\s*timeout tunnel ", haproxy, re.M)
    assert re.search(r"^\s*option redispatch", haproxy, re.M)
    nginx = (DEPLOY / "nginx.conf").read_text()
    assert {m for m in re.findall(r"~\^/i/(\w+)/", nginx)} == {"a", "b", "c"}


def test_the_kubernetes_manifest_drains_within_its_grace_period() -> None:
    """``--drain-seconds``, the preStop hook's wait and the grace period fit together: the
    hook starts the drain and outlasts it; Kubernetes kills nothing before both are over."""
    found = manifests()
    statefulset = found["StatefulSet/mediastream"]
    pod = statefulset["spec"]["template"]["spec"]
    server = container("StatefulSet/mediastream")
    args = build_parser().parse_args(server["command"][1:])  # the flags parse as serve's
    assert args.command == "serve"
    drain = args.drain_seconds
    hook = server["lifecycle"]["preStop"]["exec"]["command"]
    script = shlex.split(hook[-1])
    assert script[:2] == ["kill", "-TERM"] and script[2] == "1;"  # the drain, as SIGTERM does
    (wait,) = [float(script[i + 1]) for i, word in enumerate(script) if word == "sleep"]
    stop_seconds = StreamOptions().handler_stop_seconds
    assert drain < wait < pod["terminationGracePeriodSeconds"]
    assert wait >= drain + stop_seconds  # on_stop after the deadline has its time too
    readiness = server["readinessProbe"]["httpGet"]
    assert readiness["path"] == "/healthz"
    assert "httpGet" not in server["livenessProbe"]  # /healthz is 503 while draining
    (variable,) = [e for e in server["env"] if e["name"] == INSTANCE_ID_ENV]
    assert variable["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert statefulset["spec"]["serviceName"] == found["Service/mediastream"]["metadata"]["name"]
    # HAProxy names the three pods, by the ids they will have, at their stable DNS names
    balancer = {e["name"]: e["value"] for e in container("Deployment/mediastream-haproxy")["env"]}
    replicas = statefulset["spec"]["replicas"]
    for n in range(replicas):
        assert balancer[f"MEDIASTREAM_{n + 1}_ID"] == f"mediastream-{n}"
        assert balancer[f"MEDIASTREAM_{n + 1}_ADDR"].startswith(f"mediastream-{n}.mediastream.")
        assert is_instance_id(balancer[f"MEDIASTREAM_{n + 1}_ID"])
