"""Pure builders: their output validates against Kubernetes' schemas, configs load in Berth."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from berth_operator.builders import (
    CHECKSUM_ANNOTATION,
    SpecError,
    auth_parts,
    build_gc_workload,
    build_registry_objects,
    gc_command,
    notification_parts,
    proxy_parts,
    registry_config,
    validate_registry_spec,
)
from berth_operator.crds import apply_defaults, defaulted_spec, openapi_schema
from berth_operator.kube import is_subset, three_way_patch
from berth_operator.status import (
    gc_run_status,
    parse_gc_counts,
    registry_status,
    set_condition,
)

K8S_VERSIONS = ("1.29", "1.35")
IMAGE = "berth:test"

SPECS: dict[str, dict[str, Any]] = {
    "default": {},
    "filesystem-rwx-scaled": {
        "replicas": 3,
        "storage": {"filesystem": {"accessMode": "ReadWriteMany", "storageClassName": "nfs"}},
        "service": {"type": "NodePort", "nodePort": 30500},
    },
    "s3-auth-autoscaling": {
        "externalURL": "https://registry.example.com",
        "imagePullSecrets": [{"name": "pull"}],
        "serviceAccountName": "berth-irsa",
        "storage": {
            "driver": "s3",
            "s3": {
                "bucket": "b",
                "endpoint": "http://minio:9000",
                "publicEndpoint": "https://minio.example.com",
                "pathStyle": True,
                "credentialsSecret": {"name": "creds"},
            },
        },
        "auth": {"mode": "htpasswd", "htpasswd": {"secretName": "users"}},
        "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6},
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "host": "registry.example.com",
            "tlsSecretName": "tls",
        },
        "serviceMonitor": {"enabled": True},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "config": {"cache": {"manifest_bytes": 1024}},
    },
    "token-auth": {
        "storage": {"driver": "s3", "s3": {"bucket": "b"}},
        "replicas": 2,
        "auth": {
            "mode": "token",
            "token": {
                "realm": "https://auth.example.com/token",
                "service": "berth",
                "issuer": "auth",
                "trustedKeysSecret": {"name": "issuer-keys"},
                "signingKeySecret": {"name": "signing", "key": "tls.key"},
            },
        },
    },
    "notifications": {
        "notifications": {
            "deadLetterRetentionSeconds": 3600,
            "endpoints": [
                {
                    "name": "ci",
                    "url": "https://ci.example/hooks/registry",
                    "actions": ["push", "delete"],
                    "repositories": ["team-a/*"],
                    "secret": {"name": "hook-secret"},
                    "headers": {"X-Team": "a"},
                    "headerSecrets": [
                        {"header": "Authorization", "name": "hook-token", "key": "header"}
                    ],
                    "caConfigMap": {"name": "ci-ca"},
                    "timeoutSeconds": 2.5,
                },
                {"name": "scanner", "url": "http://scanner:8080/", "format": "cloudevents"},
            ],
        },
    },
    "pull-through": {
        "storage": {"driver": "s3", "s3": {"bucket": "b"}},
        "proxy": {
            "fillClaimWaitSeconds": 30,
            "evictUnusedSeconds": 1209600,
            "maxBytes": 500_000_000_000,
            "upstreams": [
                {
                    "name": "hub",
                    "url": "https://registry-1.docker.io",
                    "username": "reader",
                    "passwordSecret": {"name": "hub-credentials"},
                    "tagTTLSeconds": 600,
                    "repositories": ["library/*"],
                },
                {
                    "name": "internal",
                    "url": "https://registry.internal.example",
                    "namespace": "internal",
                    "passwordSecret": {"name": "internal", "key": "token"},
                    "caConfigMap": {"name": "internal-ca"},
                    "egressProxy": "http://proxy.example:3128",
                    "anonymousFill": False,
                },
            ],
        },
    },
}


def body(spec: dict[str, Any], kind: str = "Registry", name: str = "reg") -> dict[str, Any]:
    return {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1},
        "spec": copy.deepcopy(spec),
    }


@pytest.mark.parametrize("name", SPECS)
def test_specs_are_valid_custom_resources(name: str) -> None:
    jsonschema.validate(body(SPECS[name]), openapi_schema("Registry"))


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", SPECS)
def test_registry_objects_validate_against_kubernetes(name: str, version: str) -> None:
    objects = build_registry_objects(body(SPECS[name]), IMAGE)
    for obj in objects:
        if obj["kind"] == "ServiceMonitor":
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        kubernetes_validate.validate(obj, version, strict=True)
        if obj["kind"] != "PersistentVolumeClaim":
            assert obj["metadata"]["ownerReferences"][0]["uid"] == "uid-reg"


def test_object_sets() -> None:
    kinds = lambda spec: [o["kind"] for o in build_registry_objects(body(spec), IMAGE)]  # noqa: E731
    assert kinds({}) == [
        "PersistentVolumeClaim",
        "ConfigMap",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
    ]
    assert kinds(SPECS["s3-auth-autoscaling"]) == [
        "ConfigMap",
        "Service",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "Ingress",
    ]
    objects = build_registry_objects(
        body(SPECS["s3-auth-autoscaling"]), IMAGE, service_monitor_supported=False
    )
    assert "ServiceMonitor" not in [o["kind"] for o in objects]


def test_deployment_is_hardened_and_probed() -> None:
    objects = build_registry_objects(body(SPECS["s3-auth-autoscaling"]), IMAGE)
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["berth", "serve", "--config", "/etc/berth/config.yaml"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["ports"][0]["containerPort"] == 5000
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "berth-irsa"
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert env["AWS_ACCESS_KEY_ID"] == {"name": "creds", "key": "AWS_ACCESS_KEY_ID"}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/etc/berth", "/etc/berth/auth/htpasswd", "/tmp"} <= mounts
    assert "replicas" not in deployment["spec"]
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"


def checksum_of(spec: dict[str, Any]) -> str:
    objects = build_registry_objects(body(spec), IMAGE)
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    return deployment["spec"]["template"]["metadata"]["annotations"][CHECKSUM_ANNOTATION]  # type: ignore[no-any-return]


def test_checksum_follows_the_config_only() -> None:
    base = SPECS["token-auth"]
    same = copy.deepcopy(base) | {"replicas": 5}
    changed = copy.deepcopy(base)
    changed["storage"]["redirect"] = {"expirySeconds": 60}
    assert checksum_of(base) == checksum_of(same)
    assert checksum_of(base) != checksum_of(changed)


def settings_from(config: dict[str, Any], tmp_path: Path) -> Any:
    from berth.config import load_settings

    # Should Settings not know the `auth` section (it forbids unknown keys), drop it here; the
    # auth section is also checked on its own below.
    try:
        from berth.config import Settings

        knows_auth = "auth" in Settings.model_fields
    except ImportError:  # pragma: no cover
        knows_auth = False
    if not knows_auth:
        config = {k: v for k, v in config.items() if k != "auth"}
    # Files the pod would have mounted from Secrets and ConfigMaps (read at start): here.
    for upstream in (config.get("proxy") or {}).get("upstreams") or []:
        for key in ("password_file", "ca_file"):
            if key in upstream:
                local = tmp_path / upstream[key].lstrip("/")
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_text("pw\n")
                upstream[key] = str(local)
    # Files the pod would have mounted (Secrets, ConfigMaps) are made under tmp_path.
    text = yaml.safe_dump(config)
    for mounted in sorted(set(re.findall(r"/etc/berth/notifications/[\w./-]+", text))):
        local = tmp_path / mounted.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text("mounted\n")
        text = text.replace(mounted, str(local))
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_settings(path)


@pytest.mark.parametrize("name", SPECS)
def test_generated_config_loads_in_berth(name: str, tmp_path: Path) -> None:
    spec = defaulted_spec("Registry", SPECS[name])
    settings = settings_from(registry_config(spec), tmp_path)
    assert settings.http.host == "0.0.0.0" and settings.http.port == 5000
    assert settings.storage.driver == spec["storage"]["driver"]
    assert settings.storage.redirect_expiry_seconds == spec["storage"]["redirect"]["expirySeconds"]
    if name == "s3-auth-autoscaling":
        assert settings.storage.s3.public_endpoint_url == "https://minio.example.com"
        assert settings.http.base_url == "https://registry.example.com"
        assert settings.cache.manifest_bytes == 1024
    if name == "notifications":
        ci, scanner = settings.notifications.endpoints
        assert ci.actions == ["push", "delete"] and ci.repositories == ["team-a/*"]
        assert ci.secret_file is not None and ci.secret_file.read_text() == "mounted\n"
        assert ci.timeout_seconds == 2.5 and ci.headers == {"X-Team": ["a"]}
        assert scanner.format == "cloudevents" and scanner.secret_file is None
        assert settings.notifications.dead_letter_retention_seconds == 3600


def test_notification_secrets_are_projected_files() -> None:
    spec = defaulted_spec("Registry", SPECS["notifications"])
    parts = notification_parts(spec)
    assert parts.config is not None
    ci = parts.config["endpoints"][0]
    assert ci["secret_file"] == "/etc/berth/notifications/0/secret"
    assert ci["header_files"] == {
        "Authorization": "/etc/berth/notifications/0/header-authorization"
    }
    assert ci["ca_file"] == "/etc/berth/notifications/0/ca.crt"
    assert parts.volumes == [
        {
            "name": "notify-0",
            "projected": {
                "sources": [
                    {
                        "secret": {
                            "name": "hook-secret",
                            "items": [{"key": "secret", "path": "secret"}],
                        }
                    },
                    {
                        "secret": {
                            "name": "hook-token",
                            "items": [{"key": "header", "path": "header-authorization"}],
                        }
                    },
                    {
                        "configMap": {
                            "name": "ci-ca",
                            "items": [{"key": "ca.crt", "path": "ca.crt"}],
                        }
                    },
                ],
                "defaultMode": 0o440,
            },
        }
    ]
    assert parts.mounts == [
        {"name": "notify-0", "mountPath": "/etc/berth/notifications/0", "readOnly": True}
    ]
    objects = build_registry_objects(body(SPECS["notifications"]), IMAGE)
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert parts.volumes[0] in pod["volumes"]
    assert parts.mounts[0] in pod["containers"][0]["volumeMounts"]
    config_map = next(o for o in objects if o["kind"] == "ConfigMap")
    assert "hook-token" not in config_map["data"]["config.yaml"]  # names files, never values
    assert notification_parts(defaulted_spec("Registry", {})).config is None


def test_proxy_section_and_mounted_files(tmp_path: Path) -> None:
    spec = defaulted_spec("Registry", SPECS["pull-through"])
    parts = proxy_parts(spec)
    assert parts.config == {
        "upstreams": [
            {
                "name": "hub",
                "url": "https://registry-1.docker.io",
                "username": "reader",
                "tag_ttl_seconds": 600,
                "repositories": ["library/*"],
                "password_file": "/etc/berth/proxy/0-password/password",
            },
            {
                "name": "internal",
                "url": "https://registry.internal.example",
                "namespace": "internal",
                "egress_proxy": "http://proxy.example:3128",
                "anonymous_fill": False,
                "password_file": "/etc/berth/proxy/1-password/password",
                "ca_file": "/etc/berth/proxy/1-ca/ca.crt",
            },
        ],
        "fill_claim_wait_seconds": 30,
        "evict_unused_seconds": 1209600,
        "max_bytes": 500_000_000_000,
    }
    assert [v["name"] for v in parts.volumes] == [
        "proxy-0-password",
        "proxy-1-password",
        "proxy-1-ca",
    ]
    assert parts.volumes[1]["secret"]["items"] == [{"key": "token", "path": "password"}]
    assert parts.volumes[2]["configMap"] == {
        "name": "internal-ca",
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }
    # The registry pods and the GC jobs (which load the same config) mount them.
    deployment = next(
        o
        for o in build_registry_objects(body(SPECS["pull-through"]), IMAGE)
        if o["kind"] == "Deployment"
    )
    pod = deployment["spec"]["template"]["spec"]
    assert {"proxy-0-password", "proxy-1-ca"} <= {v["name"] for v in pod["volumes"]}
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert "/etc/berth/proxy/1-ca" in mounts
    settings = settings_from(registry_config(spec), tmp_path)
    assert [u.resolved_namespace for u in settings.proxy.upstreams] == ["docker.io", "internal"]
    assert settings.proxy.upstreams[0].password() == "pw"
    assert settings.proxy.max_bytes == 500_000_000_000  # berth gc evicts with these
    assert proxy_parts(defaulted_spec("Registry", {})).config is None
    duplicate = copy.deepcopy(SPECS["pull-through"])
    duplicate["proxy"]["upstreams"][1]["name"] = "hub"
    with pytest.raises(SpecError, match=r"proxy\.upstreams names must be unique"):
        validate_registry_spec(defaulted_spec("Registry", duplicate))


def test_auth_section_and_secret_files() -> None:
    parts = auth_parts(defaulted_spec("Registry", SPECS["s3-auth-autoscaling"]))
    assert parts.config == {
        "mode": "htpasswd",
        "htpasswd_file": "/etc/berth/auth/htpasswd/htpasswd",
    }
    assert parts.volumes[0]["secret"] == {
        "secretName": "users",
        "items": [{"key": "htpasswd", "path": "htpasswd"}],
        "defaultMode": 0o444,
    }
    token = auth_parts(defaulted_spec("Registry", SPECS["token-auth"]))
    assert token.config == {
        "mode": "token",
        "token": {
            "realm": "https://auth.example.com/token",
            "service": "berth",
            "issuer": "auth",
            "trusted_keys_file": "/etc/berth/auth/trusted/keys.pem",
            "signing_key_file": "/etc/berth/auth/signing/key.pem",
        },
    }
    assert [v["secret"]["secretName"] for v in token.volumes] == ["issuer-keys", "signing"]
    assert token.volumes[1]["secret"]["items"] == [{"key": "tls.key", "path": "key.pem"}]
    assert auth_parts(defaulted_spec("Registry", {})).config is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"storage": {"driver": "s3"}}, "storage.s3.bucket is required"),
        ({"replicas": 2}, "ReadWriteOnce serves a single replica"),
        ({"auth": {"mode": "htpasswd"}}, "auth.htpasswd.secretName"),
        ({"ingress": {"enabled": True}}, "ingress.host is required"),
        ({"config": {"http": {"port": 80}}}, "config.http.port"),
        (
            {
                "storage": {"driver": "s3", "s3": {"bucket": "b"}},
                "autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2},
            },
            "minReplicas",
        ),
    ],
)
def test_invalid_specs_are_explained(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        validate_registry_spec(defaulted_spec("Registry", spec))


def test_defaults_follow_the_crd() -> None:
    spec = defaulted_spec("Registry", {})
    assert spec["replicas"] == 1
    assert spec["storage"]["redirect"] == {"enabled": True, "expirySeconds": 1200}
    assert spec["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    assert apply_defaults({"type": "object"}, {"x": 1}) == {"x": 1}
    gc = defaulted_spec("GarbageCollection", {"registryRef": {"name": "r"}})
    assert gc["gracePeriod"] == "1h" and gc["dryRun"] is False


GC_SPECS = {
    "cron": {"registryRef": {"name": "reg"}, "schedule": "0 3 * * *", "deleteUntagged": True},
    "once": {"registryRef": {"name": "reg"}, "dryRun": True, "gracePeriod": "30m"},
}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("gc", GC_SPECS)
@pytest.mark.parametrize("registry", ["default", "s3-auth-autoscaling"])
def test_gc_workloads_validate(gc: str, registry: str, version: str) -> None:
    gc_body = body(GC_SPECS[gc], kind="GarbageCollection", name="gc")
    jsonschema.validate(gc_body, openapi_schema("GarbageCollection"))
    workload = build_gc_workload(gc_body, body(SPECS[registry]), IMAGE)
    kubernetes_validate.validate(workload, version, strict=True)
    assert workload["kind"] == ("CronJob" if gc == "cron" else "Job")
    assert workload["metadata"]["ownerReferences"][0]["kind"] == "GarbageCollection"


def test_gc_command_and_job_identity() -> None:
    spec = defaulted_spec("GarbageCollection", GC_SPECS["once"])
    assert gc_command(spec) == [
        "berth",
        "gc",
        "--config",
        "/etc/berth/config.yaml",
        "--grace-period",
        "30m",
        "--dry-run",
        "--json",
    ]
    reg = body({})
    first = build_gc_workload(body(GC_SPECS["once"], "GarbageCollection", "gc"), reg, IMAGE)
    again = build_gc_workload(body(GC_SPECS["once"], "GarbageCollection", "gc"), reg, IMAGE)
    other = build_gc_workload(
        body(GC_SPECS["once"] | {"dryRun": False}, "GarbageCollection", "gc"), reg, IMAGE
    )
    assert first["metadata"]["name"] == again["metadata"]["name"] != other["metadata"]["name"]
    pod = first["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert "podAffinity" in pod["affinity"]  # a ReadWriteOnce volume: next to the registry


def test_three_way_patch() -> None:
    last = {"metadata": {"labels": {"a": "1", "old": "x"}}, "spec": {"replicas": 2, "x": 1}}
    desired = {"metadata": {"labels": {"a": "1"}}, "spec": {"x": 1, "list": [{"n": 1}]}}
    current = {
        "metadata": {"labels": {"a": "1", "old": "x"}, "uid": "u"},
        "spec": {"replicas": 2, "x": 1, "list": [{"n": 1, "default": True}]},
    }
    assert three_way_patch(last, desired, current) == {
        "metadata": {"labels": {"old": None}},
        "spec": {"replicas": None},
    }
    assert (
        three_way_patch(
            desired,
            desired,
            current | {"metadata": desired["metadata"], "spec": {"x": 1, "list": [{"n": 1}]}},
        )
        == {}
    )
    assert is_subset({"a": [1, {"b": 2}]}, {"a": [1, {"b": 2, "c": 3}], "d": 4})
    assert not is_subset({"a": [1]}, {"a": [1, 2]})


def test_conditions_and_status() -> None:
    conditions = set_condition([], "Ready", False, "R", "m", 1, "T1")
    conditions = set_condition(conditions, "Ready", False, "R2", "m2", 2, "T2")
    assert conditions[0]["lastTransitionTime"] == "T1" and conditions[0]["reason"] == "R2"
    conditions = set_condition(conditions, "Ready", True, "R3", "", 2, "T3")
    assert conditions[0]["lastTransitionTime"] == "T3"
    deployment = {
        "metadata": {"generation": 2},
        "spec": {"replicas": 2},
        "status": {
            "observedGeneration": 2,
            "replicas": 2,
            "readyReplicas": 2,
            "updatedReplicas": 2,
        },
    }
    status = registry_status([], 1, deployment, "T")
    by_type = {c["type"]: c for c in status["conditions"]}
    assert by_type["Ready"]["status"] == "True" and by_type["Progressing"]["status"] == "False"
    schema = openapi_schema("Registry")["properties"]["status"]
    jsonschema.validate(status | {"observedGeneration": 1}, schema)


def test_gc_results() -> None:
    assert parse_gc_counts(
        'log line\n{"deleted": {"blobs": 3, "manifests": 1}, "dry_run": true}'
    ) == {"deleted_blobs": 3, "deleted_manifests": 1}
    assert parse_gc_counts("not json") == {}
    job = {
        "metadata": {"name": "j"},
        "status": {
            "failed": 1,
            "startTime": "S",
            "conditions": [{"type": "Failed", "status": "True"}],
        },
    }
    run = gc_run_status(job, [])
    assert run == {"jobName": "j", "result": "Failed", "startTime": "S"}
    schema = openapi_schema("GarbageCollection")["properties"]["status"]
    jsonschema.validate({"lastRun": run}, schema)
