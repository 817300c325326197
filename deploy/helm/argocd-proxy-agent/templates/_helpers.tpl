{{/* Names. */}}
{{- define "argocd-proxy-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "argocd-proxy-agent.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "argocd-proxy-agent.base" -}}
{{- include "argocd-proxy-agent.fullname" . | trunc 56 | trimSuffix "-" }}
{{- end }}

{{- define "argocd-proxy-agent.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "argocd-proxy-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "argocd-proxy-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "argocd-proxy-agent.labels" -}}
helm.sh/chart: {{ include "argocd-proxy-agent.chart" . }}
{{ include "argocd-proxy-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: agent
app.kubernetes.io/part-of: argocd-proxy
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "argocd-proxy-agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "argocd-proxy-agent.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "argocd-proxy-agent.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "argocd-proxy-agent.host" -}}
{{- if contains ":" .Values.listenAddress }}{{ printf "[%s]" (.Values.listenAddress | trimPrefix "[" | trimSuffix "]") }}{{ else }}{{ .Values.listenAddress }}{{ end }}
{{- end }}

{{- define "argocd-proxy-agent.tokenSecretName" -}}
{{- .Values.existingSecret | default (printf "%s-token" (include "argocd-proxy-agent.base" .)) }}
{{- end }}

{{/* The port of serverURL: explicit, or 443 for wss:// and 80 for ws://. */}}
{{- define "argocd-proxy-agent.serverPort" -}}
{{- $u := urlParse .Values.serverURL }}
{{- $port := regexFind ":[0-9]+$" $u.host | trimPrefix ":" }}
{{- if $port }}{{ $port }}{{ else if eq (lower $u.scheme) "ws" }}80{{ else }}443{{ end }}
{{- end }}

{{/* Checks the schema cannot express; rendered (empty) from the Deployment. */}}
{{- define "argocd-proxy-agent.validate" -}}
{{- if gt (int .Values.replicaCount) 1 }}
{{- fail "replicaCount > 1 is not supported: the server keeps one tunnel per cluster, so a second agent replica would only stand by, unready, until the first one leaves. Use replicaCount: 1." }}
{{- end }}
{{- if not .Values.serverURL }}
{{- fail "serverURL is required: the server's public listener, e.g. wss://proxy.example.com/connect" }}
{{- end }}
{{- if and (regexMatch "^(?i)ws://" .Values.serverURL) (not .Values.allowInsecureServer) }}
{{- fail "serverURL is ws:// (plaintext): the token would cross the network in clear. Use wss://, or set allowInsecureServer=true for a test setup" }}
{{- end }}
{{- if and .Values.token .Values.existingSecret }}
{{- fail "set token or existingSecret, not both" }}
{{- end }}
{{- if not (or .Values.token .Values.existingSecret) }}
{{- fail "the agent needs its tunnel token: set token (argocd-proxy-server gen-token prints one, and the token_sha256 the server's cluster entry needs) or existingSecret (a Secret in this namespace with the token under existingSecretKey)" }}
{{- end }}
{{- if and .Values.proxy.url .Values.proxy.existingSecret }}
{{- fail "set proxy.url or proxy.existingSecret, not both" }}
{{- end }}
{{- if and .Values.rbac.clusterAdmin (or .Values.rbac.rules .Values.rbac.extraRules .Values.rbac.impersonation.enabled) }}
{{- fail "rbac.clusterAdmin binds the built-in cluster-admin role, which already allows everything: leave rbac.rules, rbac.extraRules and rbac.impersonation unset" }}
{{- end }}
{{- $backends := dict }}
{{- range $i, $b := .Values.backends }}
{{- if hasKey $backends $b.name }}{{ fail (printf "backends: name %q appears twice" $b.name) }}{{ end }}
{{- $_ := set $backends $b.name true }}
{{- if and $b.caSecret (not $b.tls) }}{{ fail (printf "backends[%d] (%s): caSecret needs tls: true (ca_file is the CA of an HTTPS backend)" $i $b.name) }}{{ end }}
{{- range $k, $v := $b.headers }}
{{- if has (lower $k) (list "authorization" "proxy-authorization" "cookie") }}{{ fail (printf "backends[%d] (%s): header %s would put a credential into the agent's ConfigMap: use tokenSecret (mounted, token_file)" $i $b.name $k) }}{{ end }}
{{- if has (lower $k) (list "host" "content-length" "connection" "keep-alive" "proxy-connection" "proxy-authenticate" "te" "trailer" "transfer-encoding" "upgrade") }}{{ fail (printf "backends[%d] (%s): header %s is set by the agent per request (the authority is target); the agent refuses it in headers" $i $b.name $k) }}{{ end }}
{{- end }}
{{- end }}
{{- if and .Values.rbac.clusterWide .Values.rbac.namespaces }}
{{- fail "rbac.namespaces is only used with rbac.clusterWide=false" }}
{{- end }}
{{- end }}

{{/* The port of a backend's target (host:port, IPv6 in brackets). */}}
{{- define "argocd-proxy-agent.targetPort" -}}
{{- regexFind ":[0-9]+$" . | trimPrefix ":" }}
{{- end }}

{{/* Does any backend mount a Secret (→ the backends volume)? */}}
{{- define "argocd-proxy-agent.hasBackendSecrets" -}}
{{- range .Values.backends }}{{ if or .caSecret .tokenSecret }}true{{ end }}{{ end }}
{{- end }}
