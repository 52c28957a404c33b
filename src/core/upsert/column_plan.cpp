// column_plan.cpp — resolve batch_upsert's conflict and update columns, with the
// error messages users see.
//
// Pure data in, data out: the shim reads the catalogs (columns, primary key,
// usable unique indexes) and the input's column set; this file applies the
// documented rules:
//   * conflict_columns default to the primary key and must equal the column set
//     of a valid, immediate, non-partial unique index or constraint;
//   * update_columns default to every input column outside the conflict target;
//     an empty list means insert-or-skip;
//   * generated columns are never written, GENERATED ALWAYS identity columns
//     are not accepted as input (as in a plain INSERT without OVERRIDING).
#include "batchkit/upsert.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "util/abi_guard.hpp"

namespace {

struct PlanError : bk::Error {
    PlanError(bk_upsert_error kind, const std::string &msg, std::string detail = {})
        : bk::Error(BK_INVALID_ARGUMENT, msg), kind(kind), detail(std::move(detail)) {}
    bk_upsert_error kind;
    std::string detail;
};

std::string quoted(const char *name) {
    std::string out = "\"";
    for (const char *p = name; *p; p++) {
        if (*p == '"')
            out += '"';
        out += *p;
    }
    out += '"';
    return out;
}

std::string table_name(const bk_upsert_table *t) {
    return quoted(t->name);
}

int find_column(const bk_upsert_table *t, const char *name) {
    for (int i = 0; i < t->ncolumns; i++)
        if (std::strcmp(t->columns[i], name) == 0)
            return i;
    return -1;
}

std::string list_names(const bk_upsert_table *t, const std::vector<int> &cols) {
    std::string out;
    for (size_t i = 0; i < cols.size(); i++) {
        if (i)
            out += ", ";
        out += quoted(t->columns[cols[i]]);
    }
    return out;
}

bool is_input(const bk_upsert_table *t, int col) {
    return (t->column_flags[col] & BK_UPSERT_COL_INPUT) != 0;
}

std::vector<int> resolve_conflict(const bk_upsert_table *t, const bk_upsert_options *o) {
    std::vector<int> cols;
    if (o->nconflict < 0) {
        if (t->npk == 0)
            throw PlanError(BK_UPSERT_ERR_NO_CONFLICT_TARGET,
                            "table " + table_name(t) + " has no primary key",
                            "Pass conflict_columns naming the columns of a unique index or "
                            "constraint.");
        cols.assign(t->pk, t->pk + t->npk);
        return cols;
    }
    if (o->nconflict == 0)
        throw PlanError(BK_UPSERT_ERR_INVALID_PARAMETER, "conflict_columns must not be empty");
    std::vector<std::string> unknown;
    for (int i = 0; i < o->nconflict; i++) {
        const char *name = o->conflict[i];
        if (name == nullptr)
            throw PlanError(BK_UPSERT_ERR_INVALID_PARAMETER,
                            "conflict_columns must not contain NULL");
        int c = find_column(t, name);
        if (c < 0) {
            unknown.push_back(quoted(name));
            continue;
        }
        if (std::find(cols.begin(), cols.end(), c) != cols.end())
            throw PlanError(BK_UPSERT_ERR_DUPLICATE_COLUMN,
                            "conflict column " + quoted(name) + " is listed more than once");
        cols.push_back(c);
    }
    if (!unknown.empty()) {
        std::string msg = unknown.size() == 1 ? "conflict column " : "conflict columns ";
        for (size_t i = 0; i < unknown.size(); i++)
            msg += (i ? ", " : "") + unknown[i];
        msg += unknown.size() == 1 ? " does not exist in table " : " do not exist in table ";
        throw PlanError(BK_UPSERT_ERR_UNDEFINED_COLUMN, msg + table_name(t));
    }
    std::vector<int> want(cols);
    std::sort(want.begin(), want.end());
    for (int u = 0; u < t->nunique; u++) {
        std::vector<int> have(t->unique_cols[u], t->unique_cols[u] + t->unique_ncols[u]);
        std::sort(have.begin(), have.end());
        if (have == want)
            return cols;
    }
    throw PlanError(BK_UPSERT_ERR_NO_CONFLICT_TARGET,
                    "there is no unique index or constraint on table " + table_name(t) +
                        " matching conflict_columns (" + list_names(t, cols) + ")",
                    "conflict_columns must name exactly the columns of a unique index or "
                    "constraint that is neither partial nor deferrable.");
}

std::vector<int> resolve_update(const bk_upsert_table *t, const bk_upsert_options *o,
                                const std::vector<int> &conflict) {
    std::vector<int> cols;
    auto in_conflict = [&](int c) {
        return std::find(conflict.begin(), conflict.end(), c) != conflict.end();
    };
    if (o->nupdate < 0) {
        for (int c = 0; c < t->ncolumns; c++)
            if (is_input(t, c) && !in_conflict(c))
                cols.push_back(c);
        return cols;
    }
    std::vector<std::string> unknown;
    for (int i = 0; i < o->nupdate; i++) {
        const char *name = o->update[i];
        if (name == nullptr)
            throw PlanError(BK_UPSERT_ERR_INVALID_PARAMETER,
                            "update_columns must not contain NULL");
        int c = find_column(t, name);
        if (c < 0) {
            unknown.push_back(quoted(name));
            continue;
        }
        if (std::find(cols.begin(), cols.end(), c) != cols.end())
            throw PlanError(BK_UPSERT_ERR_DUPLICATE_COLUMN,
                            "update column " + quoted(name) + " is listed more than once");
        if (in_conflict(c))
            throw PlanError(BK_UPSERT_ERR_INVALID_PARAMETER,
                            "update column " + quoted(name) + " is a conflict column",
                            "Conflict columns identify the row and are never updated.");
        if (t->column_flags[c] & BK_UPSERT_COL_GENERATED)
            throw PlanError(BK_UPSERT_ERR_GENERATED,
                            "column " + quoted(name) + " can only be updated to DEFAULT",
                            "Column " + quoted(name) + " is a generated column.");
        if (t->column_flags[c] & BK_UPSERT_COL_IDENTITY_ALWAYS)
            throw PlanError(BK_UPSERT_ERR_GENERATED,
                            "column " + quoted(name) + " can only be updated to DEFAULT",
                            "Column " + quoted(name) +
                                " is an identity column defined as GENERATED ALWAYS.");
        if (!is_input(t, c))
            throw PlanError(BK_UPSERT_ERR_UNDEFINED_COLUMN,
                            "update column " + quoted(name) + " is not in the input rows");
        cols.push_back(c);
    }
    if (!unknown.empty()) {
        std::string msg = unknown.size() == 1 ? "update column " : "update columns ";
        for (size_t i = 0; i < unknown.size(); i++)
            msg += (i ? ", " : "") + unknown[i];
        msg += unknown.size() == 1 ? " does not exist in table " : " do not exist in table ";
        throw PlanError(BK_UPSERT_ERR_UNDEFINED_COLUMN, msg + table_name(t));
    }
    std::sort(cols.begin(), cols.end());
    return cols;
}

void check_input_columns(const bk_upsert_table *t, const std::vector<int> &conflict) {
    for (int c = 0; c < t->ncolumns; c++) {
        if (!is_input(t, c))
            continue;
        if (t->column_flags[c] & BK_UPSERT_COL_GENERATED)
            throw PlanError(BK_UPSERT_ERR_GENERATED,
                            "cannot insert a non-DEFAULT value into column " +
                                quoted(t->columns[c]),
                            "Column " + quoted(t->columns[c]) + " is a generated column.");
        if (t->column_flags[c] & BK_UPSERT_COL_IDENTITY_ALWAYS)
            throw PlanError(BK_UPSERT_ERR_GENERATED,
                            "cannot insert a non-DEFAULT value into column " +
                                quoted(t->columns[c]),
                            "Column " + quoted(t->columns[c]) +
                                " is an identity column defined as GENERATED ALWAYS.");
    }
    for (int c : conflict)
        if (!is_input(t, c))
            throw PlanError(BK_UPSERT_ERR_UNDEFINED_COLUMN,
                            "conflict column " + quoted(t->columns[c]) +
                                " is not in the input rows",
                            "Every row must give a value for each conflict column.");
}

} // namespace

extern "C" {

bk_code bk_upsert_resolve(const bk_upsert_table *table, const bk_upsert_options *opts,
                          bk_upsert_plan *plan, bk_status *st) {
    plan->error = BK_UPSERT_ERR_NONE;
    plan->detail[0] = '\0';
    return bk::guarded(st, [&] {
        try {
            std::vector<int> conflict = resolve_conflict(table, opts);
            std::vector<int> update = resolve_update(table, opts, conflict);
            check_input_columns(table, conflict);
            plan->nconflict = static_cast<int>(conflict.size());
            std::copy(conflict.begin(), conflict.end(), plan->conflict);
            plan->nupdate = static_cast<int>(update.size());
            std::copy(update.begin(), update.end(), plan->update);
        } catch (const PlanError &e) {
            // guarded() copies the message and code; the kind and detail go here.
            plan->error = e.kind;
            std::snprintf(plan->detail, sizeof plan->detail, "%s", e.detail.c_str());
            throw;
        }
    });
}

} // extern "C"
