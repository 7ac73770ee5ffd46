"""The Helm chart (deploy/helm/scimflow), checked with the real ``helm`` without a cluster.

``helm lint --strict`` and ``helm template`` (``make tools`` builds helm at a pinned
version); every rendered object validates against the Kubernetes schemas like the kustomize
output, and the chart renders the same workloads as the kustomize base: the same objects,
commands, settings, config, probes, security settings and, per Deployment, the same secrets
(each gets only the ones it uses). Then each value that changes the output is rendered and
its effect checked, the values the chart refuses fail the render, and every value is in the
table of deploy/README.md.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped, unused-ignore]
import pytest
import yaml

from tests.unit.test_deploy import (
    BASE,
    DEPLOY,
    K8S_VERSIONS,
    KAFKA_OVERLAY,
    KAFKA_PASSWORD_VAR,
    KAFKA_TLS_DIR,
    OVERLAY,
    SECRET_OF,
    SERVICES,
    WORKER_PROBE_PATHS,
    Resource,
    check_kafka_clients,
    check_settings_names,
    documents,
    render,
    run_tool,
    secret_env,
    secrets_used,
    tool,
)

CHART = DEPLOY / "helm" / "scimflow"
WORKLOADS = (*SERVICES, "admin")


def helm_template(*args: str, values: dict[str, Any] | None = None,
                  tmp_path: Path | None = None) -> list[Resource]:
    """``helm template scimflow CHART`` with ``--set``-style args and/or a values file."""
    argv = [tool("helm"), "template", "scimflow", str(CHART), "--namespace", "identity", *args]
    if values is not None:
        assert tmp_path is not None
        path = tmp_path / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        argv += ["--values", str(path)]
    return documents(run_tool(*argv))


def helm_fails(*args: str) -> str:
    """The error of a render that must fail."""
    result = subprocess.run([tool("helm"), "template", "scimflow", str(CHART), *args],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0, "the render should have failed"
    return result.stderr


def find(resources: list[Resource], kind: str, name: str) -> Resource:
    found = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def container(resources: list[Resource], workload: str) -> dict[str, Any]:
    deployment = find(resources, "Deployment", f"scimflow-{workload}")
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = only
    return result


@pytest.fixture(scope="module")
def chart() -> list[Resource]:
    return helm_template()


@pytest.fixture(scope="module")
def kustomized() -> list[Resource]:
    return render(BASE)


@pytest.fixture(scope="module")
def example_chart() -> list[Resource]:
    return helm_template("--values", str(CHART / "ci" / "example-values.yaml"))


@pytest.fixture(scope="module")
def example_overlay() -> list[Resource]:
    return render(OVERLAY)


@pytest.fixture(scope="module")
def kafka_chart() -> list[Resource]:
    return helm_template("--values", str(CHART / "ci" / "kafka-sasl-ssl-values.yaml"))


MTLS = ("--set", "kafka.security.protocol=SSL", "--set", "kafka.security.tls.secretName=scimflow-mtls",
        "--set", "kafka.security.tls.certKey=tls.crt", "--set", "kafka.security.tls.keyKey=tls.key",
        "--set", "kafka.security.tls.checkHostname=false")


@pytest.fixture(scope="module")
def mtls_chart() -> list[Resource]:
    return helm_template(*MTLS)


def test_helm_lint_strict(tmp_path: Path) -> None:
    run_tool(tool("helm"), "lint", "--strict", str(CHART))
    options = {"admin": {"targetCredentials": True}, "writer": {"autoscaling": {"enabled": False}},
               "credentials": {"source": {"env": {"LDAP_BIND_PASSWORD": "ldap-bind-password"}}},
               "config": {"existingConfigMap": "my-config"}}
    (tmp_path / "options.yaml").write_text(yaml.safe_dump(options))
    run_tool(tool("helm"), "lint", "--strict", str(CHART), "--values", str(tmp_path / "options.yaml"))
    for values in sorted((CHART / "ci").glob("*-values.yaml")):
        run_tool(tool("helm"), "lint", "--strict", str(CHART), "--values", str(values))


@pytest.mark.parametrize("values", ["chart", "example_chart", "kafka_chart", "mtls_chart"])
def test_chart_matches_the_kubernetes_schemas(values: str, request: pytest.FixtureRequest) -> None:
    checked = 0
    rendered: list[Resource] = request.getfixturevalue(values)
    for resource in rendered:
        if resource["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # CRDs: compared with the kustomize base's below
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(resource, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{resource['kind']}/{resource['metadata']['name']} (k8s {version}): "
                            f"{where}: {exc.message}")
        checked += 1
    assert checked >= 15


# --- the chart renders what the kustomize base renders ------------------------------------------


def _unhashed(name: str) -> str:
    return re.sub(r"-[bcdfghkmt2-9]{10}$", "", name)


def _objects(resources: list[Resource]) -> set[tuple[str, str]]:
    return {(r["kind"], _unhashed(r["metadata"]["name"])) for r in resources}


def _essentials(resources: list[Resource], workload: str) -> dict[str, Any]:
    """What a workload's Deployment must agree on, whichever tool rendered it."""
    deployment = find(resources, "Deployment", f"scimflow-{workload}")
    pod = deployment["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    volumes = {v["name"]: {k: (_unhashed(v[k]["name"]) if k == "configMap" else v[k])
                           for k in v if k != "name"}
               for v in pod["volumes"]}
    return {
        "replicas": deployment["spec"].get("replicas"),
        "strategy": deployment["spec"]["strategy"],
        "pod": {k: pod[k] for k in ("serviceAccountName", "automountServiceAccountToken",
                                    "terminationGracePeriodSeconds", "securityContext")},
        "image": c["image"],
        "command": c["command"] + c["args"],
        "envFrom": [_unhashed(e["configMapRef"]["name"]) for e in c["envFrom"]],
        "secrets": secret_env(c),
        "ports": c["ports"],
        "probes": {p: c.get(p) for p in ("startupProbe", "livenessProbe", "readinessProbe")},
        "resources": c["resources"],
        "securityContext": c["securityContext"],
        "mounts": c["volumeMounts"],
        "volumes": volumes,
    }


def test_same_objects(chart: list[Resource], kustomized: list[Resource]) -> None:
    assert _objects(chart) == _objects(kustomized)


@pytest.mark.parametrize("workload", WORKLOADS)
def test_example_values_render_the_example_overlay(example_chart: list[Resource],
                                                    example_overlay: list[Resource], workload: str) -> None:
    # The overlay also makes its Namespace; Helm installs into one that exists.
    assert _objects(example_chart) == _objects(example_overlay) - {("Namespace", "identity")}
    helm, kustomize = _essentials(example_chart, workload), _essentials(example_overlay, workload)
    for key in kustomize:
        assert helm[key] == kustomize[key], f"{workload}: {key} differs"
    settings = [_config_map(r, "scimflow-settings") for r in (example_chart, example_overlay)]
    assert settings[0] == settings[1]
    assert {r["metadata"]["namespace"] for r in example_chart} == {"identity"}
    hpa = find(example_chart, "HorizontalPodAutoscaler", "scimflow-writer")["spec"]
    assert hpa == find(example_overlay, "HorizontalPodAutoscaler", "scimflow-writer")["spec"]


@pytest.mark.parametrize("workload", WORKLOADS)
def test_same_deployments(chart: list[Resource], kustomized: list[Resource], workload: str) -> None:
    helm, kustomize = _essentials(chart, workload), _essentials(kustomized, workload)
    for key in kustomize:
        assert helm[key] == kustomize[key], f"{workload}: {key} differs"


def _config_map(resources: list[Resource], name: str) -> dict[str, str]:
    (found,) = [r for r in resources if r["kind"] == "ConfigMap" and _unhashed(r["metadata"]["name"]) == name]
    data: dict[str, str] = found["data"]
    return data


def test_same_settings_and_config(chart: list[Resource], kustomized: list[Resource]) -> None:
    settings = _config_map(chart, "scimflow-settings")
    assert settings == _config_map(kustomized, "scimflow-settings")
    check_settings_names(settings)
    assert _config_map(chart, "scimflow-config") == _config_map(kustomized, "scimflow-config")


def test_chart_files_are_copies_of_the_base(kustomized: list[Resource]) -> None:
    alerts = (DEPLOY / "prometheus" / "alerts.yaml").read_text()
    assert (CHART / "files" / "alerts.yaml").read_text() == alerts
    for name in ("scimflow.yaml", "directory.yaml"):
        assert (CHART / "files" / name).read_text() == (BASE / "config" / name).read_text(), name
    (job,) = [r for r in kustomized if r["kind"] == "Job"]
    (job_container,) = job["spec"]["template"]["spec"]["containers"]
    assert (CHART / "files" / "topics.py.in").read_text() == job_container["command"][2]


@pytest.mark.parametrize(("kind", "name"), [
    ("HorizontalPodAutoscaler", "scimflow-writer"), ("PrometheusRule", "scimflow"),
    ("Service", "scimflow-ingest"), ("Service", "scimflow-admin"), ("ServiceMonitor", "scimflow-writer"),
    ("PodDisruptionBudget", "scimflow-mapper"),
])
def test_same_specs(chart: list[Resource], kustomized: list[Resource], kind: str, name: str) -> None:
    helm, kustomize = find(chart, kind, name)["spec"], find(kustomized, kind, name)["spec"]
    # Helm's selectors also carry the release (app.kubernetes.io/instance); the rest is equal.
    for spec in (helm, kustomize):
        for selector in (spec.get("selector", {}), spec.get("selector", {}).get("matchLabels", {})):
            if isinstance(selector, dict):
                selector.pop("app.kubernetes.io/instance", None)
    assert helm == kustomize


def test_topics_job_is_a_hook_with_the_same_container(chart: list[Resource],
                                                      kustomized: list[Resource]) -> None:
    helm, kustomize = find(chart, "Job", "scimflow-topics"), find(kustomized, "Job", "scimflow-topics")
    assert helm["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    (hc,) = helm["spec"]["template"]["spec"]["containers"]
    (kc,) = kustomize["spec"]["template"]["spec"]["containers"]
    assert hc["command"] == kc["command"]
    settings = [_unhashed(c["envFrom"][0]["configMapRef"]["name"]) for c in (hc, kc)]
    assert settings == ["scimflow-settings", "scimflow-settings"]


# --- secrets: each Deployment only what it uses ------------------------------------------------


def _used(resources: list[Resource], tmp_path: Path) -> dict[str, set[str]]:
    for key, text in _config_map(resources, "scimflow-config").items():
        (tmp_path / key).write_text(text)
    return secrets_used(tmp_path / "scimflow.yaml", _config_map(resources, "scimflow-settings"))


def test_each_deployment_gets_only_the_secrets_it_uses(chart: list[Resource], tmp_path: Path) -> None:
    assert not [r for r in chart if r["kind"] == "Secret"], "the chart never creates a Secret"
    used = _used(chart, tmp_path)
    assert used["writer"] == {"CRM_SCIM_TOKEN"}
    for workload, names in used.items():
        env = secret_env(container(chart, workload))
        assert set(env) == names, f"{workload} gets {sorted(env)}, uses {sorted(names)}"
        assert set(env.values()) <= {SECRET_OF[workload]}, workload


def test_source_credentials_go_to_ingest_only(tmp_path: Path) -> None:
    rendered = helm_template("--set", "credentials.source.env.LDAP_BIND_PASSWORD=ldap-bind-password")
    assert secret_env(container(rendered, "ingest")) == {"LDAP_BIND_PASSWORD": "scimflow-source-credentials"}
    for workload in ("mapper", "writer", "admin"):
        assert "LDAP_BIND_PASSWORD" not in secret_env(container(rendered, workload)), workload


def test_admin_gets_target_credentials_only_when_asked() -> None:
    rendered = helm_template("--set", "admin.targetCredentials=true")
    assert secret_env(container(rendered, "admin")) == {
        "ADMIN_TOKEN_OPS": "scimflow-admin-tokens", "CRM_SCIM_TOKEN": "scimflow-target-credentials"}


def test_admin_tokens_are_named_references(tmp_path: Path) -> None:
    tokens = [{"name": "ops", "env": "ADMIN_TOKEN_OPS", "key": "admin-token-ops"},
              {"name": "ci", "env": "ADMIN_TOKEN_CI", "key": "admin-token-ci"}]
    rendered = helm_template(values={"admin": {"tokens": tokens}}, tmp_path=tmp_path)
    settings = _config_map(rendered, "scimflow-settings")
    assert settings["SCIMFLOW_ADMIN_TOKENS"] == "ops=env:ADMIN_TOKEN_OPS,ci=env:ADMIN_TOKEN_CI"
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container(rendered, "admin")["env"]}
    assert env == {"ADMIN_TOKEN_OPS": {"name": "scimflow-admin-tokens", "key": "admin-token-ops"},
                   "ADMIN_TOKEN_CI": {"name": "scimflow-admin-tokens", "key": "admin-token-ci"}}


# --- values ------------------------------------------------------------------------------------


def test_probe_paths_are_values(chart: list[Resource]) -> None:
    for workload in SERVICES:
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container(chart, workload)[probe]["httpGet"]["path"] == WORKER_PROBE_PATHS[probe]
    rendered = helm_template("--set", "probes.livenessPath=/healthz", "--set", "probes.readinessPath=/readyz",
                             "--set", "probes.startupPath=/readyz")
    for workload in SERVICES:
        c = container(rendered, workload)
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert c["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container(rendered, "admin")["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_kafka_and_settings_values_reach_the_settings() -> None:
    rendered = helm_template("--set", "kafka.bootstrap=k-0:9093\\,k-1:9093", "--set", "kafka.partitions=12",
                             "--set", "settings.extra.SCIMFLOW_WRITER_BATCH=512")
    settings = _config_map(rendered, "scimflow-settings")
    assert settings["SCIMFLOW_KAFKA_BOOTSTRAP"] == "k-0:9093,k-1:9093"
    assert settings["SCIMFLOW_PARTITIONS"] == "12"
    assert settings["SCIMFLOW_WRITER_BATCH"] == "512"
    check_settings_names(settings)


def test_unsupported_or_idle_values_fail_the_render() -> None:
    assert "kafka.security.tls" in helm_fails("--set", "kafka.tls.enabled=true")
    assert "kafka.security.sasl" in helm_fails("--set", "kafka.sasl.mechanism=SCRAM-SHA-512")
    assert "must be PLAINTEXT, SSL" in helm_fails("--set", "kafka.security.protocol=TLS")
    sasl = ("--set", "kafka.security.protocol=SASL_SSL", "--set", "kafka.security.sasl.username=scimflow")
    assert "needs kafka.security.sasl.username and sasl.passwordSecret" in helm_fails(*sasl)
    assert "uses no TLS" in helm_fails("--set", "kafka.security.protocol=SASL_PLAINTEXT",
                                       "--set", "kafka.security.sasl.username=scimflow",
                                       "--set", "kafka.security.sasl.passwordSecret.name=kafka",
                                       "--set", "kafka.security.tls.secretName=kafka-tls")
    assert "keyKey is set without tls.certKey" in helm_fails(
        "--set", "kafka.security.protocol=SSL", "--set", "kafka.security.tls.secretName=t",
        "--set", "kafka.security.tls.keyKey=tls.key")
    assert "kafka.bootstrap is required" in helm_fails("--set", "kafka.bootstrap=")
    assert "sit idle" in helm_fails("--set", "writer.autoscaling.maxReplicas=7")


# --- Kafka security ------------------------------------------------------------------------------


def _kafka_settings(resources: list[Resource]) -> dict[str, str]:
    return {k: v for k, v in _config_map(resources, "scimflow-settings").items()
            if k.startswith("SCIMFLOW_KAFKA_") and k != "SCIMFLOW_KAFKA_BOOTSTRAP"}


def test_plaintext_by_default(chart: list[Resource]) -> None:
    assert _kafka_settings(chart) == {}
    check_kafka_clients(chart, password=None, tls_secret=None)


def test_sasl_ssl_values(kafka_chart: list[Resource]) -> None:
    assert _kafka_settings(kafka_chart) == {
        "SCIMFLOW_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "SCIMFLOW_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "SCIMFLOW_KAFKA_SASL_USERNAME": "scimflow",
        "SCIMFLOW_KAFKA_SASL_PASSWORD": f"env:{KAFKA_PASSWORD_VAR}",  # a reference, not the password
        "SCIMFLOW_KAFKA_SSL_CAFILE": f"{KAFKA_TLS_DIR}/ca.crt"}
    check_kafka_clients(kafka_chart, password={"name": "scimflow-kafka", "key": "password"},
                        tls_secret="scimflow-kafka-tls")
    check_settings_names(_config_map(kafka_chart, "scimflow-settings"))


def test_mutual_tls_values(mtls_chart: list[Resource]) -> None:
    assert _kafka_settings(mtls_chart) == {
        "SCIMFLOW_KAFKA_SECURITY_PROTOCOL": "SSL", "SCIMFLOW_KAFKA_SSL_CAFILE": f"{KAFKA_TLS_DIR}/ca.crt",
        "SCIMFLOW_KAFKA_SSL_CERTFILE": f"{KAFKA_TLS_DIR}/tls.crt",
        "SCIMFLOW_KAFKA_SSL_KEYFILE": f"{KAFKA_TLS_DIR}/tls.key",
        "SCIMFLOW_KAFKA_SSL_CHECK_HOSTNAME": "false"}
    check_kafka_clients(mtls_chart, password=None, tls_secret="scimflow-mtls")


@pytest.mark.parametrize("workload", WORKLOADS)
def test_kafka_values_render_the_kafka_overlay(kafka_chart: list[Resource], workload: str) -> None:
    overlay = render(KAFKA_OVERLAY)
    helm, kustomize = _essentials(kafka_chart, workload), _essentials(overlay, workload)
    for key in kustomize:
        assert helm[key] == kustomize[key], f"{workload}: {key} differs"
    assert _config_map(kafka_chart, "scimflow-settings") == _config_map(overlay, "scimflow-settings")
    jobs = [find(r, "Job", "scimflow-topics")["spec"]["template"]["spec"] for r in (kafka_chart, overlay)]
    for part in ("volumeMounts", "env"):
        assert jobs[0]["containers"][0][part] == jobs[1]["containers"][0][part], part


def test_writer_replicas_without_the_autoscaler() -> None:
    rendered = helm_template("--set", "writer.autoscaling.enabled=false", "--set", "writer.replicas=3")
    assert not [r for r in rendered if r["kind"] == "HorizontalPodAutoscaler"]
    assert find(rendered, "Deployment", "scimflow-writer")["spec"]["replicas"] == 3


def test_config_values(chart: list[Resource], tmp_path: Path) -> None:
    files = {"scimflow.yaml": (BASE / "config" / "scimflow.yaml").read_text().replace("600", "900"),
             "directory.yaml": (BASE / "config" / "directory.yaml").read_text()}
    rendered = helm_template(values={"config": {"files": files}}, tmp_path=tmp_path)
    assert _config_map(rendered, "scimflow-config") == files

    def checksum(resources: list[Resource]) -> str:
        deployment = find(resources, "Deployment", "scimflow-writer")
        value: str = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        return value

    assert checksum(rendered) != checksum(chart), "a config change must roll the pods"
    existing = helm_template("--set", "config.existingConfigMap=my-config")
    names = {r["metadata"]["name"] for r in existing if r["kind"] == "ConfigMap"}
    assert names == {"scimflow-settings"}
    volumes = find(existing, "Deployment", "scimflow-ingest")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "config", "configMap": {"name": "my-config"}} in volumes


def test_monitoring_values() -> None:
    rendered = helm_template("--set", "metrics.serviceMonitor.enabled=false",
                             "--set", "metrics.prometheusRule.runbookBaseUrl=https://docs.example.com/ops.html")
    assert not [r for r in rendered if r["kind"] == "ServiceMonitor"]
    rules = [r for g in find(rendered, "PrometheusRule", "scimflow")["spec"]["groups"] for r in g["rules"]]
    for rule in rules:
        assert rule["annotations"]["runbook_url"] == f"https://docs.example.com/ops.html#{rule['alert'].lower()}"
    assert not [r for r in helm_template("--set", "metrics.prometheusRule.enabled=false")
                if r["kind"] == "PrometheusRule"]


def test_release_name_prefixes_every_object() -> None:
    rendered = documents(run_tool(tool("helm"), "template", "prod", str(CHART)))
    for resource in rendered:
        assert resource["metadata"]["name"].startswith("prod-scimflow"), resource["metadata"]["name"]
    deployment = find(rendered, "Deployment", "prod-scimflow-writer")
    assert deployment["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"] == "prod-scimflow-config"


# --- documentation -------------------------------------------------------------------------------


# Values that are maps the user fills (name -> value): documented whole, not key by key.
_MAPS = {"resources", "env", "extra", "labels", "files"}


def _leaves(values: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in _MAPS:
            keys |= _leaves(value, path + ".")
        else:
            keys.add(path)
    return keys


def test_every_value_is_in_the_readme_table() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (DEPLOY / "README.md").read_text()
    documented = set(re.findall(r"^\| `([\w.]+)` \|", readme, flags=re.M))
    leaves = _leaves(values)
    assert leaves - documented == set(), "values missing from the table in deploy/README.md"
    assert documented - leaves == set(), "the table names values the chart lacks"
