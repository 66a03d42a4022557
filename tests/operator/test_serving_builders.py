"""Serving options of a Registry (issue 11, points 7-9 and 11-13), as pure builders: every new
object validates against Kubernetes' schemas (the custom kinds against their CRDs' essentials),
and the generated config loads in Berth."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from crd_models import validate_with_crd_models

from berth_operator.builders import (
    METRICS_PORT,
    SpecError,
    build_gc_workload,
    build_registry_objects,
    config_conflicts,
    registry_config,
    selector_labels,
    selector_string,
    validate_registry_spec,
)
from berth_operator.crds import CRD_FILES, crd_text, defaulted_spec, load_crds, openapi_schema
from berth_operator.serving import (
    SCHEMA_ANNOTATION,
    crd_problem,
    serving_conditions,
    storage_conditions,
)

K8S_VERSIONS = ("1.29", "1.35")
IMAGE = "berth:test"
S3 = {"driver": "s3", "s3": {"bucket": "b", "region": "eu-west-1"}}

FULL: dict[str, Any] = {
    "storage": S3,
    "replicas": 3,
    "terminationGracePeriodSeconds": 300,
    "preStopDelaySeconds": 10,
    "platformAssignsUID": True,
    "priorityClassName": "registry-critical",
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["infra"]}]}
                ]
            }
        }
    },
    "topologySpreadConstraints": [
        {
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "reg"}},
        }
    ],
    "env": [{"name": "AWS_CA_BUNDLE", "value": "/etc/ca/ca.crt"}],
    "extraVolumes": [{"name": "ca", "configMap": {"name": "corp-ca"}}],
    "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ca", "readOnly": True}],
    "service": {"annotations": {"service.beta.kubernetes.io/aws-load-balancer-internal": "true"}},
    "autoscaling": {
        "enabled": True,
        "minReplicas": 2,
        "maxReplicas": 8,
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": 600}},
    },
    "ingress": {"enabled": True, "className": "nginx", "host": "registry.example.com"},
    "certificate": {"enabled": True, "issuerRef": {"name": "letsencrypt"}},
    "gateway": {
        "enabled": True,
        "parentRefs": [{"name": "public", "namespace": "gateways", "sectionName": "https"}],
    },
    "networkPolicy": {
        "enabled": True,
        "from": [{"namespaceSelector": {"matchLabels": {"team": "apps"}}}],
        "metricsFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
    },
    "nodeSetup": {"enabled": True},
    "serviceMonitor": {"enabled": True},
}


def body(spec: dict[str, Any], name: str = "reg", kind: str = "Registry") -> dict[str, Any]:
    return {
        "apiVersion": "berth.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1},
        "spec": copy.deepcopy(spec),
    }


def objects(spec: dict[str, Any], **kwargs: Any) -> dict[tuple[str, str], dict[str, Any]]:
    kwargs.setdefault("cluster_ip", "10.96.0.12")
    built = build_registry_objects(body(spec), IMAGE, **kwargs)
    return {(o["kind"], o["metadata"]["name"]): o for o in built}


# Custom kinds have no published schema here: check them against the required structure of
# their CRDs (gateway.networking.k8s.io/v1 HTTPRoute, cert-manager.io/v1 Certificate).
HTTP_ROUTE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "gateway.networking.k8s.io/v1"},
        "kind": {"const": "HTTPRoute"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "parentRefs": {
                    "type": "array",
                    "maxItems": 32,
                    "items": {"type": "object", "required": ["name"]},
                },
                "hostnames": {"type": "array", "maxItems": 16, "items": {"type": "string"}},
                "rules": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "matches": {"type": "array"},
                            "backendRefs": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["name", "port"],
                                    "properties": {"port": {"type": "integer"}},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
CERTIFICATE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "cert-manager.io/v1"},
        "kind": {"const": "Certificate"},
        "spec": {
            "type": "object",
            "required": ["secretName", "issuerRef"],
            "additionalProperties": False,
            "properties": {
                "secretName": {"type": "string", "minLength": 1},
                "dnsNames": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                "issuerRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string"},
                        "kind": {"type": "string"},
                        "group": {"type": "string"},
                    },
                },
            },
        },
    },
}


def test_full_spec_is_a_valid_custom_resource() -> None:
    jsonschema.validate(body(FULL), openapi_schema("Registry"))


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_validates(version: str) -> None:
    built = objects(FULL)
    kinds = sorted({kind for kind, _ in built})
    assert kinds == [
        "Certificate",
        "ConfigMap",
        "DaemonSet",
        "Deployment",
        "HTTPRoute",
        "HorizontalPodAutoscaler",
        "Ingress",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
        "ServiceMonitor",
    ]
    for (kind, _), obj in built.items():
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "uid-reg"
        if kind == "HTTPRoute":
            jsonschema.validate(obj, HTTP_ROUTE_SCHEMA)
        elif kind == "Certificate":
            jsonschema.validate(obj, CERTIFICATE_SCHEMA)
        elif kind != "ServiceMonitor":
            kubernetes_validate.validate(obj, version, strict=True)


def test_custom_kinds_validate_against_their_crds() -> None:
    """HTTPRoute and Certificate against the schemas generated from Gateway API's and
    cert-manager's CRDs (the structural checks above also refuse unknown fields)."""
    built = objects(FULL)
    custom = [built["HTTPRoute", "reg"], built["Certificate", "reg"]]
    assert validate_with_crd_models(custom) == []
    broken = copy.deepcopy(custom)
    del broken[0]["spec"]["parentRefs"][0]["name"]
    broken[1]["spec"]["issuerRef"] = {"kind": "ClusterIssuer"}
    errors = validate_with_crd_models(broken)
    assert len(errors) == 2 and "name" in errors[0] and "name" in errors[1], errors


def test_rollouts_do_not_cut_uploads() -> None:
    deployment = objects(FULL)["Deployment", "reg"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["terminationGracePeriodSeconds"] == 300
    assert container["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", "10"]}}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    config = registry_config(defaulted_spec("Registry", FULL))
    # The server drains for what is left after the preStop delay, minus a margin before SIGKILL.
    assert config["http"]["shutdown_timeout_seconds"] == 300 - 10 - 5
    default = objects({"storage": S3})["Deployment", "reg"]["spec"]["template"]["spec"]
    assert default["terminationGracePeriodSeconds"] == 120
    assert default["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
    assert default["securityContext"]["runAsUser"] == 10001
    assert default["containers"][0]["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    no_delay = objects({"storage": S3, "preStopDelaySeconds": 0})["Deployment", "reg"]
    assert "lifecycle" not in no_delay["spec"]["template"]["spec"]["containers"][0]


def test_platform_assigned_uid_for_openshift_restricted_v2() -> None:
    pod = objects(FULL)["Deployment", "reg"]["spec"]["template"]["spec"]
    context = pod["securityContext"]
    assert not {"runAsUser", "runAsGroup", "fsGroup"} & set(context)
    assert context["runAsNonRoot"] is True and context["fsGroupChangePolicy"] == "OnRootMismatch"
    gc = build_gc_workload(
        body({"registryRef": {"name": "reg"}}, "gc", "GarbageCollection"), body(FULL), IMAGE
    )
    assert "runAsUser" not in gc["spec"]["template"]["spec"]["securityContext"]


def test_metrics_on_their_own_port_selected_by_the_service_monitor() -> None:
    built = objects(FULL)
    container = built["Deployment", "reg"]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"} in container[
        "ports"
    ]
    service = built["Service", "reg"]
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["metrics"]["port"] == 9090 and ports["metrics"]["targetPort"] == "metrics"
    assert service["metadata"]["annotations"] == FULL["service"]["annotations"]
    monitor = built["ServiceMonitor", "reg"]
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    # The Ingress and the HTTPRoute reach the API port only (which no longer serves /metrics).
    ingress = built["Ingress", "reg"]["spec"]["rules"][0]["http"]["paths"][0]
    assert ingress["backend"]["service"]["port"] == {"name": "http"}
    route = built["HTTPRoute", "reg"]["spec"]["rules"][0]["backendRefs"]
    assert route == [{"name": "reg", "port": 5000}]
    config = registry_config(defaulted_spec("Registry", FULL))
    assert config["observability"]["metrics_port"] == METRICS_PORT


def test_generated_config_loads_in_berth(tmp_path: Path) -> None:
    from berth.config import load_settings

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(registry_config(defaulted_spec("Registry", FULL))))
    settings = load_settings(path)
    assert settings.observability.metrics_port == 9090
    assert settings.http.shutdown_timeout_seconds == 285


def test_pod_options() -> None:
    built = objects(FULL)
    pod = built["Deployment", "reg"]["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "registry-critical"
    assert pod["affinity"] == FULL["affinity"]
    assert pod["topologySpreadConstraints"] == FULL["topologySpreadConstraints"]
    container = pod["containers"][0]
    assert {"name": "AWS_CA_BUNDLE", "value": "/etc/ca/ca.crt"} in container["env"]
    assert {"name": "ca", "mountPath": "/etc/ca", "readOnly": True} in container["volumeMounts"]
    assert {"name": "ca", "configMap": {"name": "corp-ca"}} in pod["volumes"]
    hpa = built["HorizontalPodAutoscaler", "reg"]
    assert hpa["spec"]["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": 600}}
    assert "replicas" not in built["Deployment", "reg"]["spec"]  # the HPA owns them


def test_network_policy() -> None:
    policy = objects(FULL)["NetworkPolicy", "reg"]["spec"]
    assert policy["podSelector"] == {"matchLabels": selector_labels("reg")}
    assert policy["policyTypes"] == ["Ingress"]
    api, operator, metrics = policy["ingress"]
    assert api["from"] == FULL["networkPolicy"]["from"]
    # The operator's storage probe gets through a restricted API port.
    assert operator["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == (
        "operator"
    )
    assert metrics["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    open_policy = objects({"storage": S3, "networkPolicy": {"enabled": True}})
    rules = open_policy["NetworkPolicy", "reg"]["spec"]["ingress"]
    assert "from" not in rules[0] and len(rules) == 2
    assert ("NetworkPolicy", "reg") not in objects({"storage": S3})


def test_node_setup_writes_hosts_toml_for_containerd() -> None:
    built = objects(FULL)
    config = built["ConfigMap", "reg-node-setup"]["data"]["hosts.toml"]
    assert 'server = "http://10.96.0.12:5000"' in config
    assert '[host."http://10.96.0.12:5000"]' in config
    assert 'capabilities = ["pull", "resolve"]' in config
    daemon_set = built["DaemonSet", "reg-node-setup"]
    pod = daemon_set["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env["REGISTRY_HOST"] == "reg.ns.svc:5000"  # images: reg.ns.svc:5000/team/app:1.0
    host_path = next(v for v in pod["volumes"] if "hostPath" in v)["hostPath"]
    assert host_path == {"path": "/etc/containerd/certs.d", "type": "DirectoryOrCreate"}
    assert pod["tolerations"] == [{"operator": "Exists"}]
    # Its pods are not registry pods: the Service never selects them.
    labels = daemon_set["spec"]["template"]["metadata"]["labels"]
    assert not selector_labels("reg").items() <= labels.items()
    # No cluster IP yet (the Service is being created): nothing to point at, no DaemonSet.
    assert ("DaemonSet", "reg-node-setup") not in objects(FULL, cluster_ip=None)
    # An https endpoint with a private CA.
    tls = copy.deepcopy(FULL)
    tls["nodeSetup"] = {
        "enabled": True,
        "host": "registry.example.com",
        "endpoint": "https://registry.example.com",
        "caConfigMap": {"name": "corp-ca"},
    }
    built = objects(tls, cluster_ip=None)
    config = built["ConfigMap", "reg-node-setup"]["data"]["hosts.toml"]
    assert 'ca = "/etc/containerd/certs.d/registry.example.com/ca.crt"' in config
    sources = next(
        v
        for v in built["DaemonSet", "reg-node-setup"]["spec"]["template"]["spec"]["volumes"]
        if "projected" in v
    )["projected"]["sources"]
    assert sources[1]["configMap"] == {
        "name": "corp-ca",
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }


def test_http_route_and_certificate() -> None:
    built = objects(FULL)
    route = built["HTTPRoute", "reg"]["spec"]
    assert route["hostnames"] == ["registry.example.com"]  # from the ingress host by default
    assert route["parentRefs"] == FULL["gateway"]["parentRefs"]
    certificate = built["Certificate", "reg"]["spec"]
    assert certificate == {
        "secretName": "reg-tls",
        "dnsNames": ["registry.example.com"],
        "issuerRef": {"name": "letsencrypt", "kind": "ClusterIssuer", "group": "cert-manager.io"},
    }
    tls = built["Ingress", "reg"]["spec"]["tls"]
    assert tls == [{"hosts": ["registry.example.com"], "secretName": "reg-tls"}]
    # Clusters without those APIs get neither.
    missing = objects(FULL, gateway_supported=False, cert_manager_supported=False)
    assert ("HTTPRoute", "reg") not in missing and ("Certificate", "reg") not in missing


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"terminationGracePeriodSeconds": 8, "preStopDelaySeconds": 5}, "must exceed"),
        ({"gateway": {"enabled": True}}, "gateway.parentRefs is required"),
        ({"certificate": {"enabled": True}}, "certificate.issuerRef is required"),
        (
            {"certificate": {"enabled": True, "issuerRef": {"name": "x"}}},
            "certificate.dnsNames",
        ),
        (
            {"nodeSetup": {"enabled": True, "caConfigMap": {"name": "ca"}}},
            "needs an https nodeSetup.endpoint",
        ),
        ({"service": {"metricsPort": 5000}}, "metricsPort must differ"),
    ],
)
def test_invalid_serving_specs_are_explained(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        validate_registry_spec(defaulted_spec("Registry", {"storage": S3, **spec}))


def test_dedicated_fields_win_over_config() -> None:
    spec = defaulted_spec(
        "Registry",
        {
            "storage": S3,
            "config": {
                "storage": {
                    "driver": "filesystem",
                    "s3": {"bucket": "other", "part_size": 6291456},
                },
                "observability": {"metrics_port": 1234},
                "cache": {"manifest_bytes": 1},
            },
        },
    )
    config = registry_config(spec)
    assert config["storage"]["driver"] == "s3" and config["storage"]["s3"]["bucket"] == "b"
    assert config["storage"]["s3"]["part_size"] == 6291456  # no dedicated field: config's
    assert config["observability"]["metrics_port"] == METRICS_PORT
    assert config["cache"]["manifest_bytes"] == 1
    conflicts = config_conflicts(spec)
    assert conflicts == [
        "config.storage.driver='filesystem' (spec.storage sets 's3')",
        "config.storage.s3.bucket='other' (spec.storage sets 'b')",
        "config.observability.metrics_port=1234 (the operator serves metrics on 9090)",
    ]
    conditions = serving_conditions([], spec, {}, 1, "T")
    overridden = next(c for c in conditions if c["type"] == "ConfigOverridden")
    assert overridden["status"] == "True" and overridden["reason"] == "DedicatedFieldWins"
    assert "config.storage.s3.bucket" in overridden["message"]
    clean = serving_conditions([], defaulted_spec("Registry", {"storage": S3}), {}, 1, "T")
    assert next(c for c in clean if c["type"] == "ConfigOverridden")["status"] == "False"


def test_scale_subresource() -> None:
    crd = load_crds()["Registry"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    assert "selector" in version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    deployment = objects({"storage": S3, "replicas": 4})["Deployment", "reg"]
    assert deployment["spec"]["replicas"] == 4
    # status.selector selects exactly the registry pods.
    pairs = dict(item.split("=") for item in selector_string("reg").split(","))
    assert pairs == deployment["spec"]["selector"]["matchLabels"]


def test_crds_carry_a_schema_version() -> None:
    versions = {}
    for filename in CRD_FILES:
        crd = yaml.safe_load(crd_text(filename))
        versions[filename] = int(crd["metadata"]["annotations"][SCHEMA_ANNOTATION])
    assert len(set(versions.values())) == 1, versions  # bumped together


def test_older_crd_is_reported() -> None:
    own = load_crds()["Registry"]
    assert crd_problem("Registry", own) is None
    assert crd_problem("Registry", None) is None  # not installed: kopf says so
    old = copy.deepcopy(own)
    old["metadata"]["annotations"][SCHEMA_ANNOTATION] = "1"
    problem = crd_problem("Registry", old)
    assert problem and "kubectl apply --server-side -f charts/berth/crds/" in problem
    unversioned = copy.deepcopy(own)
    del unversioned["metadata"]["annotations"]
    assert "no schema version" in str(crd_problem("Registry", unversioned))
    newer = copy.deepcopy(own)
    newer["metadata"]["annotations"][SCHEMA_ANNOTATION] = "999"
    assert crd_problem("Registry", newer) is None
    conditions = serving_conditions(
        [], defaulted_spec("Registry", {}), {"Registry": problem}, 1, "T"
    )
    crd = next(c for c in conditions if c["type"] == "CRDUpToDate")
    assert (crd["status"], crd["reason"]) == ("False", "CRDOutdated")


def test_storage_condition() -> None:
    down = storage_conditions([], (False, "/healthz/storage answered 503"), 1, "T1")
    assert down[-1]["status"] == "False" and down[-1]["reason"] == "StorageUnreachable"
    up = storage_conditions(down, (True, "ok"), 1, "T2")
    condition = next(c for c in up if c["type"] == "StorageAvailable")
    assert (condition["status"], condition["lastTransitionTime"]) == ("True", "T2")
    unknown = storage_conditions(up, None, 1, "T3")
    condition = next(c for c in unknown if c["type"] == "StorageAvailable")
    assert (condition["status"], condition["reason"]) == ("Unknown", "NoReadyReplicas")
    schema = openapi_schema("Registry")["properties"]["status"]
    jsonschema.validate({"conditions": unknown, "selector": selector_string("r")}, schema)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("gateway", {"enabled": True}, "gateway.parentRefs is required"),
        ("gateway", {"enabled": True, "parentRefs": []}, "gateway.parentRefs is required"),
        ("certificate", {"enabled": True}, "certificate.issuerRef is required"),
        (
            "nodeSetup",
            {"enabled": True, "endpoint": "http://x", "caConfigMap": {"name": "ca"}},
            "needs an https endpoint",
        ),
    ],
)
def test_admission_rules_of_the_serving_fields(path: str, value: Any, message: str) -> None:
    """The CEL rules on the new fields, evaluated with cel-python as the API server would."""
    import celpy

    schema = openapi_schema("Registry")["properties"]["spec"]["properties"][path]
    env = celpy.Environment()

    def failures(v: Any) -> list[str]:
        found = []
        for rule in schema["x-kubernetes-validations"]:
            program = env.program(env.compile(rule["rule"]))
            if not program.evaluate({"self": celpy.json_to_cel(v)}):
                found.append(rule["message"])
        return found

    assert any(message in m for m in failures(value))
    assert failures({"enabled": False}) == []
    good = {
        "gateway": {"enabled": True, "parentRefs": [{"name": "gw"}]},
        "certificate": {"enabled": True, "issuerRef": {"name": "le"}},
        "nodeSetup": {"enabled": True, "endpoint": "https://x", "caConfigMap": {"name": "ca"}},
    }[path]
    assert failures(good) == []
