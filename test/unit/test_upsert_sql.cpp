// Unit tests of the SQL batch_upsert generates (src/core/upsert/sql_builder.cpp).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "batchkit/upsert.h"

namespace {

std::string build(const bk_upsert_sql_spec &spec, bk_upsert_sql_kind kind) {
    bk_status st{};
    size_t n = bk_upsert_build_sql(&spec, kind, nullptr, 0, &st);
    EXPECT_NE(n, static_cast<size_t>(-1)) << st.message;
    std::string out(n, '\0');
    EXPECT_EQ(bk_upsert_build_sql(&spec, kind, &out[0], n + 1, &st), n);
    return out;
}

struct Odd {
    // a table and columns whose names need quoting
    std::vector<const char *> cols{"Id", "select", "Weird \"Name\"", "with space"};
    std::vector<int> flags{0, 0, 0, 0};
    std::vector<int> pk{0};
    bk_upsert_table t{};
    std::vector<int> conflict{0}, update{1, 2};
    bk_upsert_plan plan{};
    std::vector<int> input{0, 1, 2};
    bk_upsert_sql_spec spec{};

    Odd() {
        t.schema = "My Schema";
        t.name = "Tab\"le";
        t.ncolumns = 4;
        t.columns = cols.data();
        t.column_flags = flags.data();
        t.npk = 1;
        t.pk = pk.data();
        plan.nconflict = 1;
        plan.conflict = conflict.data();
        plan.nupdate = 2;
        plan.update = update.data();
        spec.table = &t;
        spec.plan = &plan;
        spec.ncolumns = 3;
        spec.columns = input.data();
        spec.source_name = "batchkit_upsert_rows";
    }
};

} // namespace

TEST(UpsertSql, QuoteIdentAlwaysQuotesAndDoublesQuotes) {
    char buf[64];
    EXPECT_EQ(bk_upsert_quote_ident("plain", buf, sizeof buf), 7u);
    EXPECT_STREQ(buf, "\"plain\"");
    bk_upsert_quote_ident("a\"b; DROP TABLE x; --", buf, sizeof buf);
    EXPECT_STREQ(buf, "\"a\"\"b; DROP TABLE x; --\"");
    // truncation still NUL-terminates and reports the full length
    char small[4];
    EXPECT_EQ(bk_upsert_quote_ident("abcdef", small, sizeof small), 8u);
    EXPECT_STREQ(small, "\"ab");
}

TEST(UpsertSql, MergeQuotesEveryNameAndUpdatesOnlyUpdateColumns) {
    Odd o;
    EXPECT_EQ(build(o.spec, BK_UPSERT_SQL_MERGE),
              "MERGE INTO \"My Schema\".\"Tab\"\"le\" AS bk_t USING \"batchkit_upsert_rows\" AS "
              "bk_d ON bk_t.\"Id\" = bk_d.\"Id\" WHEN MATCHED THEN UPDATE SET \"select\" = "
              "bk_d.\"select\", \"Weird \"\"Name\"\"\" = bk_d.\"Weird \"\"Name\"\"\" WHEN NOT "
              "MATCHED THEN INSERT (\"Id\", \"select\", \"Weird \"\"Name\"\"\") VALUES "
              "(bk_d.\"Id\", bk_d.\"select\", bk_d.\"Weird \"\"Name\"\"\")");
}

TEST(UpsertSql, OnConflictFallbackAndInsertOrSkip) {
    Odd o;
    EXPECT_EQ(build(o.spec, BK_UPSERT_SQL_ON_CONFLICT),
              "INSERT INTO \"My Schema\".\"Tab\"\"le\" AS bk_t (\"Id\", \"select\", \"Weird "
              "\"\"Name\"\"\") SELECT bk_d.\"Id\", bk_d.\"select\", bk_d.\"Weird \"\"Name\"\"\" "
              "FROM \"batchkit_upsert_rows\" AS bk_d ON CONFLICT (\"Id\") DO UPDATE SET "
              "\"select\" = EXCLUDED.\"select\", \"Weird \"\"Name\"\"\" = EXCLUDED.\"Weird "
              "\"\"Name\"\"\"");
    o.plan.nupdate = 0;
    std::string s = build(o.spec, BK_UPSERT_SQL_ON_CONFLICT);
    EXPECT_NE(s.find("ON CONFLICT (\"Id\") DO NOTHING"), std::string::npos);
    std::string m = build(o.spec, BK_UPSERT_SQL_MERGE);
    EXPECT_EQ(m.find("WHEN MATCHED"), std::string::npos);
    EXPECT_NE(m.find("WHEN NOT MATCHED THEN INSERT"), std::string::npos);
}

TEST(UpsertSql, ColumnsAbsentFromTheRowsAreLeftUntouched) {
    Odd o;
    o.input = {0, 1}; // "Weird ""Name""" is an update column but these rows lack it
    o.spec.columns = o.input.data();
    o.spec.ncolumns = 2;
    std::string m = build(o.spec, BK_UPSERT_SQL_MERGE);
    EXPECT_EQ(m.find("Weird"), std::string::npos);
    o.input = {0};
    o.spec.ncolumns = 1;
    m = build(o.spec, BK_UPSERT_SQL_MERGE);
    EXPECT_EQ(m.find("WHEN MATCHED"), std::string::npos); // nothing to update: skip
}

TEST(UpsertSql, StagingSourceIsDeduplicatedLastRowWins) {
    Odd o;
    std::vector<const char *> srccols{"Id", "select", "Weird \"Name\""};
    std::vector<const char *> casts{"bigint"};
    o.spec.source_name = nullptr;
    o.spec.source_schema = "stage";
    o.spec.source_relation = "in put";
    o.spec.source_columns = srccols.data();
    o.spec.key_casts = casts.data();
    std::string m = build(o.spec, BK_UPSERT_SQL_MERGE);
    EXPECT_NE(m.find("USING (SELECT DISTINCT ON (CAST(bk_s.\"Id\" AS bigint)) CAST(bk_s.\"Id\" "
                     "AS bigint) AS \"Id\", bk_s.\"select\" AS \"select\""),
              std::string::npos)
        << m;
    EXPECT_NE(m.find("FROM \"stage\".\"in put\" AS bk_s ORDER BY CAST(bk_s.\"Id\" AS bigint), "
                     "bk_s.ctid DESC) AS bk_d"),
              std::string::npos)
        << m;
    o.spec.order_by = "load seq";
    m = build(o.spec, BK_UPSERT_SQL_MERGE);
    EXPECT_NE(m.find("bk_s.\"load seq\" DESC)"), std::string::npos) << m;
}

TEST(UpsertSql, RejectsIncompleteSpecs) {
    Odd o;
    bk_status st{};
    o.spec.ncolumns = 0;
    EXPECT_EQ(bk_upsert_build_sql(&o.spec, BK_UPSERT_SQL_MERGE, nullptr, 0, &st),
              static_cast<size_t>(-1));
    EXPECT_EQ(st.code, BK_INVALID_ARGUMENT);
    Odd p;
    p.spec.source_name = nullptr;
    EXPECT_EQ(bk_upsert_build_sql(&p.spec, BK_UPSERT_SQL_MERGE, nullptr, 0, &st),
              static_cast<size_t>(-1));
    EXPECT_EQ(st.code, BK_INTERNAL);
}

TEST(UpsertSql, FormatNamesForMessages) {
    const char *names[] = {"a", "b\"c", "d"};
    char buf[64];
    bk_upsert_format_names(names, 3, 0, buf, sizeof buf);
    EXPECT_STREQ(buf, "\"a\", \"b\"\"c\", \"d\"");
    bk_upsert_format_names(names, 3, 2, buf, sizeof buf);
    EXPECT_STREQ(buf, "\"a\", \"b\"\"c\", ...");
}
