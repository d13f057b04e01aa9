"""What the chart renders, checked object by object (no cluster needed)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from spatialforge.operator.settings import OperatorSettings
from tests.chart.conftest import CHART, Helm, find, pod_spec

SELECTOR_KEYS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component")
# Env the chart passes for values the operator does not read yet (docs/operations.md, "Known gaps").
PENDING_OPERATOR_SUPPORT: set[str] = set()


@pytest.fixture(params=["default", "full"])
def objects(request: pytest.FixtureRequest, default_objects: list, full_objects: list) -> list[dict[str, Any]]:
    return default_objects if request.param == "default" else full_objects


def test_every_object_has_the_helper_labels(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        labels = obj["metadata"].get("labels") or {}
        missing = [k for k in (*SELECTOR_KEYS, "helm.sh/chart", "app.kubernetes.io/managed-by") if k not in labels]
        assert not missing, f"{obj['kind']}/{obj['metadata']['name']} lacks labels {missing}"
        assert obj["metadata"]["name"].startswith("sf-") or obj["kind"] in (
            "ConfigMap", "ServiceAccount", "Role", "RoleBinding"), obj["metadata"]["name"]


def test_no_secret_is_rendered_and_env_takes_secrets_by_reference(objects: list[dict[str, Any]]) -> None:
    assert not [o for o in objects if o["kind"] == "Secret"]
    for obj in objects:
        spec = pod_spec(obj)
        for c in (spec or {}).get("containers", []):
            for env in c.get("env", []):
                name = env["name"].removesuffix("_FROM_SECRET")  # that one names a Secret
                if any(w in name for w in ("SECRET", "PASSWORD", "API_KEY", "ACCESS_KEY")):
                    assert "valueFrom" in env and "value" not in env, f"{env['name']} must come from a Secret"


def test_every_pod_is_hardened(objects: list[dict[str, Any]]) -> None:
    pods = [(o, pod_spec(o)) for o in objects if pod_spec(o) is not None]
    assert pods
    for obj, spec in pods:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["seccompProfile"]["type"] == "RuntimeDefault", where
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", where
            assert "resources" in c and c["resources"]["limits"], where
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for v in volumes.values():
            assert set(v) <= {"name", "emptyDir", "persistentVolumeClaim"}, f"{where}: unexpected volume {v}"


def test_operator_deployment(default_objects: list[dict[str, Any]]) -> None:
    dep = find(default_objects, "Deployment", "-operator")
    assert dep["spec"]["replicas"] == 2
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["python", "-m", "spatialforge.operator"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["path"] == "/healthz"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"health": 8080, "metrics": 9090}
    pdb = find(default_objects, "PodDisruptionBudget", "-operator")
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]


# Values that differ from every default (values.yaml and OperatorSettings alike), so a chart that
# ignored one of them, or an env name the settings do not read, cannot pass.
NON_DEFAULT_VALUES = {
    "operator.replicas": 1,
    "operator.leaderElection.enabled": False,
    "operator.leaderElection.leaseName": "sf-leader-b",
    "operator.leaderElection.leaseDurationSeconds": 23,
    "operator.workers": 3,
    "operator.admissionIntervalSeconds": 5,
    "operator.unschedulableTimeoutSeconds": 120,
    "operator.imagePullGraceSeconds": 45,
    "operator.poolHandoffMaxImages": 2,
    "operator.avgRunSeconds": 600,
    "operator.quotas.configMapName": "gpu-quotas-b",
    "operator.healthPort": 8181,
    "operator.metricsPort": 9191,
    "runner.image.repository": "registry.example.com/sf/runner",
    "runner.image.tag": "9.9.9",
    "runner.image.pullPolicy": "Always",
    "runner.serviceAccount.name": "gpu-runner",
    "runner.gpuResource": "amd.com/gpu",
    "runner.runtimeClassName": "nvidia-cdi",
    "runner.envFromSecret": "tenant-objectstore",
}


def test_operator_env_is_what_operator_settings_read(helm: Helm, monkeypatch) -> None:
    """Every SPATIALFORGE_* variable the chart sets is a field of OperatorSettings, and the
    settings parse from it to the values given, none of them a default."""
    sets = [arg for k, v in NON_DEFAULT_VALUES.items() for arg in ("--set-json", f"{k}={json.dumps(v)}")]
    objects = helm.render("-f", str(CHART / "ci" / "full-values.yaml"), *sets)
    c = find(objects, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]
    plain = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    fields = {f"SPATIALFORGE_{name.upper()}" for name in OperatorSettings.model_fields}
    unknown = {n for n in plain if n.startswith("SPATIALFORGE_")} - fields - {"SPATIALFORGE_LOG_LEVEL", "SPATIALFORGE_EXTRA"}
    assert unknown == PENDING_OPERATOR_SUPPORT, (
        "the chart sets env the operator does not read (or the operator learnt to read a pending one: "
        f"update PENDING_OPERATOR_SUPPORT): {sorted(unknown)}")
    for k in list(__import__("os").environ):
        if k.startswith("SPATIALFORGE_"):
            monkeypatch.delenv(k)
    for k, v in plain.items():
        monkeypatch.setenv(k, v)
    s = OperatorSettings()
    expected = {
        "runner_image": "registry.example.com/sf/runner:9.9.9", "runner_image_pull_policy": "Always",
        "runner_service_account": "gpu-runner", "runner_env_from_secret": "tenant-objectstore",
        "runner_runtime_class": "nvidia-cdi", "gpu_resource": "amd.com/gpu",
        "leader_election": False, "lease_name": "sf-leader-b", "lease_duration_seconds": 23.0,
        "workers": 3, "admission_interval_seconds": 5.0, "unschedulable_timeout_seconds": 120.0,
        "image_pull_grace_seconds": 45.0, "avg_run_seconds": 600.0, "pool_handoff_max_images": 2,
        "quota_configmap": "gpu-quotas-b",
        "health_port": 8181, "metrics_port": 9191,
    }
    defaults = {name: OperatorSettings.model_fields[name].get_default(call_default_factory=True) for name in expected}
    assert not {k for k in expected if expected[k] == defaults[k]}, "a checked value equals its default"
    assert {k: getattr(s, k) for k in expected} == expected
    assert [p["containerPort"] for p in c["ports"]] == [8181, 9191]


def test_apiserver(full_objects: list[dict[str, Any]]) -> None:
    dep = find(full_objects, "Deployment", "-apiserver")
    assert "replicas" not in dep["spec"], "the HPA owns replicas when autoscaling is on"
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["command"][:4] == ["python", "-m", "uvicorn", "spatialforge.apiserver.main:create_app"]
    assert "--factory" in c["command"]
    assert "--no-access-log" in c["command"], "the middleware logs requests; uvicorn's formatter breaks on them"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    svc = find(full_objects, "Service", "-apiserver")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    ing = find(full_objects, "Ingress", "-apiserver")
    assert ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == svc["metadata"]["name"]
    hpa = find(full_objects, "HorizontalPodAutoscaler", "-apiserver")
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    test_pod = find(full_objects, "Pod", "-test-readyz")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert test_pod["spec"]["containers"][0]["command"][-1].endswith("/readyz")
    # `helm test` needs no image beyond the chart's own: it runs in the front end's image.
    assert test_pod["spec"]["containers"][0]["image"] == c["image"]


def test_network_policies_default_deny_per_component(full_objects: list[dict[str, Any]]) -> None:
    pols = [o for o in full_objects if o["kind"] == "NetworkPolicy"]
    components = {p["metadata"]["labels"]["app.kubernetes.io/component"] for p in pols}
    assert components == {"operator", "apiserver", "runner", "redis"}
    for p in pols:
        assert p["spec"]["policyTypes"] == ["Ingress", "Egress"]
    runner = [p for p in pols if p["metadata"]["labels"]["app.kubernetes.io/component"] == "runner"]
    assert {p["metadata"]["namespace"] for p in runner} == {"chart-tenant-a", "chart-tenant-b"}
    assert all(p["spec"]["ingress"] == [] for p in runner)


def test_monitoring(full_objects: list[dict[str, Any]], default_objects: list[dict[str, Any]]) -> None:
    assert not [o for o in default_objects if o["kind"] in ("ServiceMonitor", "PrometheusRule")]
    rule = find(full_objects, "PrometheusRule")
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert alerts == {"SpatialForgeOperatorDown", "SpatialForgeOperatorNoLeader", "SpatialForgeQueueStuck",
                      "SpatialForgeJobFailureRateHigh", "SpatialForgeApiErrorRateHigh", "SpatialForgeApiLatencyHigh",
                      "SpatialForgeApiDown", "SpatialForgeWebhookDeliveryFailures", "SpatialForgeStripeWebhookErrors"}
    runbook = (CHART.parents[1] / "docs" / "operations.md").read_text().lower()
    for alert in alerts:
        assert f"### {alert.lower()}" in runbook, f"docs/operations.md does not explain {alert}"
    dash = find(default_objects, "ConfigMap", "-dashboard")
    import json
    assert json.loads(dash["data"]["spatialforge.json"])["uid"] == "spatialforge"


def test_disabled_components_render_nothing(helm: Helm) -> None:
    objs = helm.render("-f", str(CHART / "ci" / "minimal-values.yaml"))
    assert not [o for o in objs if o["metadata"]["labels"]["app.kubernetes.io/component"] == "apiserver"]
    assert not [o for o in objs if o["kind"] == "NetworkPolicy"]


# Env the chart gives the front end that its Settings do not read yet (docs/operations.md, "Known gaps").
# Empty since the front end reads SPATIALFORGE_API_PREVIOUS_SECRET_KEY (HMAC rotation).
API_PENDING: set[str] = set()


def settings_env_names(model: type) -> set[str]:
    """Every environment variable a pydantic-settings class reads: its aliases where it has
    them (AliasChoices: each of them), else env_prefix + field name."""
    from pydantic import AliasChoices

    prefix = model.model_config.get("env_prefix", "")  # type: ignore[attr-defined]
    out: set[str] = set()
    for name, f in model.model_fields.items():  # type: ignore[attr-defined]
        alias = f.validation_alias
        if isinstance(alias, AliasChoices):
            out |= {c.upper() for c in alias.choices if isinstance(c, str)}
        elif isinstance(alias, str):
            out.add(alias.upper())
        else:
            out.add(f"{prefix}{name}".upper())
    return out


@pytest.mark.parametrize("extra", [[], ["--set", "pool.enabled=true", "--set-json", 'apiserver.depthPools=["ns-b/p"]']],
                         ids=["full", "full+pools"])
def test_apiserver_env_is_what_its_settings_read(helm: Helm, extra: list[str]) -> None:
    """Every SPATIALFORGE_* variable the chart gives the front end is one its Settings read
    (aliases included), and every secret the front end needs outside dev mode is passed."""
    from spatialforge.apiserver.core.config import Settings

    objects = helm.render("-f", str(CHART / "ci" / "full-values.yaml"), *extra)
    c = find(objects, "Deployment", "-apiserver")["spec"]["template"]["spec"]["containers"][0]
    # SPATIALFORGE_REDIS_PASSWORD_ only feeds $(...) expansion of the Redis URL.
    names = {e["name"] for e in c["env"] if e["name"].startswith("SPATIALFORGE_")} - {"SPATIALFORGE_REDIS_PASSWORD_"}
    fields = settings_env_names(Settings)
    assert names - fields == API_PENDING, (
        "the chart sets front-end env its Settings do not read (align apiserver.envNames, or update "
        f"API_PENDING if the front end learnt one): {sorted(names - fields)}")
    secret_fields = {f"SPATIALFORGE_API_{n.upper()}" for n, f in Settings.model_fields.items()
                     if "SecretStr" in str(f.annotation)}
    assert secret_fields <= names, f"secrets the front end needs but the chart does not pass: {secret_fields - names}"


# Front-end values that differ from every default (values.yaml and Settings alike).
API_NON_DEFAULT_VALUES = {
    "apiserver.logLevel": "DEBUG",
    "apiserver.publicUrl": "https://api.example.net",
    "apiserver.namespacePrefix": "tenant-",
    "apiserver.metricsPort": 9555,
    "apiserver.trustedProxies": ["10.42.0.0/16"],
    "apiserver.objectStore.endpoint": "https://s3.example.net",
    "apiserver.objectStore.region": "eu-west-3",
    "apiserver.objectStore.bucket": "sf-b",
    "apiserver.stripe.apiBase": "http://stripe-mock:12111",
    "apiserver.depthPools": ["ns-b/big"],
    "pool.enabled": True,
    "pool.name": "warm",
}


def test_front_end_starts_outside_dev_mode_from_the_chart_env(helm: Helm, monkeypatch) -> None:
    """The front end's Settings, built (not in dev mode) from exactly the env the chart renders,
    with the referenced Secrets holding real-looking values: every value given arrives, and
    nothing the validator requires outside dev mode is missing."""
    import secrets

    from spatialforge.apiserver.core.config import Settings

    sets = [arg for k, v in API_NON_DEFAULT_VALUES.items() for arg in ("--set-json", f"{k}={json.dumps(v)}")]
    objects = helm.render(*sets, namespace="sf-b")
    c = find(objects, "Deployment", "-apiserver")["spec"]["template"]["spec"]["containers"][0]
    for k in list(__import__("os").environ):
        if k.startswith(("SPATIALFORGE_", "KUBECONFIG")):
            monkeypatch.delenv(k)
    for e in c["env"]:
        if "value" in e:
            monkeypatch.setenv(e["name"], e["value"])
        elif "fieldRef" in e["valueFrom"]:
            monkeypatch.setenv(e["name"], "sf-b")
        elif e["name"].endswith("REDIS_URL"):
            monkeypatch.setenv(e["name"], "redis://redis.example.net:6379/0")
        elif not e["valueFrom"]["secretKeyRef"].get("optional"):
            monkeypatch.setenv(e["name"], secrets.token_urlsafe(40))
    s = Settings()  # would raise "refusing to start" if a required secret were not passed
    assert not s.dev_mode
    expected = {
        "log_level": "DEBUG", "public_url": "https://api.example.net", "namespace_prefix": "tenant-",
        "metrics_port": 9555, "trusted_proxies": ["10.42.0.0/16"], "s3_endpoint": "https://s3.example.net",
        "s3_region": "eu-west-3", "bucket": "sf-b", "stripe_api_base": "http://stripe-mock:12111",
        "depth_pools": "sf-b/warm,ns-b/big", "redis_url": "redis://redis.example.net:6379/0",
    }
    defaults = {name: Settings.model_fields[name].get_default(call_default_factory=True) for name in expected}
    assert not {k for k in expected if expected[k] == defaults[k]}, "a checked value equals its default"
    assert {k: getattr(s, k) for k in expected} == expected


def test_runner_status_policy_is_the_generated_one(helm: Helm) -> None:
    """The chart's policy is crds/policy.py's, for the runner account the values name."""
    from spatialforge.crds.policy import runner_status_policy

    objects = helm.render("--set", "runner.serviceAccount.name=gpu-runner")
    policy = find(objects, "ValidatingAdmissionPolicy", "-runner-status")
    binding = find(objects, "ValidatingAdmissionPolicyBinding", "-runner-status")
    name = policy["metadata"]["name"]
    want_policy, want_binding = runner_status_policy("gpu-runner", name)
    assert policy["spec"] == want_policy["spec"] and binding["spec"] == want_binding["spec"]
    assert "endsWith(':gpu-runner')" in policy["spec"]["matchConditions"][0]["expression"]
    off = helm.render("--set", "runner.statusPolicy.enabled=false")
    assert not [o for o in off if o["kind"].startswith("ValidatingAdmissionPolicy")
                and o["metadata"]["name"].endswith("-runner-status")]


def test_front_end_metrics_have_their_own_port_and_forwarded_clients_come_from_trusted_proxies(helm: Helm) -> None:
    """The Ingress routes only the front end's `http` port; Prometheus scrapes `metrics`, a port
    of its own; X-Forwarded-For is read by the app from trustedProxies, never by uvicorn."""
    objects = helm.render("--set", "apiserver.ingress.enabled=true", "--set", "monitoring.serviceMonitor.enabled=true",
                          "--set", "networkPolicy.enabled=true", "--set-json", 'apiserver.trustedProxies=["10.42.0.0/16"]')
    deployment = find(objects, "Deployment", "-apiserver")
    c = pod_spec(deployment)["containers"][0]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8000, "metrics": 9464}
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["SPATIALFORGE_API_METRICS_PORT"] == "9464"
    assert json.loads(env["SPATIALFORGE_API_TRUSTED_PROXIES"]) == ["10.42.0.0/16"]
    assert "--proxy-headers" not in c["command"] and "--no-proxy-headers" in c["command"]
    service = find(objects, "Service", "-apiserver")
    assert {p["name"] for p in service["spec"]["ports"]} == {"http", "metrics"}
    ingress = find(objects, "Ingress", "-apiserver")
    ports = {p["backend"]["service"]["port"]["name"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]}
    assert ports == {"http"}
    monitor = find(objects, "ServiceMonitor", "-apiserver")
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    policy = find(objects, "NetworkPolicy", "-apiserver")
    by_port = {r["ports"][0]["port"]: r["from"] for r in policy["spec"]["ingress"]}
    assert set(by_port) == {"http", "metrics"} and len(by_port["metrics"]) == 1  # only Prometheus's namespace
