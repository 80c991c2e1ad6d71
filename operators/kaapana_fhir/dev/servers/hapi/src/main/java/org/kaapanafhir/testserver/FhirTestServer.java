package org.kaapanafhir.testserver;

import ca.uhn.fhir.jpa.batch2.JpaBatch2Config;
import ca.uhn.fhir.jpa.config.r4.JpaR4Config;
import ca.uhn.fhir.jpa.config.util.HapiEntityManagerFactoryUtil;
import ca.uhn.fhir.jpa.subscription.channel.config.SubscriptionChannelConfig;
import ca.uhn.fhir.jpa.subscription.match.config.SubscriptionProcessorConfig;
import ca.uhn.fhir.jpa.subscription.submit.config.SubscriptionSubmitterConfig;
import ca.uhn.fhir.batch2.jobs.config.Batch2JobsConfig;
import ca.uhn.fhir.jpa.api.config.ThreadPoolFactoryConfig;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.boot.autoconfigure.quartz.QuartzAutoConfiguration;
import org.springframework.boot.autoconfigure.thymeleaf.ThymeleafAutoConfiguration;
import org.springframework.boot.autoconfigure.orm.jpa.HibernateJpaAutoConfiguration;
import org.springframework.context.annotation.Import;

/**
 * Minimal HAPI FHIR JPA server (FHIR R4) used by kaapana_fhir's integration tests and demo.
 * Binds to 127.0.0.1 only (see application.yaml); the FHIR base is http://127.0.0.1:PORT/fhir.
 */
@SpringBootApplication(exclude = {
        ThymeleafAutoConfiguration.class,
        QuartzAutoConfiguration.class,
        HibernateJpaAutoConfiguration.class})
@Import({
        JpaR4Config.class,
        JpaBatch2Config.class,
        Batch2JobsConfig.class,
        ThreadPoolFactoryConfig.class,
        SubscriptionSubmitterConfig.class,
        SubscriptionProcessorConfig.class,
        SubscriptionChannelConfig.class,
        StorageBeans.class,
        ServerBeans.class,
        BatchBeans.class})
public class FhirTestServer {
    public static void main(String[] args) {
        SpringApplication.run(FhirTestServer.class, args);
    }
}
