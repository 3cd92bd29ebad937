{{- define "teal.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "teal.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}

{{- define "teal.labels" -}}
{{ include "teal.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "teal.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "teal.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Fails rendering with a clear message when values contradict each other. */}}
{{- define "teal.validate" -}}
{{- if not (has .Values.scope (list "cluster" "namespace")) -}}
{{- fail (printf "scope: %q is not allowed; use cluster or namespace" .Values.scope) -}}
{{- end -}}
{{- if and (not .Values.leaderElection.enabled) (gt (int .Values.replicas) 1) -}}
{{- fail (printf "replicas: %d needs leaderElection.enabled: true; without a Lease every replica would act on the same BlueGreens" (int .Values.replicas)) -}}
{{- end -}}
{{- if lt (int .Values.replicas) 1 -}}
{{- fail "replicas: must be at least 1" -}}
{{- end -}}
{{- $d := int .Values.leaderElection.leaseDuration -}}
{{- if or (lt $d 3) (gt $d 300) -}}
{{- fail (printf "leaderElection.leaseDuration: %d is out of range; allowed: 3..300 seconds" $d) -}}
{{- end -}}
{{- end -}}
