// bench_sinks — throughput of the core's sink layer alone (no Postgres): N ~200-byte
// envelopes pushed through bk_sink_send_batch in batches of 1k and 10k into Redis
// (xadd) and the Kafka dev broker. Also times the envelope encoder.
//
//   bench_sinks [--redis-port P] [--kafka BOOTSTRAP] [--messages N] [--batches 1000,10000]
//               [--only redis|kafka|envelope] [--kafka-opt key=value]... [--kafka-pid PID]
//               [--redis-command xadd|lpush|rpush|set]
// REDIS_PORT and KAFKA_BOOTSTRAP are read from the environment when not given.
// Prints one line per (sink, batch size): messages/s by wall clock and the bench
// process's own CPU time (the rest of the machine's 2 cores go to the server).
#include <sys/resource.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "batchkit/encoding.h"
#include "batchkit/sink.h"

namespace {

using Clock = std::chrono::steady_clock;

double cpu_seconds() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

struct Corpus {
    bk_buf buf = BK_BUF_INIT;
    std::vector<std::pair<size_t, size_t>> values; // offset, length in buf
    std::vector<std::string> keys;
    double encode_ns_per_row = 0;
    ~Corpus() { bk_buf_free(&buf); }
};

// N envelopes of ~200 bytes, encoded the way the worker will encode them.
void build_corpus(Corpus &c, size_t n) {
    c.values.resize(n);
    c.keys.resize(n);
    std::vector<std::string> keyjson(n), after(n);
    for (size_t i = 0; i < n; i++) {
        c.keys[i] = std::to_string(i % 100000);
        keyjson[i] = "{\"id\":" + c.keys[i] + "}";
        after[i] = "{\"id\":" + c.keys[i] + ",\"customer\":\"customer-" + std::to_string(i % 977) +
                   "\",\"amount\":" + std::to_string(i % 10000) + ".25,\"status\":\"paid\"}";
    }
    bk_status st{};
    auto t0 = Clock::now();
    for (size_t i = 0; i < n; i++) {
        bk_envelope e{};
        e.op = BK_OP_INSERT;
        e.table = {"public.orders", 13};
        e.key = {keyjson[i].data(), keyjson[i].size()};
        e.after = {after[i].data(), after[i].size()};
        e.txid = 1000 + i / 100;
        e.seq = static_cast<int64_t>(i);
        e.ts = {"2024-05-01 10:00:00.123456+00", 29};
        if (bk_envelope_append(&c.buf, &e, &c.values[i].first, &c.values[i].second, &st) != BK_OK) {
            std::fprintf(stderr, "envelope: %s\n", st.message);
            std::exit(1);
        }
    }
    c.encode_ns_per_row = std::chrono::duration<double, std::nano>(Clock::now() - t0).count() /
                          static_cast<double>(n);
}

// redis-server's own CPU seconds (user + sys), from INFO cpu; -1 if unknown.
double redis_cpu_seconds(int port) {
    redisContext *c = redisConnect("127.0.0.1", port);
    double total = -1;
    if (c && !c->err) {
        auto *r = static_cast<redisReply *>(redisCommand(c, "INFO cpu"));
        if (r && r->type == REDIS_REPLY_STRING) {
            std::string info(r->str, r->len);
            total = 0;
            for (const char *k : {"used_cpu_sys:", "used_cpu_user:"}) {
                size_t p = info.find(k);
                if (p != std::string::npos)
                    total += std::atof(info.c_str() + p + std::strlen(k));
            }
        }
        if (r)
            freeReplyObject(r);
    }
    if (c)
        redisFree(c);
    return total;
}

// CPU seconds (user + sys) of another process, from /proc/<pid>/stat; -1 if unknown.
double process_cpu_seconds(int pid) {
    if (pid <= 0)
        return -1;
    std::string path = "/proc/" + std::to_string(pid) + "/stat";
    FILE *f = std::fopen(path.c_str(), "r");
    if (!f)
        return -1;
    char buf[2048];
    size_t n = std::fread(buf, 1, sizeof buf - 1, f);
    std::fclose(f);
    buf[n] = '\0';
    const char *p = std::strrchr(buf, ')'); // fields after the command name
    if (!p)
        return -1;
    unsigned long utime = 0, stime = 0;
    // state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    if (std::sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime) !=
        2)
        return -1;
    return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

bool run(const char *kind, const std::vector<std::pair<std::string, std::string>> &opts,
         const Corpus &c, size_t batch, const std::string &target, bool with_key,
         int redis_port = 0, int server_pid = 0, bool key_per_message = false) {
    std::vector<bk_sink_option> o;
    for (auto &kv : opts)
        o.push_back({kv.first.c_str(), kv.second.c_str()});
    bk_status st{};
    bk_sink *s = bk_sink_open(kind, o.data(), o.size(), &st);
    if (!s) {
        std::fprintf(stderr, "%s: open: %s\n", kind, st.message);
        return false;
    }
    const size_t n = c.values.size();
    std::vector<bk_message> msgs(batch);
    std::vector<bk_send_result> res(batch);
    size_t acked = 0;
    double server0 = redis_port ? redis_cpu_seconds(redis_port) : -1;
    double pid0 = process_cpu_seconds(server_pid);
    double cpu0 = cpu_seconds();
    auto t0 = Clock::now();
    int64_t seq = 1;
    std::vector<std::string> targets;
    if (key_per_message) { // set: one key per row, like a table mirrored into Redis
        targets.resize(n);
        for (size_t j = 0; j < n; j++)
            targets[j] = target + ":" + c.keys[j];
    }
    for (size_t off = 0; off < n; off += batch) {
        size_t k = std::min(batch, n - off);
        for (size_t i = 0; i < k; i++) {
            size_t j = off + i;
            bk_message &m = msgs[i];
            m = bk_message{};
            const std::string &t = key_per_message ? targets[j] : target;
            m.target = t.data();
            m.target_len = t.size();
            m.value = c.buf.data + c.values[j].first;
            m.value_len = c.values[j].second;
            if (with_key) {
                m.key = c.keys[j].data();
                m.key_len = c.keys[j].size();
            }
            m.table = "public.orders";
            m.table_len = 13;
            m.seq = static_cast<int64_t>(j);
            m.op = BK_OP_INSERT;
        }
        bk_send_summary sum;
        bk_code rc = bk_sink_send_batch(s, msgs.data(), k, seq++, res.data(), 60000, &sum, &st);
        if (rc != BK_OK) {
            std::fprintf(stderr, "%s: batch at %zu: %s\n", kind, off, st.message);
            bk_sink_close(s);
            return false;
        }
        acked += sum.ok;
    }
    double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    double cpu = cpu_seconds() - cpu0;
    bk_sink_close(s);
    std::printf("%-6s batch=%-6zu %zu msgs in %.3f s = %9.0f msgs/s   (bench CPU %.2f us/msg", kind,
                batch, acked, secs, static_cast<double>(acked) / secs,
                cpu * 1e6 / static_cast<double>(acked));
    if (server0 >= 0)
        std::printf(", redis-server CPU %.2f us/msg",
                    (redis_cpu_seconds(redis_port) - server0) * 1e6 / static_cast<double>(acked));
    if (pid0 >= 0)
        std::printf(", server pid %d CPU %.2f us/msg", server_pid,
                    (process_cpu_seconds(server_pid) - pid0) * 1e6 / static_cast<double>(acked));
    std::printf(")\n");
    std::fflush(stdout);
    return acked == n;
}

} // namespace

int main(int argc, char **argv) {
    std::string redis_port = std::getenv("REDIS_PORT") ? std::getenv("REDIS_PORT") : "";
    std::string kafka = std::getenv("KAFKA_BOOTSTRAP") ? std::getenv("KAFKA_BOOTSTRAP") : "";
    size_t n = 1000000;
    std::vector<size_t> batches = {1000, 10000};
    std::string only;
    std::string redis_command = "xadd";
    int kafka_pid = 0;
    std::vector<std::pair<std::string, std::string>> kafka_opts;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "%s needs a value\n", a.c_str());
                std::exit(2);
            }
            return argv[++i];
        };
        if (a == "--redis-port")
            redis_port = next();
        else if (a == "--kafka")
            kafka = next();
        else if (a == "--messages")
            n = std::stoul(next());
        else if (a == "--redis-command")
            redis_command = next();
        else if (a == "--kafka-pid")
            kafka_pid = std::stoi(next());
        else if (a == "--only")
            only = next();
        else if (a == "--batches") {
            batches.clear();
            std::string v = next();
            for (size_t p = 0; p < v.size();) {
                size_t q = v.find(',', p);
                batches.push_back(std::stoul(v.substr(p, q - p)));
                p = q == std::string::npos ? v.size() : q + 1;
            }
        } else if (a == "--kafka-opt") {
            std::string v = next();
            size_t eq = v.find('=');
            kafka_opts.push_back(
                {v.substr(0, eq), eq == std::string::npos ? "" : v.substr(eq + 1)});
        } else {
            std::fprintf(stderr,
                         "usage: bench_sinks [--redis-port P] [--kafka BOOTSTRAP] "
                         "[--messages N] [--batches 1000,10000] [--only redis|kafka|envelope] "
                         "[--kafka-opt key=value]...\n");
            return 2;
        }
    }
    Corpus c;
    build_corpus(c, n);
    std::printf("envelope: %zu rows, avg %.0f bytes, %.0f ns/row to encode\n", n,
                static_cast<double>(c.buf.len) / static_cast<double>(n), c.encode_ns_per_row);
    bool ok = true;
    for (size_t b : batches) {
        if ((only.empty() || only == "redis") && !redis_port.empty()) {
            std::string stream = "bench:" + redis_command + ":" + std::to_string(b);
            std::string name = "bench-" + std::to_string(b);
            bool per_key = redis_command == "set" || redis_command == "hset";
            std::printf("redis command %s%s\n", redis_command.c_str(),
                        per_key ? " (one key per row)" : " (one key)");
            ok &= run("redis",
                      {{"name", name},
                       {"url", "redis://127.0.0.1:" + redis_port},
                       {"command", redis_command}},
                      c, b, stream, false, std::stoi(redis_port), 0, per_key);
            // Leave the server as we found it.
            redisContext *rc = redisConnect("127.0.0.1", std::stoi(redis_port));
            if (rc && !rc->err) {
                freeReplyObject(
                    redisCommand(rc, "DEL %s batchkit:fence:%s", stream.c_str(), name.c_str()));
                if (per_key) { // the per-row keys (ids repeat every 100000 rows)
                    std::vector<std::string> keys;
                    for (size_t id = 0; id < std::min<size_t>(n, 100000); id++) {
                        keys.push_back(stream + ":" + std::to_string(id));
                        if (keys.size() == 1000 || id + 1 == std::min<size_t>(n, 100000)) {
                            std::vector<const char *> argv{"DEL"};
                            std::vector<size_t> lens{3};
                            for (auto &k : keys) {
                                argv.push_back(k.c_str());
                                lens.push_back(k.size());
                            }
                            freeReplyObject(redisCommandArgv(rc, static_cast<int>(argv.size()),
                                                             argv.data(), lens.data()));
                            keys.clear();
                        }
                    }
                }
            }
            if (rc)
                redisFree(rc);
        }
        if ((only.empty() || only == "kafka") && !kafka.empty()) {
            std::vector<std::pair<std::string, std::string>> o = {{"name", "bench"},
                                                                  {"bootstrap.servers", kafka}};
            o.insert(o.end(), kafka_opts.begin(), kafka_opts.end());
            std::string topic = "bench-" + std::to_string(b) + "-" + std::to_string(getpid());
            ok &= run("kafka", o, c, b, topic, true, 0, kafka_pid);
        }
    }
    return ok ? 0 : 1;
}
