package org.kaapanafhir.testserver;

import ca.uhn.fhir.batch2.jobs.export.BulkDataExportProvider;
import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.interceptor.api.IInterceptorService;
import ca.uhn.fhir.jpa.model.config.PartitionSettings;
import ca.uhn.fhir.jpa.partition.PartitionManagementProvider;
import ca.uhn.fhir.rest.server.interceptor.partition.RequestTenantPartitionInterceptor;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.rest.server.provider.ResourceProviderFactory;
import ca.uhn.fhir.jpa.provider.IJpaSystemProvider;
import ca.uhn.fhir.jpa.provider.JpaCapabilityStatementProvider;
import ca.uhn.fhir.jpa.search.DatabaseBackedPagingProvider;
import ca.uhn.fhir.rest.api.EncodingEnum;
import ca.uhn.fhir.rest.server.RestfulServer;
import ca.uhn.fhir.rest.server.util.ISearchParamRegistry;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.beans.factory.ObjectProvider;
import org.springframework.beans.factory.annotation.Value;
import org.springframework.boot.web.servlet.ServletRegistrationBean;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;

/**
 * The REST layer: every R4 resource type with CRUD, search, history, transactions, $validate; with
 * {@code kaapanafhir.partitioning.enabled} (default true) one partition per project addressed as
 * {@code /fhir/<partition>/...} plus the {@code $partition-management-*} operations on the DEFAULT partition; with
 * {@code kaapanafhir.bulk-export.enabled} (default true) FHIR Bulk Data {@code $export} (system, Patient, Group).
 */
@Configuration
public class ServerBeans {

    private static final Logger LOG = LoggerFactory.getLogger(ServerBeans.class);

    @Bean
    public RestfulServer fhirServer(IFhirSystemDao<?, ?> systemDao, ResourceProviderFactory providers,
                                    IJpaSystemProvider systemProvider, JpaStorageSettings settings,
                                    ISearchParamRegistry searchParamRegistry, IValidationSupport validationSupport,
                                    DatabaseBackedPagingProvider paging, PartitionSettings partitionSettings,
                                    ObjectProvider<PartitionManagementProvider> partitionManagement,
                                    ObjectProvider<BulkDataExportProvider> bulkExport,
                                    IInterceptorService jpaInterceptors,
                                    @Value("${kaapanafhir.bulk-export.enabled:true}") boolean bulkExportEnabled) {
        RestfulServer server = new RestfulServer(systemDao.getContext());
        server.registerProviders(providers.createProviders());
        server.registerProvider(systemProvider);
        server.setServerConformanceProvider(
                new JpaCapabilityStatementProvider(server, systemDao, settings, searchParamRegistry, validationSupport));
        server.setPagingProvider(paging);
        server.setDefaultResponseEncoding(EncodingEnum.JSON);
        if (partitionSettings.isPartitioningEnabled()) {
            server.setTenantIdentificationStrategy(new ProjectTenantStrategy());
            RequestTenantPartitionInterceptor tenantInterceptor = new RequestTenantPartitionInterceptor();
            tenantInterceptor.setPartitionSettings(partitionSettings);
            // Registered with the JPA interceptor service (not only the REST server's): batch2 jobs such as $export
            // carry the kick-off request's tenant into their worker steps through its batch-job hooks.
            jpaInterceptors.registerInterceptor(tenantInterceptor);
            server.registerProvider(partitionManagement.getObject());
        }
        if (bulkExportEnabled) {
            server.registerProvider(bulkExport.getObject());
        }
        LOG.info("FHIR server: partitioning={} (URL tenant, default partition id {}), bulk export={}",
                partitionSettings.isPartitioningEnabled(), partitionSettings.getDefaultPartitionId(),
                bulkExportEnabled);
        return server;
    }

    @Bean
    public ServletRegistrationBean<RestfulServer> fhirServlet(RestfulServer server) {
        ServletRegistrationBean<RestfulServer> reg = new ServletRegistrationBean<>(server, "/fhir/*");
        reg.setName("fhir");
        reg.setLoadOnStartup(1);
        return reg;
    }
}
