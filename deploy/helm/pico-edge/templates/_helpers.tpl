{{/*
The name of the StatefulSet and the prefix of every object: the release
name when it contains the chart's name (`helm install pico-edge`), else
RELEASE-pico-edge. fullnameOverride replaces it.
*/}}
{{- define "pico-edge.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The labels that select the edge pods. */}}
{{- define "pico-edge.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "pico-edge.labels" -}}
{{ include "pico-edge.selectorLabels" . }}
app.kubernetes.io/part-of: pico
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The auth key flags: key of auth values -> pico-edge flag. */}}
{{- define "pico-edge.authFlags" -}}
hmacSecretKey: --auth-hmac-secret-file
rsaPublicKeyKey: --auth-rsa-public-key
ecdsaPublicKeyKey: --auth-ecdsa-public-key
ed25519PublicKeyKey: --auth-ed25519-public-key
jwksKey: --auth-jwks-file
{{- end -}}
