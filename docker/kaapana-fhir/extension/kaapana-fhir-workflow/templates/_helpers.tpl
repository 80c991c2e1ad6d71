{{- define "kaapana-fhir.registry" -}}
{{- if .Values.global.custom_registry_url }}{{ .Values.global.custom_registry_url }}{{ else }}{{ .Values.global.registry_url }}{{ end -}}
{{- end -}}

{{- define "kaapana-fhir.settings" -}}
{{- $ns := .Values.global.services_namespace | default "services" -}}
{{- $fhir := .Values.kaapanaFhir.fhirBaseUrl | default (printf "http://hapi-fhir-service.%s.svc:8080/fhir" $ns) -}}
{{- $dw := .Values.kaapanaFhir.dicomwebUrl | default (printf "http://dicom-web-filter-service.%s.svc:8080" $ns) -}}
{{- dict "fhir_base_url" $fhir "dicomweb_url" $dw "import_watcher_bucket" .Values.kaapanaFhir.importWatcher.bucket "import_watcher_prefix" .Values.kaapanaFhir.importWatcher.minioPrefix "import_watcher_schedule" .Values.kaapanaFhir.importWatcher.schedule "fhir_partitioning" (.Values.kaapanaFhir.fhirPartitioning | default "url") | toPrettyJson -}}
{{- end -}}
