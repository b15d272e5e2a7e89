{{/* The chart's name, at most 63 characters (a DNS label). */}}
{{- define "call-monitor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name. A StatefulSet pod's name is this and "-<ordinal>", and the
monitor takes its shard from that ordinal, so the name is kept short enough for it.
*/}}
{{- define "call-monitor.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The headless Service that gives each pod its DNS name. */}}
{{- define "call-monitor.headless" -}}
{{- printf "%s-headless" (include "call-monitor.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "call-monitor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "call-monitor.labels" -}}
helm.sh/chart: {{ include "call-monitor.chart" . }}
{{ include "call-monitor.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "call-monitor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "call-monitor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "call-monitor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "call-monitor.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret with the LiveKit API key and secret. */}}
{{- define "call-monitor.secretName" -}}
{{- default (include "call-monitor.fullname" .) .Values.livekit.existingSecret }}
{{- end }}

{{/* What values.schema.json cannot say: the key and secret come from one place. */}}
{{- define "call-monitor.validate" -}}
{{- if and (not .Values.livekit.existingSecret) (not (and .Values.livekit.apiKey .Values.livekit.apiSecret)) }}
{{- fail "name a Secret with the LiveKit API key and secret in livekit.existingSecret, or give livekit.apiKey and livekit.apiSecret" }}
{{- end }}
{{- end }}

{{/* The webhook URL of replica $i, for livekit-server's webhook.urls. */}}
{{- define "call-monitor.webhookURL" -}}
{{- $ctx := index . 0 }}{{- $i := index . 1 -}}
http://{{ include "call-monitor.fullname" $ctx }}-{{ $i }}.{{ include "call-monitor.headless" $ctx }}.{{ $ctx.Release.Namespace }}.svc.{{ $ctx.Values.clusterDomain }}:{{ $ctx.Values.port }}/webhook
{{- end }}
