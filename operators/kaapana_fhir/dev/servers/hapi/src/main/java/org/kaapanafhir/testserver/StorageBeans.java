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
            @Value("${kaapanafhir.allow-external-references:true}") boolean allowExternal,
            @Value("${kaapanafhir.bulk-export.enabled:true}") boolean bulkExport,
            @Value("${kaapanafhir.bulk-export.retention-hours:2}") int bulkExportRetentionHours) {
        JpaStorageSettings s = new JpaStorageSettings();
        // Tests read back what they wrote immediately: do not serve 60-s cached search results.
        s.setReuseCachedSearchResultsForMillis(null);
        s.setAllowExternalReferences(allowExternal);
        // Clients choose ids for deterministic upserts (PUT Resource/<id>).
        s.setResourceClientIdStrategy(JpaStorageSettings.ClientIdStrategyEnum.ANY);
        s.setAutoCreatePlaceholderReferenceTargets(false);
        // Bulk Data $export runs as a batch2 job; small (one-chunk) jobs are advanced at once instead of waiting for
        // the next maintenance pass (see BatchBeans for the pass interval).
        s.setEnableTaskBulkExportJobExecution(bulkExport);
        s.setBulkExportFileRetentionPeriodHours(bulkExportRetentionHours);
        s.setJobFastTrackingEnabled(true);
        return s;
    }

    /**
     * Partitions as the HAPI starter image configures them in our chart (request-tenant mode): default partition id
     * 0, no references across partitions, search hashes without the partition, and conditional creates may match
     * the same identifier in different partitions (two projects may hold the same PatientID).
     *
     * <p>Database partition mode (HAPI 8.0+) puts PARTITION_ID into every primary and unique key. Without it HAPI
     * 8.8 keeps the unique index (RES_TYPE, FHIR_ID) and the same client-assigned id (our deterministic ids) in two
     * partitions fails with HAPI-0825 (measured). The mode fixes the schema: a database created without it cannot
     * be opened with it (HAPI checks at start-up), so {@code kaapanafhir.partitioning.database-mode=false} exists
     * for old persistent demo databases.
     */
    @Bean
    public PartitionSettings partitionSettings(
            @Value("${kaapanafhir.partitioning.enabled:true}") boolean enabled,
            @Value("${kaapanafhir.partitioning.database-mode:true}") boolean databaseMode,
            @Value("${kaapanafhir.partitioning.default-partition-id:0}") int defaultPartitionId) {
        PartitionSettings p = new PartitionSettings();
        if (enabled) {
            p.setPartitioningEnabled(true);
            p.setDatabasePartitionMode(databaseMode);
            p.setDefaultPartitionId(defaultPartitionId);
            p.setIncludePartitionInSearchHashes(false);
            p.setAllowReferencesAcrossPartitions(PartitionSettings.CrossPartitionReferenceMode.NOT_ALLOWED);
            p.setConditionalCreateDuplicateIdentifiersEnabled(true);
        }
        return p;
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
