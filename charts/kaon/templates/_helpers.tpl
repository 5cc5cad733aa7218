{{/* The release's full name: "kaon" for a release named kaon. */}}
{{- define "kaon.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kaon.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kaon.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kaon.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kaon.routerSelectorLabels" -}}
app.kubernetes.io/name: {{ include "kaon.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: router
{{- end -}}

{{- define "kaon.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "kaon.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kaon
{{- end -}}

{{- define "kaon.serviceAccountName" -}}
{{- default (include "kaon.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* The router's identity: its own ServiceAccount, or with serviceAccount.create=false an
existing one (router.serviceAccountName, else the operator's). */}}
{{- define "kaon.routerServiceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- printf "%s-router" (include "kaon.fullname" .) -}}
{{- else -}}
{{- default (include "kaon.serviceAccountName" .) .Values.router.serviceAccountName -}}
{{- end -}}
{{- end -}}

{{- define "kaon.image" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{/* Member rules on this cluster: a member cluster, or a hub that is its own member. */}}
{{- define "kaon.memberRules" -}}
{{- or (eq .Values.role "member") .Values.rbac.hubIsMember -}}
{{- end -}}
