// Unit tests of topic/key templates (bk_template_*, batchkit/encoding.h).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "batchkit/encoding.h"

namespace {

struct Tpl {
    bk_template *t = nullptr;
    bk_status st{};
    Tpl(const char *text, std::vector<const char *> cols, const char *sink = "s1",
        const char *schema = "public", const char *table = "orders") {
        t = bk_template_compile(text, sink, schema, table, cols.data(), cols.size(), &st);
    }
    ~Tpl() { bk_template_free(t); }
    std::string render(std::vector<bk_slice> vals) {
        bk_buf b = BK_BUF_INIT;
        bk_status rs{};
        size_t off = 0, len = 0;
        EXPECT_EQ(bk_template_render(t, vals.data(), vals.size(), &b, &off, &len, &rs), BK_OK)
            << rs.message;
        std::string out(b.data + off, len);
        bk_buf_free(&b);
        return out;
    }
};

bk_slice S(const char *s) {
    return bk_slice{s, s ? std::char_traits<char>::length(s) : 0};
}

} // namespace

TEST(SinkTemplate, FixedPlaceholdersAreSubstitutedAtCompileTime) {
    Tpl t("{schema}.{table}", {"id"});
    ASSERT_NE(t.t, nullptr) << t.st.message;
    EXPECT_EQ(bk_template_is_static(t.t), 1);
    EXPECT_EQ(t.render({S("42")}), "public.orders");
    Tpl u("cdc-{sink}-{table}", {});
    ASSERT_NE(u.t, nullptr);
    EXPECT_EQ(u.render({}), "cdc-s1-orders");
}

TEST(SinkTemplate, KeyColumnsAreRenderedPerRow) {
    Tpl t("{table}:{tenant}:{id}", {"id", "tenant"});
    ASSERT_NE(t.t, nullptr) << t.st.message;
    EXPECT_EQ(bk_template_is_static(t.t), 0);
    EXPECT_EQ(t.render({S("42"), S("acme")}), "orders:acme:42");
    EXPECT_EQ(t.render({S("7"), S("")}), "orders::7");
    EXPECT_EQ(t.render({S("7"), S(nullptr)}), "orders::7"); // SQL NULL renders empty
}

TEST(SinkTemplate, BracesCanBeEscaped) {
    Tpl t("{{literal}}-{id}-}}", {"id"});
    ASSERT_NE(t.t, nullptr) << t.st.message;
    EXPECT_EQ(t.render({S("1")}), "{literal}-1-}");
}

TEST(SinkTemplate, ColumnsNamedLikeFixedPlaceholdersWin) {
    Tpl t("{schema}/{table}", {"table"});
    ASSERT_NE(t.t, nullptr);
    EXPECT_EQ(t.render({S("row-value")}), "public/row-value");
}

TEST(SinkTemplate, RejectsUnknownPlaceholdersAndBadBraces) {
    {
        Tpl t("orders:{idd}", {"id", "region"});
        EXPECT_EQ(t.t, nullptr);
        EXPECT_EQ(t.st.code, BK_INVALID_ARGUMENT);
        std::string m = t.st.message;
        EXPECT_NE(m.find("{idd}"), std::string::npos) << m;
        EXPECT_NE(m.find("id, region"), std::string::npos) << m;
    }
    for (const char *bad : {"a{b", "a}b", "{}", "x{a{b}}"}) {
        Tpl t(bad, {"a", "b"});
        EXPECT_EQ(t.t, nullptr) << bad;
        EXPECT_EQ(t.st.code, BK_INVALID_ARGUMENT) << bad;
    }
    Tpl n(nullptr, {});
    EXPECT_EQ(n.t, nullptr);
    // {schema} without a schema (an enqueue() sink template): clear error.
    Tpl s("{schema}.x", {}, "s1", nullptr, nullptr);
    EXPECT_EQ(s.t, nullptr);
    EXPECT_NE(std::string(s.st.message).find("{schema}"), std::string::npos);
}

TEST(SinkTemplate, RenderChecksItsArguments) {
    Tpl t("{id}", {"id"});
    ASSERT_NE(t.t, nullptr);
    bk_buf b = BK_BUF_INIT;
    bk_status st{};
    bk_slice two[2] = {S("1"), S("2")};
    EXPECT_EQ(bk_template_render(t.t, two, 2, &b, nullptr, nullptr, &st), BK_INVALID_ARGUMENT);
    EXPECT_EQ(bk_template_render(t.t, nullptr, 1, &b, nullptr, nullptr, &st), BK_INVALID_ARGUMENT);
    EXPECT_EQ(bk_template_render(nullptr, two, 1, &b, nullptr, nullptr, &st), BK_INVALID_ARGUMENT);
    // Appends after what is there.
    ASSERT_EQ(bk_buf_append(&b, "pre", 3, &st), BK_OK);
    size_t off = 0, len = 0;
    ASSERT_EQ(bk_template_render(t.t, two, 1, &b, &off, &len, &st), BK_OK);
    EXPECT_EQ(off, 3u);
    EXPECT_EQ(std::string(b.data, b.len), "pre1");
    bk_buf_free(&b);
    bk_template_free(nullptr);
}
