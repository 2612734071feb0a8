"""The rendered Kubernetes manifests: valid, restricted, isolated, datasets only in memory."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from traitlets.config import Config

from enclave.kubernetes.manifests import (
    EGRESS_RULES,
    EXTRA_CONFIG,
    PROXY_HTTP_PORT,
    PROXY_POD,
    labels,
)

REPO = Path(__file__).resolve().parents[2]
CHECKOV = REPO / "build" / "checkov" / "bin" / "checkov"


def all_containers(spec: dict) -> list[dict]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def pod_specs(objects: list[dict]) -> list[tuple[str, dict]]:
    specs = []
    for obj in objects:
        if obj["kind"] == "Pod":
            specs.append((obj["metadata"]["name"], obj["spec"]))
        elif obj["kind"] in ("Deployment", "Job"):
            specs.append((obj["metadata"]["name"], obj["spec"]["template"]["spec"]))
    return specs


def test_every_rendered_object_passes_strict_validation_on_each_kubernetes_version(
    objects, settings
):
    versions = settings.get("kubernetes_versions")
    assert versions == ["1.32", "1.37"]
    for version in versions:
        for obj in objects:
            kubernetes_validate.validate(obj, version, strict=True)


def test_strict_validation_rejects_a_misspelt_field(objects):
    pod = next(o for o in objects if o["kind"] == "Pod")
    broken = yaml.safe_load(yaml.safe_dump(pod))
    broken["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.32", strict=True)


def test_the_rendered_set_holds_each_part_of_the_enclave(objects):
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for expected in [
        ("Namespace", "enclave"),
        ("Deployment", "enclave-catalog"),
        ("Service", "enclave-catalog"),
        ("Deployment", "enclave-ingestion"),
        ("Service", "enclave-ingestion"),
        ("PersistentVolumeClaim", "enclave-state"),
        ("Job", "enclave-migrate-0-1-0"),
        ("Deployment", "enclave-airlock"),
        ("Service", "enclave-airlock"),
        ("PersistentVolumeClaim", "enclave-airlock"),
        ("Pod", "jupyter-sample-researcher-desktop"),
        ("Pod", "jupyter-sample-student-desktop"),
        ("Pod", "jupyter-sample-researcher"),
        ("Pod", "jupyter-sample-student"),
    ]:
        assert expected in kinds
    ns = next(o for o in objects if o["kind"] == "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_every_container_is_non_root_unprivileged_with_no_capabilities(objects):
    specs = pod_specs(objects)
    # catalog, ingestion, airlock, migration; a notebook and a desktop pod per profile
    assert len(specs) == 8
    for name, spec in specs:
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert "hostNetwork" not in spec and "hostPID" not in spec, name
        for c in all_containers(spec):
            ctx = c["securityContext"]
            assert ctx["runAsNonRoot"] is True, (name, c["name"])
            assert ctx["runAsUser"] >= 10000, (name, c["name"])
            assert ctx["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert ctx["privileged"] is False, (name, c["name"])
            assert ctx["capabilities"] == {"drop": ["ALL"]}, (name, c["name"])
            assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, (name, c["name"])
            assert ctx["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert c["resources"]["limits"]["memory"], (name, c["name"])


def test_researcher_pod_gets_one_gpu_on_gpu_nodes_and_the_student_none(pods):
    researcher = pods["researcher"]["spec"]
    notebook = researcher["containers"][0]
    assert notebook["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert notebook["image"].endswith("/enclave-user-gpu:0.1.0")
    assert researcher["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert researcher["tolerations"][0]["key"] == "nvidia.com/gpu"
    student = pods["student"]["spec"]
    limits = student["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in limits
    assert float(limits["cpu"]) == 1.0
    assert not student.get("tolerations")
    env = {e["name"]: e.get("value") for e in student["containers"][0]["env"]}
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    # The profile's memory, plus the in-memory datasets and /dev/shm it may fill.
    assert int(limits["memory"]) == (2 * 1024 + 16 * 1024 + 256) * 2**20


def test_user_servers_run_with_the_no_download_policy_last(pods):
    for name, pod in pods.items():
        if name.endswith("-desktop"):
            continue  # their Jupyter server faces only the desktop (test_desktop_pods)
        args = pod["spec"]["containers"][0]["args"]
        assert args[:3] == ["python", "-m", "enclave.workspace.singleuser"]
        assert (
            "--ServerApp.authorizer_class=enclave.workspace.authorizer.NoDownloadAuthorizer"
            in args[-5:]
        )
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["JUPYTER_CONFIG_DIR"] == "/etc/enclave/jupyter"
    student_args = pods["student"]["spec"]["containers"][0]["args"]
    assert "--ServerApp.terminals_enabled=False" in student_args


def test_datasets_live_in_memory_and_the_notebook_mounts_them_read_only(pods):
    for pod in pods.values():
        spec = pod["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["datasets"]["emptyDir"]["medium"] == "Memory"
        loader = spec["initContainers"][0]
        assert loader["command"] == ["python", "-m", "enclave.kubernetes.loader"]
        assert (
            loader["securityContext"]["runAsUser"]
            != spec["containers"][0]["securityContext"]["runAsUser"]
        )
        mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
        assert mounts["datasets"]["readOnly"] is True
        assert mounts["datasets"]["mountPath"] == "/home/enclave/datasets"
        # The only persistent volume is the home; nothing decrypted is mounted from one.
        persistent = [v for v in spec["volumes"] if "persistentVolumeClaim" in v]
        assert [v["name"] for v in persistent] == [f"volume-sample-{pod['metadata']['name'][15:]}"]
        assert all("emptyDir" in v for v in spec["volumes"] if v not in persistent)
        # No ticket secret reaches the notebook container.
        env = [e["name"] for e in spec["containers"][0]["env"]]
        assert "ENCLAVE_DELIVERY_TICKET" not in env


def test_user_pods_egress_reaches_only_hub_proxy_and_the_key_holder(values, settings):
    policy = values["singleuser"]["networkPolicy"]
    assert policy["enabled"] is True
    assert policy["egressAllowRules"] == {rule: False for rule in EGRESS_RULES}
    assert len(EGRESS_RULES) == 6
    keyholder, proxy = policy["egress"]
    assert keyholder["to"] == [{"podSelector": {"matchLabels": labels("ingestion")}}]
    assert keyholder["ports"] == [
        {"port": settings.number("ingestion.keyholder_port"), "protocol": "TCP"}
    ]
    assert proxy["to"] == [{"podSelector": {"matchLabels": PROXY_POD}}]
    assert proxy["ports"] == [{"port": PROXY_HTTP_PORT, "protocol": "TCP"}]
    assert values["proxy"]["chp"]["networkPolicy"]["egressAllowRules"] == {
        r: False for r in EGRESS_RULES
    }
    assert values["singleuser"]["cloudMetadata"]["blockWithIptables"] is False


def test_our_network_policies_deny_by_default_and_allow_no_open_egress(objects):
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    deny = next(p for p in policies if p["metadata"]["name"] == "enclave-default-deny")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    for p in policies:
        assert p["spec"]["policyTypes"] == ["Ingress", "Egress"]
        for rule in p["spec"].get("egress", []):
            assert rule.get("to"), p["metadata"]["name"]  # never "anywhere"
            for peer in rule["to"]:
                assert "ipBlock" not in peer, p["metadata"]["name"]


def test_hub_extra_config_loads_the_same_authenticator_roles_and_scopes(values):
    from enclave.workspace.hub import custom_scopes, load_roles
    from enclave.workspace.profiles import PEOPLE_GROUPS

    assert values["hub"]["extraConfig"] == {"enclave.py": EXTRA_CONFIG}
    c = Config()
    c.JupyterHub.load_roles = [{"name": "jupyterhub-idle-culler", "services": ["x"]}]
    custom = values["custom"]["enclave"]
    exec(
        EXTRA_CONFIG,
        {"c": c, "get_config": lambda key: custom if key == "custom.enclave" else None},
    )
    assert c.JupyterHub.authenticator_class == "enclave.workspace.auth.EnclaveAuthenticator"
    assert c.JupyterHub.custom_scopes == custom_scopes()
    embedded = {r["name"]: r for r in load_roles(None)}
    loaded = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert "jupyterhub-idle-culler" in loaded  # the chart's own role stays
    for name in ("enclave-researcher", "enclave-student", "enclave-admin", "enclave-cli"):
        assert loaded[name] == embedded[name]
    assert set(c.JupyterHub.load_groups) == set(PEOPLE_GROUPS.values())
    assert c.JupyterHub.spawner_class == "enclave.kubernetes.spawner.EnclaveKubeSpawner"
    assert set(c.EnclaveKubeSpawner.profile_entries) == {"researcher", "student"}


def test_catalog_migration_and_ingestion_take_the_database_url_from_a_secret(objects):
    for name, spec in pod_specs(objects):
        if not name.startswith("enclave-"):
            continue
        env = {e["name"]: e for e in spec["containers"][0]["env"]}
        ref = env["ENCLAVE_DB_URL"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "enclave-catalog-db", "key": "uri"}, name
    job = next(o for o in objects if o["kind"] == "Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][3:5] == ["k8s", "migrate"]


def test_no_rendered_file_holds_a_secret_value(objects):
    assert not [o for o in objects if o["kind"] == "Secret"]


@pytest.mark.slow
def test_checkov_fails_nothing_that_has_no_written_reason(rendered):
    if not CHECKOV.exists():
        pytest.fail(f"checkov is not installed at {CHECKOV}: run `make checkov`", pytrace=False)
    skips = yaml.safe_load((REPO / "deploy/kubernetes/checkov-skips.yaml").read_text())
    assert all(isinstance(reason, str) and len(reason) > 40 for reason in skips.values())
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE"}
    for framework, target in (("kubernetes", rendered), ("dockerfile", REPO / "images")):
        proc = subprocess.run(
            [str(CHECKOV), "--quiet", "--compact", "--skip-download", "--framework", framework,
             "-d", str(target), "--skip-check", ",".join(skips)],
            capture_output=True, text=True, env=env, timeout=300, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:]


def test_render_command_writes_every_file_and_names_a_bad_settings_file(run_enclave, tmp_path):
    bad = tmp_path / "site.yaml"
    bad.write_text("users:\n  uid: 0\n")
    result = run_enclave("k8s", "render", "--out", str(tmp_path / "out"), "--values", str(bad))
    assert result.exit_code == 1
    assert (
        result.stderr.strip()
        == f"error: /work/main/deploy/kubernetes/enclave.yaml + {bad}: users.uid must not be 0 (root)".replace(
            "/work/main", str(REPO)
        )
    )
