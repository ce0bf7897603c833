{{- define "distml.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "distml.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "distml.labels" -}}
{{ include "distml.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "distml.serviceAccountName" -}}
{{- default (include "distml.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* Peering (one active replica) whenever more than one runs. */}}
{{- define "distml.peering" -}}
{{- if gt (int .Values.replicas) 1 -}}{{ include "distml.fullname" . }}{{- end -}}
{{- end -}}

{{/* "auto" means: when the Prometheus Operator's API is served. Call with (list . value kind). */}}
{{- define "distml.monitoring" -}}
{{- $root := index . 0 -}}{{- $value := index . 1 -}}{{- $kind := index . 2 -}}
{{- if eq (toString $value) "auto" -}}
{{- if $root.Capabilities.APIVersions.Has (printf "monitoring.coreos.com/v1/%s" $kind) -}}true{{- end -}}
{{- else if $value -}}true{{- end -}}
{{- end -}}

{{/* What the operator does in the namespaces it watches: the same rules for a ClusterRole
     (cluster-wide) or a Role per namespace. Only the verbs it uses. */}}
{{- define "distml.namespacedRules" -}}
- apiGroups: ["distml.io"]
  resources: ["trainingjobs", "servingjobs"]
  verbs: ["get", "list", "watch", "delete"]
- apiGroups: ["distml.io"]
  resources: ["trainingjobs/status", "servingjobs/status"]
  verbs: ["get", "patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete", "patch"]  # patch: a serving replica drains
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "create", "delete"]  # list, delete: orphans of deleted jobs
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if include "distml.peering" . }}
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- end -}}

{{/* Cluster-scoped reads, needed in both modes: nodes and every pod on them for free-GPU
     accounting, namespaces for their Pod Security level (and kopf's namespace following), and
     CRDs so kopf notices when its resources appear. */}}
{{- define "distml.clusterReadRules" -}}
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end -}}
