package org.kaapanafhir.testserver;

import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.rest.server.provider.ResourceProviderFactory;
import ca.uhn.fhir.jpa.provider.IJpaSystemProvider;
import ca.uhn.fhir.jpa.provider.JpaCapabilityStatementProvider;
import ca.uhn.fhir.jpa.search.DatabaseBackedPagingProvider;
import ca.uhn.fhir.rest.api.EncodingEnum;
import ca.uhn.fhir.rest.server.RestfulServer;
import ca.uhn.fhir.rest.server.util.ISearchParamRegistry;
import org.springframework.boot.web.servlet.ServletRegistrationBean;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;

/** The REST layer: every R4 resource type with CRUD, search, history, transactions, $validate. */
@Configuration
public class ServerBeans {

    @Bean
    public RestfulServer fhirServer(IFhirSystemDao<?, ?> systemDao, ResourceProviderFactory providers,
                                    IJpaSystemProvider systemProvider, JpaStorageSettings settings,
                                    ISearchParamRegistry searchParamRegistry, IValidationSupport validationSupport,
                                    DatabaseBackedPagingProvider paging) {
        RestfulServer server = new RestfulServer(systemDao.getContext());
        server.registerProviders(providers.createProviders());
        server.registerProvider(systemProvider);
        server.setServerConformanceProvider(
                new JpaCapabilityStatementProvider(server, systemDao, settings, searchParamRegistry, validationSupport));
        server.setPagingProvider(paging);
        server.setDefaultResponseEncoding(EncodingEnum.JSON);
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
