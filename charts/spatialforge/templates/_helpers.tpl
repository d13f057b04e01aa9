{{/*
Names and labels: every template takes them from here, never spells them itself.
*/}}

{{/* The chart name (nameOverride wins). */}}
{{- define "spatialforge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every resource name: release name + chart name, unless they coincide. */}}
{{- define "spatialforge.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "spatialforge.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "spatialforge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of one component's objects: (dict "ctx" $ "component" "operator"). */}}
{{- define "spatialforge.componentName" -}}
{{- printf "%s-%s" (include "spatialforge.fullname" .ctx) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "operator"). */}}
{{- define "spatialforge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "spatialforge.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* All labels of one component's objects: (dict "ctx" $ "component" "operator"). */}}
{{- define "spatialforge.labels" -}}
helm.sh/chart: {{ include "spatialforge.chart" .ctx }}
{{ include "spatialforge.selectorLabels" . }}
app.kubernetes.io/part-of: spatialforge
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of the runner identity objects the chart pre-creates. The operator marks its own
with app.kubernetes.io/managed-by=spatialforge-operator; these stay Helm's. */}}
{{- define "spatialforge.runnerLabels" -}}
{{ include "spatialforge.labels" (dict "ctx" . "component" "runner") }}
{{- end -}}

{{/* Labels the operator puts on runner pods (crds/constants.py): NetworkPolicy selector. */}}
{{- define "spatialforge.runnerPodSelector" -}}
app.kubernetes.io/managed-by: spatialforge-operator
app.kubernetes.io/component: runner
{{- end -}}

{{/* Labels the operator puts on DepthPool replicas (operator/pool.py): NetworkPolicy selector. */}}
{{- define "spatialforge.poolPodSelector" -}}
app.kubernetes.io/managed-by: spatialforge-operator
app.kubernetes.io/component: depth-pool
{{- end -}}

{{/* The port DepthPool replicas serve on (operator/pool.py PORT, named `http`). */}}
{{- define "spatialforge.poolPort" -}}8080{{- end -}}

{{/* The DepthPools the front end serves synchronous depth from, "<namespace>/<name>" joined by
commas (SPATIALFORGE_API_DEPTH_POOLS): the chart's own pool first, then apiserver.depthPools. */}}
{{- define "spatialforge.apiserver.depthPools" -}}
{{- $pools := list -}}
{{- if .Values.pool.enabled -}}
{{- $pools = append $pools (printf "%s/%s" .Release.Namespace .Values.pool.name) -}}
{{- end -}}
{{- range .Values.apiserver.depthPools -}}
{{- if not (has . $pools) -}}
{{- $pools = append $pools . -}}
{{- end -}}
{{- end -}}
{{- join "," $pools -}}
{{- end -}}

{{/* The namespaces of those pools, as a JSON object namespace -> [names]. */}}
{{- define "spatialforge.apiserver.depthPoolsByNamespace" -}}
{{- $byNs := dict -}}
{{- range $ref := splitList "," (include "spatialforge.apiserver.depthPools" .) -}}
{{- if $ref -}}
{{- $parts := splitList "/" $ref -}}
{{- $ns := index $parts 0 -}}
{{- $_ := set $byNs $ns (append (default (list) (get $byNs $ns)) (index $parts 1)) -}}
{{- end -}}
{{- end -}}
{{- toJson $byNs -}}
{{- end -}}

{{/* Full image reference: (dict "ctx" $ "image" .Values.operator.image). */}}
{{- define "spatialforge.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* ServiceAccount names. */}}
{{- define "spatialforge.operator.serviceAccountName" -}}
{{- include "spatialforge.componentName" (dict "ctx" . "component" "operator") -}}
{{- end -}}
{{- define "spatialforge.apiserver.serviceAccountName" -}}
{{- include "spatialforge.componentName" (dict "ctx" . "component" "apiserver") -}}
{{- end -}}

{{/* The Redis URL Secret the front end reads: the trial Redis's or the user's. */}}
{{- define "spatialforge.redis.urlSecret" -}}
{{- if .Values.redis.enabled -}}
{{- include "spatialforge.componentName" (dict "ctx" . "component" "redis") -}}
{{- else -}}
{{- .Values.apiserver.redis.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* Pod-level and container-level security contexts shared by every pod. */}}
{{- define "spatialforge.podSecurityContext" -}}
{{ toYaml .Values.podSecurityContext }}
{{- end -}}
{{- define "spatialforge.containerSecurityContext" -}}
{{ toYaml .Values.containerSecurityContext }}
{{- end -}}

{{/* Default anti-affinity: spread a component's replicas over nodes. */}}
{{- define "spatialforge.spreadAffinity" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "spatialforge.selectorLabels" . | nindent 12 }}
{{- end -}}

{{/* The API group, plurals and runner RBAC rules are generated: _generated.tpl (make crds). */}}

{{/* Fail early on combinations that cannot work. */}}
{{- define "spatialforge.validate" -}}
{{- if and .Values.operator.enabled (gt (int .Values.operator.replicas) 1) (not .Values.operator.leaderElection.enabled) -}}
{{- fail "operator.replicas > 1 needs operator.leaderElection.enabled: two active operators would both act" -}}
{{- end -}}
{{- end -}}
