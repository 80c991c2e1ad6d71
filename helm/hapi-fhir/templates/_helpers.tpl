{{- define "hapi-fhir.ns" -}}{{ .Values.global.services_namespace | default "services" }}{{- end -}}

{{- define "hapi-fhir.labels" -}}
app.kubernetes.io/name: hapi-fhir
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Values.image.tag | quote }}
{{- end -}}

{{- define "hapi-fhir.baseUrl" -}}
{{- if .Values.fhir.baseUrl -}}{{ .Values.fhir.baseUrl }}
{{- else if .Values.ingress.host -}}https://{{ .Values.ingress.host }}{{ .Values.ingress.path }}
{{- else -}}http://hapi-fhir-service.{{ include "hapi-fhir.ns" . }}.svc:8080/fhir
{{- end -}}
{{- end -}}
