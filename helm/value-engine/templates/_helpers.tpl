{{/*
Facts fixed by the code, one entry per service binary (ve-<name>):
  admin     [admin] listen port of services/<name>/config/default.toml (/metrics, /health/*)
  http/grpc the request ports of the services that take requests
  sections  the config sections the service has besides [log] and [admin]
  consumer  a consumer-group pipeline stage (scales with partitions)
deploy/tests/test_probes.py and test_chart.py check these against the sources.
*/}}
{{- define "ve.catalog" -}}
gateway:
  admin: 9101
  http: 8080
  grpc: 50051
  sections: [http, grpc, kafka, registry]
  consumer: false
normalizer:
  admin: 9102
  sections: [kafka, registry]
  consumer: true
enricher:
  admin: 9103
  sections: [kafka, registry]
  consumer: true
rules:
  admin: 9104
  sections: [kafka, registry]
  consumer: true
clickhouse-sink:
  admin: 9105
  sections: [kafka, registry, clickhouse]
  consumer: true
s3-archiver:
  admin: 9106
  sections: [kafka, registry, object_store]
  consumer: true
invoicer:
  admin: 9107
  sections: [kafka, registry]
  consumer: true
query-api:
  admin: 9108
  http: 8088
  grpc: 50052
  sections: [http, grpc, kafka, registry, clickhouse]
  consumer: false
schema-registry:
  admin: 9109
  http: 8081
  sections: [http, kafka]
  consumer: false
{{- end -}}

{{- define "ve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ve.fullname" -}}
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

{{/* <fullname>-<service>, within the 63 characters of a DNS label. (dict "root" $ "name" svc) */}}
{{- define "ve.componentName" -}}
{{- $max := int (sub 62 (len .name)) -}}
{{- printf "%s-%s" (include "ve.fullname" .root | trunc $max | trimSuffix "-") .name -}}
{{- end -}}

{{- define "ve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ve.labels" -}}
helm.sh/chart: {{ include "ve.chart" . }}
app.kubernetes.io/name: {{ include "ve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: value-engine
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* (dict "root" $ "name" svc) */}}
{{- define "ve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ve.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{/* (dict "root" $ "name" svc) */}}
{{- define "ve.componentLabels" -}}
{{ include "ve.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "ve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ve.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Names of the enabled services, as a JSON list (use with fromJsonArray). */}}
{{- define "ve.enabledNames" -}}
{{- $names := list -}}
{{- range $name, $meta := include "ve.catalog" . | fromYaml -}}
{{- if eq $name "schema-registry" -}}
{{- if $.Values.schemaRegistry.enabled -}}
{{- $names = append $names $name -}}
{{- end -}}
{{- else -}}
{{- $own := index $.Values.services $name | default dict -}}
{{- if or (not (hasKey $own "enabled")) $own.enabled -}}
{{- $names = append $names $name -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson $names -}}
{{- end -}}

{{/*
A service's effective values: `defaults` overridden key by key by its own block. Returns YAML.
(dict "root" $ "name" svc)
*/}}
{{- define "ve.svcValues" -}}
{{- $root := .root -}}
{{- $own := dict -}}
{{- if eq .name "schema-registry" -}}
{{- $own = $root.Values.schemaRegistry -}}
{{- else -}}
{{- $own = index $root.Values.services .name | default dict -}}
{{- end -}}
{{- $out := deepCopy $root.Values.defaults -}}
{{- range $k, $v := $own -}}
{{- if and (has $k (list "autoscaling" "podDisruptionBudget" "podAnnotations" "podLabels")) (kindIs "map" $v) -}}
{{- $merged := deepCopy (get $out $k | default dict) -}}
{{- range $k2, $v2 := $v -}}
{{- $_ := set $merged $k2 $v2 -}}
{{- end -}}
{{- $_ := set $out $k $merged -}}
{{- else -}}
{{- $_ := set $out $k $v -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* The registry URL every service uses. */}}
{{- define "ve.registryUrl" -}}
{{- if .Values.schemaRegistry.enabled -}}
{{- printf "http://%s:%d" (include "ve.componentName" (dict "root" . "name" "schema-registry")) (int .Values.schemaRegistry.service.httpPort) -}}
{{- else -}}
{{- required "externalSchemaRegistry.url is required when schemaRegistry.enabled is false" .Values.externalSchemaRegistry.url -}}
{{- end -}}
{{- end -}}

{{/* Recursive merge of .src into .dst (mutates .dst); unlike mergeOverwrite, false/0/"" win too. */}}
{{- define "ve.merge" -}}
{{- $dst := .dst -}}
{{- range $k, $v := .src -}}
{{- if and (kindIs "map" $v) (kindIs "map" (get $dst $k)) -}}
{{- include "ve.merge" (dict "dst" (get $dst $k) "src" $v) -}}
{{- else -}}
{{- $_ := set $dst $k (deepCopy $v) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The service's config document (before TOML rendering): listen addresses on 0.0.0.0, the endpoint
values for the sections it has, then its `config` overrides. Secrets are not part of it.
(dict "root" $ "name" svc) -> YAML
*/}}
{{- define "ve.configDict" -}}
{{- $root := .root -}}
{{- $meta := index (include "ve.catalog" $root | fromYaml) .name -}}
{{- $vals := include "ve.svcValues" . | fromYaml -}}
{{- $cfg := dict -}}
{{- $_ := set $cfg "log" (dict "format" $root.Values.log.format "level" $root.Values.log.level) -}}
{{- $_ := set $cfg "admin" (dict "listen" (printf "0.0.0.0:%d" (int $meta.admin)) "drain_timeout_ms" (int64 $root.Values.drainTimeoutMs)) -}}
{{- if has "http" $meta.sections -}}
{{- $_ := set $cfg "http" (dict "listen" (printf "0.0.0.0:%d" (int $meta.http))) -}}
{{- end -}}
{{- if has "grpc" $meta.sections -}}
{{- $_ := set $cfg "grpc" (dict "listen" (printf "0.0.0.0:%d" (int $meta.grpc))) -}}
{{- end -}}
{{- if has "kafka" $meta.sections -}}
{{- $k := $root.Values.kafka -}}
{{- $kafka := dict "brokers" (required "kafka.brokers is required" $k.brokers) "security_protocol" $k.securityProtocol "sasl_mechanism" $k.saslMechanism "sasl_username" $k.saslUsername "partitions" (int64 $k.partitions) "replication_factor" (int64 $k.replicationFactor) -}}
{{- if eq .name "schema-registry" -}}
{{- /* The registry's schema log must stay a single partition (one total order). */ -}}
{{- $_ := unset $kafka "partitions" -}}
{{- end -}}
{{- $_ := set $cfg "kafka" $kafka -}}
{{- end -}}
{{- if has "registry" $meta.sections -}}
{{- $user := ternary "" $root.Values.externalSchemaRegistry.username $root.Values.schemaRegistry.enabled -}}
{{- $_ := set $cfg "registry" (dict "url" (include "ve.registryUrl" $root) "username" $user) -}}
{{- end -}}
{{- if has "clickhouse" $meta.sections -}}
{{- $c := $root.Values.clickhouse -}}
{{- $_ := set $cfg "clickhouse" (dict "url" (required "clickhouse.url is required" $c.url) "database" $c.database "user" $c.user "compression" $c.compression) -}}
{{- end -}}
{{- if has "object_store" $meta.sections -}}
{{- $o := $root.Values.objectStore -}}
{{- $_ := set $cfg "object_store" (dict "url" (required "objectStore.url is required" $o.url) "endpoint" $o.endpoint "region" $o.region "access_key_id" $o.accessKeyId "allow_http" $o.allowHttp) -}}
{{- end -}}
{{- include "ve.merge" (dict "dst" $cfg "src" ($vals.config | default dict)) -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* TOML rendering (Helm's toToml writes every number as a float, which integer keys reject). */}}
{{- define "ve.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{- define "ve.tomlValue" -}}
{{- if kindIs "string" . -}}
{{- toJson . -}}
{{- else if kindIs "bool" . -}}
{{- . -}}
{{- else if kindIs "float64" . -}}
{{- if eq . (floor .) -}}{{ int64 . }}{{- else -}}{{ . }}{{- end -}}
{{- else if or (kindIs "int" .) (kindIs "int64" .) -}}
{{- . -}}
{{- else if kindIs "slice" . -}}
[{{ range $i, $e := . }}{{ if $i }}, {{ end }}{{ include "ve.tomlValue" $e }}{{ end }}]
{{- else -}}
{{- fail (printf "config value %v (%s) cannot be written as TOML" . (kindOf .)) -}}
{{- end -}}
{{- end -}}

{{/* (dict "table" map "path" list-of-keys) */}}
{{- define "ve.toml" -}}
{{- $t := .table -}}
{{- $path := .path -}}
{{- range $k := keys $t | sortAlpha -}}
{{- $v := get $t $k -}}
{{- if and (not (kindIs "map" $v)) (not (kindIs "invalid" $v)) }}
{{ include "ve.tomlKey" $k }} = {{ include "ve.tomlValue" $v }}
{{- end -}}
{{- end -}}
{{- range $k := keys $t | sortAlpha -}}
{{- $v := get $t $k -}}
{{- if kindIs "map" $v -}}
{{- $sub := append $path $k }}

[{{ range $i, $p := $sub }}{{ if $i }}.{{ end }}{{ include "ve.tomlKey" $p }}{{ end }}]
{{- include "ve.toml" (dict "table" $v "path" $sub) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The config.toml of a service. (dict "root" $ "name" svc) */}}
{{- define "ve.configToml" -}}
# ve-{{ .name }} configuration, rendered by the {{ .root.Chart.Name }} chart. Credentials come from
# environment variables, not from this file.
{{- include "ve.toml" (dict "table" (include "ve.configDict" . | fromYaml) "path" list) }}
{{ end -}}

{{/* Image reference. (dict "root" $ "name" svc "vals" effective-values) */}}
{{- define "ve.image" -}}
{{- $img := .root.Values.image -}}
{{- $own := .vals.image | default dict -}}
{{- $repo := $own.repository | default (printf "%s/ve-%s" $img.repository .name) -}}
{{- $tag := $own.tag | default $img.tag | default .root.Chart.AppVersion -}}
{{- if $img.registry -}}
{{- printf "%s/%s:%s" $img.registry $repo $tag -}}
{{- else -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
{{- end -}}

{{/* Environment prefix: clickhouse-sink -> VE_CLICKHOUSE_SINK__ */}}
{{- define "ve.envPrefix" -}}
{{- printf "VE_%s__" (. | upper | replace "-" "_") -}}
{{- end -}}

{{/*
Credentials from existingSecret, for the sections the service has, and only where they are used:
the SASL password with kafka.saslMechanism, the registry password with a registry username, the
S3 secret with objectStore.accessKeyId, the ClickHouse password always.
(dict "root" $ "name" svc)
*/}}
{{- define "ve.secretEnv" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $meta := index (include "ve.catalog" $root | fromYaml) .name -}}
{{- $prefix := include "ve.envPrefix" .name -}}
{{- $keys := $v.secretKeys -}}
{{- if $v.existingSecret -}}
{{- $refs := list -}}
{{- if and (has "kafka" $meta.sections) $v.kafka.saslMechanism $keys.kafkaSaslPassword -}}
{{- $refs = append $refs (list "KAFKA__SASL_PASSWORD" $keys.kafkaSaslPassword) -}}
{{- end -}}
{{- if and (has "registry" $meta.sections) (not $v.schemaRegistry.enabled) $v.externalSchemaRegistry.username $keys.registryPassword -}}
{{- $refs = append $refs (list "REGISTRY__PASSWORD" $keys.registryPassword) -}}
{{- end -}}
{{- if and (has "clickhouse" $meta.sections) $keys.clickhousePassword -}}
{{- $refs = append $refs (list "CLICKHOUSE__PASSWORD" $keys.clickhousePassword) -}}
{{- end -}}
{{- if and (has "object_store" $meta.sections) $v.objectStore.accessKeyId $keys.objectStoreSecretAccessKey -}}
{{- $refs = append $refs (list "OBJECT_STORE__SECRET_ACCESS_KEY" $keys.objectStoreSecretAccessKey) -}}
{{- end -}}
{{- range $refs }}
- name: {{ $prefix }}{{ index . 0 }}
  valueFrom:
    secretKeyRef:
      name: {{ $v.existingSecret }}
      key: {{ index . 1 }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Seconds: the explicit grace period, or drain budget + preStop sleep + 10 s.
(dict "root" $ "drainMs" the service's [admin] drain_timeout_ms) */}}
{{- define "ve.gracePeriod" -}}
{{- $drainMs := int64 .drainMs -}}
{{- $sleep := int64 .root.Values.preStopSleepSeconds -}}
{{- if kindIs "invalid" .root.Values.terminationGracePeriodSeconds -}}
{{- add (div (add $drainMs 999) 1000) $sleep 10 -}}
{{- else -}}
{{- $grace := int64 .root.Values.terminationGracePeriodSeconds -}}
{{- if le (mul $grace 1000) (add $drainMs (mul $sleep 1000)) -}}
{{- fail (printf "terminationGracePeriodSeconds (%d s) must exceed the drain budget [admin] drain_timeout_ms (%d ms) + preStopSleepSeconds (%d s), or the kubelet kills pods mid-drain" $grace $drainMs $sleep) -}}
{{- end -}}
{{- $grace -}}
{{- end -}}
{{- end -}}

{{/* Fails on combinations the services cannot run with. */}}
{{- define "ve.validate" -}}
{{- if and .Values.kafka.saslMechanism (not .Values.existingSecret) -}}
{{- fail "kafka.saslMechanism is set but existingSecret is empty: the SASL password comes from existingSecret" -}}
{{- end -}}
{{- if and .Values.objectStore.accessKeyId (not .Values.existingSecret) -}}
{{- fail "objectStore.accessKeyId is set but existingSecret is empty: the secret access key comes from existingSecret" -}}
{{- end -}}
{{- end -}}
