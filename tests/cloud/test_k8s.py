"""cloud/k8s/: valid for the Kubernetes API (kubernetes-validate) and within Pod Security "restricted"."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "cloud" / "k8s").glob("*.yaml"))

if os.environ.get("CI") != "true":  # CI installs the test extra, which has both: never skipped there
    pytest.importorskip("kubernetes_validate", reason="pip install -e '.[test]' (kubernetes-validate)")
import yaml  # noqa: E402  (kubernetes-validate brings PyYAML)

# The volume types the restricted profile allows.
RESTRICTED_VOLUMES = {
    *("configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret")
}


def _validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _documents() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def _pod_templates() -> list[dict[str, Any]]:
    return [doc["spec"]["template"]["spec"] for doc in _documents() if doc["kind"] in ("Deployment", "StatefulSet")]


def test_manifests_pass_kubernetes_validate_strictly() -> None:
    assert MANIFESTS, "cloud/k8s holds no manifests"
    result = _validate(*MANIFESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_validate_catches_a_misspelled_field(tmp_path: Path) -> None:
    """The validator is not a no-op: a typo in the pod spec fails it."""
    broken = tmp_path / "tail.yaml"
    broken.write_text(MANIFESTS[0].read_text().replace("startupProbe:", "startupProbes:", 1))
    result = _validate(broken)
    assert result.returncode != 0 and "startupProbes" in result.stdout + result.stderr


def test_pods_run_under_the_restricted_pod_security_profile() -> None:
    templates = _pod_templates()
    assert templates
    for pod in templates:
        pod_context = pod.get("securityContext", {})
        assert pod_context.get("seccompProfile") == {"type": "RuntimeDefault"}
        assert not any(pod.get(key) for key in ("hostNetwork", "hostPID", "hostIPC"))
        for volume in pod.get("volumes", []):
            assert set(volume) - {"name"} <= RESTRICTED_VOLUMES, volume
        for container in pod["containers"] + pod.get("initContainers", []):
            context = {**pod_context, **container.get("securityContext", {})}
            assert context.get("runAsNonRoot") is True and context.get("runAsUser", 1) != 0, container["name"]
            assert context.get("allowPrivilegeEscalation") is False, container["name"]
            assert context.get("readOnlyRootFilesystem") is True, container["name"]
            assert context.get("capabilities", {}).get("drop") == ["ALL"], container["name"]
            assert not context.get("capabilities", {}).get("add"), container["name"]
            assert not context.get("privileged"), container["name"]
            assert all("hostPort" not in port for port in container.get("ports", []))


def test_namespace_enforces_the_restricted_profile() -> None:
    namespaces = [doc for doc in _documents() if doc["kind"] == "Namespace"]
    assert namespaces and all(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted" for ns in namespaces
    )


def test_pods_have_a_startup_probe_and_a_pinned_image() -> None:
    for pod in _pod_templates():
        for container in pod["containers"]:
            probe = container["startupProbe"]
            assert probe["periodSeconds"] * probe["failureThreshold"] >= 120, "slow model loads need minutes"
            assert "initialDelaySeconds" not in container.get("livenessProbe", {}), "the startup probe covers it"
            image = container["image"]
            pinned = re.fullmatch(r"[\w./-]+(:\d+\.\d+\.\d+\S*|@sha256:[0-9a-f]{64})", image)
            assert pinned, f"{image}: pin the image to a release tag or a digest, never :latest"
