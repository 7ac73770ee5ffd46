{{/* Names, labels and the parts every scimflow pod shares. */}}

{{- define "scimflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's prefix of every object name: scimflow-ingest for release "scimflow". */}}
{{- define "scimflow.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 48 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 48 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 48 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "writer"). */}}
{{- define "scimflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "scimflow.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{- define "scimflow.labels" -}}
{{ include "scimflow.selectorLabels" . }}
app.kubernetes.io/part-of: scimflow
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "scimflow.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}

{{- define "scimflow.configMapName" -}}
{{- default (printf "%s-config" (include "scimflow.fullname" .)) .Values.config.existingConfigMap -}}
{{- end -}}

{{/* env entries from a Secret: (dict "secret" NAME "env" (dict VAR KEY ...)). */}}
{{- define "scimflow.secretEnv" -}}
{{- $secret := .secret -}}
{{- range $var, $key := .env }}
- name: {{ $var }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $key }}
{{- end }}
{{- end -}}

{{/* The restricted Pod Security profile: pod level. */}}
{{- define "scimflow.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The restricted Pod Security profile: container level. */}}
{{- define "scimflow.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* Pod metadata and scheduling shared by every Deployment: (dict "root" $ "component" C). */}}
{{- define "scimflow.podMeta" -}}
labels:
  {{- include "scimflow.labels" . | nindent 2 }}
  {{- with .root.Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  # A new config or settings rolls the pods, as kustomize's hashed ConfigMap names do.
  checksum/config: {{ include (print .root.Template.BasePath "/configmap.yaml") .root | sha256sum }}
  {{- with .root.Values.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{- define "scimflow.scheduling" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Refuse values scimflow cannot honour yet, or that would deploy idle pods. */}}
{{- define "scimflow.validate" -}}
{{- if or .Values.kafka.tls .Values.kafka.sasl -}}
{{- fail "kafka.tls and kafka.sasl are not supported yet: scimflow speaks plaintext to Kafka (see values.yaml)" -}}
{{- end -}}
{{- if not .Values.kafka.bootstrap -}}
{{- fail "kafka.bootstrap is required (host:port of the Kafka cluster)" -}}
{{- end -}}
{{- if and .Values.writer.autoscaling.enabled (gt (int .Values.writer.autoscaling.maxReplicas) (int .Values.kafka.partitions)) -}}
{{- fail "writer.autoscaling.maxReplicas exceeds kafka.partitions: the extra writers would sit idle" -}}
{{- end -}}
{{- end -}}
