{{/* The chart's name, for labels. */}}
{{- define "dzhook.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Objects' names: the release, with the chart's name unless it has it. */}}
{{- define "dzhook.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "dzhook.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dzhook.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "dzhook.labels" -}}
{{ include "dzhook.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: dzdesk
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "dzhook.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "dzhook.configName" -}}
{{ include "dzhook.fullname" . }}-config
{{- end -}}

{{- define "dzhook.secretName" -}}
{{- if .Values.secret.create -}}
{{ include "dzhook.fullname" . }}
{{- else -}}
{{ .Values.secret.existingSecret }}
{{- end -}}
{{- end -}}

{{/* /readyz with one replica, /healthz with more (values.yaml). */}}
{{- define "dzhook.readinessPath" -}}
{{- if .Values.readinessProbe.path -}}
{{ .Values.readinessProbe.path }}
{{- else if and (not .Values.sidecar.enabled) (gt (int .Values.replicaCount) 1) -}}
/healthz
{{- else -}}
/readyz
{{- end -}}
{{- end -}}

{{/* dzhook's config.yaml: the values' config with admin.listen set. */}}
{{- define "dzhook.config" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- $admin := default dict (get $cfg "admin") -}}
{{- $listen := printf "0.0.0.0:%d" (int .Values.adminPort) -}}
{{- if and (hasKey $admin "listen") (ne (toString (get $admin "listen")) $listen) -}}
{{- fail (printf "config.admin.listen is set by the chart from adminPort (%s); set adminPort instead of config.admin.listen (%v)" $listen (get $admin "listen")) -}}
{{- end -}}
{{- $_ := set $admin "listen" $listen -}}
{{- $_ := set $cfg "admin" $admin -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/*
The environment both containers share: the admin token (admin.token, and
the token `kubectl exec … dzhook status` sends), secrets.key and the
${NAME} references, all from the Secret, then extraEnv.
*/}}
{{- define "dzhook.sharedEnv" -}}
- name: DZHOOK_CONFIG
  value: /etc/dzhook/config.yaml
- name: DZHOOK_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "dzhook.secretName" . }}
      key: admin-token
{{- if or .Values.secret.secretsKey (not .Values.secret.create) }}
- name: DZHOOK_SECRETS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "dzhook.secretName" . }}
      key: secrets-key
      optional: true
{{- end }}
{{- range $name, $_ := .Values.secret.webhookSecrets }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "dzhook.secretName" $ }}
      key: {{ $name }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "dzhook.securityContext" -}}
runAsUser: 65532
runAsGroup: 65532
runAsNonRoot: true
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
dzhook.timeout: config.delivery.timeout as written (5s when unset), or
DZHOOK_DELIVERY_TIMEOUT's in extraEnv, which overrides it, as in dzhook.
*/}}
{{- define "dzhook.timeout" -}}
{{- $t := toString (dig "delivery" "timeout" "5s" .Values.config) -}}
{{- range .Values.extraEnv -}}
{{- if and (eq (toString .name) "DZHOOK_DELIVERY_TIMEOUT") .value -}}{{- $t = toString .value -}}{{- end -}}
{{- end -}}
{{- $t -}}
{{- end -}}

{{/*
dzhook.timeoutSeconds: dzhook.timeout in whole seconds, rounded up, read
as Go reads a duration (5s, 40s500ms, 0.1m, 1.5s, 100000us). It fails the
render where dzhook would refuse to start: delivery.timeout is held
between 100ms and 50s (internal/config), so a chart that renders starts,
rather than a pod that restarts with the message in its log; a value Go
does not read as a duration fails too. (Floats: a hair of slack at the
bounds for their rounding.)
*/}}
{{- define "dzhook.timeoutSeconds" -}}
{{- $t := trimPrefix "+" (include "dzhook.timeout" .) -}}
{{- if contains "${" $t -}}
{{- /* A ${NAME} reference dzhook expands at its start: unknown here, so
the drain is sized for the longest timeout dzhook takes, and dzhook
checks the value. */ -}}
50
{{- else -}}
{{- $part := "([0-9]+[.]?[0-9]*|[.][0-9]+)(ns|us|µs|μs|ms|s|m|h)" -}}
{{- $unitMs := dict "ns" 0.000001 "us" 0.001 "µs" 0.001 "μs" 0.001 "ms" 1.0 "s" 1000.0 "m" 60000.0 "h" 3600000.0 -}}
{{- $ms := 0.0 -}}
{{- if regexMatch (printf "^(%s)+$" $part) $t -}}
{{- range $p := regexFindAll $part $t -1 -}}
{{- $n := regexFind "^[0-9.]+" $p -}}
{{- $ms = addf $ms (mulf (float64 $n) (get $unitMs (trimPrefix $n $p))) -}}
{{- end -}}
{{- end -}}
{{- if or (lt $ms 99.999) (gt $ms 50000.001) -}}
{{- fail (printf "config.delivery.timeout (%s) must be a duration from 100ms to 50s, as dzhook holds it: a manual retry waits for its attempt within the admin API's 55 s" $t) -}}
{{- end -}}
{{- ceil (divf $ms 1000.0) | int -}}
{{- end -}}
{{- end -}}
