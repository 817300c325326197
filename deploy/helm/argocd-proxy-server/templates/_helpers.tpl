{{/* Names. */}}
{{- define "argocd-proxy-server.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "argocd-proxy-server.fullname" -}}
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

{{/* Service names: the fullname is cut so that the longest suffix still fits 63. */}}
{{- define "argocd-proxy-server.base" -}}
{{- include "argocd-proxy-server.fullname" . | trunc 54 | trimSuffix "-" }}
{{- end }}
{{- define "argocd-proxy-server.publicName" -}}
{{- printf "%s-public" (include "argocd-proxy-server.base" .) }}
{{- end }}
{{- define "argocd-proxy-server.internalName" -}}
{{- printf "%s-internal" (include "argocd-proxy-server.base" .) }}
{{- end }}
{{- define "argocd-proxy-server.opsName" -}}
{{- printf "%s-ops" (include "argocd-proxy-server.base" .) }}
{{- end }}
{{/* "-extensions" is two characters longer than "-internal": cut the base to 52. */}}
{{- define "argocd-proxy-server.extensionsName" -}}
{{- printf "%s-extensions" (include "argocd-proxy-server.base" . | trunc 52 | trimSuffix "-") }}
{{- end }}
{{- define "argocd-proxy-server.argocdExtensionConfigName" -}}
{{- printf "%s-argocd-extension-config" (include "argocd-proxy-server.base" .) }}
{{- end }}

{{- define "argocd-proxy-server.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "argocd-proxy-server.selectorLabels" -}}
app.kubernetes.io/name: {{ include "argocd-proxy-server.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "argocd-proxy-server.labels" -}}
helm.sh/chart: {{ include "argocd-proxy-server.chart" . }}
{{ include "argocd-proxy-server.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: server
app.kubernetes.io/part-of: argocd-proxy
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "argocd-proxy-server.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "argocd-proxy-server.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "argocd-proxy-server.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* "0.0.0.0" → "0.0.0.0", "::" → "[::]" */}}
{{- define "argocd-proxy-server.host" -}}
{{- if contains ":" .Values.listenAddress }}{{ printf "[%s]" (.Values.listenAddress | trimPrefix "[" | trimSuffix "]") }}{{ else }}{{ .Values.listenAddress }}{{ end }}
{{- end }}

{{/* TLS Secret names (existing, or the cert-manager Certificate's). */}}
{{- define "argocd-proxy-server.publicTlsSecret" -}}
{{- .Values.public.tls.secretName | default (printf "%s-public-tls" (include "argocd-proxy-server.base" .)) }}
{{- end }}
{{- define "argocd-proxy-server.internalTlsSecret" -}}
{{- .Values.internal.tls.secretName | default (printf "%s-internal-tls" (include "argocd-proxy-server.base" .)) }}
{{- end }}
{{- define "argocd-proxy-server.publicClientCASecret" -}}
{{- .Values.public.tls.clientCA.secretName | default (include "argocd-proxy-server.publicTlsSecret" .) }}
{{- end }}
{{- define "argocd-proxy-server.internalClientCASecret" -}}
{{- .Values.internal.tls.clientCA.secretName | default (include "argocd-proxy-server.internalTlsSecret" .) }}
{{- end }}
{{- define "argocd-proxy-server.extensionsTlsSecret" -}}
{{- .Values.extensions.tls.secretName | default (printf "%s-extensions-tls" (include "argocd-proxy-server.base" .)) }}
{{- end }}
{{- define "argocd-proxy-server.extensionsClientCASecret" -}}
{{- .Values.extensions.tls.clientCA.secretName | default (include "argocd-proxy-server.extensionsTlsSecret" .) }}
{{- end }}

{{/* https when the internal listener serves TLS: the Argo CD secrets must match it. */}}
{{- define "argocd-proxy-server.internalURL" -}}
{{- printf "%s://%s.%s.svc:%d" (ternary "https" "http" .Values.internal.tls.enabled) (include "argocd-proxy-server.internalName" .) .Release.Namespace (int .Values.internal.service.port) }}
{{- end }}

{{/* Argo CD's extension proxy calls this (https when the extensions listener serves TLS). */}}
{{- define "argocd-proxy-server.extensionsURL" -}}
{{- printf "%s://%s.%s.svc:%d" (ternary "https" "http" .Values.extensions.tls.enabled) (include "argocd-proxy-server.extensionsName" .) .Release.Namespace (int .Values.extensions.service.port) }}
{{- end }}

{{/* Who is Argo CD (NetworkPolicy peer of the internal listener, reused for the extensions one). */}}
{{- define "argocd-proxy-server.argocdPeer" -}}
- namespaceSelector:
    {{- if .Values.networkPolicy.argocd.namespaceSelector }}
    {{- toYaml .Values.networkPolicy.argocd.namespaceSelector | nindent 4 }}
    {{- else }}
    matchLabels:
      kubernetes.io/metadata.name: {{ .Values.argocd.namespace }}
    {{- end }}
  podSelector:
    {{- toYaml .Values.networkPolicy.argocd.podSelector | nindent 4 }}
{{- end }}

{{/* Does any token come from a Secret (→ the tokens volume)? */}}
{{- define "argocd-proxy-server.hasTokenSecrets" -}}
{{- $found := false }}
{{- range .Values.clusters }}{{ if .tokenSecret }}{{ $found = true }}{{ end }}{{ end }}
{{- range .Values.callers }}{{ if .tokenSecret }}{{ $found = true }}{{ end }}{{ end }}
{{- if $found }}true{{ end }}
{{- end }}

{{/* The Argo CD Secret name of a cluster: <fullname>-cluster-<id> when the id is a DNS name, else a
     sanitised id plus a hash (ids may hold "_" and capitals). Call with (list $ $cluster). */}}
{{- define "argocd-proxy-server.clusterSecretName" -}}
{{- $root := index . 0 }}{{ $c := index . 1 }}
{{- $argo := $c.argocd | default dict }}
{{- if $argo.secretName }}
{{- $argo.secretName }}
{{- else if regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" $c.id }}
{{- printf "%s-cluster-%s" (include "argocd-proxy-server.base" $root) $c.id | trunc 253 | trimSuffix "-" }}
{{- else }}
{{- $clean := $c.id | lower | replace "_" "-" | replace "." "-" | trunc 40 | trimAll "-" }}
{{- printf "%s-cluster-%s-%s" (include "argocd-proxy-server.base" $root) $clean (sha256sum $c.id | trunc 8) }}
{{- end }}
{{- end }}

{{/* Checks that the schema cannot express; rendered (empty) from the Deployment. */}}
{{- define "argocd-proxy-server.validate" -}}
{{- if gt (int .Values.replicaCount) 1 }}
{{- fail "replicaCount > 1 is not supported yet: each agent holds one tunnel to one server replica, so requests reaching another replica would find no agent. Use replicaCount: 1." }}
{{- end }}
{{- $ids := dict }}
{{- range $i, $c := .Values.clusters }}
{{- if hasKey $ids $c.id }}{{ fail (printf "clusters: id %q appears twice" $c.id) }}{{ end }}
{{- $_ := set $ids $c.id true }}
{{- if and $c.tokenSha256 $c.tokenSecret }}{{ fail (printf "clusters[%d] (%s): set tokenSha256 or tokenSecret, not both" $i $c.id) }}{{ end }}
{{- if not (or $c.tokenSha256 $c.tokenSecret) }}{{ fail (printf "clusters[%d] (%s): needs tokenSha256 (the SHA-256 of the agent's token, from `argocd-proxy-server hash-token`) or tokenSecret {name, key}; an empty token would let anyone connect as this cluster" $i $c.id) }}{{ end }}
{{- if and $c.rateBurst (not $c.rateLimit) }}{{ fail (printf "clusters[%d] (%s): rateBurst needs rateLimit" $i $c.id) }}{{ end }}
{{- end }}
{{- $callerNames := dict }}
{{- range $i, $c := .Values.callers }}
{{- if hasKey $callerNames $c.name }}{{ fail (printf "callers: name %q appears twice" $c.name) }}{{ end }}
{{- $_ := set $callerNames $c.name true }}
{{- if and $c.tokenSha256 $c.tokenSecret }}{{ fail (printf "callers[%d] (%s): set tokenSha256 or tokenSecret, not both" $i $c.name) }}{{ end }}
{{- if not (or $c.tokenSha256 $c.tokenSecret $c.certName) }}{{ fail (printf "callers[%d] (%s): needs tokenSha256, tokenSecret or certName" $i $c.name) }}{{ end }}
{{- if and $c.certName (not $.Values.internal.tls.clientCA.enabled) }}{{ fail (printf "callers[%d] (%s): certName needs internal.tls.clientCA.enabled (client certificates on the internal listener)" $i $c.name) }}{{ end }}
{{- range $c.clusters }}{{ if and (ne . "*") (not (hasKey $ids .)) }}{{ fail (printf "callers[%d] (%s): cluster %q is not in clusters" $i $c.name .) }}{{ end }}{{ end }}
{{- end }}
{{- range $l := list "public" "internal" "extensions" }}
{{- $tls := (index $.Values $l).tls }}
{{- if and $tls.certManager.enabled (not $tls.enabled) }}{{ fail (printf "%s.tls.certManager.enabled needs %s.tls.enabled" $l $l) }}{{ end }}
{{- if and $tls.clientCA.enabled (not $tls.enabled) }}{{ fail (printf "%s.tls.clientCA.enabled (mTLS) needs %s.tls.enabled" $l $l) }}{{ end }}
{{- if and $tls.enabled (not $tls.secretName) (not $tls.certManager.enabled) }}{{ fail (printf "%s.tls.enabled: set %s.tls.secretName (a kubernetes.io/tls Secret) or %s.tls.certManager.enabled" $l $l $l) }}{{ end }}
{{- if and $tls.certManager.enabled (not $tls.certManager.issuerRef.name) }}{{ fail (printf "%s.tls.certManager.issuerRef.name is required" $l) }}{{ end }}
{{- end }}
{{- if .Values.extensions.enabled }}
{{- include "argocd-proxy-server.validateExtensions" . }}
{{- end }}
{{- if and .Values.public.tls.bindClientCert (not .Values.public.tls.clientCA.enabled) }}
{{- fail "public.tls.bindClientCert needs public.tls.clientCA.enabled (mTLS)" }}
{{- end }}
{{- if and .Values.argocd.bearerToken (not .Values.argocd.enabled) }}
{{- fail "argocd.bearerToken is only used with argocd.enabled (it goes into the Argo CD cluster secrets)" }}
{{- end }}
{{- if .Values.argocd.enabled }}
{{- if and .Values.internal.tls.enabled (not .Values.argocd.tlsClientConfig.caData) }}
{{- fail "internal.tls.enabled with argocd.enabled: set argocd.tlsClientConfig.caData (base64 PEM of the CA that signs the internal certificate) so Argo CD can verify https://…-internal" }}
{{- end }}
{{- if and .Values.internal.tls.clientCA.enabled (not (and .Values.argocd.tlsClientConfig.certData .Values.argocd.tlsClientConfig.keyData)) }}
{{- fail "internal.tls.clientCA.enabled (mTLS) with argocd.enabled: set argocd.tlsClientConfig.certData and keyData (Argo CD's client certificate)" }}
{{- end }}
{{- if and (not .Values.internal.tls.enabled) (or .Values.argocd.tlsClientConfig.caData .Values.argocd.tlsClientConfig.certData .Values.argocd.tlsClientConfig.keyData .Values.argocd.tlsClientConfig.serverName) }}
{{- fail "argocd.tlsClientConfig is set but internal.tls.enabled is false: the cluster secrets use http:// and Argo CD would ignore it" }}
{{- end }}
{{- if and .Values.callers (not .Values.argocd.bearerToken) (not .Values.internal.tls.clientCA.enabled) }}
{{- fail "callers are configured (the internal listener authenticates callers) but argocd.bearerToken is empty: the Argo CD cluster secrets would get 401. Set argocd.bearerToken, or authenticate Argo CD by client certificate (internal.tls.clientCA + a caller with certName)" }}
{{- end }}
{{- if and .Values.argocd.bearerToken (hasKey $callerNames .Values.argocd.callerName) }}
{{- fail (printf "argocd.callerName %q is also in callers: pick another name" .Values.argocd.callerName) }}
{{- end }}
{{- end }}
{{- if .Values.ingress.enabled }}
{{- if not .Values.ingress.hosts }}{{ fail "ingress.enabled: ingress.hosts needs at least one host" }}{{ end }}
{{- end }}
{{- if .Values.gateway.enabled }}
{{- if eq .Values.gateway.tlsMode "Terminate" }}
{{- if .Values.public.tls.clientCA.enabled }}
{{- fail "gateway.tlsMode=Terminate (HTTPRoute) with public.tls.clientCA.enabled: a Gateway that terminates TLS cannot pass the agent's client certificate to the server. Use gateway.tlsMode=Passthrough (TLSRoute) or a LoadBalancer Service" }}
{{- end }}
{{- else }}
{{- if not .Values.public.tls.enabled }}
{{- fail "gateway.tlsMode=Passthrough (TLSRoute) forwards the TLS session untouched: the server must terminate it, set public.tls.enabled" }}
{{- end }}
{{- if not (or .Values.gateway.hostnames .Values.gateway.hostname) }}
{{- fail "gateway.tlsMode=Passthrough: a TLSRoute routes by SNI and needs gateway.hostnames (or gateway.hostname)" }}
{{- end }}
{{- end }}
{{- if .Values.gateway.create }}
{{- if not .Values.gateway.className }}{{ fail "gateway.create: set gateway.className (the GatewayClass)" }}{{ end }}
{{- else if not .Values.gateway.parentRefs }}
{{- fail "gateway.enabled without gateway.create: set gateway.parentRefs (the Gateway(s) to attach the route to)" }}
{{- end }}
{{- end }}
{{- end }}

{{/* [extensions] and [[extension]]: what the binary would refuse, said in terms of the values. */}}
{{- define "argocd-proxy-server.validateExtensions" -}}
{{- $x := .Values.extensions }}
{{- if and $x.secretSha256 $x.existingSecret.name }}
{{- fail "extensions: set extensions.secretSha256 or extensions.existingSecret.name, not both" }}
{{- end }}
{{- if not (or $x.secretSha256 $x.existingSecret.name) }}
{{- fail "extensions.enabled needs its secret (Argo CD must authenticate to the extensions listener): set extensions.secretSha256 (the SHA-256 of the secret; `argocd-proxy-server gen-token` prints a token and its token_sha256) or extensions.existingSecret.name (a Secret in this namespace holding the secret, mounted as secret_file). The secret itself goes into argocd-secret, never into these values" }}
{{- end }}
{{- if $x.secretSha256 }}
{{- $hash := lower $x.secretSha256 }}
{{- if eq $hash (sha256sum "") }}{{ fail "extensions.secretSha256 is the SHA-256 of an empty secret" }}{{ end }}
{{- $taken := list }}
{{- range $.Values.clusters }}{{ with .tokenSha256 }}{{ $taken = append $taken (lower .) }}{{ end }}{{ end }}
{{- range $.Values.callers }}{{ with .tokenSha256 }}{{ $taken = append $taken (lower .) }}{{ end }}{{ end }}
{{- with $.Values.argocd.bearerToken }}{{ $taken = append $taken (sha256sum .) }}{{ end }}
{{- if has $hash $taken }}
{{- fail "extensions.secretSha256 is the same as an agent's or a caller's token hash: give Argo CD's extension proxy a secret of its own" }}
{{- end }}
{{- end }}
{{- range $l := list "public" "internal" "ops" }}
{{- if eq (int (index $.Values $l).port) (int $x.port) }}
{{- fail (printf "extensions.port %d is the same port as %s.port: the extensions listener needs its own port" (int $x.port) $l) }}
{{- end }}
{{- end }}
{{- $ids := dict }}
{{- range $.Values.clusters }}{{ $_ := set $ids .id true }}{{ end }}
{{- $names := dict }}
{{- range $i, $e := $x.list }}
{{- if hasKey $names $e.name }}{{ fail (printf "extensions.list: name %q appears twice" $e.name) }}{{ end }}
{{- $_ := set $names $e.name true }}
{{- if and (has "*" $e.clusters) (gt (len $e.clusters) 1) }}{{ fail (printf "extensions.list[%d] (%s): clusters [\"*\"] stands alone" $i $e.name) }}{{ end }}
{{- range $e.clusters }}{{ if and (ne . "*") (not (hasKey $ids .)) }}{{ fail (printf "extensions.list[%d] (%s): cluster %q is not in clusters" $i $e.name .) }}{{ end }}{{ end }}
{{- if and $e.rateBurst (not $e.rateLimit) }}{{ fail (printf "extensions.list[%d] (%s): rateBurst needs rateLimit" $i $e.name) }}{{ end }}
{{- if and $x.argocdConfig.enabled (has "*" $e.clusters) (not $.Values.clusters) }}
{{- fail (printf "extensions.list[%d] (%s): clusters [\"*\"] with no clusters configured: the Argo CD extension.config would have no service for it" $i $e.name) }}
{{- end }}
{{- end }}
{{- if and $x.argocdConfig.enabled (ne $x.argocdConfig.clusterMatch "server") }}
{{- $shown := dict }}
{{- range $.Values.clusters }}
{{- $n := (.argocd | default dict).name | default .id }}
{{- if hasKey $shown $n }}{{ fail (printf "extensions.argocdConfig: clusters %q and %q have the same Argo CD name %q, so Argo CD could not tell their extension services apart: give them distinct clusters[].argocd.name, or set extensions.argocdConfig.clusterMatch=server" (index $shown $n) .id $n) }}{{ end }}
{{- $_ := set $shown $n .id }}
{{- end }}
{{- end }}
{{- if and $x.argocdConfig.enabled (not $.Values.argocd.enabled) }}
{{- fail "extensions.argocdConfig.enabled needs argocd.enabled: the extension.config snippet names each cluster as the chart's Argo CD cluster secrets do" }}
{{- end }}
{{- $h := $x.headers }}
{{- if or (eq (lower $h.secret) (lower $h.extension)) (eq (lower $h.secret) (lower $h.cluster)) (eq (lower $h.extension) (lower $h.cluster)) }}
{{- fail "extensions.headers: secret, extension and cluster need three different header names" }}
{{- end }}
{{- end }}

{{/* argocd-cm `extension.config`: per extension, one service per cluster it may reach, carrying
     the secret (a `$key` reference into argocd-secret), the extension name and the cluster id.
     Argo CD picks the service by the Application's destination (name and/or server, as the
     chart's cluster secrets register the cluster). An extension with a single service would be
     used by Argo CD for EVERY Application, whatever its cluster: such an extension gets a second,
     header-less guard service, so Argo CD matches by cluster and the guard (never matched) would
     get 401. */}}
{{- define "argocd-proxy-server.argocdExtensionConfig" -}}
{{- $url := include "argocd-proxy-server.extensionsURL" . }}
{{- $h := .Values.extensions.headers }}
{{- $ref := printf "$%s" .Values.extensions.argocdConfig.secretKey }}
{{- $match := .Values.extensions.argocdConfig.clusterMatch }}
{{- $byId := dict }}
{{- range .Values.clusters }}{{ $_ := set $byId .id . }}{{ end }}
# argocd-proxy-server {{ .Release.Name }}: paste as argocd-cm data["extension.config"]
# (namespace {{ .Values.argocd.namespace }}). The secret is read from argocd-secret key {{ .Values.extensions.argocdConfig.secretKey | quote }}.
{{- if not .Values.extensions.list }}
extensions: []
{{- else }}
extensions:
{{- range $e := .Values.extensions.list }}
{{- $ids := list }}
{{- if has "*" $e.clusters }}
{{- range $.Values.clusters }}{{ $ids = append $ids .id }}{{ end }}
{{- else }}
{{- $ids = $e.clusters }}
{{- end }}
- name: {{ $e.name | toJson }}
  backend:
    services:
    {{- range $id := $ids }}
    {{- $c := index $byId $id }}
    - url: {{ $url | toJson }}
      cluster:
        {{- if ne $match "server" }}
        name: {{ ($c.argocd | default dict).name | default $id | toJson }}
        {{- end }}
        {{- if ne $match "name" }}
        server: {{ printf "%s/tunnel/%s" (include "argocd-proxy-server.internalURL" $) $id | toJson }}
        {{- end }}
      headers:
      - name: {{ $h.secret | toJson }}
        value: {{ $ref | toJson }}
      - name: {{ $h.extension | toJson }}
        value: {{ $e.name | toJson }}
      - name: {{ $h.cluster | toJson }}
        value: {{ $id | toJson }}
    {{- end }}
    {{- if eq (len $ids) 1 }}
    # Guard: with one service Argo CD would send every Application's calls to it, whatever the
    # Application's cluster. Never matched; without headers the server would answer 401.
    - url: {{ $url | toJson }}
      cluster:
        name: "argocd-proxy-guard.invalid"
    {{- end }}
{{- end }}
{{- end }}
{{- end }}
