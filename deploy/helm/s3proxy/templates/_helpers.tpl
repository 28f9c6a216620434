{{/*
Templates shared by the manifests.  The chart sticks to a small subset of
Go-template syntax (fields, if/else, include, toYaml, nindent, default,
quote, sha256sum) so that tests/unit/test_helm_chart.py can render it
without the helm binary.
*/}}

{{/* Selector labels: the Deployment's selector, the Service's, the PDB's. */}}
{{- define "s3proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "s3proxy.labels" -}}
{{ include "s3proxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{/* The ServiceAccount the pods run as. */}}
{{- define "s3proxy.serviceAccountName" -}}
{{ .Values.serviceAccount.name | default .Release.Name }}
{{- end }}

{{/* config.yaml: the config values, plus the identities when listed. */}}
{{- define "s3proxy.configYaml" -}}
{{ toYaml .Values.config }}
{{- if .Values.identities }}
identities:
{{ toYaml .Values.identities | indent 2 }}
{{- end }}
{{- end }}
