/* args.h - declared arguments: text (query string) and JSON values -> the canonical tuple.
 *
 * Every check a function's declaration asks for happens here, before a job exists (on the HTTP
 * thread; a body over 1 KiB on a decoder thread, decode.h): type, bounds, unknown, missing and
 * repeated arguments. Errors are CRUNCH_FUNCTION_ERROR_INVALID_ARGUMENT (-> 400) and name the
 * function, the argument and the rule, e.g. "primes: argument 'n' must be an integer from 2 to
 * 100000000, got 'x'". */
#pragma once

#include <json-glib/json-glib.h>

#include "functions.h"

/* One value from its text form (a query-string value; bytes are base64). `max` is the live
 * upper bound. Returns a floating GVariant of the argument's canonical type. */
GVariant *crunch_arg_from_text (const gchar *fn_name, const CrunchdArg *arg, gdouble max,
                                const gchar *text, GError **error);

/* name -> text (GET /fn/<name>?a=1&b=x). */
GVariant *crunch_args_from_query (const CrunchFunction *fn, GHashTable *values, GError **error);
/* A JSON object of name -> value; NULL means no arguments. */
GVariant *crunch_args_from_json (const CrunchFunction *fn, JsonObject *object, GError **error);
/* A request body holding a JSON object (empty body: no arguments). */
GVariant *crunch_args_from_body (const CrunchFunction *fn, const gchar *body, gsize len,
                                 GError **error);
/* A POST /jobs body, {"fn": NAME, "args": {...}} -> the function and its canonical arguments. */
GVariant *crunch_args_from_job_body (const gchar *body, gsize len, const CrunchFunction **fn,
                                     GError **error);
/* User text for an error message: valid UTF-8 (invalid bytes replaced), at most 64 characters
 * (longer ends in "..."), so a 400 body stays short and stays text. */
gchar *crunch_args_echo (const gchar *text);
/* The rule as words: "an integer from 0 to 92". */
gchar *crunch_arg_describe (const CrunchdArg *arg, gdouble max);
