{{- define "hapi-fhir.ns" -}}{{ .Values.global.services_namespace | default "services" }}{{- end -}}

{{- define "hapi-fhir.labels" -}}
app.kubernetes.io/name: hapi-fhir
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ include "hapi-fhir.tag" (dict "tag" .Values.image.tag "root" .) | quote }}
{{- end -}}

{{/* Image tag: the given tag, else the platform's build version. */}}
{{- define "hapi-fhir.tag" -}}
{{- .tag | default (required "global.kaapana_build_version is required (set by the Kaapana platform)" .root.Values.global.kaapana_build_version) -}}
{{- end -}}

{{/* <registry_url>/<name>:<tag>: every image comes from the platform registry. */}}
{{- define "hapi-fhir.image" -}}
{{- $registry := required "global.registry_url is required (the platform registry; set by Kaapana)" .root.Values.global.registry_url -}}
{{ $registry | trimSuffix "/" }}/{{ .image.name }}:{{ include "hapi-fhir.tag" (dict "tag" .image.tag "root" .root) }}
{{- end -}}

{{- define "hapi-fhir.pullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "hapi-fhir.storageClass" -}}
{{- .Values.storage.storageClass | default .Values.global.storage_class_fast -}}
{{- end -}}

{{- define "hapi-fhir.baseUrl" -}}
{{- if .Values.fhir.baseUrl -}}{{ .Values.fhir.baseUrl }}
{{- else if .Values.ingress.host -}}https://{{ .Values.ingress.host }}{{ .Values.ingress.path }}
{{- else -}}http://hapi-fhir-service.{{ include "hapi-fhir.ns" . }}.svc:8080/fhir
{{- end -}}
{{- end -}}

{{/* hapi.fhir.* settings of the HAPI starter (8.8.0-1), passed as SPRING_APPLICATION_JSON. */}}
{{- define "hapi-fhir.settings" -}}
{{- $f := .Values.fhir -}}
{{- $hapi := dict "fhir_version" $f.fhirVersion "server_address" (include "hapi-fhir.baseUrl" .) "use_apache_address_strategy" false -}}
{{- if $f.partitioning.enabled -}}
{{- $_ := set $hapi "partitioning" (dict
      "request_tenant_partitioning_mode" true
      "database_partition_mode_enabled" $f.partitioning.databasePartitionMode
      "default_partition_id" (int $f.partitioning.defaultPartitionId)
      "allow_references_across_partitions" $f.partitioning.allowReferencesAcrossPartitions
      "partitioning_include_in_search_hashes" false
      "conditional_create_duplicate_identifiers_enabled" $f.partitioning.conditionalCreateDuplicateIdentifiers) -}}
{{- end -}}
{{- $_ := set $hapi "bulk_export_enabled" $f.bulkExport.enabled -}}
{{- $_ := set $hapi "bulk_export_file_retention_period_hours" (int $f.bulkExport.retentionHours) -}}
{{- dict "hapi" (dict "fhir" $hapi) | toJson -}}
{{- end -}}
