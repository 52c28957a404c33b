// prometheus.cpp — batchkit's statistics in the Prometheus text exposition format (0.0.4).
//
// One writer for both ways the text is served (batchkit.metrics() in SQL and the
// launcher's /metrics endpoint), so the two never drift apart. The rules that a
// strict parser (Prometheus's own, expfmt) enforces and a lax one does not:
// HELP/TYPE once per family and before its samples, all samples of a family
// together, no duplicate series, histogram buckets cumulative with le="+Inf"
// equal to _count, label values escaped. The shim owns every input string; the
// output is a core-owned bk_buf.
#include "batchkit/metrics.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "encoding/buf_internal.hpp"
#include "util/abi_guard.hpp"

namespace bk::metrics {

namespace {

// A number as Prometheus writes it: integers without an exponent, others in the
// shortest form that reads back to the same double, +Inf/-Inf/NaN spelled out.
std::string format_number(double v) {
    if (std::isnan(v))
        return "NaN";
    if (std::isinf(v))
        return v > 0 ? "+Inf" : "-Inf";
    char buf[64];
    if (v == std::floor(v) && std::fabs(v) < 9007199254740992.0) { // 2^53: exact
        std::snprintf(buf, sizeof buf, "%.0f", v);
        return buf;
    }
    for (int precision = 1; precision <= 17; precision++) {
        std::snprintf(buf, sizeof buf, "%.*g", precision, v);
        if (std::strtod(buf, nullptr) == v)
            break;
    }
    return buf;
}

std::string format_count(uint64_t v) {
    return std::to_string(v);
}

void escape_label_value(std::string &out, std::string_view v) {
    for (char c : v) {
        switch (c) {
        case '\\':
            out += "\\\\";
            break;
        case '"':
            out += "\\\"";
            break;
        case '\n':
            out += "\\n";
            break;
        default:
            out += c;
        }
    }
}

struct Label {
    const char *name;
    std::string_view value;
};

class Exposition {
  public:
    // Start a family: HELP and TYPE lines.
    void family(const char *name, const char *type, const char *help) {
        out_ += "# HELP ";
        out_ += name;
        out_ += ' ';
        for (const char *p = help; *p; p++) { // HELP escapes \ and newline only
            if (*p == '\\')
                out_ += "\\\\";
            else if (*p == '\n')
                out_ += "\\n";
            else
                out_ += *p;
        }
        out_ += "\n# TYPE ";
        out_ += name;
        out_ += ' ';
        out_ += type;
        out_ += '\n';
    }

    void sample(const char *name, const char *suffix, const std::vector<Label> &labels,
                const std::string &value) {
        out_ += name;
        out_ += suffix;
        if (!labels.empty()) {
            out_ += '{';
            bool first = true;
            for (const Label &l : labels) {
                if (!first)
                    out_ += ',';
                first = false;
                out_ += l.name;
                out_ += "=\"";
                escape_label_value(out_, l.value);
                out_ += '"';
            }
            out_ += '}';
        }
        out_ += ' ';
        out_ += value;
        out_ += '\n';
    }

    void histogram(const char *name, std::vector<Label> labels, const bk_histogram &h,
                   bk_histogram_kind kind) {
        int n = 0;
        const double *bounds = bk_histogram_bounds(kind, &n);
        uint64_t cumulative = 0;
        labels.push_back({"le", ""});
        for (int i = 0; i <= n; i++) {
            cumulative += h.counts[i];
            std::string le = i < n ? format_number(bounds[i]) : "+Inf";
            labels.back().value = le;
            sample(name, "_bucket", labels, format_count(cumulative));
        }
        labels.pop_back();
        sample(name, "_sum", labels, format_number(h.sum));
        // _count is the +Inf bucket by definition: derive both from the buckets
        sample(name, "_count", labels, format_count(cumulative));
    }

    const std::string &text() const { return out_; }

  private:
    std::string out_;
};

std::vector<Label> sink_labels(const bk_metrics_sink &s) {
    std::vector<Label> l;
    if (s.database)
        l.push_back({"database", s.database});
    l.push_back({"operation", s.sink});
    return l;
}

std::vector<Label> upsert_labels(const bk_metrics_upsert &u) {
    std::vector<Label> l;
    if (u.database)
        l.push_back({"database", u.database});
    l.push_back({"target", u.target});
    return l;
}

const char *const kStates[] = {"active", "paused", "failing", "idle"};

void render(const bk_metrics_sink *sinks, size_t nsinks, const bk_metrics_upsert *ups, size_t nups,
            Exposition &x) {
    for (size_t i = 0; i < nsinks; i++)
        if (sinks[i].sink == nullptr)
            throw Error(BK_INVALID_ARGUMENT, "bk_metrics_prometheus: a sink without a name");
    for (size_t i = 0; i < nups; i++)
        if (ups[i].target == nullptr)
            throw Error(BK_INVALID_ARGUMENT, "bk_metrics_prometheus: an upsert without a target");

    x.family("batch_processing_size", "histogram", "Rows per batch delivered to the sink.");
    for (size_t i = 0; i < nsinks; i++)
        x.histogram("batch_processing_size", sink_labels(sinks[i]),
                    sinks[i].hist[BK_HIST_BATCH_SIZE], BK_HIST_BATCH_SIZE);

    x.family("batch_processing_duration_seconds", "histogram",
             "Time to send one batch and get the sink's acknowledgement, in seconds.");
    for (size_t i = 0; i < nsinks; i++)
        x.histogram("batch_processing_duration_seconds", sink_labels(sinks[i]),
                    sinks[i].hist[BK_HIST_FLUSH_SECONDS], BK_HIST_FLUSH_SECONDS);

    x.family("batch_commit_to_ack_lag_seconds", "histogram",
             "Time from a row's capture in the writer's transaction to the sink's "
             "acknowledgement of it, in seconds (one observation per row).");
    for (size_t i = 0; i < nsinks; i++)
        x.histogram("batch_commit_to_ack_lag_seconds", sink_labels(sinks[i]),
                    sinks[i].hist[BK_HIST_LAG_SECONDS], BK_HIST_LAG_SECONDS);

    x.family("batch_items_processed_total", "counter",
             "Rows processed by status: success (acknowledged by the sink), failed (in a "
             "delivery attempt that failed and is retried), dead_lettered.");
    for (size_t i = 0; i < nsinks; i++) {
        const bk_metrics_sink &s = sinks[i];
        const struct {
            const char *status;
            uint64_t value;
        } by_status[] = {
            {"success", s.rows_sent}, {"failed", s.rows_failed}, {"dead_lettered", s.rows_dead}};
        for (const auto &b : by_status) {
            std::vector<Label> l = sink_labels(s);
            l.push_back({"status", b.status});
            x.sample("batch_items_processed_total", "", l, format_count(b.value));
        }
    }

    x.family("batch_bytes_sent_total", "counter",
             "Payload bytes (values and keys) acknowledged by the sink.");
    for (size_t i = 0; i < nsinks; i++)
        x.sample("batch_bytes_sent_total", "", sink_labels(sinks[i]),
                 format_count(sinks[i].bytes_sent));

    x.family("batch_retries_total", "counter", "Delivery attempts that failed and were retried.");
    for (size_t i = 0; i < nsinks; i++)
        x.sample("batch_retries_total", "", sink_labels(sinks[i]), format_count(sinks[i].retries));

    x.family("batch_queue_size", "gauge", "Committed rows waiting for the sink's acknowledgement.");
    for (size_t i = 0; i < nsinks; i++)
        if (sinks[i].queued_known)
            x.sample("batch_queue_size", "", sink_labels(sinks[i]), format_count(sinks[i].queued));

    x.family("batch_queue_oldest_age_seconds", "gauge",
             "Age of the oldest row waiting in the queue, in seconds (0 when the queue is "
             "empty).");
    for (size_t i = 0; i < nsinks; i++)
        if (!std::isnan(sinks[i].oldest_queued_age_seconds))
            x.sample("batch_queue_oldest_age_seconds", "", sink_labels(sinks[i]),
                     format_number(sinks[i].oldest_queued_age_seconds));

    x.family("batch_dead_letters", "gauge", "Rows now in batchkit.dead_letters.");
    for (size_t i = 0; i < nsinks; i++)
        if (sinks[i].dead_letters >= 0)
            x.sample("batch_dead_letters", "", sink_labels(sinks[i]),
                     format_count(static_cast<uint64_t>(sinks[i].dead_letters)));

    x.family("batch_sink_state", "gauge",
             "1 for the sink's current state (active, paused, failing, idle), 0 for the others.");
    for (size_t i = 0; i < nsinks; i++) {
        const char *state = sinks[i].state ? sinks[i].state : "idle";
        for (const char *candidate : kStates) {
            std::vector<Label> l = sink_labels(sinks[i]);
            l.push_back({"state", candidate});
            x.sample("batch_sink_state", "", l, std::strcmp(state, candidate) == 0 ? "1" : "0");
        }
    }

    x.family("batch_last_flush_timestamp_seconds", "gauge",
             "When the sink last acknowledged a batch (Unix time); absent before the first.");
    for (size_t i = 0; i < nsinks; i++)
        if (sinks[i].last_flush_unix > 0)
            x.sample("batch_last_flush_timestamp_seconds", "", sink_labels(sinks[i]),
                     format_number(sinks[i].last_flush_unix));

    x.family("batch_last_error_timestamp_seconds", "gauge",
             "When a delivery to the sink last failed (Unix time); absent if it never did.");
    for (size_t i = 0; i < nsinks; i++)
        if (sinks[i].last_error_unix > 0)
            x.sample("batch_last_error_timestamp_seconds", "", sink_labels(sinks[i]),
                     format_number(sinks[i].last_error_unix));

    x.family("batch_stats_reset_timestamp_seconds", "gauge",
             "When the sink's counters were last reset (Unix time).");
    for (size_t i = 0; i < nsinks; i++)
        if (sinks[i].stats_reset_unix > 0)
            x.sample("batch_stats_reset_timestamp_seconds", "", sink_labels(sinks[i]),
                     format_number(sinks[i].stats_reset_unix));

    x.family("batch_upsert_calls_total", "counter", "batch_upsert calls per target table.");
    for (size_t i = 0; i < nups; i++)
        x.sample("batch_upsert_calls_total", "", upsert_labels(ups[i]), format_count(ups[i].calls));

    x.family("batch_upsert_input_rows_total", "counter",
             "Rows passed to batch_upsert (before duplicates within a call are merged).");
    for (size_t i = 0; i < nups; i++)
        x.sample("batch_upsert_input_rows_total", "", upsert_labels(ups[i]),
                 format_count(ups[i].rows_in));

    x.family("batch_upsert_rows_total", "counter",
             "Rows batch_upsert wrote, by result: inserted or updated.");
    for (size_t i = 0; i < nups; i++) {
        const struct {
            const char *result;
            uint64_t value;
        } by_result[] = {{"inserted", ups[i].inserted}, {"updated", ups[i].updated}};
        for (const auto &r : by_result) {
            std::vector<Label> l = upsert_labels(ups[i]);
            l.push_back({"result", r.result});
            x.sample("batch_upsert_rows_total", "", l, format_count(r.value));
        }
    }

    x.family("batch_upsert_fallbacks_total", "counter",
             "batch_upsert calls that raced a concurrent writer and finished with "
             "INSERT ... ON CONFLICT.");
    for (size_t i = 0; i < nups; i++)
        x.sample("batch_upsert_fallbacks_total", "", upsert_labels(ups[i]),
                 format_count(ups[i].fallbacks));

    x.family("batch_upsert_duration_seconds_total", "counter",
             "Time spent in batch_upsert calls, in seconds.");
    for (size_t i = 0; i < nups; i++)
        x.sample("batch_upsert_duration_seconds_total", "", upsert_labels(ups[i]),
                 format_number(ups[i].total_seconds));
}

// "scheme://user:password@host..." -> the password as written and percent-decoded.
void url_passwords(std::string_view s, std::vector<std::string> &out) {
    size_t scheme = s.find("://");
    if (scheme == std::string_view::npos)
        return;
    std::string_view rest = s.substr(scheme + 3);
    size_t at = rest.rfind('@', rest.find('/'));
    if (at == std::string_view::npos)
        return;
    std::string_view userinfo = rest.substr(0, at);
    size_t colon = userinfo.find(':');
    if (colon == std::string_view::npos)
        return;
    std::string raw(userinfo.substr(colon + 1));
    out.push_back(raw);
    std::string decoded;
    for (size_t i = 0; i < raw.size(); i++) {
        if (raw[i] == '%' && i + 2 < raw.size() && std::isxdigit((unsigned char)raw[i + 1]) &&
            std::isxdigit((unsigned char)raw[i + 2])) {
            decoded += static_cast<char>(std::strtol(raw.substr(i + 1, 2).c_str(), nullptr, 16));
            i += 2;
        } else {
            decoded += raw[i];
        }
    }
    if (decoded != raw)
        out.push_back(decoded);
}

} // namespace

std::string redact(std::string text, const char *const *secrets, size_t n) {
    std::vector<std::string> masks;
    for (size_t i = 0; i < n; i++) {
        if (secrets[i] == nullptr)
            continue;
        masks.emplace_back(secrets[i]);
        url_passwords(secrets[i], masks);
    }
    // Longest first, so a URL is masked whole before its password alone.
    std::sort(masks.begin(), masks.end(),
              [](const std::string &a, const std::string &b) { return a.size() > b.size(); });
    for (const std::string &m : masks) {
        if (m.size() < BK_REDACT_MIN_LEN)
            continue;
        for (size_t p = text.find(m); p != std::string::npos; p = text.find(m, p + 3))
            text.replace(p, m.size(), "***");
    }
    return text;
}

} // namespace bk::metrics

extern "C" {

bk_code bk_metrics_prometheus(const bk_metrics_sink *sinks, size_t nsinks,
                              const bk_metrics_upsert *upserts, size_t nupserts, bk_buf *out,
                              bk_status *st) {
    return bk::guarded(st, [&] {
        if (out == nullptr || (nsinks > 0 && sinks == nullptr) ||
            (nupserts > 0 && upserts == nullptr))
            throw bk::Error(BK_INVALID_ARGUMENT, "bk_metrics_prometheus: NULL argument");
        bk::metrics::Exposition x;
        bk::metrics::render(sinks, nsinks, upserts, nupserts, x);
        if (!bk::buf_grow(out, x.text().size()))
            throw std::bad_alloc();
        std::memcpy(out->data + out->len, x.text().data(), x.text().size());
        out->len += x.text().size();
    });
}

size_t bk_redact_secrets(const char *text, const char *const *secrets, size_t nsecrets, char *out,
                         size_t outcap) {
    if (out == nullptr || outcap == 0)
        return 0;
    out[0] = '\0';
    if (text == nullptr)
        return 0;
    try {
        std::string r = bk::metrics::redact(text, secrets, secrets ? nsecrets : 0);
        size_t n = r.size() < outcap - 1 ? r.size() : outcap - 1;
        std::memcpy(out, r.data(), n);
        out[n] = '\0';
        return n;
    } catch (...) {
        // Out of memory: show nothing rather than risk showing a secret.
        std::snprintf(out, outcap, "%s", "(error text withheld)");
        return std::strlen(out);
    }
}
}
