package org.kaapanafhir.testserver;

import ca.uhn.fhir.batch2.maintenance.JobMaintenanceServiceImpl;
import org.springframework.beans.factory.annotation.Value;
import org.springframework.beans.factory.config.BeanPostProcessor;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;

/**
 * Batch2 (the job engine behind $export): HAPI runs a maintenance pass once a minute by default, which advances
 * multi-step jobs. A test server wants answers in seconds, so the pass interval is configurable
 * ({@code kaapanafhir.batch.maintenance-interval-ms}, default 5000).
 */
@Configuration
public class BatchBeans {

    @Bean
    public static BeanPostProcessor batchMaintenanceInterval(
            @Value("${kaapanafhir.batch.maintenance-interval-ms:5000}") long intervalMs) {
        return new BeanPostProcessor() {
            @Override
            public Object postProcessBeforeInitialization(Object bean, String beanName) {
                if (bean instanceof JobMaintenanceServiceImpl maintenance) {
                    maintenance.setScheduledJobFrequencyMillis(intervalMs);
                }
                return bean;
            }
        };
    }
}
