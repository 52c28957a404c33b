// Unit tests of the envelope encoder and bk_buf (batchkit/encoding.h).
#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "batchkit/encoding.h"
#include "batchkit/sink.h"

namespace {

bk_slice S(const char *s) {
    return bk_slice{s, s ? std::char_traits<char>::length(s) : 0};
}

std::string encode(const bk_envelope &e) {
    bk_buf b = BK_BUF_INIT;
    bk_status st{};
    size_t off = 99, len = 0;
    EXPECT_EQ(bk_envelope_append(&b, &e, &off, &len, &st), BK_OK) << st.message;
    EXPECT_EQ(off, 0u);
    EXPECT_EQ(len, b.len);
    std::string out(b.data, b.len);
    bk_buf_free(&b);
    return out;
}

} // namespace

TEST(SinkEnvelope, InsertHasNullBeforeAndCopiesJsonVerbatim) {
    bk_envelope e{};
    e.op = BK_OP_INSERT;
    e.table = S("public.orders");
    e.key = S("{\"id\":1}");
    e.after = S("{\"id\":1,\"note\":\"a \\\"quoted\\\" word\",\"n\":1.50}");
    e.txid = 745;
    e.seq = 12;
    e.ts = S("2024-05-01 10:00:00.123+00");
    EXPECT_EQ(encode(e),
              "{\"op\":\"insert\",\"table\":\"public.orders\",\"key\":{\"id\":1},\"before\":null,"
              "\"after\":{\"id\":1,\"note\":\"a \\\"quoted\\\" word\",\"n\":1.50},\"txid\":745,"
              "\"seq\":12,\"ts\":\"2024-05-01 10:00:00.123+00\"}");
}

TEST(SinkEnvelope, UpdateAndDeleteCarryTheirImages) {
    bk_envelope e{};
    e.op = BK_OP_UPDATE;
    e.table = S("s.t");
    e.key = S("{\"a\":1,\"b\":\"x\"}");
    e.before = S("{\"a\":1,\"v\":0}");
    e.after = S("{\"a\":1,\"v\":1}");
    e.txid = 18446744073709551615ull; // xid8 can be that large
    e.seq = -3;
    e.ts = S("t");
    EXPECT_EQ(encode(e), "{\"op\":\"update\",\"table\":\"s.t\",\"key\":{\"a\":1,\"b\":\"x\"},"
                         "\"before\":{\"a\":1,\"v\":0},\"after\":{\"a\":1,\"v\":1},"
                         "\"txid\":18446744073709551615,\"seq\":-3,\"ts\":\"t\"}");
    e.op = BK_OP_DELETE;
    e.after = S(nullptr);
    e.ts = S(nullptr);
    e.key = S(nullptr);
    EXPECT_EQ(encode(e), "{\"op\":\"delete\",\"table\":\"s.t\",\"key\":null,"
                         "\"before\":{\"a\":1,\"v\":0},\"after\":null,"
                         "\"txid\":18446744073709551615,\"seq\":-3,\"ts\":null}");
}

TEST(SinkEnvelope, EscapesTableAndTimestampAsJsonStrings) {
    bk_envelope e{};
    e.op = BK_OP_INSERT;
    const char weird[] = "we\"ird\\sch\x01ma.t\n\tab";
    e.table = bk_slice{weird, sizeof weird - 1};
    e.key = S("{}");
    e.after = S("{}");
    e.ts = S("\x1f");
    EXPECT_EQ(encode(e), "{\"op\":\"insert\",\"table\":\"we\\\"ird\\\\sch\\u0001ma.t\\n\\tab\","
                         "\"key\":{},\"before\":null,\"after\":{},\"txid\":0,\"seq\":0,"
                         "\"ts\":\"\\u001f\"}");
    // UTF-8 passes through untouched.
    e.table = S("public.caf\xc3\xa9");
    e.ts = S("x");
    EXPECT_NE(encode(e).find("\"table\":\"public.caf\xc3\xa9\""), std::string::npos);
}

TEST(SinkEnvelope, AppendsAfterExistingDataAndReportsOffsets) {
    bk_buf b = BK_BUF_INIT;
    bk_status st{};
    ASSERT_EQ(bk_buf_append(&b, "xyz", 3, &st), BK_OK);
    bk_envelope e{};
    e.op = BK_OP_DELETE;
    e.table = S("a.b");
    e.key = S("{\"k\":\"v\"}");
    size_t off1, len1, off2, len2;
    ASSERT_EQ(bk_envelope_append(&b, &e, &off1, &len1, &st), BK_OK);
    e.seq = 1234567;
    ASSERT_EQ(bk_envelope_append(&b, &e, &off2, &len2, &st), BK_OK);
    EXPECT_EQ(off1, 3u);
    EXPECT_EQ(off2, off1 + len1);
    EXPECT_EQ(b.len, off2 + len2);
    EXPECT_EQ(std::string(b.data, 3), "xyz");
    std::string second(b.data + off2, len2);
    EXPECT_EQ(second.front(), '{');
    EXPECT_EQ(second.back(), '}');
    EXPECT_NE(second.find("\"seq\":1234567"), std::string::npos);
    bk_buf_free(&b);
    EXPECT_EQ(b.data, nullptr);
    EXPECT_EQ(b.len, 0u);
}

TEST(SinkEnvelope, LargeValuesGrowTheBuffer) {
    std::string big = "{\"t\":\"" + std::string(3 << 20, 'x') + "\"}";
    bk_envelope e{};
    e.op = BK_OP_INSERT;
    e.table = S("p.big");
    e.key = S("{\"id\":7}");
    e.after = bk_slice{big.data(), big.size()};
    std::string out = encode(e);
    EXPECT_GT(out.size(), big.size());
    EXPECT_NE(out.find(big), std::string::npos);
}

TEST(SinkEnvelope, RejectsBadInput) {
    bk_buf b = BK_BUF_INIT;
    bk_status st{};
    bk_envelope e{};
    e.op = BK_OP_MESSAGE; // not a change
    EXPECT_EQ(bk_envelope_append(&b, &e, nullptr, nullptr, &st), BK_INVALID_ARGUMENT);
    EXPECT_NE(std::string(st.message).find("op"), std::string::npos);
    EXPECT_EQ(b.len, 0u);
    EXPECT_EQ(bk_envelope_append(nullptr, &e, nullptr, nullptr, &st), BK_INVALID_ARGUMENT);
    EXPECT_EQ(bk_envelope_append(&b, nullptr, nullptr, nullptr, &st), BK_INVALID_ARGUMENT);
    bk_buf_free(&b);
}

TEST(SinkEnvelope, BufReserveGivesWritableRoom) {
    bk_buf b = BK_BUF_INIT;
    bk_status st{};
    ASSERT_EQ(bk_buf_reserve(&b, 10000, &st), BK_OK);
    ASSERT_GE(b.cap - b.len, 10000u);
    for (int i = 0; i < 10000; i++)
        b.data[b.len++] = 'a';
    ASSERT_EQ(bk_buf_append(&b, "b", 1, &st), BK_OK);
    EXPECT_EQ(b.len, 10001u);
    EXPECT_EQ(b.data[10000], 'b');
    b.len = 0; // the shim may reset and reuse
    ASSERT_EQ(bk_buf_append(&b, "c", 1, &st), BK_OK);
    EXPECT_EQ(b.data[0], 'c');
    bk_buf_free(&b);
    bk_buf_free(&b); // twice is harmless
    EXPECT_EQ(bk_buf_reserve(nullptr, 1, &st), BK_INVALID_ARGUMENT);
}
