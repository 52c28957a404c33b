/*
 * kafka-dev-broker: a throw-away Kafka endpoint for tests and demos.
 *
 * This program owns an in-process librdkafka *mock cluster*
 * (<librdkafka/rdkafka_mock.h>).  The mock cluster speaks the real Kafka wire
 * protocol over plain TCP on 127.0.0.1 (one random port per mock broker), so
 * any client -- librdkafka/kcat, kafka-python, the batchkit Kafka sink -- can
 * connect to it.  It is NOT Apache Kafka.  What follows describes what the
 * mock does in librdkafka 2.0.2 (Debian 12 librdkafka-dev); it was checked by
 * reading librdkafka v2.0.2 src/rdkafka_mock*.c and by the integration tests in
 * test/integration/test_kafka_dev_broker.py.
 *
 * Storage and retention
 *   - Everything lives in the memory of this process.  Nothing is written to
 *     disk; all topics, records and committed offsets are gone on exit.
 *   - Each partition is a list of record batches ("message sets") exactly as
 *     the producer sent them.  Per partition the log is capped at
 *     5 MiB (5 * 1024 * 1024 bytes of batch data) and at 100000 batches.
 *     These limits are hard-coded in librdkafka and cannot be configured
 *     through the public API.  When an append goes over either cap, the
 *     OLDEST batches of that partition are dropped right away (no time-based
 *     retention, no segment files, no compaction) and the log start offset
 *     moves forward.  Consumers that ask for a dropped offset get
 *     OFFSET_OUT_OF_RANGE and then follow their auto.offset.reset policy.
 *     Offsets keep counting up; they are never reused.
 *   - Edge case: if one append drops EVERY older batch of the partition (the
 *     new batch plus the newest old batch is more than 5 MiB), the log start
 *     offset is set past the new batch as well, so that batch is acknowledged
 *     but can never be read.  Keep batches well under 2.5 MiB.
 *   - The broker does not check record or batch sizes.  The only limit is the
 *     whole request size: a request larger than this process's
 *     receive.message.max.bytes (librdkafka default 100000000) closes the
 *     connection.  Clients still apply their own limits, e.g. the librdkafka
 *     producer's message.max.bytes, 1000000 by default.
 *   - Only record batch format v2 (magic 2, Kafka >= 0.11 clients) is
 *     accepted; older formats get UNSUPPORTED_VERSION.
 *
 * Topics
 *   - The topics given with --topic are created before the bootstrap address
 *     is published.
 *   - A Metadata request for a topic that does not exist creates it
 *     automatically with 4 partitions.  The mock answers Metadata up to v2
 *     only, so a client's allow.auto.create.topics=false is never seen: a
 *     metadata lookup for a missing topic always creates it.  A Metadata
 *     request for "all topics" creates nothing.  A Produce or Fetch request
 *     sent directly to an unknown topic/partition gets
 *     UNKNOWN_TOPIC_OR_PARTITION.  Normal clients always look up metadata
 *     first, so in practice every topic a client uses is auto-created.
 *   - The Admin API (CreateTopics, DeleteTopics, CreatePartitions,
 *     DescribeConfigs, DeleteRecords, ListGroups, DescribeGroups, ...) is not
 *     implemented.  Requests for an unimplemented API, or for a version
 *     higher than the mock advertises in ApiVersions, make the mock log an
 *     error and close the connection.
 *   - Replication is fake.  librdkafka 2.0.2 ignores the replication factor
 *     given to rd_kafka_mock_topic_create(): every partition gets
 *     min(3, brokers) replicas (brokers 1..3), all of them always in the ISR,
 *     and a leader picked at random among them.  Brokers 4 and up never lead
 *     a partition.  --topic still checks REPLICATION (1 .. --brokers) and
 *     passes it on, so newer librdkafka versions, which do use it, get it.
 *
 * What works
 *   - Producer with acks=0/1/all.  The mock always appends and replies; it
 *     does not look at acks.
 *   - Idempotent producer (enable.idempotence=true): InitProducerId gives a
 *     PID and produce succeeds.  For producers that are not transactional,
 *     librdkafka 2.0.2's mock does NOT check sequence numbers and does NOT
 *     drop duplicates.  It only does that for transactional producers (last
 *     5 batches per PID and partition).  So a retried batch can be stored
 *     twice.  Do not rely on the mock to prove exactly-once behaviour.
 *   - Produce acknowledgements carry LogAppendTime = 1234 (ms since the
 *     epoch), so clients report THAT as the delivery timestamp
 *     (librdkafka: rd_kafka_message_timestamp() == 1234 with type
 *     LOG_APPEND_TIME; kafka-python: RecordMetadata.timestamp == 1234).
 *     Consumed records keep the producer's CreateTime.
 *   - Transactional producer: the protocol steps succeed, but no
 *     commit/abort markers are written and LastStableOffset == high
 *     watermark.  Aborted records are visible even to read_committed
 *     consumers.
 *   - Consumer groups: FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
 *     LeaveGroup, OffsetCommit and OffsetFetch are implemented.  Group
 *     assignment is done by the client that leads the group.  The first join
 *     of an empty group waits about 3 s (like group.initial.rebalance.delay.ms)
 *     before it completes.  Committed offsets are kept in memory for each
 *     (group, partition).
 *   - ListOffsets supports only earliest (-2) and latest (-1).  Lookups by
 *     timestamp (offsetsForTimes) return offset -1.  LogAppendTime is not
 *     supported.
 *   - Fetch returns at most ONE record batch per partition per request, and
 *     when there is no data it waits the client's full fetch.wait.max.ms even
 *     if records arrive meanwhile.  Consumers work but are slower than
 *     against a real broker.
 *   - Plaintext only: no TLS, no SASL, no ACLs, no quotas.
 *
 * Command line: see usage() below or README.md in this directory.
 *
 * Exit status: 0 after a clean shutdown on SIGTERM/SIGINT, 1 when the cluster
 * cannot be started or a file cannot be written, 2 for bad arguments.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#define PROG "kafka-dev-broker"

#define DEFAULT_BROKERS 3
#define MAX_BROKERS 64
#define DEFAULT_PARTITIONS 4 /* same as the mock's auto-create default */
#define MAX_PARTITIONS 10000
#define MAX_TOPICS 1024
#define MAX_TOPIC_NAME 249 /* Kafka's limit */
#define SHUTDOWN_WATCHDOG_SEC 20

#define EXIT_USAGE 2

struct topic_spec {
    char name[MAX_TOPIC_NAME + 1];
    int partitions;
    int replication; /* 0 = not given, use min(3, brokers) */
};

struct options {
    int brokers;
    struct topic_spec *topics;
    int topic_cnt;
    const char *bootstrap_file;
    const char *pid_file;
    int quiet;
    int verbose;
};

/* Highest syslog level passed on from librdkafka's log callback. */
static int log_threshold = 4; /* LOG_WARNING */

static void usage(FILE *out) {
    fprintf(out,
            "Usage: " PROG " [OPTIONS]\n"
            "\n"
            "Run an in-memory Kafka mock cluster (librdkafka rdkafka_mock) that\n"
            "listens on 127.0.0.1, print \"bootstrap=HOST:PORT,...\" on stdout and\n"
            "serve until SIGTERM or SIGINT.\n"
            "\n"
            "Options:\n"
            "  -b, --brokers N           number of mock brokers, 1..%d (default %d)\n"
            "  -t, --topic NAME[:PARTITIONS[:REPLICATION]]\n"
            "                            create a topic at startup (repeatable);\n"
            "                            PARTITIONS 1..%d (default %d), REPLICATION\n"
            "                            1..brokers (default min(3, brokers))\n"
            "  -f, --bootstrap-file PATH write the bootstrap string (plus a newline) to\n"
            "                            PATH once the cluster is ready (via PATH.tmp +\n"
            "                            rename); removed on clean shutdown\n"
            "  -p, --pid-file PATH       write the process id to PATH; removed on exit\n"
            "  -q, --quiet               do not print the bootstrap line; librdkafka\n"
            "                            logs errors only\n"
            "  -v, --verbose             librdkafka mock debug logging on stderr\n"
            "  -h, --help                show this help and exit\n"
            "      --version             show the librdkafka version and exit\n"
            "\n"
            "Topics not created with --topic are auto-created with 4 partitions on\n"
            "the first metadata request.  Data is kept in memory only; each\n"
            "partition keeps at most 5 MiB / 100000 batches (oldest batches are\n"
            "dropped).  See README.md for the full list of limitations.\n"
            "\n"
            "Exit status: 0 clean shutdown, 1 runtime error, 2 bad arguments.\n",
            MAX_BROKERS, DEFAULT_BROKERS, MAX_PARTITIONS, DEFAULT_PARTITIONS);
}

static void die_usage(const char *fmt, ...) {
    va_list ap;
    fputs(PROG ": ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nTry '" PROG " --help' for more information.\n", stderr);
    exit(EXIT_USAGE);
}

static void errmsg(const char *fmt, ...) {
    va_list ap;
    fputs(PROG ": ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* Parse a decimal int in [min, max]; returns 0 on success. */
static int parse_int(const char *s, int min, int max, int *out) {
    char *end;
    long v;

    if (!*s || *s == '+' || *s == '-' || *s == ' ')
        return -1;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return -1;
    *out = (int)v;
    return 0;
}

static int valid_topic_name(const char *name) {
    size_t len = strlen(name);

    if (len == 0 || len > MAX_TOPIC_NAME)
        return 0;
    if (!strcmp(name, ".") || !strcmp(name, ".."))
        return 0;
    for (const char *c = name; *c; c++) {
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              *c == '.' || *c == '_' || *c == '-'))
            return 0;
    }
    return 1;
}

/* Parse NAME[:PARTITIONS[:REPLICATION]]; replication is checked later
 * against the broker count (options may come in any order). */
static void parse_topic(const char *arg, struct topic_spec *t) {
    char buf[MAX_TOPIC_NAME + 64];
    char *parts, *repl;

    if (strlen(arg) >= sizeof(buf))
        die_usage("--topic '%.40s...': too long", arg);
    strcpy(buf, arg);

    parts = strchr(buf, ':');
    if (parts)
        *parts++ = '\0';
    repl = parts ? strchr(parts, ':') : NULL;
    if (repl)
        *repl++ = '\0';

    if (!valid_topic_name(buf))
        die_usage("--topic '%s': invalid topic name '%s' (1..%d characters of "
                  "[a-zA-Z0-9._-], not '.' or '..')",
                  arg, buf, MAX_TOPIC_NAME);
    strcpy(t->name, buf);

    t->partitions = DEFAULT_PARTITIONS;
    if (parts && parse_int(parts, 1, MAX_PARTITIONS, &t->partitions))
        die_usage("--topic '%s': PARTITIONS must be an integer in 1..%d", arg, MAX_PARTITIONS);

    t->replication = 0;
    if (repl && parse_int(repl, 1, MAX_BROKERS, &t->replication))
        die_usage("--topic '%s': REPLICATION must be an integer in 1..--brokers", arg);
}

/*
 * Accepts "--opt VALUE", "--opt=VALUE" and "-o VALUE".
 * Returns the value when argv[*i] is option long_name/short_name (advancing
 * *i past a separate value), NULL when it is a different option.
 */
static const char *opt_value(int argc, char **argv, int *i, const char *long_name,
                             const char *short_name) {
    const char *a = argv[*i];
    size_t n = strlen(long_name);

    if (!strncmp(a, long_name, n) && a[n] == '=') {
        if (!a[n + 1])
            die_usage("option '%s' requires a non-empty value", long_name);
        return a + n + 1;
    }
    if (strcmp(a, long_name) && (!short_name || strcmp(a, short_name)))
        return NULL;
    if (*i + 1 >= argc || !argv[*i + 1][0])
        die_usage("option '%s' requires a value", a);
    if (argv[*i + 1][0] == '-')
        die_usage("option '%s' requires a value, got '%s' (use %s=VALUE if that is meant)", a,
                  argv[*i + 1], long_name);
    (*i)++;
    return argv[*i];
}

static void parse_args(int argc, char **argv, struct options *o) {
    const char *v;

    memset(o, 0, sizeof(*o));
    o->brokers = DEFAULT_BROKERS;
    o->topics = calloc(MAX_TOPICS, sizeof(*o->topics));
    if (!o->topics) {
        errmsg("out of memory");
        exit(1);
    }

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];

        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(a, "--version")) {
            printf(PROG " (librdkafka %s)\n", rd_kafka_version_str());
            exit(0);
        } else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
            o->quiet = 1;
        } else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            o->verbose = 1;
        } else if ((v = opt_value(argc, argv, &i, "--brokers", "-b"))) {
            if (parse_int(v, 1, MAX_BROKERS, &o->brokers))
                die_usage("--brokers '%s': must be an integer in 1..%d", v, MAX_BROKERS);
        } else if ((v = opt_value(argc, argv, &i, "--topic", "-t"))) {
            if (o->topic_cnt >= MAX_TOPICS)
                die_usage("too many --topic options (max %d)", MAX_TOPICS);
            parse_topic(v, &o->topics[o->topic_cnt]);
            for (int j = 0; j < o->topic_cnt; j++)
                if (!strcmp(o->topics[j].name, o->topics[o->topic_cnt].name))
                    die_usage("--topic '%s' given more than once", o->topics[j].name);
            o->topic_cnt++;
        } else if ((v = opt_value(argc, argv, &i, "--bootstrap-file", "-f"))) {
            o->bootstrap_file = v;
        } else if ((v = opt_value(argc, argv, &i, "--pid-file", "-p"))) {
            o->pid_file = v;
        } else if (a[0] == '-') {
            die_usage("unknown option '%s'", a);
        } else {
            die_usage("unexpected argument '%s'", a);
        }
    }

    for (int j = 0; j < o->topic_cnt; j++) {
        if (o->topics[j].replication > o->brokers)
            die_usage("--topic '%s': replication factor %d is larger than --brokers %d",
                      o->topics[j].name, o->topics[j].replication, o->brokers);
    }

    if (o->bootstrap_file && o->pid_file && !strcmp(o->bootstrap_file, o->pid_file))
        die_usage("--bootstrap-file and --pid-file must be different paths");
}

/* Write "content\n" to path atomically: path.tmp, fsync, rename. */
static int write_file_atomic(const char *path, const char *content) {
    size_t plen = strlen(path);
    char *tmp = malloc(plen + sizeof(".tmp"));
    size_t len = strlen(content);
    const char *p;
    size_t left;
    int fd;

    if (!tmp) {
        errmsg("out of memory");
        return -1;
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", sizeof(".tmp"));

    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        errmsg("cannot create %s: %s", tmp, strerror(errno));
        free(tmp);
        return -1;
    }

    for (int pass = 0; pass < 2; pass++) {
        p = pass == 0 ? content : "\n";
        left = pass == 0 ? len : 1;
        while (left > 0) {
            ssize_t r = write(fd, p, left);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                errmsg("cannot write %s: %s", tmp, strerror(errno));
                close(fd);
                unlink(tmp);
                free(tmp);
                return -1;
            }
            p += r;
            left -= (size_t)r;
        }
    }

    if (fsync(fd) != 0 || close(fd) != 0) {
        errmsg("cannot write %s: %s", tmp, strerror(errno));
        unlink(tmp);
        free(tmp);
        return -1;
    }
    if (rename(tmp, path) != 0) {
        errmsg("cannot rename %s to %s: %s", tmp, path, strerror(errno));
        unlink(tmp);
        free(tmp);
        return -1;
    }
    free(tmp);
    return 0;
}

static void remove_file(const char *path) {
    if (path && unlink(path) != 0 && errno != ENOENT)
        errmsg("cannot remove %s: %s", path, strerror(errno));
}

static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
    (void)rk;
    if (level <= log_threshold)
        fprintf(stderr, PROG ": librdkafka %d|%s: %s\n", level, fac, buf);
}

/*
 * The mock cluster's sockets lack TCP_NODELAY, so small produce responses sit in
 * Nagle/delayed-ACK stalls (~40 ms each) and a producer crawls. Set it on the
 * listening sockets (Linux passes it on to the sockets they accept).
 */
static void set_nodelay_on_listeners(void) {
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;

    if (d == NULL)
        return;
    while ((e = readdir(d)) != NULL) {
        int fd = atoi(e->d_name);
        struct stat st;
        int listening = 0, one = 1;
        socklen_t len = sizeof(listening);

        if (e->d_name[0] == '.' || fd == dirfd(d) || fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode))
            continue;
        if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) == 0 && listening)
            (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    closedir(d);
}

int main(int argc, char **argv) {
    struct options o;
    char errstr[512];
    rd_kafka_conf_t *conf;
    rd_kafka_t *rk;
    rd_kafka_mock_cluster_t *mcluster;
    const char *bootstraps;
    sigset_t sigs;
    int sig = 0;
    int rc = 0;
    int pid_written = 0;
    int bootstrap_written = 0;

    parse_args(argc, argv, &o);

    if (o.verbose)
        log_threshold = 7;
    else if (o.quiet)
        log_threshold = 3;

    /*
     * Block the termination signals before librdkafka starts its threads so
     * they inherit the mask and the signals can only be taken by sigwait()
     * below.  The dispositions are reset to SIG_DFL first: a shell without job
     * control starts background jobs with SIGINT ignored, and an ignored
     * signal is discarded instead of being queued for sigwait().
     * A peer closing a connection must not kill us (SIGPIPE).
     */
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    if (sigprocmask(SIG_BLOCK, &sigs, NULL) != 0) {
        errmsg("sigprocmask: %s", strerror(errno));
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);

    /*
     * The rd_kafka_t only owns the mock cluster (it must outlive it); it is
     * never used to produce.
     */
    conf = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(conf, log_cb);
    if (rd_kafka_conf_set(conf, "client.id", PROG, errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK ||
        (o.verbose &&
         rd_kafka_conf_set(conf, "debug", "mock", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)) {
        errmsg("librdkafka configuration: %s", errstr);
        rd_kafka_conf_destroy(conf);
        return 1;
    }

    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (!rk) {
        errmsg("rd_kafka_new: %s", errstr);
        rd_kafka_conf_destroy(conf);
        return 1;
    }

    mcluster = rd_kafka_mock_cluster_new(rk, o.brokers);
    if (!mcluster) {
        errmsg("cannot create a mock cluster with %d broker(s) (see librdkafka errors above)",
               o.brokers);
        rd_kafka_destroy(rk);
        return 1;
    }

    for (int i = 0; i < o.topic_cnt; i++) {
        const struct topic_spec *t = &o.topics[i];
        int repl = t->replication ? t->replication : (o.brokers < 3 ? o.brokers : 3);
        rd_kafka_resp_err_t err = rd_kafka_mock_topic_create(mcluster, t->name, t->partitions, repl);
        if (err) {
            errmsg("cannot create topic '%s' (%d partitions): %s", t->name, t->partitions,
                   rd_kafka_err2str(err));
            rc = 1;
            goto out;
        }
    }

    set_nodelay_on_listeners();
    bootstraps = rd_kafka_mock_cluster_bootstraps(mcluster);

    if (o.pid_file) {
        char pidbuf[32];
        snprintf(pidbuf, sizeof(pidbuf), "%ld", (long)getpid());
        if (write_file_atomic(o.pid_file, pidbuf) != 0) {
            rc = 1;
            goto out;
        }
        pid_written = 1;
    }

    /* The bootstrap file is written last: its presence means "ready". */
    if (o.bootstrap_file) {
        if (write_file_atomic(o.bootstrap_file, bootstraps) != 0) {
            rc = 1;
            goto out;
        }
        bootstrap_written = 1;
    }

    if (!o.quiet) {
        printf("bootstrap=%s\n", bootstraps);
        fflush(stdout);
    }

    for (;;) {
        int r = sigwait(&sigs, &sig);
        if (r == 0 && (sig == SIGTERM || sig == SIGINT))
            break;
        if (r != 0 && r != EINTR) {
            errmsg("sigwait: %s", strerror(r));
            rc = 1;
            break;
        }
    }

    if (o.verbose)
        fprintf(stderr, PROG ": got signal %d, shutting down\n", sig);

out:
    /* If librdkafka ever hangs in teardown, don't linger forever. */
    alarm(SHUTDOWN_WATCHDOG_SEC);

    /* The mock cluster must be destroyed before the rd_kafka_t that owns it. */
    rd_kafka_mock_cluster_destroy(mcluster);
    rd_kafka_destroy(rk);

    if (bootstrap_written)
        remove_file(o.bootstrap_file);
    if (pid_written)
        remove_file(o.pid_file);

    free(o.topics);
    return rc;
}
