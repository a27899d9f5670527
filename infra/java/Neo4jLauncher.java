import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;

import org.neo4j.configuration.GraphDatabaseSettings;
import org.neo4j.configuration.connectors.BoltConnector;
import org.neo4j.configuration.connectors.BoltConnectorInternalSettings;
import org.neo4j.configuration.connectors.HttpConnector;
import org.neo4j.configuration.connectors.HttpsConnector;
import org.neo4j.configuration.helpers.SocketAddress;
import org.neo4j.configuration.ssl.ClientAuth;
import org.neo4j.configuration.ssl.SslPolicyConfig;
import org.neo4j.configuration.ssl.SslPolicyScope;
import org.neo4j.dbms.api.DatabaseManagementService;
import org.neo4j.dbms.api.DatabaseManagementServiceBuilder;
import org.neo4j.graphdb.QueryExecutionException;
import org.neo4j.io.ByteUnit;
import org.neo4j.logging.Level;
import org.neo4j.logging.log4j.Log4jLogProvider;

/**
 * cdcflow's local Neo4j: an embedded DBMS that serves Bolt, for the demo and the tests.
 *
 * Usage: java ... Neo4jLauncher HOME_DIR BOLT_PORT [BOLT_HOST [PASSWORD_FILE]]
 *
 * Authentication is always on. With PASSWORD_FILE, the password of user `neo4j` is first set to the file's
 * content with Bolt still closed (a DBMS of its own, shut down again), and the file is deleted: the password
 * never appears in the arguments, and no client can reach the server before it is set.
 *
 * With the system property `cdcflow.bolt.tls.dir` (a directory holding `private.key` and `public.crt`, PEM),
 * Bolt accepts TLS connections only (encryption level REQUIRED, no client certificate asked for).
 *
 * Neo4j's own server distribution is not on Maven Central; the embedded API plus the Bolt connector gives the
 * same wire protocol from the plain `org.neo4j:neo4j` jars.
 */
public final class Neo4jLauncher {
    /** How long a shutdown during start-up waits for the store to finish opening. */
    private static final Duration START_WAIT = Duration.ofMinutes(3);

    private Neo4jLauncher() {}

    public static void main(String[] args) throws InterruptedException {
        if (args.length < 2) {
            System.err.println("usage: Neo4jLauncher HOME_DIR BOLT_PORT [BOLT_HOST [PASSWORD_FILE]]");
            System.exit(2);
        }
        Path home = Path.of(args[0]).toAbsolutePath();
        int port = Integer.parseInt(args[1]);
        String host = args.length > 2 ? args[2] : "127.0.0.1";
        if (args.length > 3) {
            try {
                setPassword(home, Path.of(args[3]));
            } catch (IOException | RuntimeException e) {
                System.err.println("cdcflow-neo4j: setting the password failed: " + e);
                Runtime.getRuntime().halt(1);
                return;
            }
        }

        AtomicReference<DatabaseManagementService> service = new AtomicReference<>();
        CountDownLatch built = new CountDownLatch(1);
        // Registered before build(): a SIGTERM that arrives mid-start-up waits for the store to open and then
        // shuts it down cleanly, so the next start does not pay for recovery.
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                built.await(START_WAIT.toSeconds(), TimeUnit.SECONDS);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
            DatabaseManagementService dbms = service.get();
            if (dbms != null) {
                System.out.println("cdcflow-neo4j: shutting down");
                dbms.shutdown();
                System.out.println("cdcflow-neo4j: stopped");
            }
        }, "cdcflow-neo4j-shutdown"));

        String tlsDir = System.getProperty("cdcflow.bolt.tls.dir");
        DatabaseManagementService dbms;
        try {
            DatabaseManagementServiceBuilder builder = new DatabaseManagementServiceBuilder(home);
            if (tlsDir != null) {
                SslPolicyConfig bolt = SslPolicyConfig.forScope(SslPolicyScope.BOLT);
                builder.setConfig(bolt.enabled, true)
                        .setConfig(bolt.base_directory, Path.of(tlsDir).toAbsolutePath())
                        .setConfig(bolt.private_key, Path.of("private.key"))
                        .setConfig(bolt.public_certificate, Path.of("public.crt"))
                        .setConfig(bolt.client_auth, ClientAuth.NONE);
            }
            dbms = builder
                    .setUserLogProvider(new Log4jLogProvider(System.out, Level.INFO))
                    .setConfig(BoltConnector.enabled, true)
                    .setConfig(BoltConnector.listen_address, new SocketAddress(host, port))
                    .setConfig(BoltConnector.encryption_level, tlsDir != null
                            ? BoltConnector.EncryptionLevel.REQUIRED : BoltConnector.EncryptionLevel.DISABLED)
                    .setConfig(HttpConnector.enabled, false)
                    .setConfig(HttpsConnector.enabled, false)
                    .setConfig(GraphDatabaseSettings.auth_enabled, true)
                    // A throwaway local server has no business reporting usage data to neo4j.com.
                    .setConfig(GraphDatabaseSettings.udc_enabled, false)
                    .setConfig(GraphDatabaseSettings.pagecache_memory, ByteUnit.mebiBytes(64))
                    // Defaults preallocate ~0.5 GB of transaction logs in a fresh home.
                    .setConfig(GraphDatabaseSettings.preallocate_logical_logs, false)
                    .setConfig(GraphDatabaseSettings.logical_log_rotation_threshold, ByteUnit.mebiBytes(32))
                    // Defaults make SIGTERM wait 10+ s for idle Bolt workers and connections.
                    .setConfig(BoltConnectorInternalSettings.thread_pool_shutdown_wait_time, Duration.ofMillis(200))
                    .setConfig(BoltConnectorInternalSettings.connection_shutdown_wait_time, Duration.ofMillis(200))
                    .build();
        } catch (RuntimeException e) {
            System.err.println("cdcflow-neo4j: start failed: " + e);
            e.printStackTrace();
            // halt, not exit: the shutdown hook has nothing to shut down and must not block.
            Runtime.getRuntime().halt(1);
            return;
        }
        service.set(dbms);
        built.countDown();

        dbms.database(GraphDatabaseSettings.DEFAULT_DATABASE_NAME).executeTransactionally("RETURN 1");
        System.out.println("cdcflow-neo4j: ready, bolt" + (tlsDir != null ? "+s" : "") + "://" + host + ":" + port + " home " + home);
        System.out.flush();

        // Park until the JVM is told to stop; the shutdown hook does the work.
        new CountDownLatch(1).await();
    }

    /** Set the password of user neo4j with Bolt closed (embedded transactions need no login), then delete the file. */
    private static void setPassword(Path home, Path passwordFile) throws IOException {
        String password = Files.readString(passwordFile, StandardCharsets.UTF_8).strip();
        Files.delete(passwordFile);
        DatabaseManagementService dbms = new DatabaseManagementServiceBuilder(home)
                .setUserLogProvider(new Log4jLogProvider(System.out, Level.WARN))
                .setConfig(BoltConnector.enabled, false)
                .setConfig(HttpConnector.enabled, false)
                .setConfig(HttpsConnector.enabled, false)
                .setConfig(GraphDatabaseSettings.auth_enabled, true)
                .setConfig(GraphDatabaseSettings.udc_enabled, false)
                .setConfig(GraphDatabaseSettings.pagecache_memory, ByteUnit.mebiBytes(64))
                .setConfig(GraphDatabaseSettings.preallocate_logical_logs, false)
                .build();
        try {
            dbms.database(GraphDatabaseSettings.SYSTEM_DATABASE_NAME).executeTransactionally(
                    "ALTER USER neo4j SET PASSWORD $password CHANGE NOT REQUIRED", Map.of("password", password));
        } catch (QueryExecutionException e) {
            // Already this password (a start whose success was not recorded): nothing to change.
            if (e.getMessage() == null || !e.getMessage().contains("Old password and new password cannot be the same")) {
                throw e;
            }
        } finally {
            dbms.shutdown();
        }
        System.out.println("cdcflow-neo4j: password set");
    }
}
