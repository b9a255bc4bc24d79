"""deploy/: every NATS config passes `nats-server -t`; compose and k8s files parse and use the
stream, consumer, subject and bucket names of digits/subjects.py."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from digits import cli, natsauth, subjects
from tests.deploy.natsconf import ACCOUNTS, DEPLOY, NATS_DIR, USERS, check, make_tls, password_env

COMPOSE = DEPLOY / "compose" / "compose.yaml"
K8S = DEPLOY / "k8s"
SERVICE_MODULES = {module for _, module in cli.SERVICES}


def k8s_docs() -> list[dict]:
    """Every document of every YAML file under deploy/k8s (kustomizations included)."""
    docs = []
    for path in sorted(K8S.rglob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def of_kind(kind: str) -> list[dict]:
    """The k8s documents of one kind."""
    return [d for d in k8s_docs() if d.get("kind") == kind]


def containers(doc: dict) -> list[dict]:
    """The containers of a Deployment, StatefulSet, Job or ScaledJob."""
    spec = doc["spec"]
    template = spec["jobTargetRef"]["template"] if "jobTargetRef" in spec else spec["template"]
    return template["spec"]["containers"]


def test_single_node_config_is_valid(tmp_path):
    result = check(NATS_DIR / "single.conf", password_env())
    assert result.returncode == 0, result.stderr


def test_cluster_config_is_valid_with_its_tls_files(tmp_path):
    env = {**password_env(), **make_tls(tmp_path / "tls"), "NATS_SERVER_NAME": "nats-0"}
    result = check(NATS_DIR / "cluster.conf", env)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("missing", ["NATS_INGEST_PASSWORD", "NATS_TLS_CERT"])
def test_a_config_without_its_secrets_is_refused(tmp_path, missing):
    env = {**password_env(), **make_tls(tmp_path / "tls"), "NATS_SERVER_NAME": "nats-0"}
    del env[missing]
    result = check(NATS_DIR / "cluster.conf", env)
    assert result.returncode != 0 and missing in result.stderr


def test_the_k8s_nats_config_is_the_deploy_one():
    (config_map,) = [d for d in of_kind("ConfigMap") if d["metadata"]["name"] == "nats-config"]
    for name in ("cluster.conf", "accounts.conf"):
        assert config_map["data"][name] == (NATS_DIR / name).read_text(), name


def test_digits_up_runs_the_deploy_accounts():
    assert natsauth.ACCOUNTS_CONF.read_text() == ACCOUNTS.read_text()
    assert set(natsauth.USERS) == set(USERS)


def known_subject(subject: str) -> bool:
    """Whether a permission subject is one of subjects.py's names or a wildcard over one."""
    names = {v for v in vars(subjects).values() if isinstance(v, str)}
    services = {"gateway", *(m.split("_")[0] for m in SERVICE_MODULES)}
    names |= {f"{subjects.HEARTBEAT}.{s}" for s in services}
    if subject.startswith("$KV."):
        return subject.split(".")[1] in subjects.KV_BUCKETS
    if subject.startswith(("$JS.", "_INBOX.")):
        return True
    if subject.endswith(".>"):  # a wildcard over names of subjects.py
        root = subject.removesuffix(".>")
        return root in names or any(n.startswith(root + ".") for n in names)
    return subject in names


def test_accounts_name_only_subjects_and_buckets_of_subjects_py():
    text = ACCOUNTS.read_text()
    quoted = re.findall(r'"([^"]+)"', text.split("accounts {", 1)[1])
    assert quoted, "permissions are quoted subjects"
    unknown = [s for s in quoted if not known_subject(s)]
    assert not unknown, unknown
    users = re.findall(r"user: (\w+), password: \$(\w+)", text)
    assert sorted(users) == sorted((u, f"NATS_{u.upper()}_PASSWORD") for u in USERS)


def test_compose_wires_nats_minio_init_and_the_services():
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert "/healthz?js-enabled-only=true" in " ".join(services["nats"]["healthcheck"]["test"])
    assert "nats-data:/data" in services["nats"]["volumes"]
    for name, service in services.items():
        image = service.get("image", "")
        if "DIGITS_IMAGE" not in image:  # third-party images are pinned to a release
            assert re.search(r":[\w.-]*\d[\w.-]*$", image) and "latest" not in image, name
    assert services["init-bus"]["command"][:2] == ["digits", "init"]
    minio = services["minio"]["environment"]
    assert minio["MINIO_NOTIFY_NATS_SUBJECT_PRIMARY"].startswith(subjects.S3 + ".")
    assert minio["MINIO_NOTIFY_NATS_JETSTREAM_PRIMARY"] == "on"
    assert minio["MINIO_NOTIFY_NATS_USERNAME_PRIMARY"] == "minio"
    assert "mc event add" in services["init-s3"]["command"][0]
    modules = {s["command"][2] for s in services.values() if s.get("command", [""])[0] == "python"}
    assert modules == SERVICE_MODULES
    gpu = services["train"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    for name in ("gateway", "ingest", "train", "view"):
        env = services[name]["environment"]
        assert env["DIGITS_NATS_USER"] == name and env["DIGITS_STORE_URL"].startswith("s3://")
        assert services[name]["depends_on"]["init-bus"]["condition"].endswith("successfully")


def test_keda_triggers_name_real_streams_and_consumers():
    (scaled,) = of_kind("ScaledObject")
    (job,) = of_kind("ScaledJob")
    triggers = scaled["spec"]["triggers"] + job["spec"]["triggers"]
    ingest = {t["metadata"]["consumer"] for t in scaled["spec"]["triggers"]}
    for trigger in triggers:
        meta = trigger["metadata"]
        assert trigger["type"] == "nats-jetstream"
        spec = subjects.CONSUMERS[meta["consumer"]]
        assert meta["stream"] == spec.stream and meta["account"] == "DIGITS"
        assert meta["natsServerMonitoringEndpoint"].endswith(":8222")
    # Every consumer the ingest service reads wakes it from zero.
    assert {"ingest-work", "dataset-commands", "job-commands", "s3-notifications"} <= ingest
    assert scaled["spec"]["minReplicaCount"] == 0
    (train,) = containers(job)
    assert train["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "--once" in train["command"] and subjects.CONSUMER_TRAIN in train["command"]


def test_workloads_probe_healthz_and_run_real_commands():
    workloads = of_kind("Deployment") + of_kind("ScaledJob")
    names = {d["metadata"]["name"] for d in workloads}
    assert {"gateway", "view", "ingest", "train-scheduler", "train"} <= names
    for doc in workloads:
        for container in containers(doc):
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", doc["metadata"]
            command = container["command"]
            if command[:2] == ["python", "-m"]:
                assert command[2] in SERVICE_MODULES | {"gateway"}
            else:
                assert command[:3] == ["digits", "serve", "train_service"]
                for flag in ("--consumers", "--once"):
                    if flag in command:
                        value = command[command.index(flag) + 1]
                        assert set(value.split(",")) <= set(subjects.CONSUMERS), value
    services = {d["metadata"]["name"] for d in of_kind("Service")}
    assert {"gateway", "view", "nats"} <= services
    (bootstrap,) = of_kind("Job")
    assert containers(bootstrap)[0]["command"][:4] == ["digits", "init", "--replicas", "3"]
    secrets = {d["metadata"]["name"] for d in of_kind("Secret")}
    assert {"nats-users", "digits-secret-key", "nats-tls"} <= secrets


def test_the_monitoring_port_is_internal():
    (policy,) = of_kind("NetworkPolicy")
    rules = policy["spec"]["ingress"]
    monitor = [r for r in rules if {"port": 8222, "protocol": "TCP"} in r["ports"]]
    assert len(monitor) == 1
    for source in monitor[0]["from"]:
        assert "ipBlock" not in source, "no address range outside the cluster"
    for service in of_kind("Service"):
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("folder", ["base", "scalers"])
def test_kustomize_builds(folder):
    result = subprocess.run(
        ["kubectl", "kustomize", str(K8S / folder)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert list(yaml.safe_load_all(result.stdout))


def test_dockerfile_installs_every_service():
    text = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()
    for module in SERVICE_MODULES:
        assert f"COPY {module} ./{module}" in text
    assert '".[all]"' in text
