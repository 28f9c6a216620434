"""The Grafana dashboard (deploy/grafana/s3proxy.json) and the Prometheus
alerts (deploy/prometheus/alerts.yaml) query only metrics s3proxy exports.

Every PromQL expression of both files is reduced to the metric names it
selects (a small tokenizer: strings, label matchers, ranges, Grafana
variables and ``by (...)`` clauses are blanked; what is left and is not a
function, keyword or number is a metric name).  A real ``s3proxy serve``
with TLS (the certificate-expiry gauge exists only then) takes a few
requests, and its admin ``/metrics`` is scraped: every queried name must be
an exposition name there.  Labelled counters that saw no sample yet (e.g.
``s3proxy_throttled_total``) appear only as ``# HELP`` / ``# TYPE`` lines,
which count: a registered metric is a queryable one.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.config import Config
from botocore.exceptions import ClientError

from s3proxy.tlsutil import LocalCA
from tests.conftest import CLIENT_AK, CLIENT_SK, Backend
from tests.integration.test_service import ServeProc, serve

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "s3proxy.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"

# --------------------------------------------------------------------------
# PromQL: which metrics does an expression select?
# --------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")  # range vectors, subqueries
_GRAFANA_VAR = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = frozenset({
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right",
    "inf", "nan", "atan2", "start", "end",
})
_LABEL_VALUES = re.compile(r"^\s*label_values\s*\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$", re.S)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana ``label_values`` query) selects."""
    m = _LABEL_VALUES.match(expr)
    if m:
        expr = m.group(1)
    s = _STRING.sub('""', expr)
    s = _GRAFANA_VAR.sub(" ", s)
    s = _MATCHERS.sub(" ", s)
    s = _BRACKETS.sub(" ", s)
    s = _GROUPING.sub(" ", s)
    names: set[str] = set()
    for m in _IDENT.finditer(s):
        start, name = m.start(), m.group()
        if start and (s[start - 1].isdigit() or s[start - 1] == "."):
            continue  # the exponent or unit of a number or duration: 1e-05, 5m
        if s[m.end():].lstrip().startswith("("):
            continue  # a function or an aggregation
        if name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def test_metric_names_tokenizer() -> None:
    assert metric_names('sum by (op, status) (rate(s3proxy_requests_total{job=~"$job",status=~"5.."}[5m]))') == {
        "s3proxy_requests_total"}
    assert metric_names(
        "histogram_quantile(0.99, sum by (le) (rate(s3proxy_request_seconds_bucket{op=\"Get(x)\"}[$__rate_interval])))"
    ) == {"s3proxy_request_seconds_bucket"}
    assert metric_names("sum(rate(a_total[5m])) by (x) / ignoring(y) group_left(z) sum(b) > bool 1e-05") == {
        "a_total", "b"}
    assert metric_names("min(c{instance=~\"${instance}\"}) - time() < 14 * 86400 and d offset 1h") == {"c", "d"}
    assert metric_names("absent(e)") == {"e"}
    assert metric_names("max_over_time(f[1h:5m]) unless on (job) g") == {"f", "g"}
    assert metric_names('label_values(s3proxy_in_flight_requests{job=~"$job"}, instance)') == {
        "s3proxy_in_flight_requests"}
    assert metric_names("up") == {"up"}


# --------------------------------------------------------------------------
# The two files
# --------------------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    d = json.loads(DASHBOARD.read_text())
    assert isinstance(d, dict)
    return d


def load_alerts() -> dict[str, Any]:
    d = yaml.safe_load(ALERTS.read_text())
    assert isinstance(d, dict)
    return d


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in dashboard["panels"]:
        yield p
        yield from p.get("panels", [])  # panels inside collapsed rows


def dashboard_exprs(dashboard: dict[str, Any]) -> dict[str, str]:
    """"where: expr" for every panel target and every query variable."""
    out: dict[str, str] = {}
    for p in all_panels(dashboard):
        for t in p.get("targets", []):
            out[f"panel {p['title']!r} target {t['refId']}"] = t["expr"]
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]
            out[f"variable {v['name']}"] = q["query"] if isinstance(q, dict) else q
    return out


def alert_exprs(alerts: dict[str, Any]) -> dict[str, str]:
    return {f"rule {r.get('alert') or r.get('record')}": r["expr"] for g in alerts["groups"] for r in g["rules"]}


def test_dashboard_is_importable_with_a_datasource_variable() -> None:
    d = load_dashboard()
    assert d["uid"] == "s3proxy" and d["title"] and d["id"] is None and isinstance(d["schemaVersion"], int)
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ref = {"type": "prometheus", "uid": "${datasource}"}
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"] == ref, v["name"]
    ids: set[int] = set()
    for p in all_panels(d):
        assert p["id"] not in ids, f"duplicate panel id {p['id']}"
        ids.add(p["id"])
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == ref, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == ref, p["title"]
            assert t["expr"].count("(") == t["expr"].count(")"), (p["title"], t["expr"])
            assert t["expr"].count("{") == t["expr"].count("}"), (p["title"], t["expr"])
    # No hard-coded data source anywhere.
    text = DASHBOARD.read_text()
    uids = set(re.findall(r'"uid":\s*"([^"]*)"', text))
    assert uids <= {"${datasource}", "-- Grafana --", "s3proxy"}, uids


def test_alert_rules_file_is_well_formed() -> None:
    a = load_alerts()
    assert set(a) == {"groups"}
    names: set[str] = set()
    for g in a["groups"]:
        assert g["name"] and g["rules"]
        for r in g["rules"]:
            assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r
            assert r["alert"] not in names, r["alert"]
            names.add(r["alert"])
            assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", r["alert"])
            assert r["labels"]["severity"] in ("critical", "warning", "info"), r["alert"]
            assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
            if "for" in r:
                assert re.fullmatch(r"(\d+[smhd])+", r["for"]), r["alert"]
            expr = r["expr"]
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), r["alert"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
def test_promql_parses_with_promtool(tmp_path: Path) -> None:
    """Prometheus' own parser, where it is installed: the alerts, and the
    dashboard's queries as recording rules (Grafana variables substituted)."""
    out = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    subst = {"$__rate_interval": "5m", "$__range": "1h", "$job": ".*", "$instance": ".*"}
    rules = []
    for i, (where, expr) in enumerate(sorted(dashboard_exprs(load_dashboard()).items())):
        if where.startswith("variable"):
            expr = _LABEL_VALUES.match(expr).group(1)  # type: ignore[union-attr]
        for k, v in subst.items():
            expr = expr.replace(k, v)
        rules.append({"record": f"dashboard:q{i}", "expr": expr})
    f = tmp_path / "dashboard-rules.yaml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = subprocess.run(["promtool", "check", "rules", str(f)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_dashboard_and_alerts_cover_the_issue() -> None:
    """What issue 13 asks to see and to alert on."""
    dash = set().union(*map(metric_names, dashboard_exprs(load_dashboard()).values()))
    for name in (
        "s3proxy_requests_total", "s3proxy_request_seconds_bucket", "s3proxy_encrypted_bytes_total",
        "s3proxy_decrypted_bytes_total", "s3proxy_key_service_calls_total", "s3proxy_key_cache_hits_total",
        "s3proxy_key_cache_misses_total", "s3proxy_key_backend_errors_total", "s3proxy_key_service_errors_total",
        "s3proxy_in_flight_requests", "s3proxy_throttled_total", "s3proxy_integrity_failures_total",
        "s3proxy_tls_cert_expiry_timestamp_seconds",
    ):
        assert name in dash, name
    alerts = set().union(*map(metric_names, alert_exprs(load_alerts()).values()))
    for name in (
        "s3proxy_requests_total", "s3proxy_request_seconds_bucket", "s3proxy_key_backend_errors_total",
        "s3proxy_throttled_total", "s3proxy_integrity_failures_total", "s3proxy_tls_cert_expiry_timestamp_seconds",
        "s3proxy_in_flight_requests",
    ):
        assert name in alerts, name


# --------------------------------------------------------------------------
# A running s3proxy
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServeProc, LocalCA]]:
    tmp = tmp_path_factory.mktemp("dashboard")
    ca = LocalCA(tmp / "ca")
    cert = ca.issue("server", ["127.0.0.1", "localhost"])
    p = serve(backend, tmp, S3PROXY_TLS_CERT=str(cert.cert), S3PROXY_TLS_KEY=str(cert.key))
    yield p, ca
    p.stop()


def exposition_names(text: str) -> tuple[set[str], set[str]]:
    """(every name a query may select, the names that have samples) of a text exposition."""
    names: set[str] = set()
    sampled: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            names.add(name)
            if kind == "histogram":
                names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
            elif kind == "summary":
                names.update({f"{name}_sum", f"{name}_count"})
        elif line.startswith("# HELP "):
            names.add(line.split(None, 3)[2])
        elif line and not line.startswith("#"):
            name = re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line).group()  # type: ignore[union-attr]
            names.add(name)
            sampled.add(name)
    return names, sampled


def test_every_queried_metric_is_exported(tls_server: tuple[ServeProc, LocalCA]) -> None:
    p, ca = tls_server
    s3 = boto3.client(
        "s3", endpoint_url=f"https://127.0.0.1:{p.port}", aws_access_key_id=CLIENT_AK,
        aws_secret_access_key=CLIENT_SK, region_name="us-east-1", verify=str(ca.cert_path),
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    bucket = "dash-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="k", Body=b"metrics" * 1000)
    for _ in range(2):  # a data-key cache miss, then a hit
        assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"metrics" * 1000
    s3.head_object(Bucket=bucket, Key="k")
    s3.list_objects_v2(Bucket=bucket)
    with pytest.raises(ClientError):
        s3.get_object(Bucket=bucket, Key="missing")
    s3.delete_object(Bucket=bucket, Key="k")
    s3.delete_bucket(Bucket=bucket)

    status, body = p.admin("/metrics")
    assert status == 200
    exported, sampled = exposition_names(body.decode())
    # The scrape saw the traffic (so the names below come from a working instance).
    for name in ("s3proxy_requests_total", "s3proxy_request_seconds_bucket", "s3proxy_encrypted_bytes_total",
                 "s3proxy_decrypted_bytes_total", "s3proxy_key_service_calls_total", "s3proxy_key_cache_hits_total",
                 "s3proxy_key_cache_misses_total", "s3proxy_in_flight_requests",
                 "s3proxy_tls_cert_expiry_timestamp_seconds"):
        assert name in sampled, name

    queries = {**dashboard_exprs(load_dashboard()), **alert_exprs(load_alerts())}
    missing = {
        f"{where}: {name}"
        for where, expr in queries.items()
        for name in metric_names(expr)
        if name not in exported
    }
    assert not missing, "queried but not exported:\n" + "\n".join(sorted(missing))
