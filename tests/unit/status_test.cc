#include "common/status.h"

#include <gtest/gtest.h>

namespace rmgen {
namespace {

StatusOr<int> Half(int x) {
  if (x % 2 != 0) return InvalidArgumentError("odd: " + std::to_string(x));
  return x / 2;
}

StatusOr<int> Quarter(int x) {
  ASSIGN_OR_RETURN(int h, Half(x));
  ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

Status CheckQuarter(int x) {
  RETURN_IF_ERROR(Quarter(x).status());
  return Status::Ok();
}

TEST(StatusTest, PropagatesFirstError) {
  EXPECT_EQ(*Quarter(8), 2);
  auto r = Quarter(6);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().message(), "odd: 3");
  EXPECT_TRUE(CheckQuarter(4).ok());
  EXPECT_EQ(CheckQuarter(2).ToString(), "INVALID_ARGUMENT: odd: 1");
}

TEST(StatusTest, WithContextPrefixesOnlyErrors) {
  EXPECT_TRUE(Status::Ok().WithContext("reading x").ok());
  EXPECT_EQ(NotFoundError("gone").WithContext("config.json").message(), "config.json: gone");
}

TEST(StatusTest, OkStatusIsNotAValue) {
  StatusOr<int> r{Status::Ok()};
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInternal);
}

}  // namespace
}  // namespace rmgen

namespace rmgen {
namespace {

TEST(Status, CanonicalCodeNamesFollowGrpcNumbering) {
  EXPECT_STREQ(CanonicalCodeName(0), "OK");
  EXPECT_STREQ(CanonicalCodeName(3), "INVALID_ARGUMENT");
  EXPECT_STREQ(CanonicalCodeName(5), "NOT_FOUND");
  EXPECT_STREQ(CanonicalCodeName(14), "UNAVAILABLE");
  EXPECT_STREQ(CanonicalCodeName(16), "UNAUTHENTICATED");
  EXPECT_EQ(CanonicalCodeName(-1), nullptr);
  EXPECT_EQ(CanonicalCodeName(17), nullptr);
}

}  // namespace
}  // namespace rmgen
