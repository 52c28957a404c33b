// Unit tests of the Prometheus text writer (bk_metrics_prometheus) and of secret
// redaction (bk_redact_secrets). The exposition is checked line by line with a
// small strict reader that enforces what Prometheus's own parser enforces.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "batchkit/encoding.h"
#include "batchkit/metrics.h"

namespace {

struct Sample {
    std::string name;
    std::map<std::string, std::string> labels;
    std::string value;
};

struct Family {
    std::string type;
    std::string help;
    std::vector<Sample> samples;
};

// Parse label values with the format's escapes (\\, \", \n); fail on anything else.
std::map<std::string, std::string> parse_labels(const std::string &s) {
    std::map<std::string, std::string> out;
    size_t i = 0;
    while (i < s.size()) {
        size_t eq = s.find('=', i);
        EXPECT_NE(eq, std::string::npos) << s;
        std::string name = s.substr(i, eq - i);
        EXPECT_EQ(s.at(eq + 1), '"') << s;
        std::string value;
        size_t j = eq + 2;
        for (; j < s.size() && s[j] != '"'; j++) {
            if (s[j] == '\\') {
                j++;
                char c = s.at(j);
                EXPECT_TRUE(c == '\\' || c == '"' || c == 'n') << "bad escape in " << s;
                value += c == 'n' ? '\n' : c;
            } else {
                EXPECT_NE(s[j], '\n');
                value += s[j];
            }
        }
        EXPECT_LT(j, s.size()) << "unterminated label value in " << s;
        EXPECT_TRUE(out.emplace(name, value).second) << "duplicate label " << name;
        i = j + 1;
        if (i < s.size()) {
            EXPECT_EQ(s[i], ',') << s;
            i++;
        }
    }
    return out;
}

// A strict reader: HELP then TYPE once per family and before its samples, a family's
// samples contiguous, sample names allowed by the type, no duplicate series.
std::map<std::string, Family> parse(const std::string &text) {
    std::map<std::string, Family> families;
    std::set<std::string> closed;
    std::set<std::string> series;
    std::string current;
    std::istringstream in(text);
    std::string line;
    EXPECT_TRUE(text.empty() || text.back() == '\n');
    while (std::getline(in, line)) {
        if (line.rfind("# HELP ", 0) == 0) {
            std::string rest = line.substr(7);
            std::string name = rest.substr(0, rest.find(' '));
            EXPECT_EQ(families.count(name), 0u) << "HELP twice for " << name;
            if (!current.empty())
                closed.insert(current);
            current = name;
            families[name].help = rest.substr(name.size() + 1);
            continue;
        }
        if (line.rfind("# TYPE ", 0) == 0) {
            std::string rest = line.substr(7);
            std::string name = rest.substr(0, rest.find(' '));
            EXPECT_EQ(name, current) << "TYPE without its HELP just before";
            EXPECT_TRUE(families[name].type.empty()) << "TYPE twice for " << name;
            families[name].type = rest.substr(name.size() + 1);
            continue;
        }
        EXPECT_NE(line[0], '#') << line;
        Sample s;
        size_t brace = line.find('{');
        size_t space;
        if (brace != std::string::npos) {
            size_t close = line.rfind('}');
            s.name = line.substr(0, brace);
            s.labels = parse_labels(line.substr(brace + 1, close - brace - 1));
            space = close + 1;
        } else {
            space = line.find(' ');
            s.name = line.substr(0, space);
        }
        EXPECT_EQ(line.at(space), ' ') << line;
        s.value = line.substr(space + 1);
        char *end = nullptr;
        std::strtod(s.value.c_str(), &end);
        EXPECT_TRUE(*end == '\0' || s.value == "+Inf" || s.value == "NaN") << line;
        const Family &f = families[current];
        std::string base = current;
        if (f.type == "histogram") {
            EXPECT_TRUE(s.name == base + "_bucket" || s.name == base + "_sum" ||
                        s.name == base + "_count")
                << s.name << " in " << base;
        } else {
            EXPECT_EQ(s.name, base) << "sample outside its family";
        }
        EXPECT_EQ(closed.count(current), 0u) << "family " << current << " is not contiguous";
        std::string key = s.name;
        for (auto &kv : s.labels)
            key += "|" + kv.first + "=" + kv.second;
        EXPECT_TRUE(series.insert(key).second) << "duplicate series " << key;
        families[current].samples.push_back(s);
    }
    return families;
}

std::string render(const std::vector<bk_metrics_sink> &sinks,
                   const std::vector<bk_metrics_upsert> &ups = {}) {
    bk_buf buf = BK_BUF_INIT;
    bk_status st;
    EXPECT_EQ(bk_metrics_prometheus(sinks.data(), sinks.size(), ups.data(), ups.size(), &buf, &st),
              BK_OK)
        << st.message;
    std::string out(buf.data ? buf.data : "", buf.len);
    bk_buf_free(&buf);
    return out;
}

bk_metrics_sink sink(const char *db, const char *name) {
    bk_metrics_sink s{};
    s.database = db;
    s.sink = name;
    s.state = "idle";
    s.queued_known = 1;
    s.dead_letters = 0;
    return s;
}

const Sample *find(const Family &f, const std::string &name,
                   const std::map<std::string, std::string> &labels) {
    for (const Sample &s : f.samples) {
        if (s.name != name)
            continue;
        bool ok = true;
        for (auto &kv : labels) {
            auto it = s.labels.find(kv.first);
            if (it == s.labels.end() || it->second != kv.second)
                ok = false;
        }
        if (ok)
            return &s;
    }
    return nullptr;
}

} // namespace

TEST(Prometheus, HistogramsAreCumulativeWithDocumentedBounds) {
    bk_metrics_sink s = sink("db1", "orders");
    for (double v : {1000.0, 1000.0, 500.0})
        bk_histogram_observe(&s.hist[BK_HIST_BATCH_SIZE], BK_HIST_BATCH_SIZE, v);
    for (double v : {0.003, 0.2, 20.0})
        bk_histogram_observe(&s.hist[BK_HIST_FLUSH_SECONDS], BK_HIST_FLUSH_SECONDS, v);
    auto fams = parse(render({s}));

    const Family &size = fams.at("batch_processing_size");
    EXPECT_EQ(size.type, "histogram");
    std::vector<std::string> les, counts;
    for (const Sample &x : size.samples)
        if (x.name == "batch_processing_size_bucket") {
            les.push_back(x.labels.at("le"));
            counts.push_back(x.value);
            EXPECT_EQ(x.labels.at("operation"), "orders");
            EXPECT_EQ(x.labels.at("database"), "db1");
        }
    EXPECT_EQ(
        les, (std::vector<std::string>{"10", "50", "100", "500", "1000", "5000", "10000", "+Inf"}));
    EXPECT_EQ(counts, (std::vector<std::string>{"0", "0", "0", "1", "3", "3", "3", "3"}));
    EXPECT_EQ(find(size, "batch_processing_size_sum", {})->value, "2500");
    EXPECT_EQ(find(size, "batch_processing_size_count", {})->value, "3");

    const Family &dur = fams.at("batch_processing_duration_seconds");
    les.clear();
    counts.clear();
    for (const Sample &x : dur.samples)
        if (x.name == "batch_processing_duration_seconds_bucket") {
            les.push_back(x.labels.at("le"));
            counts.push_back(x.value);
        }
    EXPECT_EQ(les,
              (std::vector<std::string>{"0.01", "0.05", "0.1", "0.5", "1", "5", "10", "+Inf"}));
    EXPECT_EQ(counts, (std::vector<std::string>{"1", "1", "1", "2", "2", "2", "2", "3"}));
    EXPECT_DOUBLE_EQ(
        std::strtod(find(dur, "batch_processing_duration_seconds_sum", {})->value.c_str(), nullptr),
        20.203);
    EXPECT_EQ(fams.at("batch_commit_to_ack_lag_seconds").type, "histogram");
}

TEST(Prometheus, CountersGaugesAndStatesCarryTheNumbers) {
    bk_metrics_sink a = sink("db1", "a");
    a.rows_sent = 2500;
    a.rows_failed = 7;
    a.rows_dead = 3;
    a.bytes_sent = 123456;
    a.retries = 2;
    a.queued = 42;
    a.oldest_queued_age_seconds = 1.5;
    a.dead_letters = 3;
    a.state = "failing";
    a.last_flush_unix = 1700000000.25;
    bk_metrics_sink b = sink("db1", "b");
    b.rows_sent = UINT64_MAX; // exact, no float rounding
    b.queued_known = 0;
    b.dead_letters = -1;
    b.oldest_queued_age_seconds = NAN;
    b.state = "paused";
    auto fams = parse(render({a, b}));

    const Family &items = fams.at("batch_items_processed_total");
    EXPECT_EQ(items.type, "counter");
    EXPECT_EQ(
        find(items, "batch_items_processed_total", {{"operation", "a"}, {"status", "success"}})
            ->value,
        "2500");
    EXPECT_EQ(find(items, "batch_items_processed_total", {{"operation", "a"}, {"status", "failed"}})
                  ->value,
              "7");
    EXPECT_EQ(find(items, "batch_items_processed_total",
                   {{"operation", "a"}, {"status", "dead_lettered"}})
                  ->value,
              "3");
    EXPECT_EQ(
        find(items, "batch_items_processed_total", {{"operation", "b"}, {"status", "success"}})
            ->value,
        "18446744073709551615");
    EXPECT_EQ(
        find(fams.at("batch_bytes_sent_total"), "batch_bytes_sent_total", {{"operation", "a"}})
            ->value,
        "123456");
    EXPECT_EQ(
        find(fams.at("batch_retries_total"), "batch_retries_total", {{"operation", "a"}})->value,
        "2");

    const Family &q = fams.at("batch_queue_size");
    EXPECT_EQ(q.type, "gauge");
    EXPECT_EQ(find(q, "batch_queue_size", {{"operation", "a"}})->value, "42");
    EXPECT_EQ(find(q, "batch_queue_size", {{"operation", "b"}}), nullptr) << "unknown depth";
    const Family &age = fams.at("batch_queue_oldest_age_seconds");
    EXPECT_EQ(find(age, "batch_queue_oldest_age_seconds", {{"operation", "a"}})->value, "1.5");
    EXPECT_EQ(find(age, "batch_queue_oldest_age_seconds", {{"operation", "b"}}), nullptr);
    const Family &dl = fams.at("batch_dead_letters");
    EXPECT_EQ(find(dl, "batch_dead_letters", {{"operation", "a"}})->value, "3");
    EXPECT_EQ(find(dl, "batch_dead_letters", {{"operation", "b"}}), nullptr);

    const Family &state = fams.at("batch_sink_state");
    for (const char *sname : {"a", "b"}) {
        int ones = 0;
        for (const Sample &x : state.samples)
            if (x.labels.at("operation") == sname && x.value == "1") {
                ones++;
                EXPECT_EQ(x.labels.at("state"), std::string(sname) == "a" ? "failing" : "paused");
            }
        EXPECT_EQ(ones, 1) << sname;
    }
    EXPECT_EQ(find(fams.at("batch_last_flush_timestamp_seconds"),
                   "batch_last_flush_timestamp_seconds", {{"operation", "a"}})
                  ->value,
              "1700000000.25");
    EXPECT_EQ(find(fams.at("batch_last_flush_timestamp_seconds"),
                   "batch_last_flush_timestamp_seconds", {{"operation", "b"}}),
              nullptr)
        << "a sink that never flushed has no last-flush time";
}

TEST(Prometheus, LabelValuesAreEscaped) {
    const char *db = "we\"ird\\db\nname";
    bk_metrics_upsert u{};
    u.database = db;
    u.target = "public.\"t\\x\"";
    u.calls = 2;
    u.rows_in = 10;
    u.inserted = 6;
    u.updated = 3;
    u.total_seconds = 0.125;
    std::string text = render({sink(db, "s")}, {u});
    EXPECT_NE(text.find("database=\"we\\\"ird\\\\db\\nname\""), std::string::npos) << text;
    auto fams = parse(text);
    const Family &rows = fams.at("batch_upsert_rows_total");
    const Sample *ins = find(rows, "batch_upsert_rows_total", {{"result", "inserted"}});
    ASSERT_NE(ins, nullptr);
    EXPECT_EQ(ins->labels.at("database"), db);
    EXPECT_EQ(ins->labels.at("target"), "public.\"t\\x\"");
    EXPECT_EQ(ins->value, "6");
    EXPECT_EQ(find(rows, "batch_upsert_rows_total", {{"result", "updated"}})->value, "3");
    EXPECT_EQ(find(fams.at("batch_upsert_calls_total"), "batch_upsert_calls_total", {})->value,
              "2");
    EXPECT_EQ(
        find(fams.at("batch_upsert_input_rows_total"), "batch_upsert_input_rows_total", {})->value,
        "10");
    EXPECT_EQ(find(fams.at("batch_upsert_duration_seconds_total"),
                   "batch_upsert_duration_seconds_total", {})
                  ->value,
              "0.125");
}

TEST(Prometheus, WithoutDatabaseLabelAndWithoutSinks) {
    auto fams = parse(render({sink(nullptr, "s")}));
    const Sample *s = find(fams.at("batch_queue_size"), "batch_queue_size", {});
    ASSERT_NE(s, nullptr);
    EXPECT_EQ(s->labels.count("database"), 0u);

    fams = parse(render({}));
    EXPECT_EQ(fams.at("batch_processing_size").type, "histogram");
    EXPECT_TRUE(fams.at("batch_processing_size").samples.empty());
}

TEST(Prometheus, NumbersRoundTrip) {
    bk_metrics_sink s = sink("d", "s");
    s.oldest_queued_age_seconds = 0.1 + 0.2; // not 0.3: must survive the round trip
    s.last_flush_unix = 1e-7;
    auto fams = parse(render({s}));
    std::string v =
        find(fams.at("batch_queue_oldest_age_seconds"), "batch_queue_oldest_age_seconds", {})
            ->value;
    EXPECT_EQ(std::strtod(v.c_str(), nullptr), 0.1 + 0.2) << v;
    v = find(fams.at("batch_last_flush_timestamp_seconds"), "batch_last_flush_timestamp_seconds",
             {})
            ->value;
    EXPECT_EQ(std::strtod(v.c_str(), nullptr), 1e-7) << v;
}

TEST(Prometheus, RejectsMissingNamesAndAppendsNothing) {
    bk_metrics_sink s = sink("d", nullptr);
    bk_buf buf = BK_BUF_INIT;
    bk_status st;
    EXPECT_EQ(bk_metrics_prometheus(&s, 1, nullptr, 0, &buf, &st), BK_INVALID_ARGUMENT);
    EXPECT_NE(std::string(st.message).find("without a name"), std::string::npos);
    EXPECT_EQ(buf.len, 0u);
    bk_metrics_upsert u{};
    EXPECT_EQ(bk_metrics_prometheus(nullptr, 0, &u, 1, &buf, &st), BK_INVALID_ARGUMENT);
    EXPECT_EQ(bk_metrics_prometheus(nullptr, 0, nullptr, 0, nullptr, &st), BK_INVALID_ARGUMENT);
    bk_buf_free(&buf);
}

TEST(Prometheus, AppendsToWhatTheBufferHolds) {
    bk_buf buf = BK_BUF_INIT;
    bk_status st;
    ASSERT_EQ(bk_buf_append(&buf, "x", 1, &st), BK_OK);
    ASSERT_EQ(bk_metrics_prometheus(nullptr, 0, nullptr, 0, &buf, &st), BK_OK);
    EXPECT_EQ(std::string(buf.data, 8), "x# HELP ");
    bk_buf_free(&buf);
}

namespace {
std::string redact(const char *text, std::vector<const char *> secrets, size_t cap = 512) {
    std::vector<char> out(cap);
    size_t n = bk_redact_secrets(text, secrets.data(), secrets.size(), out.data(), cap);
    EXPECT_EQ(n, std::strlen(out.data()));
    return out.data();
}
} // namespace

TEST(Redact, MasksEveryOccurrenceOfEverySecret) {
    EXPECT_EQ(redact("auth s3cret failed; s3cret again", {"s3cret"}), "auth *** failed; *** again");
    EXPECT_EQ(redact("a hunter2 b tok_abc", {"hunter2", "tok_abc"}), "a *** b ***");
    EXPECT_EQ(redact("nothing here", {"hunter2"}), "nothing here");
}

TEST(Redact, MasksThePasswordOfAUrlSecret) {
    const char *url = "redis://alice:p%40ss-word@10.0.0.1:6379/0";
    // the whole URL, the password as written and percent-decoded
    EXPECT_EQ(redact("cannot reach redis://alice:p%40ss-word@10.0.0.1:6379/0", {url}),
              "cannot reach ***");
    EXPECT_EQ(redact("AUTH p%40ss-word rejected", {url}), "AUTH *** rejected");
    EXPECT_EQ(redact("AUTH p@ss-word rejected", {url}), "AUTH *** rejected");
    EXPECT_EQ(redact("redis://:topsecret@h/0 down", {"redis://:topsecret@h/0"}), "*** down");
    EXPECT_EQ(redact("auth topsecret", {"redis://:topsecret@h/0"}), "auth ***");
}

TEST(Redact, IgnoresTinySecretsAndHandlesEdges) {
    EXPECT_EQ(redact("error 111", {"1", "11"}), "error 111");
    EXPECT_EQ(redact("abc", {nullptr, "abc"}), "***");
    EXPECT_EQ(redact("long message here", {}, 5), "long");
    char out[4] = "zzz";
    EXPECT_EQ(bk_redact_secrets(nullptr, nullptr, 0, out, sizeof out), 0u);
    EXPECT_STREQ(out, "");
    EXPECT_EQ(bk_redact_secrets("x", nullptr, 3, out, 0), 0u);
}
