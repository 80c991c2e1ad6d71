package org.kaapanafhir.testserver;

import ca.uhn.fhir.rest.api.server.RequestDetails;
import ca.uhn.fhir.rest.server.tenant.ITenantIdentificationStrategy;
import ca.uhn.fhir.util.UrlPathTokenizer;

/**
 * URL-based tenant identification (one HAPI partition per Kaapana project): {@code base/<partition>/Patient/...}.
 *
 * <p>Differs from HAPI's {@code UrlBaseTenantIdentificationStrategy} (which the HAPI starter image uses in
 * production) in one point only: a request whose first path segment is a resource type, an operation
 * ({@code $...}), a special path ({@code _history}, {@code _search}, ...), {@code metadata}, or that has no path
 * at all (a transaction POSTed to the base) is served from the DEFAULT partition, so the plain base URL keeps
 * working for clients that do not use projects. Such requests keep the plain base URL in the links and Location
 * headers HAPI writes. Consequence: a partition must not be named like a resource type (the Python client maps such
 * project names to another partition name).
 */
public class ProjectTenantStrategy implements ITenantIdentificationStrategy {

    static final String DEFAULT_TENANT = "DEFAULT";
    /** HAPI's tenant name for "all partitions" (read-only requests). */
    static final String ALL_PARTITIONS = "_ALL";
    private static final String IMPLICIT = ProjectTenantStrategy.class.getName() + ".implicitDefault";

    @Override
    public void extractTenant(UrlPathTokenizer tokenizer, RequestDetails request) {
        String first = tokenizer.hasMoreTokens() ? tokenizer.peek() : null;
        if (first == null || first.isBlank() || isRootSegment(first, request)) {
            request.setTenantId(DEFAULT_TENANT);
            request.getUserData().put(IMPLICIT, Boolean.TRUE);
            return;
        }
        request.setTenantId(tokenizer.nextTokenUnescapedAndSanitized());
    }

    @Override
    public String massageServerBaseUrl(String base, RequestDetails request) {
        if (request.getTenantId() == null || Boolean.TRUE.equals(request.getUserData().get(IMPLICIT))) {
            return base;
        }
        return base + "/" + request.getTenantId();
    }

    @Override
    public String resolveRelativeUrl(String relativeUrl, RequestDetails request) {
        String tenant = request.getTenantId();
        if (tenant == null || DEFAULT_TENANT.equals(tenant)) {
            return relativeUrl; // served from DEFAULT without a tenant segment
        }
        UrlPathTokenizer tokenizer = new UrlPathTokenizer(relativeUrl);
        if (!tokenizer.hasMoreTokens()) {
            return relativeUrl;
        }
        String first = tokenizer.peek();
        if (first.equals(tenant)) {
            return relativeUrl;
        }
        return isRootSegment(first, request) ? tenant + "/" + relativeUrl : relativeUrl;
    }

    static boolean isRootSegment(String segment, RequestDetails request) {
        if (segment.equals(ALL_PARTITIONS)) {
            return false;
        }
        if (segment.equals("metadata") || segment.startsWith("$") || segment.startsWith("_")) {
            return true;
        }
        String type = segment.contains("?") ? segment.substring(0, segment.indexOf('?')) : segment;
        return request.getFhirContext().getResourceTypes().contains(type);
    }
}
