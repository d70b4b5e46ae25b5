/* hostile.c - test plugin for the process backend: functions that misbehave on purpose.
 * crash n: 0 answers "ok", 1 SIGSEGV, 2 abort(), 3 exit(3) (pure, so retried once).
 * stubborn: spins, ignoring its cancel flag (deaf: the same with a deadline of 60 s). hog:
 * allocates until malloc fails (or forever). noisy: printf()s garbage to stdout, then answers. pid:
 * its process id (which process ran it). */
#include <crunchd/crunchd-plugin.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const CrunchdArg crash_args[] = {
    {"n", CRUNCHD_ARG_INT, 0, 3, "0", "0 ok, 1 SIGSEGV, 2 abort, 3 exit(3)"},
};

static CrunchdStatus
answer (CrunchdResult *result, const char *text)
{
  result->data = strdup (text);
  result->len = strlen (text);
  return result->data != NULL ? CRUNCHD_OK : crunchd_result_error (result, "out of memory");
}

static CrunchdStatus
crash_run (const CrunchdCall *call, CrunchdResult *result)
{
  switch (call->args[0].v.i) {
  case 1:
    raise (SIGSEGV);
    break;
  case 2:
    abort ();
  case 3:
    exit (3);
  }
  return answer (result, "ok");
}

static CrunchdStatus
stubborn_run (const CrunchdCall *call, CrunchdResult *result)
{
  volatile unsigned long spins = 0;

  for (;;)
    spins++;
  return CRUNCHD_OK;
}

/* Keeps every block (touched, so it is real memory) until malloc says no. */
static CrunchdStatus
hog_run (const CrunchdCall *call, CrunchdResult *result)
{
  void **blocks = NULL;
  size_t n = 0;

  for (;;) {
    void **more = realloc (blocks, (n + 1) * sizeof *blocks);
    void *block = more != NULL ? malloc (16 << 20) : NULL;
    if (more != NULL)
      blocks = more;
    if (block == NULL)
      break;
    memset (block, 1, 16 << 20);
    blocks[n++] = block;
  }
  while (n > 0)
    free (blocks[--n]);
  free (blocks);
  return crunchd_result_error (result, "out of memory");
}

static CrunchdStatus
noisy_run (const CrunchdCall *call, CrunchdResult *result)
{
  printf ("\x01\x02garbage on stdout\n");
  fflush (stdout);
  return answer (result, "still fine");
}

static CrunchdStatus
pid_run (const CrunchdCall *call, CrunchdResult *result)
{
  char text[32];

  snprintf (text, sizeof text, "%ld", (long)getpid ());
  return answer (result, text);
}

/* The length of a long string: its call's JSON header can pass the protocol's 1 MiB. */
static const CrunchdArg length_args[] = {
    {"s", CRUNCHD_ARG_STRING, 0, 1 << 20, "", "any text"},
};

static CrunchdStatus
length_run (const CrunchdCall *call, CrunchdResult *result)
{
  char text[32];

  snprintf (text, sizeof text, "%zu", call->args[0].v.s.len);
  return answer (result, text);
}

static const CrunchdFunction functions[] = {
    {"crash", "crashes on request", crash_args, 1, 1, 10, "text/plain", crash_run, NULL, 0, 0,
     NULL},
    {"stubborn", "ignores cancel", NULL, 0, 0, 0.3, "text/plain", stubborn_run, NULL, 0, 0, NULL},
    {"deaf", "ignores cancel, 60 s deadline", NULL, 0, 0, 60, "text/plain", stubborn_run, NULL, 0,
     0, NULL},
    {"hog", "allocates without bound", NULL, 0, 0, 10, "text/plain", hog_run, NULL, 0, 0, NULL},
    {"noisy", "printf garbage", NULL, 0, 0, 10, "text/plain", noisy_run, NULL, 0, 0, NULL},
    {"pid", "its process id", NULL, 0, 0, 10, "text/plain", pid_run, NULL, 0, 0, NULL},
    {"length", "the length of s", length_args, 1, 1, 10, "text/plain", length_run, NULL, 0, 0,
     NULL},
};

static int
hostile_init (CrunchdHost *host)
{
  for (size_t i = 0; i < sizeof functions / sizeof functions[0]; i++) {
    if (host->register_function (host, &functions[i]) != 0)
      return -1;
  }
  return 0;
}

CRUNCHD_PLUGIN_DEFINE ("hostile", "1.0", hostile_init);
