package org.kaapanafhir.testserver;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.jpa.api.IDaoRegistry;
import ca.uhn.fhir.jpa.binary.api.IBinaryStorageSvc;
import ca.uhn.fhir.jpa.binstore.DatabaseBinaryContentStorageSvcImpl;
import ca.uhn.fhir.jpa.config.HibernatePropertiesProvider;
import ca.uhn.fhir.jpa.config.util.HapiEntityManagerFactoryUtil;
import ca.uhn.fhir.jpa.config.util.ResourceCountCacheUtil;
import ca.uhn.fhir.jpa.dao.IFulltextSearchSvc;
import ca.uhn.fhir.jpa.dao.FulltextSearchSvcImpl;
import ca.uhn.fhir.jpa.dao.search.HSearchSortHelperImpl;
import ca.uhn.fhir.jpa.dao.search.IHSearchSortHelper;
import ca.uhn.fhir.jpa.model.config.PartitionSettings;
import ca.uhn.fhir.jpa.model.config.SubscriptionSettings;
import ca.uhn.fhir.jpa.model.dialect.HapiFhirH2Dialect;
import ca.uhn.fhir.jpa.provider.DaoRegistryResourceSupportedSvc;
import ca.uhn.fhir.jpa.search.DatabaseBackedPagingProvider;
import ca.uhn.fhir.jpa.search.IStaleSearchDeletingSvc;
import ca.uhn.fhir.jpa.search.StaleSearchDeletingSvcImpl;
import ca.uhn.fhir.rest.api.IResourceSupportedSvc;
import ca.uhn.fhir.jpa.subscription.match.deliver.email.IEmailSender;
import ca.uhn.fhir.jpa.util.ResourceCountCache;
import ca.uhn.fhir.rest.server.util.ISearchParamRegistry;
import jakarta.persistence.EntityManagerFactory;
import org.hibernate.dialect.Dialect;
import org.springframework.beans.factory.config.ConfigurableListableBeanFactory;
import org.springframework.beans.factory.annotation.Value;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.context.annotation.Primary;
import org.springframework.orm.jpa.JpaTransactionManager;
import org.springframework.orm.jpa.LocalContainerEntityManagerFactoryBean;
import org.springframework.transaction.annotation.EnableTransactionManagement;

import javax.sql.DataSource;
import java.util.HashMap;
import java.util.Map;

/** Storage wiring: JPA on H2, HAPI storage settings close to HAPI defaults. */
@Configuration
@EnableTransactionManagement
public class StorageBeans {

    @Bean
    public JpaStorageSettings jpaStorageSettings(
            @Value("${kaapanafhir.allow-external-references:true}") boolean allowExternal) {
        JpaStorageSettings s = new JpaStorageSettings();
        // Tests read back what they wrote immediately: do not serve 60-s cached search results.
        s.setReuseCachedSearchResultsForMillis(null);
        s.setAllowExternalReferences(allowExternal);
        // Clients choose ids for deterministic upserts (PUT Resource/<id>).
        s.setResourceClientIdStrategy(JpaStorageSettings.ClientIdStrategyEnum.ANY);
        s.setAutoCreatePlaceholderReferenceTargets(false);
        return s;
    }

    @Bean
    public PartitionSettings partitionSettings() {
        return new PartitionSettings();
    }

    @Bean
    public SubscriptionSettings subscriptionSettings() {
        return new SubscriptionSettings();
    }

    @Bean
    @Primary
    public HibernatePropertiesProvider hibernatePropertiesProvider() {
        return new HibernatePropertiesProvider() {
            @Override
            public Dialect getDialect() {
                return new HapiFhirH2Dialect();
            }
        };
    }

    @Bean
    @Primary
    public LocalContainerEntityManagerFactoryBean entityManagerFactory(
            ConfigurableListableBeanFactory beanFactory, FhirContext ctx, JpaStorageSettings settings,
            DataSource dataSource) {
        LocalContainerEntityManagerFactoryBean emf =
                HapiEntityManagerFactoryUtil.newEntityManagerFactory(beanFactory, ctx, settings);
        Map<String, Object> props = new HashMap<>();
        props.put("hibernate.dialect", HapiFhirH2Dialect.class.getName());
        props.put("hibernate.hbm2ddl.auto", "update");
        props.put("hibernate.search.enabled", "false");
        props.put("hibernate.format_sql", "false");
        props.put("hibernate.show_sql", "false");
        props.put("hibernate.jdbc.batch_size", "20");
        props.put("hibernate.cache.use_query_cache", "false");
        props.put("hibernate.cache.use_second_level_cache", "false");
        props.put("hibernate.cache.use_structured_entries", "false");
        props.put("hibernate.cache.use_minimal_puts", "false");
        emf.setPersistenceUnitName("HAPI_PU");
        emf.setJpaPropertyMap(props);
        emf.setDataSource(dataSource);
        return emf;
    }

    @Bean
    @Primary
    public JpaTransactionManager transactionManager(EntityManagerFactory emf) {
        JpaTransactionManager tm = new JpaTransactionManager();
        tm.setEntityManagerFactory(emf);
        return tm;
    }

    @Bean
    public IFulltextSearchSvc fullTextSearchSvc() {
        return new FulltextSearchSvcImpl();
    }

    @Bean
    public IStaleSearchDeletingSvc staleSearchDeletingSvc() {
        return new StaleSearchDeletingSvcImpl();
    }

    @Bean
    public IHSearchSortHelper hSearchSortHelper(ISearchParamRegistry registry) {
        return new HSearchSortHelperImpl(registry);
    }

    @Bean
    public IBinaryStorageSvc binaryStorageSvc() {
        return new DatabaseBinaryContentStorageSvcImpl();
    }

    @Bean
    public IEmailSender emailSender() {
        return details -> { };
    }

    @Bean(name = "myResourceCountsCache")
    public ResourceCountCache resourceCountsCache(IFhirSystemDao<?, ?> systemDao) {
        return ResourceCountCacheUtil.newResourceCountCache(systemDao);
    }

    @Bean
    public IResourceSupportedSvc resourceSupportedSvc(IDaoRegistry registry) {
        return new DaoRegistryResourceSupportedSvc(registry);
    }

    @Bean
    public DatabaseBackedPagingProvider databaseBackedPagingProvider() {
        DatabaseBackedPagingProvider p = new DatabaseBackedPagingProvider();
        p.setDefaultPageSize(20);
        p.setMaximumPageSize(1000);
        return p;
    }
}
