"""The Helm chart in deploy/helm/s3proxy, rendered without the helm binary.

helm is not installable on the project's machines (no Debian package, and
binaries are not downloaded), so this module carries a small renderer for
the subset of Go-template syntax the chart uses:

- ``{{ pipeline }}`` with ``{{-`` / ``-}}`` whitespace trimming and
  ``{{/* comments */}}``;
- ``if`` / ``else if`` / ``else`` / ``end``, ``define`` (in ``_helpers.tpl``)
  and ``include "name" .``;
- fields (``.Values.a.b``, ``.Release.Name``, ``.Chart.AppVersion``), string
  literals, pipes and parenthesised sub-pipelines;
- the functions ``toYaml``, ``nindent``, ``indent``, ``quote``, ``default``,
  ``not``, ``and``, ``or``, ``eq``, ``ne``, ``sha256sum``.

It is stricter than Helm where Helm silently renders nonsense: a field of a
missing value, an unknown function or keyword, printing a map or list
without ``toYaml``.  Numbers print the way Go's ``%v`` prints Helm's float64
values (``1000000`` renders as ``1e+06``), so a large number printed without
``toYaml`` or ``quote`` shows up here as it would in a cluster.

The rendered manifests are parsed with PyYAML and checked: kinds, names,
labels against selectors, references between objects, config.yaml loading
as real s3proxy settings, agreement with the kustomize manifests in deploy/,
and the values toggles.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from s3proxy.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "s3proxy"
KUSTOMIZE = ROOT / "deploy"

# --------------------------------------------------------------------------
# A small Go-template renderer
# --------------------------------------------------------------------------


class TemplateError(Exception):
    pass


_ACTION = re.compile(r"\{\{(-[ \t\r\n])?(.*?)([ \t\r\n]-)?\}\}", re.S)
_WS = " \t\r\n"


def _lex(src: str, name: str) -> list[tuple[str, str]]:
    """Text and action tokens, with the trim markers applied to the text."""
    out: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for m in _ACTION.finditer(src):
        text = src[pos:m.start()]
        if trim_next:
            text = text.lstrip(_WS)
        if m.group(1):
            text = text.rstrip(_WS)
        out.append(("text", text))
        body = m.group(2).strip()
        if not (body.startswith("/*") and body.endswith("*/")):
            if "{{" in body:
                raise TemplateError(f"{name}: unterminated action near {body[:40]!r}")
            out.append(("action", body))
        trim_next = bool(m.group(3))
        pos = m.end()
    text = src[pos:]
    out.append(("text", text.lstrip(_WS) if trim_next else text))
    if "{{" in text or "}}" in text:
        raise TemplateError(f"{name}: stray braces in {text[:40]!r}")
    return out


_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>"(?:[^"\\]|\\.)*")
    | (?P<raw>`[^`]*`)
    | (?P<num>-?\d+(?:\.\d+)?)
    | (?P<punct>[()|])
    | (?P<field>\$(?:\.[A-Za-z_]\w*)*|\.?[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*|\.)
    )""",
    re.X,
)


def _tokens(expr: str) -> list[tuple[str, str]]:
    toks: list[tuple[str, str]] = []
    pos = 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None or m.end() == pos:
            raise TemplateError(f"cannot parse {expr[pos:]!r} in {expr!r}")
        kind = m.lastgroup or ""
        toks.append((kind, m.group(kind)))
        pos = m.end()
        while pos < len(expr) and expr[pos] in _WS:
            pos += 1
    return toks


class _Pipeline:
    """``cmd | cmd | ...``; each command is a list of operands."""

    def __init__(self, expr: str) -> None:
        self.expr = expr
        toks = _tokens(expr)
        self.commands, rest = self._parse(toks, 0)
        if rest != len(toks):
            raise TemplateError(f"unbalanced parenthesis in {expr!r}")

    def _parse(self, toks: list[tuple[str, str]], i: int) -> tuple[list[list[Any]], int]:
        commands: list[list[Any]] = [[]]
        while i < len(toks):
            kind, val = toks[i]
            if kind == "punct" and val == ")":
                break
            if kind == "punct" and val == "|":
                commands.append([])
                i += 1
                continue
            if kind == "punct" and val == "(":
                sub, i = self._parse(toks, i + 1)
                if i >= len(toks) or toks[i] != ("punct", ")"):
                    raise TemplateError(f"missing ) in {self.expr!r}")
                commands[-1].append(("pipe", sub))
                i += 1
                continue
            commands[-1].append((kind, val))
            i += 1
        if any(not c for c in commands):
            raise TemplateError(f"empty command in {self.expr!r}")
        return commands, i


def _truthy(v: Any) -> bool:
    if v is None or v is False:
        return False
    if isinstance(v, (int, float, str, list, dict, tuple)):
        return bool(v)
    return True


def _go_number(v: int | float) -> str:
    """Go's %v of a float64 (Helm reads every number in values as float64).

    strconv.FormatFloat(f, 'g', -1, 64): the shortest digits that round-trip,
    in %e form when the decimal exponent is < -4 or >= 6.
    """
    f = float(v)
    if f == 0:
        return "0"
    sign, digits, exp = Decimal(repr(f)).normalize().as_tuple()
    assert isinstance(exp, int)
    nd = len(digits)
    x = nd + exp - 1  # decimal exponent of the first digit
    s = "-" if sign else ""
    ds = "".join(map(str, digits))
    if x < -4 or x >= 6:
        mant = ds[0] + ("." + ds[1:] if nd > 1 else "")
        return f"{s}{mant}e{'-' if x < 0 else '+'}{abs(x):02d}"
    if x < 0:
        return f"{s}0.{'0' * (-x - 1)}{ds}"
    if nd <= x + 1:
        return f"{s}{ds}{'0' * (x + 1 - nd)}"
    return f"{s}{ds[:x + 1]}.{ds[x + 1:]}"


def _to_yaml(v: Any) -> str:
    text = yaml.safe_dump(v, default_flow_style=False, sort_keys=True, allow_unicode=True, width=1 << 16)
    if text.endswith("\n...\n"):
        text = text[: -len("...\n")]
    return text[:-1] if text.endswith("\n") else text


def _indent(n: Any, s: Any) -> str:
    pad = " " * int(n)
    return pad + str(s).replace("\n", "\n" + pad)


def _quote(*args: Any) -> str:
    return " ".join(json.dumps(a if isinstance(a, str) else _print(a)) for a in args if a is not None)


def _print(v: Any) -> str:
    if v is None:
        return ""  # Helm turns "<no value>" into ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return _go_number(v)
    if isinstance(v, str):
        return v
    raise TemplateError(f"printing a {type(v).__name__} without toYaml: {v!r}")


def _and(*args: Any) -> Any:
    for a in args:
        if not _truthy(a):
            return a
    return args[-1]


def _or(*args: Any) -> Any:
    for a in args:
        if _truthy(a):
            return a
    return args[-1]


def _eq(a: Any, *others: Any) -> bool:
    for b in others:
        if type(a) is not type(b) and not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
            raise TemplateError(f"incompatible types for comparison: {a!r}, {b!r}")
    return any(a == b for b in others)


def _default(d: Any, *given: Any) -> Any:
    if not given or not _truthy(given[0]):
        return d
    return given[0]


class Chart:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.meta = yaml.safe_load((path / "Chart.yaml").read_text())
        self.default_values = yaml.safe_load((path / "values.yaml").read_text())
        self.templates: dict[str, list[Any]] = {}
        self.defines: dict[str, list[Any]] = {}
        for f in sorted((path / "templates").iterdir()):
            nodes = self._parse(_lex(f.read_text(), f.name), f.name)
            self.templates[f.name] = nodes

    # -- parsing: nodes are ("text", s) | ("out", pipeline) | ("if", [(pipeline|None, nodes)])
    def _parse(self, toks: list[tuple[str, str]], name: str) -> list[Any]:
        pos = 0

        def block(stop: tuple[str, ...]) -> tuple[list[Any], str]:
            nonlocal pos
            nodes: list[Any] = []
            while pos < len(toks):
                kind, val = toks[pos]
                pos += 1
                if kind == "text":
                    if val:
                        nodes.append(("text", val))
                    continue
                word = val.split(None, 1)[0] if val else ""
                if word in ("end", "else"):
                    if word not in stop:
                        raise TemplateError(f"{name}: unexpected {{{{ {val} }}}}")
                    return nodes, val
                if word == "if":
                    branches: list[tuple[_Pipeline | None, list[Any]]] = []
                    cond: _Pipeline | None = _Pipeline(val[2:])
                    while True:
                        body, ended = block(("end", "else"))
                        branches.append((cond, body))
                        if ended == "end":
                            break
                        rest = ended[4:].strip()
                        if rest.startswith("if "):
                            cond = _Pipeline(rest[3:])
                        elif rest:
                            raise TemplateError(f"{name}: bad else: {ended!r}")
                        else:
                            cond = None
                    nodes.append(("if", branches))
                elif word == "define":
                    m = re.fullmatch(r'define\s+"([^"]+)"', val)
                    if m is None:
                        raise TemplateError(f"{name}: bad define: {val!r}")
                    body, _ = block(("end",))
                    self.defines[m.group(1)] = body
                elif word in ("range", "with", "template", "block", "break", "continue") or word.startswith("$"):
                    raise TemplateError(f"{name}: {word!r} is outside the subset this renderer supports")
                else:
                    nodes.append(("out", _Pipeline(val)))
            if stop:
                raise TemplateError(f"{name}: missing {{{{ end }}}}")
            return nodes, ""

        nodes, _ = block(())
        return nodes

    # -- evaluation
    def _funcs(self) -> dict[str, Callable[..., Any]]:
        return {
            "toYaml": _to_yaml,
            "nindent": lambda n, s: "\n" + _indent(n, s),
            "indent": _indent,
            "quote": _quote,
            "default": _default,
            "not": lambda v: not _truthy(v),
            "and": _and,
            "or": _or,
            "eq": _eq,
            "ne": lambda a, b: not _eq(a, b),
            "sha256sum": lambda s: hashlib.sha256(str(s).encode()).hexdigest(),
            "include": self._include,
        }

    def _include(self, name: str, dot: Any) -> str:
        if name not in self.defines:
            raise TemplateError(f"no template {name!r}")
        return self._exec(self.defines[name], dot)

    def _field(self, path: str, dot: Any) -> Any:
        cur = self._root if path.startswith("$") else dot
        parts = [p for p in path.lstrip("$").split(".") if p]
        walked = ""
        for p in parts:
            if cur is None:
                raise TemplateError(f"nil pointer evaluating {walked or '.'}.{p}")
            if not isinstance(cur, Mapping):
                raise TemplateError(f"can't evaluate field {p} in {walked}: not a map")
            cur = cur.get(p)
            walked += "." + p
        return cur

    def _operand(self, op: tuple[str, Any], dot: Any) -> Any:
        kind, val = op
        if kind == "str":
            return json.loads(val)
        if kind == "raw":
            return val[1:-1]
        if kind == "num":
            return float(val) if "." in val else int(val)
        if kind == "pipe":
            return self._eval(val, dot)
        if kind == "field":
            if val in ("true", "false"):
                return val == "true"
            if val == "nil":
                return None
            if val.startswith((".", "$")):
                return self._field(val, dot)
        raise TemplateError(f"unexpected operand {val!r}")

    def _eval(self, commands: list[list[Any]], dot: Any) -> Any:
        funcs = self._funcs()
        result: Any = None
        for i, cmd in enumerate(commands):
            head_kind, head = cmd[0]
            is_func = head_kind == "field" and not head.startswith((".", "$")) and head not in ("true", "false", "nil")
            if is_func:
                if head not in funcs:
                    raise TemplateError(f"function {head!r} not defined")
                args = [self._operand(o, dot) for o in cmd[1:]]
                if i > 0:
                    args.append(result)
                result = funcs[head](*args)
            else:
                if len(cmd) != 1 or i > 0:
                    raise TemplateError(f"can't give arguments to a non-function {head!r}")
                result = self._operand(cmd[0], dot)
        return result

    def _exec(self, nodes: list[Any], dot: Any) -> str:
        out: list[str] = []
        for node in nodes:
            if node[0] == "text":
                out.append(node[1])
            elif node[0] == "out":
                out.append(_print(self._eval(node[1].commands, dot)))
            else:
                for cond, body in node[1]:
                    if cond is None or _truthy(self._eval(cond.commands, dot)):
                        out.append(self._exec(body, dot))
                        break
        return "".join(out)

    # -- what `helm template` does
    def render(
        self, values: Mapping[str, Any] | None = None, *, release: str = "s3proxy", namespace: str = "storage-proxy"
    ) -> dict[str, str]:
        merged = _coalesce(copy.deepcopy(self.default_values), values or {})
        self._root = {
            "Values": merged,
            "Release": {"Name": release, "Namespace": namespace, "Service": "Helm", "IsInstall": True,
                        "IsUpgrade": False, "Revision": 1},
            "Chart": {k[:1].upper() + k[1:]: v for k, v in self.meta.items()},
            "Capabilities": {"KubeVersion": {"Version": "v1.30.0"}},
        }
        return {name: self._exec(nodes, self._root) for name, nodes in self.templates.items()
                if not name.startswith("_")}

    def manifests(self, values: Mapping[str, Any] | None = None, **kw: Any) -> list[dict[str, Any]]:
        docs: list[dict[str, Any]] = []
        for name, text in self.render(values, **kw).items():
            if not name.endswith((".yaml", ".yml")):
                continue
            for doc in yaml.safe_load_all(text):
                if doc is None:
                    continue
                assert isinstance(doc, dict), f"{name}: a manifest must be a mapping"
                doc["__template__"] = name
                docs.append(doc)
        return docs


def _coalesce(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Helm's merge of user values over the chart's: maps merge, null deletes."""
    for k, v in over.items():
        if v is None:
            base.pop(k, None)
        elif isinstance(v, Mapping) and isinstance(base.get(k), dict):
            _coalesce(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


# --------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------

MASTER_KEY = base64.b64encode(bytes(range(32))).decode()
# deploy/secret.example.yaml with its placeholders filled in.
EXAMPLE_ENV = {
    "S3PROXY_BACKEND_ACCESS_KEY": "backend-access-key",
    "S3PROXY_BACKEND_SECRET_KEY": "backend-secret-key",
    "S3PROXY_ACCESS_KEY": "AKIDHELMCHARTTEST001",
    "S3PROXY_SECRET_KEY": "helm-chart-test-secret-000000000000000001",
    "S3PROXY_MASTER_KEY": MASTER_KEY,
    "S3PROXY_MASTER_KEY_ID": "2026-01",
    # What the image and the Deployment set.
    "S3PROXY_LISTEN": "0.0.0.0:8080",
    "S3PROXY_ADMIN_LISTEN": "0.0.0.0:9090",
    "S3PROXY_LOG_FORMAT": "json",
    "S3PROXY_WORKERS": "1",
}


@pytest.fixture(scope="module")
def chart() -> Chart:
    return Chart(CHART)


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for d in docs:
        assert d["kind"] not in out, f"two {d['kind']} objects"
        out[d["kind"]] = d
    return out


def kustomize(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((KUSTOMIZE / name).read_text())
    assert isinstance(doc, dict)
    return doc


def container(dep: dict[str, Any]) -> dict[str, Any]:
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return c


def env_of(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in c.get("env", [])}


def config_text(docs: list[dict[str, Any]]) -> str:
    for d in docs:
        if d["kind"] in ("ConfigMap", "Secret") and d["metadata"]["name"].endswith("-config"):
            data = d.get("data") or d.get("stringData")
            return str(data["config.yaml"])
    raise AssertionError("no config object")


def settings_of(text: str, tmp_path: Path, environ: Mapping[str, str] = EXAMPLE_ENV) -> Any:
    p = tmp_path / "config.yaml"
    p.write_text(text)
    return load_settings(p, environ=environ)


def walk(obj: Any) -> Iterator[Any]:
    yield obj
    if isinstance(obj, dict):
        for v in obj.values():
            yield from walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from walk(v)


# --------------------------------------------------------------------------
# The renderer itself
# --------------------------------------------------------------------------


def _render_src(src: str, values: dict[str, Any], tmp_path: Path) -> str:
    root = tmp_path / "c"
    (root / "templates").mkdir(parents=True, exist_ok=True)
    (root / "Chart.yaml").write_text("apiVersion: v2\nname: t\nversion: 0.0.1\nappVersion: '1.0'\n")
    (root / "values.yaml").write_text(yaml.safe_dump(values))
    (root / "templates" / "t.yaml").write_text(src)
    return Chart(root).render()["t.yaml"]


def test_renderer_follows_go_template_rules(tmp_path: Path) -> None:
    src = (
        "a:\n  {{- if .Values.on }}\n  b: {{ .Values.n }}\n  {{- else if .Values.other }}\n  b: other\n"
        "  {{- else }}\n  b: off\n  {{- end }}\n"
        "c: {{ .Values.missing | default \"dflt\" | quote }}\n"
        "d:\n  {{- toYaml .Values.m | nindent 2 }}\n"
        "e: {{ .Values.big }} {{ .Values.small }} {{ .Values.frac }}\n"
        "{{- /* a comment */ -}}\n"
        "f: {{ and .Values.on (not .Values.other) }} {{ .Chart.AppVersion }} {{ .Release.Name }}\n"
    )
    values = {"on": True, "other": False, "n": 3, "m": {"y": [1, 2], "x": "s"}, "big": 5363471288,
              "small": 123456, "frac": 0.5}
    out = _render_src(src, values, tmp_path)
    assert out == (
        "a:\n  b: 3\n"
        'c: "dflt"\n'
        "d:\n  x: s\n  y:\n  - 1\n  - 2\n"
        "e: 5.363471288e+09 123456 0.5f: true 1.0 s3proxy\n"
    )
    assert "b: off" in _render_src(src, {**values, "on": False}, tmp_path)
    assert "b: other" in _render_src(src, {**values, "on": False, "other": True}, tmp_path)
    with pytest.raises(TemplateError, match="nil pointer"):
        _render_src("{{ .Values.nope.deeper }}", {}, tmp_path)
    with pytest.raises(TemplateError, match="without toYaml"):
        _render_src("{{ .Values.m }}", {"m": {"a": 1}}, tmp_path)
    with pytest.raises(TemplateError, match="not defined"):
        _render_src("{{ .Values.m | toJson }}", {"m": 1}, tmp_path)
    with pytest.raises(TemplateError, match="missing"):
        _render_src("{{ if .Values.m }}x", {"m": 1}, tmp_path)


@pytest.mark.parametrize(
    ("value", "go"),
    [(0, "0"), (3, "3"), (999999, "999999"), (1000000, "1e+06"), (1500000, "1.5e+06"), (0.5, "0.5"),
     (1e-05, "1e-05"), (0.0001, "0.0001"), (-42, "-42"), (1234567.5, "1.2345675e+06")],
)
def test_numbers_print_like_go(value: float, go: str) -> None:
    assert _go_number(value) == go


# --------------------------------------------------------------------------
# The chart
# --------------------------------------------------------------------------


def test_chart_metadata(chart: Chart) -> None:
    import s3proxy

    assert chart.meta["apiVersion"] == "v2"
    assert chart.meta["name"] == "s3proxy"
    assert chart.meta["type"] == "application"
    assert re.fullmatch(r"\d+\.\d+\.\d+", str(chart.meta["version"]))
    assert chart.meta["appVersion"] == s3proxy.__version__


def test_default_render_objects_names_and_labels(chart: Chart) -> None:
    docs = chart.manifests(release="objstore")
    objs = by_kind(docs)
    assert set(objs) == {"ServiceAccount", "ConfigMap", "Secret", "Deployment", "Service",
                         "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    for d in docs:
        assert d["apiVersion"] and d["metadata"]["name"].startswith("objstore"), d["__template__"]
        labels = d["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "s3proxy"
        assert labels["app.kubernetes.io/instance"] == "objstore"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "s3proxy-" + str(chart.meta["version"])
        assert "namespace" not in d["metadata"]  # helm -n decides
    dep, svc, hpa, pdb = (objs[k] for k in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"))
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "s3proxy", "app.kubernetes.io/instance": "objstore"}
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    assert svc["spec"]["selector"] == selector
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    for tsc in dep["spec"]["template"]["spec"]["topologySpreadConstraints"]:
        assert tsc["labelSelector"]["matchLabels"] == selector
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "objstore"}
    assert "replicas" not in dep["spec"]  # the HPA owns the count
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == objs["ServiceAccount"]["metadata"]["name"] == "objstore"
    c = container(dep)
    assert c["image"] == "registry.example.com/s3proxy:" + str(chart.meta["appVersion"])
    assert c["envFrom"] == [{"secretRef": {"name": objs["Secret"]["metadata"]["name"]}}]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == objs["ConfigMap"]["metadata"]["name"] == "objstore-config"
    assert {m["name"] for m in c["volumeMounts"]} <= set(volumes)
    # Named ports: what the Service and the probes refer to exists.
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= set(ports)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["port"] in ports
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports["admin"]
    assert re.fullmatch(r"[0-9a-f]{64}", str(annotations["checksum/config"]))
    # Fail closed: the chart-made Secret holds nothing until values are given.
    assert "stringData" not in objs["Secret"] and "data" not in objs["Secret"]


def test_default_config_is_valid_s3proxy_config(chart: Chart, tmp_path: Path) -> None:
    from s3proxy.keys.registry import build_key_manager

    s = settings_of(config_text(chart.manifests()), tmp_path)
    assert s.keys.backend == "local"
    assert s.identities[0].access_key == EXAMPLE_ENV["S3PROXY_ACCESS_KEY"]
    assert s.limits.max_requests == 1024 and s.limits.max_requests_per_identity == 128
    assert s.workers == 1 and s.tls.cert is None
    build_key_manager(s.keys)  # what `s3proxy serve` checks at start
    # The drain fits in the grace period after the preStop sleep.
    values = chart.default_values
    assert s.shutdown_timeout < values["terminationGracePeriodSeconds"] - values["preStopSleepSeconds"]


def test_default_render_matches_the_kustomize_manifests(chart: Chart, tmp_path: Path) -> None:
    objs = by_kind(chart.manifests())
    k_dep, h_dep = kustomize("deployment.yaml"), objs["Deployment"]
    kc, hc = container(k_dep), container(h_dep)
    for key in ("args", "ports", "startupProbe", "livenessProbe", "readinessProbe", "lifecycle", "resources",
                "securityContext", "imagePullPolicy"):
        assert hc[key] == kc[key], key
    assert env_of(hc) == env_of(kc)
    assert hc["volumeMounts"] == kc["volumeMounts"]
    for key in ("strategy", "revisionHistoryLimit"):
        assert h_dep["spec"][key] == k_dep["spec"][key], key
    kpod, hpod = k_dep["spec"]["template"]["spec"], h_dep["spec"]["template"]["spec"]
    for key in ("automountServiceAccountToken", "terminationGracePeriodSeconds", "securityContext"):
        assert hpod[key] == kpod[key], key
    assert [v for v in hpod["volumes"] if v["name"] != "config"] == [v for v in kpod["volumes"] if v["name"] != "config"]
    k_ann = k_dep["spec"]["template"]["metadata"]["annotations"]
    assert k_ann.items() <= h_dep["spec"]["template"]["metadata"]["annotations"].items()

    k_svc, h_svc = kustomize("service.yaml"), objs["Service"]
    assert h_svc["spec"]["ports"] == k_svc["spec"]["ports"]
    assert h_svc["spec"]["type"] == k_svc["spec"]["type"]
    k_hpa, h_hpa = kustomize("hpa.yaml"), objs["HorizontalPodAutoscaler"]
    for key in ("minReplicas", "maxReplicas", "metrics", "behavior"):
        assert h_hpa["spec"][key] == k_hpa["spec"][key], key
    k_pdb, h_pdb = kustomize("pdb.yaml"), objs["PodDisruptionBudget"]
    assert h_pdb["spec"]["maxUnavailable"] == k_pdb["spec"]["maxUnavailable"]
    assert objs["ServiceAccount"]["automountServiceAccountToken"] is False
    # The same s3proxy settings as deploy/configmap.yaml, limits included.
    k_cfg = kustomize("configmap.yaml")["data"]["config.yaml"]
    (tmp_path / "k").mkdir()
    assert settings_of(config_text(list(objs.values())), tmp_path) == settings_of(k_cfg, tmp_path / "k")


def test_hpa_and_pdb_toggles(chart: Chart) -> None:
    objs = by_kind(chart.manifests({"hpa": {"enabled": False}, "pdb": {"enabled": False}, "replicaCount": 5}))
    assert "HorizontalPodAutoscaler" not in objs and "PodDisruptionBudget" not in objs
    assert objs["Deployment"]["spec"]["replicas"] == 5
    objs = by_kind(chart.manifests({"hpa": {"minReplicas": 2, "maxReplicas": 30, "targetCPUUtilizationPercentage": 50,
                                            "behavior": None},
                                    "pdb": {"minAvailable": 2}}))
    spec = objs["HorizontalPodAutoscaler"]["spec"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 30)
    assert spec["metrics"][0]["resource"]["target"]["averageUtilization"] == 50
    assert "behavior" not in spec
    assert objs["PodDisruptionBudget"]["spec"] == {
        "minAvailable": 2, "selector": objs["Deployment"]["spec"]["selector"]}


def test_service_account_and_secret_toggles(chart: Chart) -> None:
    objs = by_kind(chart.manifests({
        "serviceAccount": {"create": False, "name": "shared-sa"},
        "secret": {"existingSecret": "s3proxy-from-vault"},
    }))
    assert "ServiceAccount" not in objs and "Secret" not in objs
    assert objs["Deployment"]["spec"]["template"]["spec"]["serviceAccountName"] == "shared-sa"
    assert container(objs["Deployment"])["envFrom"] == [{"secretRef": {"name": "s3proxy-from-vault"}}]

    objs = by_kind(chart.manifests({
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/s3proxy"}},
        "secret": {"env": {"S3PROXY_MASTER_KEY": MASTER_KEY, "S3PROXY_MASTER_KEY_ID": "2026-01"}},
    }))
    assert objs["ServiceAccount"]["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/s3proxy"}
    assert objs["Secret"]["stringData"] == {"S3PROXY_MASTER_KEY": MASTER_KEY, "S3PROXY_MASTER_KEY_ID": "2026-01"}


def test_tls_secret(chart: Chart) -> None:
    objs = by_kind(chart.manifests({"tls": {"secretName": "s3proxy-tls", "clientCA": True}, "service": {"port": 443}}))
    dep = objs["Deployment"]
    c = container(dep)
    env = env_of(c)
    assert env["S3PROXY_TLS_CERT"] == "/etc/s3proxy/tls/tls.crt"
    assert env["S3PROXY_TLS_KEY"] == "/etc/s3proxy/tls/tls.key"
    assert env["S3PROXY_TLS_CLIENT_CA"] == "/etc/s3proxy/tls/ca.crt"
    assert {"name": "tls", "mountPath": "/etc/s3proxy/tls", "readOnly": True} in c["volumeMounts"]
    assert {"name": "tls", "secret": {"secretName": "s3proxy-tls"}} in dep["spec"]["template"]["spec"]["volumes"]
    assert objs["Service"]["spec"]["ports"][0] == {"name": "https", "port": 443, "targetPort": "http",
                                                   "protocol": "TCP"}
    env = env_of(container(by_kind(chart.manifests({"tls": {"secretName": "x"}}))["Deployment"]))
    assert "S3PROXY_TLS_CERT" in env and "S3PROXY_TLS_CLIENT_CA" not in env


def test_identities_move_the_config_into_a_secret(chart: Chart, tmp_path: Path) -> None:
    identities = [
        {"name": "app", "access_key": "AKIAAPPEXAMPLE000001", "secret_key": "app-secret-0000000000"},
        {"name": "reader", "access_key": "AKIAREADEREXAMPLE001", "secret_key": "reader-secret-000000",
         "allow": [{"bucket": "reports", "prefix": "2026/", "actions": ["read", "list"]}]},
    ]
    docs = chart.manifests({"identities": identities})
    assert "ConfigMap" not in {d["kind"] for d in docs}
    (cfg,) = [d for d in docs if d["metadata"]["name"] == "s3proxy-config"]
    assert cfg["kind"] == "Secret" and cfg["type"] == "Opaque"
    env = {k: v for k, v in EXAMPLE_ENV.items() if k not in ("S3PROXY_ACCESS_KEY", "S3PROXY_SECRET_KEY")}
    s = settings_of(config_text(docs), tmp_path, env)
    assert [i.name for i in s.identities] == ["app", "reader"]
    assert s.identities[1].allow[0].actions == ("read", "list")
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"] == {"name": "config", "secret": {"secretName": "s3proxy-config"}}

    docs = chart.manifests({"existingConfigSecret": "my-s3proxy-config", "identities": identities})
    assert not [d for d in docs if d["metadata"]["name"].endswith("-config")]
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"] == {"name": "config", "secret": {"secretName": "my-s3proxy-config"}}


def test_key_backends(chart: Chart, tmp_path: Path) -> None:
    env = {k: v for k, v in EXAMPLE_ENV.items() if not k.startswith("S3PROXY_MASTER_KEY")}
    (tmp_path / "kms").mkdir()
    kms = chart.manifests({"config": {"keys": {"backend": "aws-kms", "aws_kms": {
        "key_id": "alias/s3proxy", "region": "eu-west-1"}}}})
    s = settings_of(config_text(kms), tmp_path / "kms", env)
    assert s.keys.backend == "aws-kms" and s.keys.aws_kms.key_id == "alias/s3proxy"
    assert s.keys.configured_backends() == ["aws-kms"]
    # Rotation from local to KMS: the master key (from the Secret) stays readable.
    s = settings_of(config_text(kms), tmp_path / "kms")
    assert s.keys.configured_backends() == ["aws-kms", "local"]

    (tmp_path / "hsm").mkdir()
    hsm_volume = {"name": "hsm", "hostPath": {"path": "/opt/hsm"}}
    hsm_mount = {"name": "hsm", "mountPath": "/opt/hsm", "readOnly": True}
    docs = chart.manifests({
        "config": {"keys": {"backend": "pkcs11", "pkcs11": {
            "module": "/opt/hsm/lib/libvendor_pkcs11.so", "token_label": "s3proxy", "key_label": "s3proxy-kek",
            "mechanism": "aes-kwp"}}},
        "extraVolumes": [hsm_volume], "extraVolumeMounts": [hsm_mount],
        "extraEnv": [{"name": "S3PROXY_PKCS11_PIN", "valueFrom": {"secretKeyRef": {"name": "hsm", "key": "pin"}}}],
    })
    s = settings_of(config_text(docs), tmp_path / "hsm", {**env, "S3PROXY_PKCS11_PIN": "1234"})
    assert s.keys.backend == "pkcs11" and s.keys.pkcs11.mechanism == "aes-kwp"
    assert s.keys.pkcs11.pin.get_secret_value() == "1234"
    dep = by_kind(docs)["Deployment"]
    assert hsm_volume in dep["spec"]["template"]["spec"]["volumes"]
    c = container(dep)
    assert hsm_mount in c["volumeMounts"]
    assert c["env"][-1]["name"] == "S3PROXY_PKCS11_PIN" and c["env"][0]["name"] == "S3PROXY_WORKERS"


def test_limits_and_config_changes_roll_the_pods(chart: Chart, tmp_path: Path) -> None:
    default = by_kind(chart.manifests())["Deployment"]
    docs = chart.manifests({"config": {"limits": {"max_requests": 2048, "max_requests_per_identity": 64,
                                                  "retry_after": 2}}})
    s = settings_of(config_text(docs), tmp_path)
    assert (s.limits.max_requests, s.limits.max_requests_per_identity, s.limits.retry_after) == (2048, 64, 2)
    assert s.limits.max_connections == 4096  # the rest of the section stays
    changed = by_kind(docs)["Deployment"]

    def checksum(d: dict[str, Any]) -> str:
        return str(d["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum(changed) != checksum(default)
    assert checksum(by_kind(chart.manifests({"replicaCount": 7}))["Deployment"]) == checksum(default)


def test_optional_extras(chart: Chart) -> None:
    docs = chart.manifests({
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus"}},
                    "podAnnotations": False},
        "podAnnotations": {"example.com/team": "storage"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "storage", "effect": "NoSchedule"}],
        "topologySpread": False,
        "readinessProbePath": "/healthz",
        "image": {"tag": "9.9.9"},
        "imagePullSecrets": [{"name": "regcred"}],
    })
    objs = by_kind(docs)
    sm = objs["ServiceMonitor"]
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus"
    assert sm["spec"]["selector"]["matchLabels"] == objs["Service"]["spec"]["selector"]
    assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in objs["Service"]["spec"]["ports"]}
    tpl = objs["Deployment"]["spec"]["template"]
    assert "prometheus.io/scrape" not in tpl["metadata"]["annotations"]
    assert tpl["metadata"]["annotations"]["example.com/team"] == "storage"
    assert tpl["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert tpl["spec"]["tolerations"][0]["key"] == "dedicated"
    assert tpl["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert "topologySpreadConstraints" not in tpl["spec"]
    c = container(objs["Deployment"])
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["image"].endswith(":9.9.9")


def test_notes_render(chart: Chart) -> None:
    notes = chart.render(release="objstore", namespace="ns")["NOTES.txt"]
    assert "http://objstore.ns.svc:80" in notes and "WARNING" in notes
    notes = chart.render({"secret": {"existingSecret": "x"}, "tls": {"secretName": "t"}})["NOTES.txt"]
    assert "https://" in notes and "WARNING" not in notes


def test_no_secret_material_in_the_default_values(chart: Chart) -> None:
    text = (CHART / "values.yaml").read_text()
    for obj in walk(chart.default_values):
        if isinstance(obj, dict):
            for key, value in obj.items():
                if any(w in str(key).lower() for w in ("secret_key", "master_key", "pin", "password")):
                    assert not value, f"{key} has a default value"
    assert MASTER_KEY not in text
