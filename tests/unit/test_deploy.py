"""deploy/, the Dockerfile and the metric names they rely on, checked without a cluster.

- Prometheus: ``promtool check rules`` and ``promtool test rules`` on the alert rules;
  every metric an alert or a dashboard panel queries is one scimflow exports.
- Kubernetes: the kustomizations are rendered by the real ``kustomize build`` (``make tools``
  builds it at a pinned version), and every rendered object is validated against the
  Kubernetes OpenAPI schemas shipped in ``kubernetes-validate`` (strict: unknown fields
  fail). prometheus-operator objects (ServiceMonitor, PrometheusRule) are not in those
  schemas and are checked structurally. On top of the schemas: the wiring between objects
  (selectors, ports, ConfigMaps, Secret references, HPA vs partitions), that each
  Deployment gets only the secrets it uses, the restricted Pod Security profile, and the
  config the ConfigMap carries passes ``scimflow validate``. The Helm chart renders the
  same objects: tests/unit/test_helm.py.
- Dockerfile: no engine here, so its structure is linted (stages, non-root user, entry
  point, no remote ADD, no secrets, a HEALTHCHECK) along with the .dockerignore allow-list;
  the health check script runs against a real endpoint.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_type_hints

import kubernetes_validate  # type: ignore[import-untyped, unused-ignore]
import prometheus_client
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from typer.testing import CliRunner

from schemas.messages import ActivityRecord
from services.runtime.config import load_config
from services.runtime.metrics import METRIC_NAMES
from services.runtime.settings import load_settings
from services.runtime.topics import Topics
from services.scim import quarantine

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts_test.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"
DASHBOARD = DEPLOY / "grafana" / "scimflow.json"
BASE = DEPLOY / "k8s" / "base"
OVERLAY = DEPLOY / "k8s" / "overlays" / "example"
# The base with components/kafka-sasl-ssl: SASL_SSL for every Kafka client.
KAFKA_OVERLAY = DEPLOY / "k8s" / "overlays" / "kafka-sasl-ssl"
SERVICES = ("ingest", "mapper", "writer")
# The Secret each workload's credentials come from: one per role, so that none gets another's.
SECRET_OF = {"writer": "scimflow-target-credentials", "ingest": "scimflow-source-credentials",
             "admin": "scimflow-admin-tokens", "mapper": ""}
# The variable every Kafka client gets the SASL password in, and the Secret it comes from
# (components/kafka-sasl-ssl; the chart's kafka.security.sasl.passwordSecret).
KAFKA_PASSWORD_VAR = "KAFKA_SASL_PASSWORD"
KAFKA_TLS_DIR = "/var/run/secrets/kafka-tls"
# What the worker probes hit (services/runtime/probes.py serves both on the metrics port).
WORKER_PROBE_PATHS = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
# Settings the manifests set before the code reads them (see check_settings_names).
AHEAD_OF_THE_CODE: tuple[str, ...] = ()
# Oldest Kubernetes minor we support, and the newest (pinned: kubernetes-validate>=1.37 ships it).
K8S_VERSIONS = ("1.28", "1.37.0")

Resource = dict[str, Any]


# --- PromQL: which metrics does an expression read? -------------------------------------

_STRINGS = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_GRAFANA_VARS = re.compile(r"\$\{[^}]*\}|\$\w+")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_OFFSET_AT = re.compile(r"\b(?:offset\s+-?[0-9a-zA-Z_]+|@\s*[0-9.]+)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
             "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels, durations removed)."""
    text = _STRINGS.sub('""', expr)          # first: strings may hold braces or parentheses
    text = _GRAFANA_VARS.sub("", text)
    text = _MATCHERS.sub("", text)
    text = _RANGES.sub("", text)
    text = _OFFSET_AT.sub("", text)
    text = _GROUPING.sub("", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group()
        if text[match.end():].lstrip().startswith("("):
            continue  # a function or aggregation call
        if name.lower() not in _KEYWORDS:
            names.add(name)
    return names


@pytest.mark.parametrize(("expr", "expected"), [
    ("scimflow_staged_deletes > 0", {"scimflow_staged_deletes"}),
    ('sum by (app, le) (rate(a_bucket{app=~"x|y", q="}(by"}[$__rate_interval] offset 1h))', {"a_bucket"}),
    ("histogram_quantile(0.95, sum(rate(b_bucket[5m])) by (le)) > 1e3", {"b_bucket"}),
    ("rate(c_total[5m]) * on (job, instance) group_left (version) d_info", {"c_total", "d_info"}),
    ("time() - max without (pod) (e_seconds{source=~\"${source}\"}) > bool 2 * 600", {"e_seconds"}),
    ("f unless g or ignoring(x) h_total @ 1700000000", {"f", "g", "h_total"}),
    ("max_over_time(i[1h:5m]) and sum by(app)(j)", {"i", "j"}),
])
def test_metric_names_parser(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


# Series Prometheus itself makes for every scrape target.
SCRAPE_SERIES = {"up"}


def _unknown_metrics(expr: str) -> set[str]:
    names = metric_names(expr)
    assert names, f"no metric found in {expr!r}"
    return names - METRIC_NAMES - SCRAPE_SERIES


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (Debian package `prometheus`; `make system-deps` installs it)")
    return path


def _run(*argv: str, cwd: Path | None = None) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr


# --- Prometheus alert rules --------------------------------------------------------------


def _alerts() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_promtool_check_rules() -> None:
    _run(_promtool(), "check", "rules", str(ALERTS))


def test_promtool_test_rules() -> None:
    _run(_promtool(), "test", "rules", ALERT_TESTS.name, cwd=ALERT_TESTS.parent)


def test_required_alerts_exist_with_severity_and_runbook() -> None:
    alerts = {rule["alert"]: rule for rule in _alerts()}
    assert {"ScimflowAppQuarantined", "ScimflowErrorRateHigh", "ScimflowEscrowGrowing",
            "ScimflowStagedDeletesWaiting", "ScimflowNoSuccessfulCycle", "ScimflowConsumerLagGrowing",
            "ScimflowTargetLatencyHigh", "ScimflowPartitionStalled"} <= set(alerts)
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"], name
        assert len(rule["annotations"]["description"]) > 100, f"{name}: say what to do"


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    cases = [case for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
             for case in test["alert_rule_test"]]
    for rule in _alerts():
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c["exp_alerts"] for c in mine), f"{rule['alert']}: no firing case"
        assert any(not c["exp_alerts"] for c in mine), f"{rule['alert']}: no quiet case"


def test_alerts_query_only_exported_metrics() -> None:
    for rule in _alerts():
        assert not _unknown_metrics(rule["expr"]), rule["alert"]


def test_every_alert_links_its_runbook_section() -> None:
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', OPERATIONS.read_text()))
    for rule in _alerts():
        url = rule["annotations"].get("runbook_url", "")
        path, _, anchor = url.partition("#")
        assert path == "docs/operations.md", rule["alert"]
        assert anchor == rule["alert"].lower(), rule["alert"]
        assert anchor in anchors, f"{rule['alert']}: docs/operations.md has no anchor {anchor}"


def test_every_worker_has_a_down_or_absent_alert() -> None:
    exprs = [" ".join(rule["expr"].split()) for rule in _alerts()]
    for svc in SERVICES:
        selector = f'up{{job=~"(.+-)?scimflow-{svc}"}}'
        assert any(f"sum({selector}) == 0" in e and f"absent({selector})" in e for e in exprs), svc


# Label values the code gives each label an alert matches on.
_LABEL_VALUES = {
    "service": {"ingest", "mapper", "writer", "admin"},
    "status": set(get_args(get_type_hints(ActivityRecord)["status"])) | {"complete", "interrupted"},
    "reason": {quarantine.CREDENTIALS, quarantine.FAILURE_RATIO, "none"},
}
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def test_alerts_match_label_values_the_code_uses() -> None:
    for rule in _alerts():
        for label, _, value in _MATCHER.findall(rule["expr"]):
            if label in _LABEL_VALUES:
                assert set(value.split("|")) <= _LABEL_VALUES[label], (rule["alert"], label, value)
    quarantined = next(r for r in _alerts() if r["alert"] == "ScimflowAppQuarantined")
    text = quarantined["annotations"]["description"]
    for reason in (quarantine.CREDENTIALS, quarantine.FAILURE_RATIO):
        assert f"For {reason} " in text, f"the quarantine alert does not say what to do for {reason}"
    assert "InvalidCredentials" not in text, "an error code, not a quarantine reason"


def test_no_successful_cycle_waits_two_default_intervals() -> None:
    rule = next(r for r in _alerts() if r["alert"] == "ScimflowNoSuccessfulCycle")
    config = load_config(BASE / "config" / "scimflow.yaml", resolve_secrets=False)
    interval = max(getattr(s, "full_scan_interval", 0.0) for s in config.config.sources)
    assert f"> {2 * interval:.0f}" in rule["expr"]


# --- Grafana dashboard -------------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _panels() -> list[dict[str, Any]]:
    out = []
    for panel in _dashboard()["panels"]:
        out.extend([panel, *panel.get("panels", [])])
    return [p for p in out if p["type"] != "row"]


def _panel_exprs() -> Iterator[tuple[str, str]]:
    for panel in _panels():
        for target in panel["targets"]:
            yield panel["title"], target["expr"]


def test_dashboard_is_importable_as_is() -> None:
    dash = _dashboard()
    assert dash["schemaVersion"] >= 39
    assert dash["uid"] and dash["title"] and dash.get("id") is None
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["app"]["query"]["query"] == "label_values(scimflow_managed_objects, app)"
    for panel in _panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    ids = [p["id"] for p in _dashboard()["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_panels_do_not_overlap() -> None:
    boxes = [(p["title"], p["gridPos"]) for p in _dashboard()["panels"]]
    for i, (a_title, a) in enumerate(boxes):
        assert a["x"] + a["w"] <= 24, a_title
        for b_title, b in boxes[i + 1:]:
            apart = (a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"]
                     or a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"])
            assert apart, f"{a_title} overlaps {b_title}"


def test_dashboard_queries_only_exported_metrics() -> None:
    for title, expr in _panel_exprs():
        assert not _unknown_metrics(expr), title


def test_dashboard_shows_every_scimflow_metric() -> None:
    used = set().union(*(metric_names(e) for _, e in _panel_exprs()))
    for name in METRIC_NAMES:
        family = re.sub(r"_(bucket|count|sum)$", "", name)
        siblings = {family + s for s in ("_bucket", "_count", "_sum")} if family != name else {name}
        if name.startswith("scimflow_"):
            assert used & siblings, f"no panel shows {name}"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    promtool = _promtool()
    substitutions = {"$__rate_interval": "5m", "${source}": ".*", "$source": ".*", "$app": ".*"}
    rules = []
    for i, (_, expr) in enumerate(_panel_exprs()):
        concrete = expr
        for var, value in substitutions.items():
            concrete = concrete.replace(var, value)
        rules.append({"record": f"dashboard:panel_{i}", "expr": concrete})
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    _run(promtool, "check", "rules", str(path))


# --- Kubernetes: the real kustomize ---------------------------------------------------------


def tool(name: str) -> str:
    """A deployment tool from ``make tools`` (.tools/bin), else from PATH.

    Missing, the test is skipped on a developer's machine (``make tools`` builds it) and
    fails in CI, where ``make test`` has built it: a check that silently stops running
    would look green.
    """
    local = ROOT / ".tools" / "bin" / name
    path = str(local) if local.exists() else shutil.which(name)
    if path is None:
        message = f"{name} not installed: `make tools` builds it into .tools/bin"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def run_tool(*argv: str, cwd: Path | None = None) -> str:
    """Run a tool; its stdout, or the test fails with its stderr."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, cwd=cwd)
    assert result.returncode == 0, f"{' '.join(argv)}: {result.stdout}{result.stderr}"
    return result.stdout


def documents(text: str) -> list[Resource]:
    """The objects of a multi-document YAML stream (empty documents dropped)."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render(directory: Path) -> list[Resource]:
    """``kustomize build`` of a kustomization directory."""
    return documents(run_tool(tool("kustomize"), "build", str(directory)))


_HASHED = re.compile(r"-[bcdfghkmt2-9]{10}$")  # kustomize's content-hash suffix alphabet


def _find(resources: list[Resource], kind: str, name: str) -> Resource:
    """The one ``kind/name``; generated ConfigMaps match without their hash suffix."""
    found = [r for r in resources if r["kind"] == kind
             and (r["metadata"]["name"] == name
                  or (kind == "ConfigMap" and _HASHED.sub("", r["metadata"]["name"]) == name))]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _config_map_name(resources: list[Resource], name: str) -> str:
    """The rendered name of a ConfigMap (with kustomize's hash suffix, or Helm's name)."""
    real: str = _find(resources, "ConfigMap", name)["metadata"]["name"]
    return real


def _pod(resources: list[Resource], service: str) -> dict[str, Any]:
    """The pod spec of a worker's Deployment."""
    spec: dict[str, Any] = _find(resources, "Deployment", f"scimflow-{service}")["spec"]["template"]["spec"]
    return spec


def _pod_specs(resources: list[Resource]) -> Iterator[tuple[str, dict[str, Any]]]:
    for r in resources:
        if r["kind"] in {"Deployment", "Job"}:
            yield f"{r['kind']}/{r['metadata']['name']}", r["spec"]["template"]["spec"]


def _containers(resources: list[Resource]) -> Iterator[dict[str, Any]]:
    for _, pod in _pod_specs(resources):
        yield from pod["containers"]


@pytest.fixture(scope="module")
def base() -> list[Resource]:
    return render(BASE)


@pytest.fixture(scope="module")
def overlay() -> list[Resource]:
    return render(OVERLAY)


@pytest.fixture(scope="module")
def kafka_overlay() -> list[Resource]:
    return render(KAFKA_OVERLAY)


@pytest.fixture(params=["base", "overlay", "kafka_overlay"])
def rendered(request: pytest.FixtureRequest) -> list[Resource]:
    resources: list[Resource] = request.getfixturevalue(request.param)
    return resources


def test_overlay_sets_namespace_image_replicas_resources_settings(base: list[Resource],
                                                                  overlay: list[Resource]) -> None:
    assert _find(overlay, "Namespace", "identity")
    assert all(r["metadata"].get("namespace") == "identity" for r in overlay if r["kind"] != "Namespace")
    assert all(c["image"] == "registry.example.com/platform/scimflow:0.1.0" for c in _containers(overlay))
    assert _find(overlay, "Deployment", "scimflow-mapper")["spec"]["replicas"] == 3

    def writer_resources(rs: list[Resource]) -> Any:
        return _pod(rs, "writer")["containers"][0]["resources"]

    assert writer_resources(overlay) != writer_resources(base)
    assert writer_resources(overlay)["limits"]["memory"] == "2Gi"
    settings = _find(overlay, "ConfigMap", "scimflow-settings")["data"]
    assert settings["SCIMFLOW_PARTITIONS"] == "12"
    assert settings["SCIMFLOW_METRICS_PORT"] == "9100"  # merged, not replaced


def test_manifests_match_the_kubernetes_schemas(rendered: list[Resource]) -> None:
    checked = 0
    for resource in rendered:
        if resource["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # CRDs: structural tests below
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(resource, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{resource['kind']}/{resource['metadata']['name']} (k8s {version}): "
                            f"{where}: {exc.message}")
        checked += 1
    assert checked >= 14  # all but the two prometheus-operator kinds


def test_each_service_has_its_objects(rendered: list[Resource]) -> None:
    kinds = {(r["kind"], r["metadata"]["name"]) for r in rendered}
    for svc in SERVICES:
        for kind in ("Deployment", "Service", "ServiceMonitor", "PodDisruptionBudget"):
            assert (kind, f"scimflow-{svc}") in kinds
    assert ("HorizontalPodAutoscaler", "scimflow-writer") in kinds
    assert ("Job", "scimflow-topics") in kinds
    assert ("PrometheusRule", "scimflow") in kinds


def test_workers_run_their_command_and_probe_metrics(rendered: list[Resource]) -> None:
    settings = load_settings(environ=_find(rendered, "ConfigMap", "scimflow-settings")["data"])
    for svc in SERVICES:
        pod = _pod(rendered, svc)
        (container,) = pod["containers"]
        assert container["command"] + container["args"] == [
            "scimflow", svc, "--config", "/etc/scimflow/scimflow.yaml"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["metrics"] == settings.metrics_port == 9100
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"] == {"path": WORKER_PROBE_PATHS[probe], "port": "metrics"}, \
                (svc, probe)
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        config_volume = volumes[mounts["/etc/scimflow"]]["configMap"]
        assert config_volume["name"] == _config_map_name(rendered, "scimflow-config")
        assert "emptyDir" in volumes[mounts[settings.data_dir]]
        assert container["envFrom"] == [
            {"configMapRef": {"name": _config_map_name(rendered, "scimflow-settings")}}]


def test_ingest_is_a_single_replica(rendered: list[Resource]) -> None:
    ingest = _find(rendered, "Deployment", "scimflow-ingest")["spec"]
    assert ingest["replicas"] == 1
    assert ingest["strategy"]["type"] == "Recreate"


def test_pods_meet_the_restricted_security_profile(rendered: list[Resource]) -> None:
    for name, pod in _pod_specs(rendered):
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == 10001, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        volumes = {v["name"]: v for v in pod["volumes"]}
        for volume in volumes.values():
            assert set(volume) - {"name"} <= {"configMap", "emptyDir", "secret", "projected"}, name
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            for kind in ("requests", "limits"):
                assert set(c["resources"][kind]) == {"cpu", "memory"}, (name, kind)
            tmp = next(m for m in c["volumeMounts"] if m["mountPath"] == "/tmp")  # noqa: S108
            assert "emptyDir" in volumes[tmp["name"]], name


def secret_env(container: dict[str, Any]) -> dict[str, str]:
    """A container's variables filled from a Secret: variable name -> Secret name."""
    env = container.get("env", [])
    assert all("value" not in e for e in env), "plain env values belong in the settings ConfigMap"
    return {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in env
            if "secretKeyRef" in e.get("valueFrom", {})}


def _env_refs(refs: Iterator[str | None]) -> set[str]:
    names = set()
    for ref in refs:
        if ref is not None:
            assert ref.startswith("env:"), f"{ref}: the manifests fill env: references only"
            names.add(ref.removeprefix("env:"))
    return names


def secrets_used(config: Path, settings: dict[str, str]) -> dict[str, set[str]]:
    """Per workload, the environment variables its secret references name: the writer the
    targets' credentials, ingest the sources', the admin API its tokens, the mapper none."""
    loaded = load_config(config, resolve_secrets=False).config
    targets = _env_refs(r for a in loaded.applications
                        for r in (a.target.token, a.target.oauth2.client_secret if a.target.oauth2 else None))
    sources = _env_refs(getattr(s, field, None) for s in loaded.sources
                        for field in ("password", "client_secret", "token"))
    tokens = settings.get("SCIMFLOW_ADMIN_TOKENS", "")
    admin = _env_refs(item.partition("=")[2] for item in tokens.split(",") if item)
    # Every workload talks to Kafka: each needs the SASL password its settings point to.
    kafka = _env_refs(iter([settings.get("SCIMFLOW_KAFKA_SASL_PASSWORD")]))
    return {"writer": targets | kafka, "ingest": sources | kafka, "mapper": kafka, "admin": admin | kafka}


def test_each_deployment_gets_only_the_secrets_it_uses(rendered: list[Resource], tmp_path: Path) -> None:
    assert not [r for r in rendered if r["kind"] == "Secret"], "never ship a Secret with a value"
    settings = _find(rendered, "ConfigMap", "scimflow-settings")["data"]
    used = secrets_used(_write_config(rendered, tmp_path), settings)
    kafka = {KAFKA_PASSWORD_VAR} if "SCIMFLOW_KAFKA_SASL_PASSWORD" in settings else set()
    assert used["writer"] == {"CRM_SCIM_TOKEN", *kafka}
    assert used["admin"] == {"ADMIN_TOKEN_OPS", *kafka}
    for workload, names in used.items():
        (container,) = _pod(rendered, workload)["containers"]
        env = secret_env(container)
        assert set(env) == names, f"{workload} gets {sorted(env)}, uses {sorted(names)}"
        env.pop(KAFKA_PASSWORD_VAR, None)  # every Kafka client's, checked below
        assert set(env.values()) <= {SECRET_OF[workload]}, workload


def test_kafka_component_secures_every_kafka_client(kafka_overlay: list[Resource]) -> None:
    settings = _find(kafka_overlay, "ConfigMap", "scimflow-settings")["data"]
    assert {k: v for k, v in settings.items() if k.startswith("SCIMFLOW_KAFKA_")} == {
        "SCIMFLOW_KAFKA_BOOTSTRAP": "kafka-bootstrap.kafka.svc.cluster.local:9092",
        "SCIMFLOW_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "SCIMFLOW_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "SCIMFLOW_KAFKA_SASL_USERNAME": "scimflow",
        "SCIMFLOW_KAFKA_SASL_PASSWORD": f"env:{KAFKA_PASSWORD_VAR}",  # a reference, not the password
        "SCIMFLOW_KAFKA_SSL_CAFILE": f"{KAFKA_TLS_DIR}/ca.crt"}
    check_kafka_clients(kafka_overlay, password={"name": "scimflow-kafka", "key": "password"},
                        tls_secret="scimflow-kafka-tls")
    # What the pods would read: the settings and the password variable pass scimflow's own checks.
    loaded = load_settings(environ={**settings, KAFKA_PASSWORD_VAR: "not-a-real-password"})
    assert loaded.kafka_security_protocol == "SASL_SSL"
    assert loaded.kafka_ssl_cafile == f"{KAFKA_TLS_DIR}/ca.crt"


def check_kafka_clients(resources: list[Resource], *, password: dict[str, str] | None,
                        tls_secret: str | None) -> None:
    """Every pod that talks to Kafka (the Deployments and the topics Job) gets the SASL
    password from ``password`` (a secretKeyRef) and the TLS Secret ``tls_secret`` mounted
    read-only at KAFKA_TLS_DIR, or neither when None."""
    pods = list(_pod_specs(resources))
    assert {name for name, _ in pods} == {
        *(f"Deployment/scimflow-{w}" for w in (*SERVICES, "admin")), "Job/scimflow-topics"}
    for name, pod in pods:
        (c,) = pod["containers"]
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})}
        assert refs.get(KAFKA_PASSWORD_VAR) == password, name
        mounts = [m for m in c["volumeMounts"] if m["mountPath"] == KAFKA_TLS_DIR]
        volumes = {v["name"]: v for v in pod["volumes"]}
        if tls_secret is None:
            assert not mounts, name
            continue
        assert len(mounts) == 1 and mounts[0]["readOnly"] is True, name
        assert volumes[mounts[0]["name"]]["secret"] == {"secretName": tls_secret, "defaultMode": 0o440}, name


def _write_config(rendered: list[Resource], tmp_path: Path) -> Path:
    for key, text in _find(rendered, "ConfigMap", "scimflow-config")["data"].items():
        (tmp_path / key).write_text(text)
    return tmp_path / "scimflow.yaml"


def test_configmap_config_passes_scimflow_validate(rendered: list[Resource], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from services.cli import cli

    monkeypatch.setenv("CRM_SCIM_TOKEN", "not-a-real-token")
    result = CliRunner().invoke(cli, ["validate", str(_write_config(rendered, tmp_path))])
    assert result.exit_code == 0, result.output
    assert "OK (1 applications: crm; 1 sources)" in " ".join(result.output.split())


def test_settings_configmap_is_valid_settings(rendered: list[Resource]) -> None:
    data = _find(rendered, "ConfigMap", "scimflow-settings")["data"]
    check_settings_names(data)
    settings = load_settings(environ=data)
    assert settings.kafka_bootstrap
    assert settings.log_format == "json"


def check_settings_names(data: dict[str, str]) -> None:
    """Every SCIMFLOW_* key is a setting, or one the manifests set ahead of the code."""
    fields = {"SCIMFLOW_" + f.upper() for f in load_settings().__struct_fields__}
    ahead = set(data) - fields
    assert ahead <= set(AHEAD_OF_THE_CODE), f"unknown settings {ahead}"


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_selectors_wire_services_monitors_and_budgets(rendered: list[Resource]) -> None:
    for svc in SERVICES:
        deployment = _find(rendered, "Deployment", f"scimflow-{svc}")
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert _matches(deployment["spec"]["selector"]["matchLabels"], pod_labels)
        others = [_find(rendered, "Deployment", f"scimflow-{o}") for o in SERVICES if o != svc]
        service = _find(rendered, "Service", f"scimflow-{svc}")
        assert _matches(service["spec"]["selector"], pod_labels)
        assert not any(_matches(service["spec"]["selector"], o["spec"]["template"]["metadata"]["labels"])
                       for o in others), f"{svc}: the Service selects other workers' pods"
        assert service["spec"]["ports"] == [{"name": "metrics", "port": 9100, "targetPort": "metrics",
                                             "protocol": "TCP"}]
        pdb = _find(rendered, "PodDisruptionBudget", f"scimflow-{svc}")
        assert _matches(pdb["spec"]["selector"]["matchLabels"], pod_labels)
        assert pdb["spec"]["maxUnavailable"] == 1


def test_service_monitors_are_well_formed(rendered: list[Resource]) -> None:
    services = [r for r in rendered if r["kind"] == "Service"]
    monitors = [r for r in rendered if r["kind"] == "ServiceMonitor"]
    assert len(monitors) == len(SERVICES) + 1  # the workers and the admin API
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(monitor) <= {"apiVersion", "kind", "metadata", "spec"}
        spec = monitor["spec"]
        assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels"}
        selector = spec["selector"]["matchLabels"]
        (service,) = [s for s in services if _matches(selector, s["metadata"]["labels"])]
        ports = {p["name"] for p in service["spec"]["ports"]}
        assert spec["endpoints"]
        for endpoint in spec["endpoints"]:
            assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
            assert endpoint["port"] in ports
            assert endpoint["path"] == "/metrics"
            assert re.fullmatch(r"\d+[smh]", endpoint["interval"])
            assert re.fullmatch(r"\d+[smh]", endpoint["scrapeTimeout"])


def test_prometheus_rule_is_alerts_yaml(rendered: list[Resource]) -> None:
    rule = _find(rendered, "PrometheusRule", "scimflow")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"], (
        "deploy/k8s/base/prometheusrule.yaml drifted from deploy/prometheus/alerts.yaml")


def test_writer_autoscaler_stays_within_the_partitions(rendered: list[Resource]) -> None:
    hpa = _find(rendered, "HorizontalPodAutoscaler", "scimflow-writer")["spec"]
    partitions = load_settings(environ=_find(rendered, "ConfigMap", "scimflow-settings")["data"]).partitions
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "scimflow-writer"}
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"] <= partitions
    # The HPA owns the writer's replica count; a replicas field would fight it on apply.
    assert "replicas" not in _find(rendered, "Deployment", "scimflow-writer")["spec"]
    for svc in ("ingest", "mapper"):
        assert _find(rendered, "Deployment", f"scimflow-{svc}")["spec"]["replicas"] <= partitions


def test_topics_job_creates_every_topic(base: list[Resource], monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from services.runtime import kafka

    (container,) = _find(base, "Job", "scimflow-topics")["spec"]["template"]["spec"]["containers"]
    assert container["envFrom"] == [{"configMapRef": {"name": _config_map_name(base, "scimflow-settings")}}]
    python, flag, script = container["command"]
    assert (python, flag) == ("python", "-c")
    settings = _find(base, "ConfigMap", "scimflow-settings")["data"]
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    calls: dict[str, Any] = {}
    monkeypatch.setattr(kafka, "wait_until_ready",
                        lambda bootstrap, timeout: calls.update(ready=bootstrap))

    def create_topics(bootstrap: str, specs: Any) -> list[str]:
        calls.update(bootstrap=bootstrap, specs=list(specs))
        return [calls["specs"][0].name]

    monkeypatch.setattr(kafka, "create_topics", create_topics)
    exec(compile(script, "topics-job.yaml", "exec"), {"__name__": "__main__"})  # noqa: S102 - our own manifest
    expected = Topics(settings["SCIMFLOW_TOPIC_PREFIX"], int(settings["SCIMFLOW_PARTITIONS"])).specs()
    assert calls["ready"] == calls["bootstrap"] == settings["SCIMFLOW_KAFKA_BOOTSTRAP"]
    assert calls["specs"] == expected
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"created  {expected[0].name}")
    assert printed[1].startswith(f"exists   {expected[1].name}")
    assert len(printed) == len(expected)


# --- Dockerfile --------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, args = line.strip().partition(" ")
            out.append((instruction.upper(), args.strip()))
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction, args in _instructions():
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, args))
    return stages


def test_dockerfile_builds_in_one_stage_and_runs_in_another() -> None:
    stages = _stages()
    assert len(stages) >= 2
    final = stages[-1]
    assert any(i == "COPY" and a.startswith("--from=builder ") for i, a in final)
    assert not any(i == "RUN" and "pip install" in a for i, a in final), (
        "install in the builder, copy the result")
    # The runtime stage may add shared libraries (python-ldap links libldap), nothing else.
    for i, a in final:
        if i == "RUN" and "apt-get install" in a:
            packages = re.sub(r".*apt-get install -y --no-install-recommends ", "", a).split("&&")[0]
            assert all(p.startswith("lib") for p in packages.split()), packages
    defaults = dict(a.split("=", 1) for i, a in _instructions() if i == "ARG" and "=" in a)
    for _, args in (stage[0] for stage in stages):
        image = args.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], image)
        assert re.fullmatch(r"[\w./-]+:[\w.-]+(@sha256:[0-9a-f]{64})?", image), image
        assert not image.endswith(":latest"), image


def test_dockerfile_runs_as_non_root_scimflow() -> None:
    final = _stages()[-1]
    users = [a for i, a in final if i == "USER"]
    assert users and users[-1].split(":")[0] == "10001"
    entrypoint = [a for i, a in final if i == "ENTRYPOINT"]
    assert json.loads(entrypoint[-1]) == ["scimflow"]
    assert [a for i, a in final if i == "EXPOSE"] == ["9100"]


def test_dockerfile_bakes_in_no_secrets_or_remote_files() -> None:
    for instruction, args in _instructions():
        assert not (instruction == "ADD" and re.search(r"https?://|git@", args)), "ADD of a URL"
        if instruction in {"ENV", "ARG"}:
            assert not re.search(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|PRIVATE)", args, re.I), args


def test_dockerfile_settings_match_the_deployment(base: list[Resource]) -> None:
    env = dict(re.findall(r"(SCIMFLOW_\w+)=(\S+)", " ".join(a for i, a in _instructions() if i == "ENV")))
    fields = {"SCIMFLOW_" + f.upper() for f in load_settings().__struct_fields__}
    assert set(env) <= fields
    settings = _find(base, "ConfigMap", "scimflow-settings")["data"]
    for key in ("SCIMFLOW_DATA_DIR", "SCIMFLOW_METRICS_PORT"):
        assert env[key] == settings[key], key


def _ignored(path: str) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent wins."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/").removeprefix("**/")
        if any(fnmatch.fnmatchcase(c, glob) or fnmatch.fnmatchcase(c.split("/")[-1], glob)
               if pattern.lstrip("!").startswith("**/") else fnmatch.fnmatchcase(c, glob)
               for c in candidates):
            ignored = not negate
    return ignored


def test_dockerignore_sends_only_the_sources() -> None:
    sources = [a.split()[:-1] for i, a in _stages()[0] if i == "COPY"]
    copied = [s for group in sources for s in group]
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not _ignored(source), source
    assert not _ignored("services/runtime/metrics.py")
    assert not _ignored("schemas/json/provisioning.activity.schema.json")
    for path in (".venv/bin/python", ".git/config", ".env", "tests/conftest.py",
                 "services/__pycache__/cli.cpython-311.pyc", "deploy/k8s/base/kustomization.yaml"):
        assert _ignored(path), path


def test_admin_api_is_deployed_with_probes_and_a_secret_token(rendered: list[Resource]) -> None:
    kinds = {(r["kind"], r["metadata"]["name"]) for r in rendered}
    for kind in ("Deployment", "Service", "ServiceMonitor", "PodDisruptionBudget"):
        assert (kind, "scimflow-admin") in kinds
    settings = load_settings(environ=_find(rendered, "ConfigMap", "scimflow-settings")["data"])
    deployment = _find(rendered, "Deployment", "scimflow-admin")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] + container["args"] == [
        "scimflow", "admin", "--config", "/etc/scimflow/scimflow.yaml"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": settings.admin_port}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert settings.admin_host == "0.0.0.0"  # noqa: S104 - a pod listens on its own IP
    name, _, ref = (settings.admin_tokens or "").partition("=")
    assert name and ref.startswith("env:")
    env = secret_env(container)
    env.pop(KAFKA_PASSWORD_VAR, None)  # with Kafka SASL: test_kafka_component_secures_every_kafka_client
    assert env == {ref.removeprefix("env:"): "scimflow-admin-tokens"}
    service = _find(rendered, "Service", "scimflow-admin")
    assert _matches(service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    monitor = _find(rendered, "ServiceMonitor", "scimflow-admin")
    assert monitor["spec"]["endpoints"][0]["port"] == "http"


def test_dockerfile_has_a_healthcheck_that_the_image_carries() -> None:
    final = _stages()[-1]
    (check,) = [a for i, a in final if i == "HEALTHCHECK"]
    options, _, command = check.partition("CMD ")
    assert re.search(r"--start-period=\d+s", options), "a writer restores its table before it answers"
    argv = json.loads(command)
    assert argv[0] == "python"
    copies = {dest: source for i, a in final if i == "COPY" and not a.startswith("--from=")
              for source, dest in [a.split()]}
    assert argv[1] in copies, "the HEALTHCHECK runs a script the image does not copy"
    assert not _ignored(copies[argv[1]]), f"{copies[argv[1]]} is not in the build context"
    assert (ROOT / copies[argv[1]]).is_file()


def _healthcheck() -> Any:
    spec = importlib.util.spec_from_file_location("healthcheck", DEPLOY / "docker" / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_healthcheck_script_passes_on_a_live_metrics_endpoint_only() -> None:
    script = _healthcheck()
    live, dead = _free_port(), _free_port()
    server, thread = prometheus_client.start_http_server(live, "127.0.0.1")
    try:
        assert script.healthy({"SCIMFLOW_METRICS_PORT": str(live), "SCIMFLOW_ADMIN_PORT": str(dead)})
        assert not script.healthy({"SCIMFLOW_METRICS_PORT": str(dead), "SCIMFLOW_ADMIN_PORT": str(dead)})
        # The admin API: no metrics port, /healthz on the admin port.
        assert script.healthy({"SCIMFLOW_METRICS_PORT": "0", "SCIMFLOW_ADMIN_PORT": str(live)})
        assert not script.healthy({"SCIMFLOW_METRICS_PORT": "0", "SCIMFLOW_ADMIN_PORT": str(dead)})
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# --- lock files --------------------------------------------------------------------------


def _pins(path: Path) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in path.read_text().splitlines():
        requirement = line.split("#", 1)[0].strip()
        if requirement:
            name, _, version = requirement.partition("==")
            assert version, f"{path.name}: {requirement} is not pinned"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def _declared(*extras: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + [d for extra in extras for d in project["optional-dependencies"][extra]]
    return [Requirement(line) for line in lines]


@pytest.mark.parametrize(("lock", "extras"), [("dev.txt", ("dev", "demo", "ldap")), ("image.txt", ("ldap",))])
def test_lock_files_pin_what_pyproject_declares(lock: str, extras: tuple[str, ...]) -> None:
    pins = _pins(ROOT / "requirements" / lock)
    for requirement in _declared(*extras):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{lock} lacks {name}: run `make lock`"
        wanted = requirement.specifier
        assert wanted.contains(pins[name], prereleases=True), (
            f"{lock} pins {name}=={pins[name]}, pyproject.toml wants {wanted}: run `make lock`")


def test_image_lock_is_the_dev_lock_without_the_dev_stack() -> None:
    image, dev = _pins(ROOT / "requirements" / "image.txt"), _pins(ROOT / "requirements" / "dev.txt")
    assert {name: dev.get(name) for name in image} == image, "the image and make resolve differently"
    runtime = {canonicalize_name(r.name) for r in _declared("ldap")}
    dev_only = {canonicalize_name(r.name) for r in _declared("dev", "demo")} - runtime
    assert not dev_only & set(image), "the dev stack is in the image lock"


def test_make_and_the_dockerfile_install_from_the_locks() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"pip install -q -c \$\(LOCK\) -e '\.\[dev,demo,ldap\]'", makefile)
    assert "LOCK := requirements/dev.txt" in makefile
    builder = " ".join(a for i, a in _stages()[0] if i == "RUN")
    assert "pip install -c requirements/image.txt " in builder
