/* test-readme.c - the README's examples, run as printed: every configuration snippet loads, the
 * quick start answers, and the plugin walk-through (primes.c compiled from the README's own
 * text, then its curl commands, the asynchronous job included) gives the answers it promises. */
#include <json-glib/json-glib.h>
#include <string.h>

#include "harness.h"

static gchar *
readme (void)
{
  const gchar *srcdir = g_getenv ("CRUNCHD_SRCDIR");
  g_autofree gchar *path = NULL;
  gchar *text = NULL;

  g_assert_nonnull (srcdir); /* set by make check */
  path = g_build_filename (srcdir, "README", NULL);
  g_assert_true (g_file_get_contents (path, &text, NULL, NULL));
  return text;
}

/* The README's indented code blocks (4 spaces), de-indented; a blank line ends a block. */
static GPtrArray *
code_blocks (const gchar *text)
{
  g_auto (GStrv) lines = g_strsplit (text, "\n", -1);
  GPtrArray *blocks = g_ptr_array_new_with_free_func (g_free);
  GString *block = NULL;

  for (gchar **l = lines;; l++) {
    if (*l != NULL && g_str_has_prefix (*l, "    ")) {
      if (block == NULL)
        block = g_string_new (NULL);
      g_string_append_printf (block, "%s\n", *l + 4);
      continue;
    }
    if (block != NULL)
      g_ptr_array_add (blocks, g_string_free (g_steal_pointer (&block), FALSE));
    if (*l == NULL)
      return blocks;
  }
}

/* A block is an ini snippet if its first line that is not a comment is a [group]. */
static gboolean
is_ini (const gchar *block)
{
  const gchar *line = block;

  while (*line == '#')
    line = strchr (line, '\n') + 1;
  return *line == '[';
}

static gchar *
write_temp (const gchar *dir, const gchar *name, const gchar *contents)
{
  gchar *path = g_build_filename (dir, name, NULL);

  g_assert_true (g_file_set_contents (path, contents, -1, NULL));
  return path;
}

/* Every configuration snippet passes crunchd --check-config, the scale-out one included. */
static void
test_ini_snippets (void)
{
  g_autofree gchar *text = readme ();
  g_autoptr (GPtrArray) blocks = code_blocks (text);
  g_autofree gchar *dir = g_dir_make_tmp ("crunchd-readme-XXXXXX", NULL);
  guint checked = 0;
  gboolean scale_out = FALSE;

  for (guint i = 0; i < blocks->len; i++) {
    const gchar *block = blocks->pdata[i];
    g_autofree gchar *ini = NULL, *arg = NULL, *out = NULL, *err = NULL;
    if (!is_ini (block))
      continue;
    if (g_str_has_prefix (block, "# keys file")) {
      /* an [auth] keys file: checked through a configuration naming it, and kept there for the
       * [auth] snippet that follows it (keys_file = keys) */
      g_free (write_temp (dir, "keys", block));
      block = "[auth]\nkeys_file = keys\n";
    }
    ini = write_temp (dir, "snippet.ini", block);
    arg = g_strconcat ("--config=", ini, NULL);
    g_test_message ("README snippet:\n%s", block);
    g_assert_cmpint (test_run_crunchd ((const gchar *[]){arg, "--check-config", NULL}, &out, &err),
                     ==, 0);
    g_assert_nonnull (strstr (out, "configuration OK"));
    if (strstr (block, "backend = nats") != NULL) {
      scale_out = TRUE;
      g_assert_nonnull (strstr (out, "\nthreads=32\n"));
    }
    checked++;
  }
  test_remove_dir (dir);
  g_assert_cmpuint (checked, >=, 1);
  g_assert_true (scale_out);
}

static void
get_expect (TestServer *server, const gchar *path, const gchar *body)
{
  g_autofree gchar *url = test_server_url (server, path);
  g_autoptr (TestReply) r = test_http ("GET", url, NULL);

  g_assert_cmpint (r->status, ==, 200);
  g_assert_cmpstr (r->body, ==, body);
}

/* The quick start: crunchd on the sample configuration answers /fast and /fib/35. */
static void
test_quick_start (void)
{
  g_autofree gchar *sample = NULL;
  TestServer *server;

  g_assert_true (g_file_get_contents (g_getenv ("CRUNCHD_SAMPLE_INI"), &sample, NULL, NULL));
  server = test_server_start (sample, NULL);
  get_expect (server, "/fast", "Hello!");
  get_expect (server, "/fib/35", "9227465");
  g_assert_cmpint (test_server_stop (server), ==, 0);
}

/* Runs a README command with sh in `dir`; returns its stdout. */
static gchar *
run_shell (const gchar *dir, const gchar *command)
{
  const gchar *argv[] = {"/bin/sh", "-c", command, NULL};
  g_autofree gchar *err = NULL;
  g_autoptr (GError) error = NULL;
  gchar *out = NULL;
  gint status = 0;

  g_test_message ("$ %s", command);
  g_assert_true (g_spawn_sync (dir, (gchar **)argv, NULL, G_SPAWN_DEFAULT, NULL, NULL, &out, &err,
                               &status, &error));
  g_assert_no_error (error);
  if (!g_spawn_check_exit_status (status, NULL))
    g_error ("'%s' failed:\n%s%s", command, out, err);
  return out;
}

/* The printed primes.c, compiled with the printed command (the header from this tree instead
 * of pkg-config's installed one). */
static gchar *
build_primes (const gchar *text, const gchar *dir)
{
  const gchar *start = strstr (text, "```c\n/* primes.c");
  const gchar *end = start ? strstr (start, "\n```\n") : NULL;
  g_autofree gchar *source = NULL, *path = NULL, *include = NULL, *command = NULL, *out = NULL;
  const gchar *printed = "cc -shared -fPIC $(pkg-config --cflags crunchd-plugin) -o primes.so "
                         "primes.c";
  g_auto (GStrv) parts = g_strsplit (printed, "$(pkg-config --cflags crunchd-plugin)", 2);

  g_assert_nonnull (end);
  g_assert_nonnull (strstr (text, printed));
  source = g_strndup (start + strlen ("```c\n"), end + 1 - (start + strlen ("```c\n")));
  path = write_temp (dir, "primes.c", source);
  include = g_build_filename (g_getenv ("CRUNCHD_SRCDIR"), "include", NULL);
  /* "cc" is the compiler configure found, when there is one */
  command = g_strdup_printf ("%s%s-I'%s'%s", g_getenv ("CC") ? g_getenv ("CC") : "cc",
                             parts[0] + strlen ("cc"), include, parts[1]);
  out = run_shell (dir, command);
  return g_build_filename (dir, "primes.so", NULL);
}

/* "Location: /jobs/ID" from curl -i's output. */
static gchar *
location (const gchar *headers)
{
  const gchar *at = strstr (headers, "\nLocation: ");

  g_assert_nonnull (at);
  at += strlen ("\nLocation: ");
  return g_strndup (at, strcspn (at, "\r\n"));
}

/* Polls the job (bounded by its deadline and some) until it is no longer queued or running. */
static JsonObject *
wait_job (TestServer *server, const gchar *path, gdouble seconds)
{
  g_autofree gchar *url = test_server_url (server, path);
  gint64 until = g_get_monotonic_time () + (gint64)(seconds * G_USEC_PER_SEC);

  for (;;) {
    g_autoptr (TestReply) r = test_http ("GET", url, NULL);
    g_autoptr (JsonParser) parser = json_parser_new ();
    JsonObject *o;
    const gchar *state;
    g_assert_cmpint (r->status, ==, 200);
    g_assert_true (json_parser_load_from_data (parser, r->body, -1, NULL));
    o = json_node_get_object (json_parser_get_root (parser));
    state = json_object_get_string_member (o, "state");
    if (!g_str_equal (state, "queued") && !g_str_equal (state, "running")) {
      g_test_message ("%s", r->body);
      return json_object_ref (o);
    }
    if (g_get_monotonic_time () > until)
      g_error ("job %s still %s after %.0f s", path, state, seconds);
    g_usleep (200000);
  }
}

/* The walk-through: build primes.so from the README, load it, run the printed curl commands
 * against the server; the asynchronous job finishes "done" within its deadline. */
static void
test_plugin_example (void)
{
  g_autofree gchar *curl = g_find_program_in_path ("curl");
  g_autofree gchar *text = readme ();
  g_autofree gchar *dir = NULL, *so = NULL;
  g_autofree gchar *ini = NULL, *address = NULL, *job = NULL;
  g_autoptr (GPtrArray) blocks = code_blocks (text);
  g_autoptr (JsonObject) o = NULL;
  TestServer *server;
  guint curls = 0;

  if (curl == NULL) { /* a Build-Depends of the package; scripts/install-deps installs it */
    g_test_skip ("the README's examples need curl");
    return;
  }
  dir = g_dir_make_tmp ("crunchd-readme-XXXXXX", NULL);
  so = build_primes (text, dir);
  ini = g_strdup_printf ("[plugins]\ndir = %s\nload = primes\n", dir);
  server = test_server_start (ini, NULL);
  address = g_strdup_printf ("127.0.0.1:%u", server->port);

  for (guint i = 0; i < blocks->len && job == NULL; i++) {
    g_auto (GStrv) lines = NULL;
    if (strstr (blocks->pdata[i], "primes.so") == NULL)
      continue;
    lines = g_strsplit (blocks->pdata[i], "\n", -1);
    for (gchar **l = lines; *l != NULL; l++) {
      g_auto (GStrv) parts = g_strsplit (*l, "127.0.0.1:8000", -1);
      g_autofree gchar *command = g_strjoinv (address, parts);
      g_autofree gchar *out = NULL;
      if (!g_str_has_prefix (*l, "curl ") || strstr (*l, "/jobs/ID") != NULL)
        continue;
      out = run_shell (dir, command);
      curls++;
      if (strstr (*l, "/jobs ") != NULL) {
        g_assert_nonnull (strstr (out, " 202 "));
        job = location (out);
      } else {
        g_assert_cmpstr (out, ==, "78498\n"); /* primes below a million */
      }
    }
  }
  g_assert_cmpuint (curls, ==, 3);
  g_assert_nonnull (job);
  o = wait_job (server, job, 60 + 30);
  g_assert_cmpstr (json_object_get_string_member (o, "state"), ==, "done");
  g_assert_cmpstr (json_object_get_string_member (o, "result"), ==, "664579\n");
  g_assert_cmpint (test_server_stop (server), ==, 0);
  test_remove_dir (dir);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/readme/ini-snippets", test_ini_snippets);
  g_test_add_func ("/readme/quick-start", test_quick_start);
  g_test_add_func ("/readme/plugin-example", test_plugin_example);
  return g_test_run ();
}
