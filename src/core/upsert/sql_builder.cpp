// sql_builder.cpp — the SQL text batch_upsert executes, built from column lists.
//
// Identifiers are always double-quoted (embedded quotes doubled), so reserved
// words, mixed case, spaces and quotes in names all work and none can inject
// SQL. Values never appear in the text: they come from the ephemeral named
// relation the shim registers, or from the caller's staging relation.
//
// Aliases bk_t (target) and bk_d (source) are fixed; user columns are always
// qualified and quoted, so a column named bk_t or bk_d cannot collide with them.
#include "batchkit/upsert.h"

#include <cstdio>
#include <cstring>
#include <string>

#include "util/abi_guard.hpp"

namespace {

std::string q(const char *name) {
    std::string out = "\"";
    for (const char *p = name; *p; p++) {
        if (*p == '"')
            out += '"';
        out += *p;
    }
    out += '"';
    return out;
}

size_t emit(const std::string &s, char *buf, size_t buflen) {
    if (buflen > 0) {
        size_t n = s.size() < buflen - 1 ? s.size() : buflen - 1;
        std::memcpy(buf, s.data(), n);
        buf[n] = '\0';
    }
    return s.size();
}

struct Builder {
    const bk_upsert_sql_spec *spec;
    const bk_upsert_table *t;
    const bk_upsert_plan *p;

    const char *col(int idx) const { return t->columns[idx]; }

    bool is_input(int c) const {
        for (int i = 0; i < spec->ncolumns; i++)
            if (spec->columns[i] == c)
                return true;
        return false;
    }

    // Position of target column c among the statement's input columns.
    int input_pos(int c) const {
        for (int i = 0; i < spec->ncolumns; i++)
            if (spec->columns[i] == c)
                return i;
        throw bk::Error(BK_INTERNAL, "conflict column missing from the statement's columns");
    }

    std::string target() const { return q(t->schema) + "." + q(t->name); }

    // The staging relation, de-duplicated on the conflict columns: the last row
    // in input order wins. Key columns are cast to the target's types so the
    // join and the DISTINCT ON use the target's notion of equality.
    std::string staging_source() const {
        std::string keys, sel, order;
        for (int k = 0; k < p->nconflict; k++) {
            int pos = input_pos(p->conflict[k]);
            std::string e = "bk_s." + q(spec->source_columns[pos]);
            if (spec->key_casts && spec->key_casts[k])
                e = "CAST(" + e + " AS " + spec->key_casts[k] + ")";
            keys += (k ? ", " : "") + e;
        }
        for (int i = 0; i < spec->ncolumns; i++) {
            int c = spec->columns[i];
            std::string e = "bk_s." + q(spec->source_columns[i]);
            for (int k = 0; k < p->nconflict; k++)
                if (p->conflict[k] == c && spec->key_casts && spec->key_casts[k])
                    e = "CAST(" + e + " AS " + spec->key_casts[k] + ")";
            sel += (i ? ", " : "") + e + " AS " + q(col(c));
        }
        order = spec->order_by ? "bk_s." + q(spec->order_by) + " DESC" : "bk_s.ctid DESC";
        return "(SELECT DISTINCT ON (" + keys + ") " + sel + " FROM " + q(spec->source_schema) +
               "." + q(spec->source_relation) + " AS bk_s ORDER BY " + keys + ", " + order + ")";
    }

    std::string source() const {
        if (spec->source_relation)
            return staging_source();
        if (!spec->source_name)
            throw bk::Error(BK_INTERNAL, "no source for the statement");
        return q(spec->source_name);
    }

    std::string insert_list(const char *prefix) const {
        std::string out;
        for (int i = 0; i < spec->ncolumns; i++)
            out += std::string(i ? ", " : "") + prefix + q(col(spec->columns[i]));
        return out;
    }

    std::string merge() const {
        std::string s = "MERGE INTO " + target() + " AS bk_t USING " + source() + " AS bk_d ON ";
        for (int k = 0; k < p->nconflict; k++) {
            const char *c = col(p->conflict[k]);
            s += (k ? " AND " : "") + std::string("bk_t.") + q(c) + " = bk_d." + q(c);
        }
        std::string set;
        for (int u = 0; u < p->nupdate; u++) {
            int c = p->update[u];
            if (!is_input(c))
                continue; // absent from these rows: left untouched
            set += (set.empty() ? "" : ", ") + q(col(c)) + " = bk_d." + q(col(c));
        }
        if (!set.empty())
            s += " WHEN MATCHED THEN UPDATE SET " + set;
        s += " WHEN NOT MATCHED THEN INSERT (" + insert_list("") + ") VALUES (" +
             insert_list("bk_d.") + ")";
        return s;
    }

    std::string on_conflict() const {
        std::string s = "INSERT INTO " + target() + " AS bk_t (" + insert_list("") + ") SELECT " +
                        insert_list("bk_d.") + " FROM " + source() + " AS bk_d ON CONFLICT (";
        for (int k = 0; k < p->nconflict; k++)
            s += (k ? ", " : "") + q(col(p->conflict[k]));
        s += ") ";
        std::string set;
        for (int u = 0; u < p->nupdate; u++) {
            int c = p->update[u];
            if (!is_input(c))
                continue;
            set += (set.empty() ? "" : ", ") + q(col(c)) + " = EXCLUDED." + q(col(c));
        }
        s += set.empty() ? "DO NOTHING" : "DO UPDATE SET " + set;
        return s;
    }
};

} // namespace

extern "C" {

size_t bk_upsert_quote_ident(const char *name, char *buf, size_t buflen) {
    try {
        return emit(q(name ? name : ""), buf, buflen);
    } catch (...) {
        return static_cast<size_t>(-1);
    }
}

size_t bk_upsert_build_sql(const bk_upsert_sql_spec *spec, bk_upsert_sql_kind kind, char *buf,
                           size_t buflen, bk_status *st) {
    size_t len = static_cast<size_t>(-1);
    bk::guarded(st, [&] {
        if (spec == nullptr || spec->table == nullptr || spec->plan == nullptr)
            throw bk::Error(BK_INVALID_ARGUMENT, "incomplete statement spec");
        if (spec->ncolumns <= 0)
            throw bk::Error(BK_INVALID_ARGUMENT, "a statement needs at least one column");
        if (spec->plan->nconflict <= 0)
            throw bk::Error(BK_INVALID_ARGUMENT, "a statement needs conflict columns");
        if (spec->source_relation && (!spec->source_schema || !spec->source_columns))
            throw bk::Error(BK_INVALID_ARGUMENT, "a staging source needs schema and columns");
        Builder b{spec, spec->table, spec->plan};
        std::string sql;
        switch (kind) {
        case BK_UPSERT_SQL_MERGE:
            sql = b.merge();
            break;
        case BK_UPSERT_SQL_ON_CONFLICT:
            sql = b.on_conflict();
            break;
        default:
            throw bk::Error(BK_INVALID_ARGUMENT, "unknown statement kind");
        }
        len = emit(sql, buf, buflen);
    });
    return len;
}

size_t bk_upsert_format_names(const char *const *names, int n, int max, char *buf, size_t buflen) {
    try {
        std::string out;
        for (int i = 0; i < n; i++) {
            if (max > 0 && i == max) {
                out += ", ...";
                break;
            }
            out += (i ? ", " : "") + q(names[i] ? names[i] : "");
        }
        return emit(out, buf, buflen);
    } catch (...) {
        return static_cast<size_t>(-1);
    }
}

} // extern "C"
