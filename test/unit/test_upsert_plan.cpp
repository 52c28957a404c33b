// Unit tests of batch_upsert's option validation (src/core/upsert/column_plan.cpp).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "batchkit/upsert.h"

namespace {

// users(id, name, email, created_at, total GENERATED, seq IDENTITY ALWAYS)
// with primary key (id) and unique (email) and unique (name, created_at).
struct Fixture {
    std::vector<const char *> cols{"id", "name", "email", "created_at", "total", "seq"};
    std::vector<int> flags{0, 0, 0, 0, BK_UPSERT_COL_GENERATED, BK_UPSERT_COL_IDENTITY_ALWAYS};
    std::vector<int> pk{0};
    std::vector<int> u_email{2};
    std::vector<int> u_pair{1, 3};
    std::vector<int> ncols{1, 1, 2};
    std::vector<const int *> ucols{pk.data(), u_email.data(), u_pair.data()};
    bk_upsert_table t{};
    std::vector<int> conflict = std::vector<int>(6), update = std::vector<int>(6);
    bk_upsert_plan plan{};
    bk_status st{};

    Fixture() {
        t.schema = "public";
        t.name = "users";
        t.ncolumns = static_cast<int>(cols.size());
        t.columns = cols.data();
        t.column_flags = flags.data();
        t.npk = 1;
        t.pk = pk.data();
        t.nunique = 3;
        t.unique_ncols = ncols.data();
        t.unique_cols = ucols.data();
        plan.conflict = conflict.data();
        plan.update = update.data();
    }
    void input(std::initializer_list<int> in) {
        for (int c : in)
            flags[c] |= BK_UPSERT_COL_INPUT;
    }
    bk_code resolve(int nconf, std::vector<const char *> conf, int nupd,
                    std::vector<const char *> upd) {
        bk_upsert_options o{};
        o.nconflict = nconf;
        o.conflict = conf.data();
        o.nupdate = nupd;
        o.update = upd.data();
        return bk_upsert_resolve(&t, &o, &plan, &st);
    }
};

} // namespace

TEST(UpsertPlan, DefaultsToPrimaryKeyAndEveryOtherInputColumn) {
    Fixture f;
    f.input({0, 1, 2});
    ASSERT_EQ(f.resolve(-1, {}, -1, {}), BK_OK) << f.st.message;
    ASSERT_EQ(f.plan.nconflict, 1);
    EXPECT_EQ(f.plan.conflict[0], 0);
    ASSERT_EQ(f.plan.nupdate, 2);
    EXPECT_EQ(f.plan.update[0], 1);
    EXPECT_EQ(f.plan.update[1], 2);
}

TEST(UpsertPlan, EmptyUpdateListMeansInsertOrSkip) {
    Fixture f;
    f.input({0, 1});
    ASSERT_EQ(f.resolve(-1, {}, 0, {}), BK_OK);
    EXPECT_EQ(f.plan.nupdate, 0);
}

TEST(UpsertPlan, ConflictColumnsMustMatchAUniqueIndexInAnyOrder) {
    Fixture f;
    f.input({0, 1, 3});
    ASSERT_EQ(f.resolve(2, {"created_at", "name"}, -1, {}), BK_OK) << f.st.message;
    EXPECT_EQ(f.plan.nconflict, 2);
    EXPECT_EQ(f.plan.conflict[0], 3);
    ASSERT_EQ(f.plan.nupdate, 1);
    EXPECT_EQ(f.plan.update[0], 0);

    Fixture g;
    g.input({0, 1});
    EXPECT_EQ(g.resolve(1, {"name"}, -1, {}), BK_INVALID_ARGUMENT);
    EXPECT_EQ(g.plan.error, BK_UPSERT_ERR_NO_CONFLICT_TARGET);
    EXPECT_STREQ(g.st.message, "there is no unique index or constraint on table \"users\" "
                               "matching conflict_columns (\"name\")");
    EXPECT_NE(std::string(g.plan.detail).find("partial"), std::string::npos);
}

TEST(UpsertPlan, NoPrimaryKeyNeedsConflictColumns) {
    Fixture f;
    f.t.npk = 0;
    f.input({0});
    EXPECT_EQ(f.resolve(-1, {}, -1, {}), BK_INVALID_ARGUMENT);
    EXPECT_EQ(f.plan.error, BK_UPSERT_ERR_NO_CONFLICT_TARGET);
    EXPECT_STREQ(f.st.message, "table \"users\" has no primary key");
}

TEST(UpsertPlan, UnknownColumnsAreNamed) {
    Fixture f;
    f.input({0, 1});
    EXPECT_EQ(f.resolve(2, {"nope", "Also \"bad\""}, -1, {}), BK_INVALID_ARGUMENT);
    EXPECT_EQ(f.plan.error, BK_UPSERT_ERR_UNDEFINED_COLUMN);
    EXPECT_STREQ(f.st.message, "conflict columns \"nope\", \"Also \"\"bad\"\"\" do not exist in "
                               "table \"users\"");
    Fixture g;
    g.input({0, 1});
    EXPECT_EQ(g.resolve(-1, {}, 1, {"zzz"}), BK_INVALID_ARGUMENT);
    EXPECT_STREQ(g.st.message, "update column \"zzz\" does not exist in table \"users\"");
}

TEST(UpsertPlan, RejectsBadUpdateColumns) {
    Fixture f;
    f.input({0, 1});
    EXPECT_EQ(f.resolve(-1, {}, 1, {"id"}), BK_INVALID_ARGUMENT);
    EXPECT_STREQ(f.st.message, "update column \"id\" is a conflict column");
    EXPECT_EQ(f.resolve(-1, {}, 1, {"total"}), BK_INVALID_ARGUMENT);
    EXPECT_EQ(f.plan.error, BK_UPSERT_ERR_GENERATED);
    EXPECT_EQ(f.resolve(-1, {}, 1, {"email"}), BK_INVALID_ARGUMENT);
    EXPECT_STREQ(f.st.message, "update column \"email\" is not in the input rows");
    EXPECT_EQ(f.resolve(-1, {}, 2, {"name", "name"}), BK_INVALID_ARGUMENT);
    EXPECT_EQ(f.plan.error, BK_UPSERT_ERR_DUPLICATE_COLUMN);
    EXPECT_EQ(f.resolve(-1, {}, 1, {nullptr}), BK_INVALID_ARGUMENT);
    EXPECT_EQ(f.plan.error, BK_UPSERT_ERR_INVALID_PARAMETER);
}

TEST(UpsertPlan, GeneratedAndIdentityAlwaysInputIsAnError) {
    Fixture f;
    f.input({0, 4});
    EXPECT_EQ(f.resolve(-1, {}, -1, {}), BK_INVALID_ARGUMENT);
    EXPECT_STREQ(f.st.message, "cannot insert a non-DEFAULT value into column \"total\"");
    EXPECT_STREQ(f.plan.detail, "Column \"total\" is a generated column.");
    Fixture g;
    g.input({0, 5});
    EXPECT_EQ(g.resolve(-1, {}, -1, {}), BK_INVALID_ARGUMENT);
    EXPECT_STREQ(g.plan.detail,
                 "Column \"seq\" is an identity column defined as GENERATED ALWAYS.");
}

TEST(UpsertPlan, ConflictColumnsMustBeInTheInput) {
    Fixture f;
    f.input({1});
    EXPECT_EQ(f.resolve(-1, {}, -1, {}), BK_INVALID_ARGUMENT);
    EXPECT_STREQ(f.st.message, "conflict column \"id\" is not in the input rows");
    Fixture g;
    EXPECT_EQ(g.resolve(0, {}, -1, {}), BK_INVALID_ARGUMENT);
    EXPECT_STREQ(g.st.message, "conflict_columns must not be empty");
}
