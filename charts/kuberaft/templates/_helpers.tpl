{{/* The chart's name, overridable. */}}
{{- define "kuberaft.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: the prefix of every object this chart creates. */}}
{{- define "kuberaft.fullname" -}}
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

{{/* Labels that select the operator's pods; they never change. */}}
{{- define "kuberaft.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kuberaft.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Labels of every object. */}}
{{- define "kuberaft.labels" -}}
{{ include "kuberaft.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{- define "kuberaft.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kuberaft.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kuberaft.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* An alert's labels: its severity, and monitoring.prometheusRule.alertLabels (which cannot
change the severity). Takes (dict "severity" S "root" $). */}}
{{- define "kuberaft.alertLabels" -}}
{{- toYaml (merge (dict "severity" .severity) (deepCopy .root.Values.monitoring.prometheusRule.alertLabels)) }}
{{- end -}}
