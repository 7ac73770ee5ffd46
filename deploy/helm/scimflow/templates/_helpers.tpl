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

{{/* Kafka security (kafka.security): whether SASL / TLS are on. */}}
{{- define "scimflow.kafkaSasl" -}}
{{- if hasPrefix "SASL_" .Values.kafka.security.protocol }}true{{ end -}}
{{- end -}}

{{- define "scimflow.kafkaTls" -}}
{{- if hasSuffix "SSL" .Values.kafka.security.protocol }}true{{ end -}}
{{- end -}}

{{- define "scimflow.kafkaTlsDir" -}}/var/run/secrets/kafka-tls{{- end -}}

{{/* The SCIMFLOW_KAFKA_* settings of kafka.security, for the settings ConfigMap (none for
PLAINTEXT: the code's default, and the base's settings). References only, no secret. */}}
{{- define "scimflow.kafkaSettings" -}}
{{- $security := .Values.kafka.security -}}
{{- $dir := include "scimflow.kafkaTlsDir" . -}}
{{- if ne $security.protocol "PLAINTEXT" }}
SCIMFLOW_KAFKA_SECURITY_PROTOCOL: {{ $security.protocol | quote }}
{{- end }}
{{- if include "scimflow.kafkaSasl" . }}
SCIMFLOW_KAFKA_SASL_MECHANISM: {{ $security.sasl.mechanism | quote }}
SCIMFLOW_KAFKA_SASL_USERNAME: {{ $security.sasl.username | quote }}
SCIMFLOW_KAFKA_SASL_PASSWORD: "env:KAFKA_SASL_PASSWORD"
{{- end }}
{{- if and (include "scimflow.kafkaTls" .) $security.tls.secretName }}
{{- if $security.tls.caKey }}
SCIMFLOW_KAFKA_SSL_CAFILE: {{ printf "%s/%s" $dir $security.tls.caKey | quote }}
{{- end }}
{{- if $security.tls.certKey }}
SCIMFLOW_KAFKA_SSL_CERTFILE: {{ printf "%s/%s" $dir $security.tls.certKey | quote }}
{{- end }}
{{- if $security.tls.keyKey }}
SCIMFLOW_KAFKA_SSL_KEYFILE: {{ printf "%s/%s" $dir $security.tls.keyKey | quote }}
{{- end }}
{{- end }}
{{- if and (include "scimflow.kafkaTls" .) (not $security.tls.checkHostname) }}
SCIMFLOW_KAFKA_SSL_CHECK_HOSTNAME: "false"
{{- end }}
{{- end -}}

{{/* env entries of a Kafka client: the SASL password from its Secret. */}}
{{- define "scimflow.kafkaEnv" -}}
{{- if include "scimflow.kafkaSasl" . }}
{{- $secret := .Values.kafka.security.sasl.passwordSecret }}
{{- include "scimflow.secretEnv" (dict "secret" $secret.name "env" (dict "KAFKA_SASL_PASSWORD" $secret.key)) }}
{{- end }}
{{- end -}}

{{/* volumeMounts / volumes entries of a Kafka client: the TLS Secret. */}}
{{- define "scimflow.kafkaMounts" -}}
{{- if and (include "scimflow.kafkaTls" .) .Values.kafka.security.tls.secretName }}
- name: kafka-tls
  mountPath: {{ include "scimflow.kafkaTlsDir" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "scimflow.kafkaVolumes" -}}
{{- if and (include "scimflow.kafkaTls" .) .Values.kafka.security.tls.secretName }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.kafka.security.tls.secretName }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{/* Refuse values scimflow would refuse at start, or that would deploy idle pods. */}}
{{- define "scimflow.validate" -}}
{{- if or .Values.kafka.tls .Values.kafka.sasl -}}
{{- fail "kafka.tls and kafka.sasl are now kafka.security.tls and kafka.security.sasl (see values.yaml)" -}}
{{- end -}}
{{- $security := .Values.kafka.security -}}
{{- if not (has $security.protocol (list "PLAINTEXT" "SSL" "SASL_PLAINTEXT" "SASL_SSL")) -}}
{{- fail "kafka.security.protocol must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL" -}}
{{- end -}}
{{- if and (include "scimflow.kafkaSasl" .) (not (and $security.sasl.username $security.sasl.passwordSecret.name $security.sasl.passwordSecret.key)) -}}
{{- fail (printf "kafka.security.protocol %s needs kafka.security.sasl.username and sasl.passwordSecret (name, key)" $security.protocol) -}}
{{- end -}}
{{- if and (not (include "scimflow.kafkaTls" .)) $security.tls.secretName -}}
{{- fail (printf "kafka.security.tls.secretName is set, but kafka.security.protocol %s uses no TLS (use SSL or SASL_SSL)" $security.protocol) -}}
{{- end -}}
{{- if and $security.tls.keyKey (not $security.tls.certKey) -}}
{{- fail "kafka.security.tls.keyKey is set without tls.certKey" -}}
{{- end -}}
{{- if and (or $security.tls.certKey $security.tls.keyKey) (not $security.tls.secretName) -}}
{{- fail "kafka.security.tls.certKey/keyKey need tls.secretName (the Secret holding them)" -}}
{{- end -}}
{{- if not .Values.kafka.bootstrap -}}
{{- fail "kafka.bootstrap is required (host:port of the Kafka cluster)" -}}
{{- end -}}
{{- if and .Values.writer.autoscaling.enabled (gt (int .Values.writer.autoscaling.maxReplicas) (int .Values.kafka.partitions)) -}}
{{- fail "writer.autoscaling.maxReplicas exceeds kafka.partitions: the extra writers would sit idle" -}}
{{- end -}}
{{- if not (has .Values.settings.stateStore (list "memory" "rocksdb")) -}}
{{- fail "settings.stateStore must be memory or rocksdb" -}}
{{- end -}}
{{- end -}}
