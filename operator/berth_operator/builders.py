"""Pure functions: a custom resource in, the desired Kubernetes objects out.

Nothing here talks to the API; handlers apply what these return. Every builder takes the
resource's name, namespace and *defaulted* spec (see ``crds.defaulted_spec``).
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from berth_operator import API_VERSION
from berth_operator.crds import defaulted_spec

Obj = dict[str, Any]

HTTP_PORT = 5000
CONFIG_DIR = "/etc/berth"
CONFIG_PATH = f"{CONFIG_DIR}/config.yaml"
CONFIG_KEY = "config.yaml"
DATA_DIR = "/var/lib/berth"
AUTH_DIR = f"{CONFIG_DIR}/auth"
NOTIFY_DIR = f"{CONFIG_DIR}/notifications"
PROXY_DIR = f"{CONFIG_DIR}/proxy"
RUN_AS = 10001
METRICS_PORT = 9090  # observability.metrics_port of every registry pod
SHUTDOWN_MARGIN = 5  # seconds between the server's shutdown timeout and SIGKILL

CHECKSUM_ANNOTATION = "berth.dev/config-checksum"
REGISTRY_LABEL = "berth.dev/registry"
GC_LABEL = "berth.dev/garbage-collection"
MANAGED_BY = "berth-operator"


class SpecError(ValueError):
    """A spec the API server accepted but that cannot be run; the message is shown in status."""


# --------------------------------------------------------------------------- names and labels


def config_map_name(name: str) -> str:
    return f"{name}-config"


def pvc_name(name: str) -> str:
    return f"{name}-data"


def node_setup_name(name: str) -> str:
    return f"{name}-node-setup"


def selector_string(name: str) -> str:
    """The registry pods' label selector as a string (``status.selector``, for ``scale``)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(name).items()))


def selector_labels(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "berth",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": "registry",
    }


def registry_labels(name: str) -> dict[str, str]:
    return {
        **selector_labels(name),
        "app.kubernetes.io/managed-by": MANAGED_BY,
        REGISTRY_LABEL: name,
    }


def owner_reference(owner: Obj) -> Obj:
    """A controller reference to ``owner`` (a custom resource body)."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner.get("apiVersion", API_VERSION),
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(name: str, namespace: str, labels: dict[str, str], **extra: Any) -> Obj:
    meta: Obj = {"name": name, "namespace": namespace, "labels": dict(labels)}
    meta.update({k: v for k, v in extra.items() if v})
    return meta


def in_cluster_url(name: str, namespace: str, spec: Obj) -> str:
    return f"http://{name}.{namespace}.svc:{spec['service']['port']}"


# --------------------------------------------------------------------------- validation


def validate_registry_spec(spec: Obj) -> None:
    """Raise ``SpecError`` for what the CRD schema cannot express (or a cluster did not enforce)."""
    problems: list[str] = []
    storage = spec["storage"]
    if storage["driver"] == "s3" and not (storage.get("s3") or {}).get("bucket"):
        problems.append("storage.s3.bucket is required when storage.driver is s3")
    if storage["driver"] == "filesystem":
        fs = storage["filesystem"]
        scaled = spec["autoscaling"]["enabled"] or spec["replicas"] > 1
        if fs["accessMode"] == "ReadWriteOnce" and scaled:
            problems.append(
                "storage.filesystem.accessMode ReadWriteOnce serves a single replica: set "
                "replicas to 1 (and autoscaling off), use ReadWriteMany, or use s3 storage"
            )
    auth = spec["auth"]
    if auth["mode"] == "htpasswd" and not (auth.get("htpasswd") or {}).get("secretName"):
        problems.append("auth.htpasswd.secretName is required when auth.mode is htpasswd")
    if auth["mode"] == "token":
        token = auth.get("token") or {}
        if not any(token.get(k) for k in ("jwksURL", "trustedKeysSecret", "signingKeySecret")):
            problems.append(
                "auth.token needs jwksURL, trustedKeysSecret or signingKeySecret to verify tokens"
            )
    names = [u["name"] for u in (spec.get("proxy") or {}).get("upstreams") or []]
    if len(set(names)) != len(names):
        problems.append("proxy.upstreams names must be unique")
    scaling = spec["autoscaling"]
    if scaling["enabled"] and scaling["minReplicas"] > scaling["maxReplicas"]:
        problems.append("autoscaling.minReplicas must not exceed autoscaling.maxReplicas")
    if spec["ingress"]["enabled"] and not spec["ingress"].get("host"):
        problems.append("ingress.host is required when ingress.enabled is true")
    extra_http = (spec.get("config") or {}).get("http") or {}
    for key in ("host", "port"):
        if key in extra_http:
            problems.append(f"config.http.{key} is set by the operator and cannot be overridden")
    problems += _serving_problems(spec)
    if problems:
        raise SpecError("; ".join(problems))


def _serving_problems(spec: Obj) -> list[str]:
    problems: list[str] = []
    if spec["preStopDelaySeconds"] + SHUTDOWN_MARGIN >= spec["terminationGracePeriodSeconds"]:
        problems.append(
            f"terminationGracePeriodSeconds must exceed preStopDelaySeconds by more than "
            f"{SHUTDOWN_MARGIN} seconds (time for requests in flight to finish)"
        )
    if spec["service"]["metricsPort"] == spec["service"]["port"]:
        problems.append("service.metricsPort must differ from service.port")
    gateway = spec["gateway"]
    if gateway["enabled"] and not gateway.get("parentRefs"):
        problems.append("gateway.parentRefs is required when gateway.enabled is true")
    certificate = spec["certificate"]
    if certificate["enabled"]:
        if not certificate.get("issuerRef"):
            problems.append("certificate.issuerRef is required when certificate.enabled is true")
        if not certificate_dns_names(spec):
            problems.append("certificate.dnsNames (or ingress.host, gateway.hostnames) is required")
    node = spec["nodeSetup"]
    if (
        node["enabled"]
        and node.get("caConfigMap")
        and not node.get("endpoint", "").startswith("https://")
    ):
        problems.append("nodeSetup.caConfigMap needs an https nodeSetup.endpoint")
    return problems


# --------------------------------------------------------------------------- registry config


@dataclass
class AuthParts:
    """The ``auth`` section of the registry config and the Secret files it needs mounted."""

    config: Obj | None = None
    volumes: list[Obj] = field(default_factory=list)
    mounts: list[Obj] = field(default_factory=list)


def _mounted_file(volume: str, directory: str, source: Obj) -> AuthParts:
    """One file of a Secret or ConfigMap (``source``: the volume's source), in ``directory``."""
    return AuthParts(
        volumes=[{"name": volume, **source}],
        mounts=[{"name": volume, "mountPath": directory, "readOnly": True}],
    )


def _secret_file(volume: str, secret: str, key: str, filename: str, mode: int) -> AuthParts:
    source = {
        "secret": {
            "secretName": secret,
            "items": [{"key": key, "path": filename}],
            "defaultMode": mode,
        }
    }
    return _mounted_file(f"auth-{volume}", f"{AUTH_DIR}/{volume}", source)


def auth_parts(spec: Obj) -> AuthParts:
    """Map ``spec.auth`` to the registry's ``auth:`` config section (service/berth/config.py,
    ``AuthSettings``), with the referenced Secrets mounted as files.

    Kept in one place on purpose: the registry's auth settings are still settling.
    """
    auth = spec["auth"]
    mode = auth["mode"]
    if mode == "none":
        return AuthParts()
    if mode == "htpasswd":
        ref = auth["htpasswd"]
        parts = _secret_file(
            "htpasswd", ref["secretName"], ref.get("key", "htpasswd"), "htpasswd", 0o444
        )
        parts.config = {"mode": "htpasswd", "htpasswd_file": f"{AUTH_DIR}/htpasswd/htpasswd"}
        return parts
    token = auth.get("token") or {}
    section: Obj = {}
    for src, dst in (
        ("realm", "realm"),
        ("service", "service"),
        ("issuer", "issuer"),
        ("jwksURL", "jwks_url"),
    ):
        if token.get(src):
            section[dst] = token[src]
    parts = AuthParts()
    trusted = token.get("trustedKeysSecret")
    if trusted:
        more = _secret_file(
            "trusted", trusted["name"], trusted.get("key", "keys.pem"), "keys.pem", 0o444
        )
        parts.volumes += more.volumes
        parts.mounts += more.mounts
        section["trusted_keys_file"] = f"{AUTH_DIR}/trusted/keys.pem"
    signing = token.get("signingKeySecret")
    if signing:
        # A private key: readable by the pod's group (fsGroup) only.
        more = _secret_file(
            "signing", signing["name"], signing.get("key", "key.pem"), "key.pem", 0o440
        )
        parts.volumes += more.volumes
        parts.mounts += more.mounts
        section["signing_key_file"] = f"{AUTH_DIR}/signing/key.pem"
    parts.config = {"mode": "token", "token": section}
    return parts


def notification_parts(spec: Obj) -> AuthParts:
    """Map ``spec.notifications`` to the registry's ``notifications:`` config section
    (``NotificationSettings``), with each endpoint's Secrets and CA ConfigMap projected into a
    directory of its own. The registry reads them at each delivery, so a rotated Secret
    applies without a restart."""
    notifications = spec.get("notifications") or {}
    endpoints = notifications.get("endpoints") or []
    parts = AuthParts()
    if not endpoints:
        return parts
    section: Obj = {"endpoints": []}
    if notifications.get("deadLetterRetentionSeconds") is not None:
        section["dead_letter_retention_seconds"] = notifications["deadLetterRetentionSeconds"]
    for index, endpoint in enumerate(endpoints):
        # By position: an endpoint's name may be longer than a volume name may be.
        directory = f"{NOTIFY_DIR}/{index}"
        config, sources = _endpoint_config(endpoint, directory)
        section["endpoints"].append(config)
        if sources:
            volume = f"notify-{index}"
            # Signing keys and tokens: readable by the pod's group (fsGroup) only.
            projected = {"sources": sources, "defaultMode": 0o440}
            parts.volumes.append({"name": volume, "projected": projected})
            parts.mounts.append({"name": volume, "mountPath": directory, "readOnly": True})
    parts.config = section
    return parts


def _endpoint_config(endpoint: Obj, directory: str) -> tuple[Obj, list[Obj]]:
    """One endpoint's config, and the projected volume sources of the files it names."""
    config: Obj = {"name": endpoint["name"], "url": endpoint["url"]}
    for src, dst in (
        ("format", "format"),
        ("actions", "actions"),
        ("repositories", "repositories"),
        ("mediaTypes", "media_types"),
        ("timeoutSeconds", "timeout_seconds"),
        ("backoffSeconds", "backoff_seconds"),
        ("maxAttempts", "max_attempts"),
        ("queueSize", "queue_size"),
    ):
        if endpoint.get(src) is not None:
            config[dst] = endpoint[src]
    if endpoint.get("headers"):
        config["headers"] = {k: [v] for k, v in endpoint["headers"].items()}
    sources: list[Obj] = []
    secrets: list[tuple[str, str, str]] = []  # (Secret, key, file name)
    if endpoint.get("secret"):
        ref = endpoint["secret"]
        secrets.append((ref["name"], ref.get("key", "secret"), "secret"))
        config["secret_file"] = f"{directory}/secret"
    headers = endpoint.get("headerSecrets") or []
    for h in headers:
        secrets.append((h["name"], h["key"], f"header-{h['header'].lower()}"))
    if headers:
        config["header_files"] = {
            h["header"]: f"{directory}/header-{h['header'].lower()}" for h in headers
        }
    for name, key, filename in secrets:
        sources.append({"secret": {"name": name, "items": [{"key": key, "path": filename}]}})
    ca = endpoint.get("caConfigMap")
    if ca:
        item = {"key": ca.get("key", "ca.crt"), "path": "ca.crt"}
        sources.append({"configMap": {"name": ca["name"], "items": [item]}})
        config["ca_file"] = f"{directory}/ca.crt"
    return config, sources


def source_path(source: Obj) -> str:
    """The one file a Secret or ConfigMap volume source projects."""
    (kind,) = source.values()
    return str(kind["items"][0]["path"])


def proxy_parts(spec: Obj) -> AuthParts:
    """Map ``spec.proxy`` to the registry's ``proxy:`` config section (``ProxySettings``), with
    each upstream's password Secret and CA ConfigMap mounted as files."""
    proxy = spec.get("proxy") or {}
    upstreams = proxy.get("upstreams") or []
    if not upstreams:
        return AuthParts()
    parts = AuthParts()
    section: list[Obj] = []
    for i, upstream in enumerate(upstreams):
        item: Obj = {"name": upstream["name"], "url": upstream["url"]}
        for src, dst in (
            ("namespace", "namespace"),
            ("username", "username"),
            ("tagTTLSeconds", "tag_ttl_seconds"),
            ("repositories", "repositories"),
            ("insecure", "insecure"),
            ("egressProxy", "egress_proxy"),
            ("anonymousFill", "anonymous_fill"),
        ):
            if upstream.get(src) is not None:
                item[dst] = copy.deepcopy(upstream[src])
        # Volumes by position: upstream names may be as long as a volume name may be.
        password, ca = upstream.get("passwordSecret"), upstream.get("caConfigMap")
        files = []
        if password:
            # The password is readable by the pod's group (fsGroup) only.
            items = [{"key": password.get("key", "password"), "path": "password"}]
            secret = {"secretName": password["name"], "items": items, "defaultMode": 0o440}
            files.append(("password", "password_file", {"secret": secret}))
        if ca:
            items = [{"key": ca.get("key", "ca.crt"), "path": "ca.crt"}]
            files.append(("ca", "ca_file", {"configMap": {"name": ca["name"], "items": items}}))
        for kind, setting, source in files:
            directory = f"{PROXY_DIR}/{i}-{kind}"
            more = _mounted_file(f"proxy-{i}-{kind}", directory, source)
            parts.volumes += more.volumes
            parts.mounts += more.mounts
            item[setting] = f"{directory}/{source_path(source)}"
        section.append(item)
    parts.config = {"upstreams": section}
    for src, dst in (
        ("fillClaimWaitSeconds", "fill_claim_wait_seconds"),
        ("evictUnusedSeconds", "evict_unused_seconds"),
        ("maxBytes", "max_bytes"),
    ):
        if proxy.get(src) is not None:
            parts.config[dst] = proxy[src]
    return parts


def deep_merge(base: Obj, override: Obj) -> Obj:
    result = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = deep_merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def registry_config(spec: Obj) -> Obj:
    """The registry's config file (see service/berth/config.py), as a dict."""
    storage = spec["storage"]
    http: Obj = {"host": "0.0.0.0", "port": HTTP_PORT}
    if spec.get("externalURL"):
        http["base_url"] = spec["externalURL"]
    store: Obj = {
        "driver": storage["driver"],
        "redirect": storage["redirect"]["enabled"],
        "redirect_expiry_seconds": storage["redirect"]["expirySeconds"],
        "delete_enabled": storage["deleteEnabled"],
        "read_only": storage["readOnly"],
    }
    if storage["driver"] == "filesystem":
        store["filesystem"] = {"root": DATA_DIR}
    else:
        s3 = storage["s3"]
        s3_config: Obj = {"bucket": s3["bucket"], "region": s3.get("region", "us-east-1")}
        for src, dst in (
            ("endpoint", "endpoint_url"),
            ("publicEndpoint", "public_endpoint_url"),
            ("rootDirectory", "root_directory"),
            ("pathStyle", "path_style"),
            ("storageClass", "storage_class"),
        ):
            if s3.get(src) is not None:
                s3_config[dst] = s3[src]
        store["s3"] = s3_config
    config: Obj = {
        "http": http,
        "storage": store,
        "observability": {"log_format": "json", "metrics": True},
    }
    auth = auth_parts(spec).config
    if auth is not None:
        config["auth"] = auth
    notifications = notification_parts(spec).config
    if notifications is not None:
        config["notifications"] = notifications
    proxy = proxy_parts(spec).config
    if proxy is not None:
        config["proxy"] = proxy
    merged = deep_merge(config, spec.get("config") or {})
    # Dedicated fields win over spec.config (config_conflicts names what was overridden), and
    # what the pod's ports and lifecycle depend on is the operator's.
    merged["storage"] = deep_merge(merged.get("storage") or {}, store)
    merged["http"] = deep_merge(merged.get("http") or {}, operator_http_settings(spec))
    merged["observability"]["metrics_port"] = METRICS_PORT
    return merged


def shutdown_timeout(spec: Obj) -> int:
    """The server's graceful shutdown timeout: what is left of the grace period after the
    preStop delay, minus a margin for the process to exit before SIGKILL."""
    grace = spec["terminationGracePeriodSeconds"] - spec["preStopDelaySeconds"]
    return max(1, grace - SHUTDOWN_MARGIN)


def operator_http_settings(spec: Obj) -> Obj:
    return {
        "host": "0.0.0.0",
        "port": HTTP_PORT,
        "shutdown_timeout_seconds": shutdown_timeout(spec),
    }


def _leaves(value: Any, prefix: str) -> list[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        return [leaf for k, v in value.items() for leaf in _leaves(v, f"{prefix}.{k}")]
    return [(prefix, value)]


def config_conflicts(spec: Obj) -> list[str]:
    """Keys of ``spec.config`` that contradict a dedicated field (``spec.storage`` today): the
    dedicated field wins; the Registry's ``ConfigOverridden`` condition lists these."""
    extra = spec.get("config") or {}
    generated = registry_config({**spec, "config": {}})
    found = []
    for path, value in _leaves(extra.get("storage") or {}, "storage"):
        node: Any = generated
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                break
        if node is not None and not isinstance(node, dict) and node != value:
            found.append(f"config.{path}={value!r} (spec.storage sets {node!r})")
    observability = extra.get("observability") or {}
    if "metrics_port" in observability and observability["metrics_port"] != METRICS_PORT:
        found.append(
            f"config.observability.metrics_port={observability['metrics_port']!r} "
            f"(the operator serves metrics on {METRICS_PORT})"
        )
    http = extra.get("http") or {}
    if "shutdown_timeout_seconds" in http and http["shutdown_timeout_seconds"] != shutdown_timeout(
        spec
    ):
        found.append(
            "config.http.shutdown_timeout_seconds (derived from terminationGracePeriodSeconds "
            "and preStopDelaySeconds)"
        )
    return found


def render_config(config: Obj) -> str:
    return yaml.safe_dump(config, sort_keys=True, default_flow_style=False)


def checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- pod parts


POD_SECURITY_CONTEXT: Obj = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS,
    "runAsGroup": RUN_AS,
    "fsGroup": RUN_AS,
    # Change volume ownership only when its root does not match already: a large volume is not
    # walked on every pod start (that delays rollouts by minutes).
    "fsGroupChangePolicy": "OnRootMismatch",
    "seccompProfile": {"type": "RuntimeDefault"},
}
PLATFORM_ASSIGNED = ("runAsUser", "runAsGroup", "fsGroup")

CONTAINER_SECURITY_CONTEXT: Obj = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}


@dataclass
class PodParts:
    volumes: list[Obj]
    mounts: list[Obj]
    env: list[Obj]


def pod_parts(name: str, spec: Obj) -> PodParts:
    """Volumes, mounts and environment shared by the registry pods and the GC jobs."""
    storage = spec["storage"]
    volumes: list[Obj] = [
        {"name": "config", "configMap": {"name": config_map_name(name)}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[Obj] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    env: list[Obj] = []
    if storage["driver"] == "filesystem":
        claim = storage["filesystem"].get("claimName") or pvc_name(name)
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": "data", "mountPath": DATA_DIR})
    else:
        secret = (storage.get("s3") or {}).get("credentialsSecret")
        if secret:
            for var, key_field, default in (
                ("AWS_ACCESS_KEY_ID", "accessKeyIdKey", "AWS_ACCESS_KEY_ID"),
                ("AWS_SECRET_ACCESS_KEY", "secretAccessKeyKey", "AWS_SECRET_ACCESS_KEY"),
            ):
                env.append(
                    {
                        "name": var,
                        "valueFrom": {
                            "secretKeyRef": {
                                "name": secret["name"],
                                "key": secret.get(key_field, default),
                            }
                        },
                    }
                )
    for files in (auth_parts(spec), notification_parts(spec), proxy_parts(spec)):
        volumes += files.volumes
        mounts += files.mounts
    volumes += copy.deepcopy(spec.get("extraVolumes") or [])
    mounts += copy.deepcopy(spec.get("extraVolumeMounts") or [])
    env += copy.deepcopy(spec.get("env") or [])
    return PodParts(volumes=volumes, mounts=mounts, env=env)


def _image(spec: Obj, default_image: str) -> str:
    return str(spec.get("image") or default_image)


def pod_security_context(spec: Obj) -> Obj:
    context = copy.deepcopy(POD_SECURITY_CONTEXT)
    if spec.get("platformAssignsUID"):
        # OpenShift's restricted-v2 assigns a UID (and fsGroup) from the namespace's range and
        # refuses pods that ask for another one.
        for key in PLATFORM_ASSIGNED:
            context.pop(key)
    return context


def _pod_common(spec: Obj) -> Obj:
    pod: Obj = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(spec),
    }
    if spec.get("serviceAccountName"):
        pod["serviceAccountName"] = spec["serviceAccountName"]
    if spec.get("imagePullSecrets"):
        pod["imagePullSecrets"] = copy.deepcopy(spec["imagePullSecrets"])
    if spec.get("nodeSelector"):
        pod["nodeSelector"] = dict(spec["nodeSelector"])
    if spec.get("tolerations"):
        pod["tolerations"] = copy.deepcopy(spec["tolerations"])
    return pod


# --------------------------------------------------------------------------- registry objects


def build_config_map(name: str, namespace: str, spec: Obj) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(config_map_name(name), namespace, registry_labels(name)),
        "data": {CONFIG_KEY: render_config(registry_config(spec))},
    }


def build_pvc(name: str, namespace: str, spec: Obj) -> Obj | None:
    """The data claim, when the operator is to create it. It gets no owner: data outlives it."""
    storage = spec["storage"]
    if storage["driver"] != "filesystem" or storage["filesystem"].get("claimName"):
        return None
    fs = storage["filesystem"]
    pvc_spec: Obj = {
        "accessModes": [fs["accessMode"]],
        "resources": {"requests": {"storage": fs["size"]}},
    }
    if fs.get("storageClassName"):
        pvc_spec["storageClassName"] = fs["storageClassName"]
    meta = _meta(pvc_name(name), namespace, registry_labels(name))
    meta["annotations"] = {"helm.sh/resource-policy": "keep", "berth.dev/retain": "true"}
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": pvc_spec}


def build_deployment(name: str, namespace: str, spec: Obj, default_image: str) -> Obj:
    config_text = render_config(registry_config(spec))
    parts = pod_parts(name, spec)
    single_writer = (
        spec["storage"]["driver"] == "filesystem"
        and spec["storage"]["filesystem"]["accessMode"] == "ReadWriteOnce"
    )
    container: Obj = {
        "name": "registry",
        "image": _image(spec, default_image),
        "imagePullPolicy": spec["imagePullPolicy"],
        "command": ["berth", "serve", "--config", CONFIG_PATH],
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "initialDelaySeconds": 5,
            "periodSeconds": 10,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        "resources": copy.deepcopy(spec["resources"]),
        "securityContext": copy.deepcopy(CONTAINER_SECURITY_CONTEXT),
        "volumeMounts": parts.mounts,
    }
    if parts.env:
        container["env"] = parts.env
    if spec["preStopDelaySeconds"] > 0:
        # Keep serving while endpoints and load balancers stop sending new requests; SIGTERM
        # follows (then /readyz answers 503 and requests in flight finish).
        container["lifecycle"] = {
            "preStop": {"exec": {"command": ["sleep", str(spec["preStopDelaySeconds"])]}}
        }
    pod = _pod_common(spec)
    spread = spec.get("topologySpreadConstraints") or [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector_labels(name)},
        }
    ]
    pod.update(
        {
            "containers": [container],
            "volumes": parts.volumes,
            "terminationGracePeriodSeconds": spec["terminationGracePeriodSeconds"],
            "topologySpreadConstraints": copy.deepcopy(spread),
        }
    )
    if spec.get("priorityClassName"):
        pod["priorityClassName"] = spec["priorityClassName"]
    if spec.get("affinity"):
        pod["affinity"] = copy.deepcopy(spec["affinity"])
    annotations = dict(spec.get("podAnnotations") or {})
    annotations[CHECKSUM_ANNOTATION] = checksum(config_text)
    deployment_spec: Obj = {
        "selector": {"matchLabels": selector_labels(name)},
        "revisionHistoryLimit": 5,
        "strategy": (
            {"type": "Recreate"}
            if single_writer
            else {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
        ),
        "template": {
            "metadata": {"labels": registry_labels(name), "annotations": annotations},
            "spec": pod,
        },
    }
    if not spec["autoscaling"]["enabled"]:
        deployment_spec["replicas"] = spec["replicas"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, namespace, registry_labels(name)),
        "spec": deployment_spec,
    }


def build_service(name: str, namespace: str, spec: Obj) -> Obj:
    svc = spec["service"]
    port: Obj = {"name": "http", "port": svc["port"], "targetPort": "http", "protocol": "TCP"}
    if svc["type"] != "ClusterIP" and svc.get("nodePort"):
        port["nodePort"] = svc["nodePort"]
    metrics: Obj = {
        "name": "metrics",
        "port": svc["metricsPort"],
        "targetPort": "metrics",
        "protocol": "TCP",
    }
    annotations = dict(svc.get("annotations") or {})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, namespace, registry_labels(name), annotations=annotations),
        "spec": {"type": svc["type"], "selector": selector_labels(name), "ports": [port, metrics]},
    }


def build_hpa(name: str, namespace: str, spec: Obj) -> Obj | None:
    scaling = spec["autoscaling"]
    if not scaling["enabled"]:
        return None
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(name, namespace, registry_labels(name)),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": scaling["minReplicas"],
            "maxReplicas": scaling["maxReplicas"],
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": scaling["targetCPUUtilizationPercentage"],
                        },
                    },
                }
            ],
            **({"behavior": copy.deepcopy(scaling["behavior"])} if scaling.get("behavior") else {}),
        },
    }


def build_pdb(name: str, namespace: str, spec: Obj) -> Obj | None:
    pdb = spec["podDisruptionBudget"]
    if not pdb["enabled"]:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(name, namespace, registry_labels(name)),
        "spec": {
            "maxUnavailable": pdb["maxUnavailable"],
            "selector": {"matchLabels": selector_labels(name)},
        },
    }


def build_service_monitor(name: str, namespace: str, spec: Obj) -> Obj | None:
    monitor = spec["serviceMonitor"]
    if not monitor["enabled"]:
        return None
    labels = {**registry_labels(name), **(monitor.get("labels") or {})}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _meta(name, namespace, labels),
        "spec": {
            "selector": {"matchLabels": selector_labels(name)},
            "namespaceSelector": {"matchNames": [namespace]},
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": monitor["interval"]}],
        },
    }


def build_ingress(name: str, namespace: str, spec: Obj) -> Obj | None:
    ingress = spec["ingress"]
    if not ingress["enabled"]:
        return None
    annotations = dict(ingress.get("annotations") or {})
    if ingress.get("className") == "nginx":
        # Layers can be large: let ingress-nginx stream bodies of any size.
        annotations.setdefault("nginx.ingress.kubernetes.io/proxy-body-size", "0")
    ingress_spec: Obj = {
        "rules": [
            {
                "host": ingress["host"],
                "http": {
                    "paths": [
                        {
                            "path": "/",
                            "pathType": "Prefix",
                            "backend": {
                                "service": {"name": name, "port": {"name": "http"}},
                            },
                        }
                    ]
                },
            }
        ]
    }
    if ingress.get("className"):
        ingress_spec["ingressClassName"] = ingress["className"]
    tls_secret = ingress.get("tlsSecretName") or (
        certificate_secret(name, spec) if spec["certificate"]["enabled"] else None
    )
    if tls_secret:
        ingress_spec["tls"] = [{"hosts": [ingress["host"]], "secretName": tls_secret}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": _meta(name, namespace, registry_labels(name), annotations=annotations),
        "spec": ingress_spec,
    }


# --------------------------------------------------------------------------- network and node


def build_network_policy(name: str, namespace: str, spec: Obj) -> Obj | None:
    """Ingress to the registry pods: the API port from ``networkPolicy.from`` (empty: anyone), the
    metrics port from ``metricsFrom`` (empty: any namespace), and the operator's storage probe."""
    policy = spec["networkPolicy"]
    if not policy["enabled"]:
        return None
    api_rule: Obj = {"ports": [{"port": "http", "protocol": "TCP"}]}
    if policy.get("from"):
        api_rule["from"] = copy.deepcopy(policy["from"])
    rules = [api_rule]
    if policy.get("from"):
        operator_pods = {
            "namespaceSelector": {},
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": "berth",
                    "app.kubernetes.io/component": "operator",
                }
            },
        }
        rules.append({"ports": [{"port": "http", "protocol": "TCP"}], "from": [operator_pods]})
    rules.append(
        {
            "ports": [{"port": "metrics", "protocol": "TCP"}],
            "from": copy.deepcopy(policy.get("metricsFrom") or [{"namespaceSelector": {}}]),
        }
    )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(name, namespace, registry_labels(name)),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(name)},
            "policyTypes": ["Ingress"],
            "ingress": rules,
        },
    }


def node_setup_host(name: str, namespace: str, spec: Obj) -> str:
    """The registry's name in image references on the nodes."""
    return str(spec["nodeSetup"].get("host") or f"{name}.{namespace}.svc:{spec['service']['port']}")


def node_setup_endpoint(spec: Obj, cluster_ip: str | None) -> str | None:
    """What containerd connects to: the given endpoint, else plain HTTP to the Service's
    cluster IP (None until the Service has one)."""
    node = spec["nodeSetup"]
    if node.get("endpoint"):
        return str(node["endpoint"]).rstrip("/")
    if not cluster_ip or cluster_ip == "None":
        return None
    host = f"[{cluster_ip}]" if ":" in cluster_ip else cluster_ip
    return f"http://{host}:{spec['service']['port']}"


def hosts_toml(host: str, endpoint: str, spec: Obj) -> str:
    """containerd's ``certs.d/<host>/hosts.toml`` for this registry."""
    node = spec["nodeSetup"]
    lines = [
        "# Written by berth-operator's node-setup DaemonSet; edits are overwritten.",
        f'server = "{endpoint}"',
        "",
        f'[host."{endpoint}"]',
        '  capabilities = ["pull", "resolve"]',
    ]
    if node.get("caConfigMap"):
        lines.append(f'  ca = "{node["certsDir"].rstrip("/")}/{host}/ca.crt"')
    if node.get("skipVerify"):
        lines.append("  skip_verify = true")
    return "\n".join(lines) + "\n"


NODE_SETUP_SCRIPT = """\
set -eu
dir="/host-certs.d/$REGISTRY_HOST"
trap 'exit 0' TERM INT
while true; do
  mkdir -p "$dir"
  if [ -f /berth/ca.crt ]; then
    cp /berth/ca.crt "$dir/.ca.crt" && mv "$dir/.ca.crt" "$dir/ca.crt"
  fi
  cp /berth/hosts.toml "$dir/.hosts.toml" && mv "$dir/.hosts.toml" "$dir/hosts.toml"
  sleep 60 & wait $!
done
"""


def build_node_setup(
    name: str, namespace: str, spec: Obj, default_image: str, cluster_ip: str | None
) -> list[Obj]:
    """A ConfigMap with ``hosts.toml`` and a DaemonSet that keeps it in containerd's
    ``certs.d`` on every node (OpenShift's node-ca does this for its registry). Empty when
    disabled, or until the Service has a cluster IP to point at."""
    node = spec["nodeSetup"]
    endpoint = node_setup_endpoint(spec, cluster_ip)
    if not node["enabled"] or endpoint is None:
        return []
    host = node_setup_host(name, namespace, spec)
    object_name = node_setup_name(name)
    labels = {
        "app.kubernetes.io/name": "berth",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": "node-setup",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        REGISTRY_LABEL: name,
    }
    selector = {k: labels[k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance")}
    selector["app.kubernetes.io/component"] = "node-setup"
    config_map: Obj = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(object_name, namespace, labels),
        "data": {"hosts.toml": hosts_toml(host, endpoint, spec)},
    }
    sources: list[Obj] = [
        {"configMap": {"name": object_name, "items": [{"key": "hosts.toml", "path": "hosts.toml"}]}}
    ]
    if node.get("caConfigMap"):
        ca = node["caConfigMap"]
        sources.append(
            {
                "configMap": {
                    "name": ca["name"],
                    "items": [{"key": ca.get("key", "ca.crt"), "path": "ca.crt"}],
                }
            }
        )
    container: Obj = {
        "name": "hosts-toml",
        "image": str(node.get("image") or _image(spec, default_image)),
        "imagePullPolicy": spec["imagePullPolicy"],
        "command": ["/bin/sh", "-c", NODE_SETUP_SCRIPT],
        "env": [{"name": "REGISTRY_HOST", "value": host}],
        "resources": {
            "requests": {"cpu": "5m", "memory": "16Mi"},
            "limits": {"memory": "32Mi"},
        },
        # Root, to write into the node's root-owned certs.d; nothing else: no capabilities,
        # a read-only image, one hostPath directory.
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "config", "mountPath": "/berth", "readOnly": True},
            {"name": "certs-d", "mountPath": "/host-certs.d"},
        ],
    }
    pod: Obj = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "terminationGracePeriodSeconds": 5,
        "containers": [container],
        "volumes": [
            {"name": "config", "projected": {"sources": sources}},
            {
                "name": "certs-d",
                "hostPath": {"path": node["certsDir"], "type": "DirectoryOrCreate"},
            },
        ],
        "tolerations": copy.deepcopy(node.get("tolerations") or [{"operator": "Exists"}]),
    }
    if node.get("nodeSelector"):
        pod["nodeSelector"] = dict(node["nodeSelector"])
    if spec.get("imagePullSecrets"):
        pod["imagePullSecrets"] = copy.deepcopy(spec["imagePullSecrets"])
    daemon_set: Obj = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": _meta(object_name, namespace, labels),
        "spec": {
            "selector": {"matchLabels": selector},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%"}},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }
    return [config_map, daemon_set]


def certificate_secret(name: str, spec: Obj) -> str:
    cert = spec["certificate"]
    return str(cert.get("secretName") or spec["ingress"].get("tlsSecretName") or f"{name}-tls")


def certificate_dns_names(spec: Obj) -> list[str]:
    names = list(spec["certificate"].get("dnsNames") or [])
    if not names:
        if spec["ingress"]["enabled"] and spec["ingress"].get("host"):
            names.append(spec["ingress"]["host"])
        names += [h for h in spec["gateway"].get("hostnames") or [] if h not in names]
    return names


def build_certificate(name: str, namespace: str, spec: Obj) -> Obj | None:
    """A cert-manager Certificate for the registry's public host names."""
    cert = spec["certificate"]
    if not cert["enabled"]:
        return None
    issuer = cert["issuerRef"]
    return {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": _meta(name, namespace, registry_labels(name)),
        "spec": {
            "secretName": certificate_secret(name, spec),
            "dnsNames": certificate_dns_names(spec),
            "issuerRef": {
                "name": issuer["name"],
                "kind": issuer.get("kind", "ClusterIssuer"),
                "group": issuer.get("group", "cert-manager.io"),
            },
        },
    }


def build_http_route(name: str, namespace: str, spec: Obj) -> Obj | None:
    """A Gateway API HTTPRoute to the Service's API port (never the metrics port)."""
    gateway = spec["gateway"]
    if not gateway["enabled"]:
        return None
    hostnames = list(gateway.get("hostnames") or [])
    if not hostnames and spec["ingress"].get("host"):
        hostnames = [spec["ingress"]["host"]]
    route_spec: Obj = {
        "parentRefs": copy.deepcopy(gateway["parentRefs"]),
        "rules": [
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "backendRefs": [{"name": name, "port": spec["service"]["port"]}],
            }
        ],
    }
    if hostnames:
        route_spec["hostnames"] = hostnames
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": _meta(name, namespace, registry_labels(name)),
        "spec": route_spec,
    }


def build_registry_objects(
    body: Obj,
    default_image: str,
    *,
    service_monitor_supported: bool = True,
    gateway_supported: bool = True,
    cert_manager_supported: bool = True,
    cluster_ip: str | None = None,
) -> list[Obj]:
    """Every object a Registry owns, in apply order, with owner references set.

    The PVC, if any, is returned too but without an owner reference (data is never deleted).
    Objects of APIs the cluster lacks (``*_supported``) are left out; the node-setup DaemonSet
    needs the Service's ``cluster_ip`` unless ``nodeSetup.endpoint`` is set.
    """
    name = body["metadata"]["name"]
    namespace = body["metadata"]["namespace"]
    spec = defaulted_spec("Registry", body.get("spec"))
    validate_registry_spec(spec)
    owned: list[Obj | None] = [
        build_config_map(name, namespace, spec),
        build_service(name, namespace, spec),
        build_deployment(name, namespace, spec, default_image),
        build_hpa(name, namespace, spec),
        build_pdb(name, namespace, spec),
        build_service_monitor(name, namespace, spec) if service_monitor_supported else None,
        build_certificate(name, namespace, spec) if cert_manager_supported else None,
        build_ingress(name, namespace, spec),
        build_http_route(name, namespace, spec) if gateway_supported else None,
        build_network_policy(name, namespace, spec),
        *build_node_setup(name, namespace, spec, default_image, cluster_ip),
    ]
    result: list[Obj] = []
    pvc = build_pvc(name, namespace, spec)
    if pvc is not None:
        result.append(pvc)
    for obj in owned:
        if obj is not None:
            obj["metadata"]["ownerReferences"] = [owner_reference(body)]
            result.append(obj)
    return result


# --------------------------------------------------------------------------- garbage collection

GC_RESULT_FILE = "/dev/termination-log"


def gc_command(spec: Obj) -> list[str]:
    """``berth gc`` with the GarbageCollection's options."""
    args = ["berth", "gc", "--config", CONFIG_PATH, "--grace-period", spec["gracePeriod"]]
    if spec["deleteUntagged"]:
        args.append("--delete-untagged")
    if spec["dryRun"]:
        args.append("--dry-run")
    args.append("--json")
    return args


def _shell_quote(arg: str) -> str:
    if arg and all(c.isalnum() or c in "-_./=:" for c in arg):
        return arg
    return "'" + arg.replace("'", "'\"'\"'") + "'"


def gc_shell(spec: Obj) -> str:
    """Run ``berth gc`` and keep its JSON summary as the termination message (read for status)."""
    command = " ".join(_shell_quote(a) for a in gc_command(spec))
    return f'{command} > {GC_RESULT_FILE}; rc=$?; cat {GC_RESULT_FILE}; exit "$rc"'


# What a one-shot collection does: a change to one of these is a new run (a new Job name). Nothing
# else -- the Registry's image or storage, ``suspend``, resources, deadlines -- renames the Job, so
# an operator restart or a registry upgrade never runs a collection twice.
GC_RUN_FIELDS = ("registryRef", "dryRun", "deleteUntagged", "gracePeriod")


def gc_job_hash(gc_spec: Obj) -> str:
    relevant = {key: gc_spec.get(key) for key in GC_RUN_FIELDS}
    return checksum(json.dumps(relevant, sort_keys=True))[:8]


def gc_job_name(name: str, gc_spec: Obj) -> str:
    return f"{name}-gc-{gc_job_hash(gc_spec)}"


def build_gc_job_template(
    gc_name: str,
    registry_name: str,
    namespace: str,
    gc_spec: Obj,
    registry_spec: Obj,
    default_image: str,
) -> Obj:
    """The Job spec (``jobTemplate.spec`` of a CronJob, or a Job's spec)."""
    parts = pod_parts(registry_name, registry_spec)
    labels = {
        "app.kubernetes.io/name": "berth",
        "app.kubernetes.io/instance": registry_name,
        "app.kubernetes.io/component": "garbage-collection",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        GC_LABEL: gc_name,
    }
    container: Obj = {
        "name": "gc",
        "image": _image(registry_spec, default_image),
        "imagePullPolicy": registry_spec["imagePullPolicy"],
        "command": ["/bin/sh", "-c", gc_shell(gc_spec)],
        "securityContext": copy.deepcopy(CONTAINER_SECURITY_CONTEXT),
        "volumeMounts": parts.mounts,
        "terminationMessagePolicy": "File",
    }
    if parts.env:
        container["env"] = parts.env
    if gc_spec.get("resources"):
        container["resources"] = copy.deepcopy(gc_spec["resources"])  # defaulted by the CRD
    pod = _pod_common(registry_spec)
    pod.update({"restartPolicy": "Never", "containers": [container], "volumes": parts.volumes})
    storage = registry_spec["storage"]
    if storage["driver"] == "filesystem" and storage["filesystem"]["accessMode"] == "ReadWriteOnce":
        # A ReadWriteOnce volume is attached to one node: run next to the registry pod.
        pod["affinity"] = {
            "podAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "labelSelector": {"matchLabels": selector_labels(registry_name)},
                        "topologyKey": "kubernetes.io/hostname",
                    }
                ]
            }
        }
    return {
        "backoffLimit": gc_spec["backoffLimit"],
        "activeDeadlineSeconds": gc_spec["activeDeadlineSeconds"],
        "template": {"metadata": {"labels": labels}, "spec": pod},
    }


def build_gc_workload(body: Obj, registry: Obj, default_image: str) -> Obj:
    """A CronJob (``spec.schedule`` set) or a one-shot Job for a GarbageCollection."""
    name = body["metadata"]["name"]
    namespace = body["metadata"]["namespace"]
    gc_spec = defaulted_spec("GarbageCollection", body.get("spec"))
    registry_name = gc_spec["registryRef"]["name"]
    registry_spec = defaulted_spec("Registry", registry.get("spec"))
    validate_registry_spec(registry_spec)
    labels = {
        "app.kubernetes.io/name": "berth",
        "app.kubernetes.io/instance": registry_name,
        "app.kubernetes.io/component": "garbage-collection",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        GC_LABEL: name,
    }
    job_spec = build_gc_job_template(
        name, registry_name, namespace, gc_spec, registry_spec, default_image
    )
    owner = [owner_reference(body)]
    if gc_spec.get("schedule"):
        cron_spec: Obj = {
            "schedule": gc_spec["schedule"],
            "suspend": gc_spec["suspend"],
            "concurrencyPolicy": "Forbid",
            "successfulJobsHistoryLimit": gc_spec["successfulJobsHistoryLimit"],
            "failedJobsHistoryLimit": gc_spec["failedJobsHistoryLimit"],
            "jobTemplate": {"metadata": {"labels": labels}, "spec": job_spec},
        }
        if gc_spec.get("timeZone"):
            cron_spec["timeZone"] = gc_spec["timeZone"]
        return {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": _meta(f"{name}-gc", namespace, labels, ownerReferences=owner),
            "spec": cron_spec,
        }
    # One run per GC_RUN_FIELDS: the handler creates it once and records it in status.
    job_name = gc_job_name(name, gc_spec)
    job_spec["suspend"] = gc_spec["suspend"]
    job_spec["ttlSecondsAfterFinished"] = gc_spec["ttlSecondsAfterFinished"]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(job_name, namespace, labels, ownerReferences=owner),
        "spec": job_spec,
    }


__all__ = [
    "AuthParts",
    "SpecError",
    "auth_parts",
    "build_config_map",
    "build_deployment",
    "build_gc_workload",
    "build_hpa",
    "build_ingress",
    "build_pdb",
    "build_pvc",
    "build_registry_objects",
    "build_service",
    "build_service_monitor",
    "notification_parts",
    "proxy_parts",
    "registry_config",
    "validate_registry_spec",
]
