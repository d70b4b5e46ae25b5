/* test-accesslog.c - access log lines (CLF, JSON), JSON escaping and request ids. */
#include "accesslog.h"

#include <string.h>

#include "json.h"
#include "requestid.h"

static const CrunchAccessRecord fast = {
    .client = "127.0.0.1",
    .method = "GET",
    .path = "/fast",
    .protocol = "HTTP/1.1",
    .status = 200,
    .bytes = 6,
    .duration_us = 123,
    .request_id = "abc-1",
    .queue_us = -1,
    .run_us = -1,
};

static void
test_common (void)
{
  g_autoptr (GDateTime) when = g_date_time_new_utc (2026, 11, 5, 9, 7, 3);
  CrunchAccessRecord odd = fast;
  g_autofree gchar *line = crunch_access_format (CRUNCH_ACCESS_LOG_COMMON, &fast, when);
  g_autofree gchar *odd_line = NULL;

  g_assert_cmpstr (line, ==,
                   "127.0.0.1 - - [05/Nov/2026:09:07:03 +0000] \"GET /fast HTTP/1.1\" 200 6 "
                   "\"abc-1\" 0.123ms");
  odd.path = "/a\"b\n";
  odd_line = crunch_access_format (CRUNCH_ACCESS_LOG_COMMON, &odd, when);
  g_assert_nonnull (g_strstr_len (odd_line, -1, "\"GET /a\\\"b\\n HTTP/1.1\""));
  g_assert_null (crunch_access_format (CRUNCH_ACCESS_LOG_OFF, &fast, when));
}

/* With [auth], the API key name is CLF's user field, and "key" in JSON. */
static void
test_key (void)
{
  g_autoptr (GDateTime) when = g_date_time_new_utc (2026, 11, 5, 9, 7, 3);
  CrunchAccessRecord keyed = fast;
  g_autofree gchar *line = NULL, *json = NULL;

  keyed.key = "alice";
  line = crunch_access_format (CRUNCH_ACCESS_LOG_COMMON, &keyed, when);
  g_assert_true (g_str_has_prefix (line, "127.0.0.1 - alice [05/Nov/2026:09:07:03 +0000] "));
  json = crunch_access_format (CRUNCH_ACCESS_LOG_JSON, &keyed, when);
  g_assert_true (g_str_has_suffix (json, ",\"coalesced\":false,\"key\":\"alice\"}"));
}

/* Compute requests also say how long they queued and ran, and how the job ended. */
static void
test_common_compute (void)
{
  g_autoptr (GDateTime) when = g_date_time_new_utc (2026, 11, 5, 9, 7, 3);
  CrunchAccessRecord job = fast;
  g_autofree gchar *line = NULL;

  job.path = "/fib/30";
  job.duration_us = 2501234;
  job.queue_us = 1500;
  job.run_us = 2499000;
  job.outcome = "ok";
  job.coalesced = TRUE;
  line = crunch_access_format (CRUNCH_ACCESS_LOG_COMMON, &job, when);
  g_assert_true (g_str_has_suffix (line, "\"GET /fib/30 HTTP/1.1\" 200 6 \"abc-1\" 2501.234ms "
                                         "queued=1.500ms run=2499.000ms outcome=ok coalesced"));
}

static void
test_json (void)
{
  g_autoptr (GDateTime) when = g_date_time_new_utc (2026, 11, 25, 9, 0, 0);
  CrunchAccessRecord job = fast;
  g_autofree gchar *line = crunch_access_format (CRUNCH_ACCESS_LOG_JSON, &fast, when);
  g_autofree gchar *job_line = NULL;

  g_assert_cmpstr (line, ==,
                   "{\"time\":\"2026-11-25T09:00:00Z\",\"remote\":\"127.0.0.1\",\"method\":\"GET\","
                   "\"path\":\"/fast\",\"protocol\":\"HTTP/1.1\",\"status\":200,\"bytes\":6,"
                   "\"request_id\":\"abc-1\",\"duration_ms\":0.123,\"queue_ms\":null,"
                   "\"run_ms\":null,\"outcome\":null,\"coalesced\":false,\"key\":null}");
  job.path = "/fib/30";
  job.duration_us = 2501234;
  job.queue_us = 1500;
  job.run_us = 2499000;
  job.outcome = "ok";
  job.coalesced = TRUE;
  job_line = crunch_access_format (CRUNCH_ACCESS_LOG_JSON, &job, when);
  g_assert_nonnull (g_strstr_len (job_line, -1,
                                  "\"duration_ms\":2501.234,\"queue_ms\":1.500,\"run_ms\":2499.000,"
                                  "\"outcome\":\"ok\",\"coalesced\":true,\"key\":null}"));
}

static void
test_json_escape (void)
{
  g_autoptr (GString) out = g_string_new (NULL);

  crunch_json_append_string (out, "a\"b\\c\n\t\x01\xc3\xa9\xff");
  g_assert_cmpstr (out->str, ==, "\"a\\\"b\\\\c\\n\\t\\u0001\xc3\xa9\xef\xbf\xbd\"");
}

/* Durations as people read them: 4 significant digits, plain notation, microseconds at most. */
static void
test_json_seconds (void)
{
  const struct {
    gdouble in;
    const gchar *out;
  } cases[] = {
      {4.8999999999999998e-05, "0.000049"},
      {2.12345, "2.123"},
      {2.1, "2.1"},
      {299.53, "299.5"},
      {30.0, "30"},
      {0, "0"},
      {0.0000004, "0"},
      {12345.6, "12346"},
      {0.1, "0.1"},
      {0.00123456, "0.001235"},
      {-0.5, "-0.5"},
      {9.99999, "10"},
  };

  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++) {
    g_autoptr (GString) out = g_string_new (NULL);
    crunch_json_append_seconds (out, cases[i].in);
    g_assert_cmpstr (out->str, ==, cases[i].out);
  }
}

/* A flat object, members in order, doubles as seconds. */
static void
test_json_object (void)
{
  g_autoptr (JsonBuilder) b = json_builder_new ();
  g_autoptr (JsonNode) root = NULL;
  g_autoptr (GString) out = g_string_new (NULL);

  json_builder_begin_object (b);
  json_builder_set_member_name (b, "id");
  json_builder_add_string_value (b, "a\"b");
  json_builder_set_member_name (b, "run_seconds");
  json_builder_add_double_value (b, 2.1);
  json_builder_set_member_name (b, "size");
  json_builder_add_int_value (b, 9);
  json_builder_set_member_name (b, "cached");
  json_builder_add_boolean_value (b, TRUE);
  json_builder_end_object (b);
  root = json_builder_get_root (b);
  crunch_json_append_object (out, json_node_get_object (root));
  g_assert_cmpstr (out->str, ==,
                   "{\n  \"id\": \"a\\\"b\",\n  \"run_seconds\": 2.1,\n  \"size\": 9,\n  "
                   "\"cached\": true\n}");
}

static void
test_request_id (void)
{
  gchar id[CRUNCH_REQUEST_ID_MAX + 1], other[CRUNCH_REQUEST_ID_MAX + 1];
  g_autofree gchar *longer = g_strnfill (100, 'x');
  g_autoptr (GRegex) generated = g_regex_new ("^[0-9a-f]{8}-[0-9a-f]{8}$", 0, 0, NULL);

  crunch_request_id (id, "abc-123_X.y:z");
  g_assert_cmpstr (id, ==, "abc-123_X.y:z");
  crunch_request_id (id, "a b<c>\"d\r\ne");
  g_assert_cmpstr (id, ==, "abcde");
  crunch_request_id (id, longer);
  g_assert_cmpuint (strlen (id), ==, CRUNCH_REQUEST_ID_MAX);
  crunch_request_id (id, NULL);
  crunch_request_id (other, "<<>>");
  g_assert_true (g_regex_match (generated, id, 0, NULL));
  g_assert_true (g_regex_match (generated, other, 0, NULL));
  g_assert_cmpstr (id, !=, other);
  /* the same process prefix, then a counter */
  g_assert_cmpint (strncmp (id, other, 9), ==, 0);
  g_assert_cmpuint (g_ascii_strtoull (other + 9, NULL, 16), ==,
                    g_ascii_strtoull (id + 9, NULL, 16) + 1);
}

/* The strict scan before json-glib's recursive parser sees a body. */
static void
test_json_check (void)
{
  g_autoptr (GString) deep = g_string_new (NULL);
  const gchar *text;

#define OK(t, d) g_assert_cmpint (crunch_json_check (t, strlen (t), d, NULL), ==, CRUNCH_JSON_OK)
#define DEEP(t, d)                                                                                 \
  g_assert_cmpint (crunch_json_check (t, strlen (t), d, NULL), ==, CRUNCH_JSON_TOO_DEEP)
#define LAX(t, reason)                                                                             \
  do {                                                                                             \
    const gchar *why = NULL;                                                                       \
    g_assert_cmpint (crunch_json_check (t, strlen (t), 32, &why), ==, CRUNCH_JSON_NOT_STRICT);     \
    g_assert_cmpstr (why, ==, reason);                                                             \
  } while (0)
  OK ("{\"a\": [1, {\"b\": 2}]}", 3);
  DEEP ("{\"a\": [1, {\"b\": 2}]}", 2);
  OK ("{\"n\": -1.5e+3, \"t\": true, \"f\": false, \"z\": null, \"e\": [], \"o\": {}}\r\n\t", 2);
  OK ("[0, -0, 0.5, 1E9, -9223372036854775808, 9223372036854775807, \"\\u00e9\\n\\/\"]", 1);
  OK ("\"a lone string\"", 0);
  /* brackets inside strings, escaped quotes included, do not count */
  text = "{\"a\": \"[[[\\\"{{{\"}";
  OK (text, 1);
  OK ("[[], [[]], [[]]]", 3);
  DEEP ("[[], [[]], [[[]]]]", 3);
  /* what json-glib accepts beyond RFC 8259 would hide brackets from the count (found by an
   * attack review: a body 200,000 deep behind a ' or a comment crashed crunchd) */
  LAX ("{'n': 5}", "a member name that is not a \"string\"");
  LAX ("{\"x\": ['\"', [[[[]]]]]}", "a single quote (JSON strings take double quotes)");
  LAX ("{\"n\": /* \" */ 5}", "a comment (JSON has none)");
  LAX ("{\"n\": 5} // x", "a comment (JSON has none)");
  LAX ("{\"n\": 5} # x", "a comment (JSON has none)");
  LAX ("{\"n\": 5, // x\n\"m\": 1}", "a member name that is not a \"string\"");
  LAX ("{\"n\": Infinity}", "an unexpected character");
  /* and what it reads wrongly or loosely (a second attack review): a wrapped integer, a
   * truncated string, the last of two values, hex, leading zeros, a second body */
  LAX ("{\"i\": 18446744073709551615}", "an integer beyond 64 bits");
  LAX ("{\"i\": -9223372036854775809}", "an integer beyond 64 bits");
  LAX ("{\"f\": 1e999}", "a number beyond a double's range");
  LAX ("{\"s\": \"a\\u0000bc\"}", "\\u0000 in a string");
  LAX ("{\"s\": \"a\x01\"}", "a control character inside a string");
  LAX ("{\"n\": 1, \"n\": 90}", "a member name given twice");
  LAX ("{\"n\": 1, \"\\u006e\": 90}", "a member name given twice");
  LAX ("{\"n\": 0x10}", "a hex number (JSON numbers are decimal)");
  LAX ("[1, 2 3]", "an unexpected character");
  LAX ("{\"n\": x}", "an unexpected character");
  LAX ("0x10", "a hex number (JSON numbers are decimal)");
  LAX ("{\"n\": 05}", "a number with a leading zero");
  LAX ("{\"n\": 5}{\"n\": 6}", "more than one value");
  LAX ("{\"n\": 1.}", "a malformed number");
  LAX ("{\"n\": -}", "a malformed number");
  LAX ("{\"n\": 5,}", "a member name that is not a \"string\"");
  LAX ("[1,]", "an unexpected character");
  LAX ("{\"n\" 5}", "a member without a colon");
  LAX ("{\"s\": \"\\x\"}", "a bad escape in a string");
  LAX ("{\"s\": \"\\u12g4\"}", "a bad \\u escape");
  OK ("\"\\ud83d\\ude00 \\u00e9\"", 0); /* a surrogate pair is one character */
  LAX ("\"\\uDDDD\"", "a lone surrogate in a \\u escape");
  LAX ("\"\\ud83d\"", "a lone surrogate in a \\u escape");
  LAX ("\"\\ud83d\\u0041\"", "a lone surrogate in a \\u escape");
  LAX ("\"\\ud83d\\ud83d\"", "a lone surrogate in a \\u escape");
  LAX ("{\"s\": \"open}", "an unterminated string");
  LAX ("{\"n\": 5", "the text ends before its value does");
  LAX ("", "the text ends before its value does");
  LAX ("[1]]", "more than one value");
  /* at most 256 members an object: names made to collide in GLib's unseeded string hash (the
   * blocks "aB" and "b!" hash alike) cost a lookup each as long as the table (a review: 14 s of
   * CPU for a 1 MiB body of them) */
  {
    g_autoptr (GString) many = g_string_new ("{");
    for (guint i = 0; i <= CRUNCH_JSON_MAX_MEMBERS; i++) {
      const gchar *why = NULL;
      if (i == CRUNCH_JSON_MAX_MEMBERS) {
        g_string_append (many, "0}");
        OK (many->str, 1);
        g_string_truncate (many, many->len - 2);
        g_string_append (many, "0, \"last\": 0}");
        g_assert_cmpint (crunch_json_check (many->str, many->len, 1, &why), ==,
                         CRUNCH_JSON_NOT_STRICT);
        g_assert_cmpstr (why, ==, "an object with more than 256 members");
        break;
      }
      if (i > 0)
        g_string_append (many, "0, ");
      g_string_append_c (many, '"');
      for (guint bit = 0; bit < 9; bit++)
        g_string_append (many, (i >> bit) & 1 ? "aB" : "b!");
      g_string_append (many, "\": ");
    }
  }
  /* a member name may come again in another object */
  OK ("[{\"n\": 1}, {\"n\": 2, \"m\": {\"n\": 3}}]", 3);
  g_assert_cmpint (crunch_json_check ("[\0]", 3, 32, NULL), ==, CRUNCH_JSON_NOT_STRICT);
  /* the length is respected: no NUL needed */
  g_assert_cmpint (crunch_json_check ("[1]]]", 3, 2, NULL), ==, CRUNCH_JSON_OK);
  for (guint i = 0; i < 100000; i++)
    g_string_append_c (deep, '[');
  g_assert_cmpint (crunch_json_check (deep->str, deep->len, CRUNCH_JSON_MAX_DEPTH, NULL), ==,
                   CRUNCH_JSON_TOO_DEEP);
  g_assert_cmpint (
      crunch_json_check (deep->str, CRUNCH_JSON_MAX_DEPTH, CRUNCH_JSON_MAX_DEPTH, NULL), ==,
      CRUNCH_JSON_NOT_STRICT);
#undef OK
#undef DEEP
#undef LAX
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/accesslog/common", test_common);
  g_test_add_func ("/accesslog/common-compute", test_common_compute);
  g_test_add_func ("/accesslog/key", test_key);
  g_test_add_func ("/accesslog/json", test_json);
  g_test_add_func ("/accesslog/json-escape", test_json_escape);
  g_test_add_func ("/json/check", test_json_check);
  g_test_add_func ("/accesslog/json-seconds", test_json_seconds);
  g_test_add_func ("/accesslog/json-object", test_json_object);
  g_test_add_func ("/accesslog/request-id", test_request_id);
  return g_test_run ();
}
