/* nsim.c - the benchmark suite's own load client: N truly simultaneous HTTP requests.
 *
 * wrk keeps a fixed number of connections busy; some experiments need something else:
 *   simultaneous  every request on its own connection; all connections are established first,
 *                 then every request is written back to back, so the server sees them at once;
 *                 reports the total time until the last answer and per-request latencies.
 *   --probe PATH  one more (pre-connected) connection whose request goes out --probe-delay ms
 *                 after the others: "is the fast lane blocked while jobs run?"
 *   --hold MS     park mode: do not wait for the answers; after MS report how many came early
 *                 (with --rss-pid, also the server's resident memory before and during), then
 *                 close every connection.
 *   --serial K    K requests one after another on one keep-alive connection (per-request cost).
 *   -b A[,B...]   source addresses, taken in turn by the connections (127.0.0.2 as a second
 *                 client; several to open more connections than one address has ports).
 * Output: one line of JSON on stdout (times in milliseconds). Exit 0 when the run itself worked,
 * even if the server answered errors (they are counted in the output); 2 on bad usage, 1 on a
 * local failure (cannot create sockets, ...).
 *
 * Single-threaded, epoll, no dependencies beyond libc: the client must not be the bottleneck and
 * must not hide one. Responses are parsed only as far as the status code and Content-Length. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RESPONSE_MAX 8192

typedef struct {
  int fd;
  const char *path;
  double t_sent, t_done; /* ms; t_done < 0 while waiting */
  int status;            /* HTTP status, 0 = none (connection failed or closed) */
  char buf[RESPONSE_MAX];
  size_t len;
} Conn;

#define BIND_MAX 16

typedef struct {
  const char *host;
  struct in_addr binds[BIND_MAX]; /* -b A,B,...: connections take them in turn */
  int nbinds;
  int port;
  int n, repeat, serial;
  const char *probe;
  double probe_delay_ms, hold_ms, timeout_ms;
  int rss_pid;
  char **paths;
  int npaths;
} Options;

static double
now_ms (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void
die (const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  fputs ("nsim: ", stderr);
  vfprintf (stderr, fmt, ap);
  fputc ('\n', stderr);
  va_end (ap);
  exit (1);
}

static int
cmp_double (const void *a, const void *b)
{
  double x = *(const double *)a, y = *(const double *)b;

  return (x > y) - (x < y);
}

/* Nearest-rank percentile of a sorted array. */
static double
percentile (const double *sorted, int count, double p)
{
  int rank;

  if (count == 0)
    return -1;
  rank = (int)(p / 100.0 * count + 0.999999) - 1;
  return sorted[rank < 0 ? 0 : rank >= count ? count - 1 : rank];
}

static long
rss_kib (int pid)
{
  char path[64], line[256];
  long kib = -1;
  FILE *f;

  snprintf (path, sizeof path, "/proc/%d/status", pid);
  if ((f = fopen (path, "r")) == NULL)
    return -1;
  while (fgets (line, sizeof line, f) != NULL)
    if (sscanf (line, "VmRSS: %ld kB", &kib) == 1)
      break;
  fclose (f);
  return kib;
}

/* ---- connections ---- */

static int
open_conn (const Options *o, int epfd, Conn *c)
{
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons ((uint16_t)o->port)};
  struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
  int one = 1;

  c->fd = socket (AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c->fd < 0)
    die ("socket: %s (raise ulimit -n?)", strerror (errno));
  setsockopt (c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (o->nbinds > 0) {
    static unsigned next;
    struct sockaddr_in local = {.sin_family = AF_INET, .sin_addr = o->binds[next++ % o->nbinds]};

    /* the port is chosen at connect(), per destination: with several source addresses a run
     * is not held to one range of ephemeral ports shared by all of them */
    setsockopt (c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    if (bind (c->fd, (struct sockaddr *)&local, sizeof local) != 0)
      die ("cannot bind to %s: %s", inet_ntoa (local.sin_addr), strerror (errno));
  }
  if (inet_pton (AF_INET, o->host, &addr.sin_addr) != 1)
    die ("not a numeric IPv4 address: %s", o->host);
  if (connect (c->fd, (struct sockaddr *)&addr, sizeof addr) != 0 && errno != EINPROGRESS)
    return -1;
  c->t_done = -1;
  return epoll_ctl (epfd, EPOLL_CTL_ADD, c->fd, &ev);
}

/* Waits until every connection has completed its handshake (or failed). */
static int
wait_connected (int epfd, Conn *conns, int count, double deadline)
{
  struct epoll_event events[256];
  int pending = count, failed = 0;

  while (pending > 0 && now_ms () < deadline) {
    int k = epoll_wait (epfd, events, 256, 100);
    for (int i = 0; i < k; i++) {
      Conn *c = events[i].data.ptr;
      int err = 0;
      socklen_t len = sizeof err;
      struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};

      getsockopt (c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) {
        epoll_ctl (epfd, EPOLL_CTL_DEL, c->fd, NULL);
        c->t_done = now_ms (); /* failed: status stays 0 */
        failed++;
      } else {
        epoll_ctl (epfd, EPOLL_CTL_MOD, c->fd, &ev);
      }
      pending--;
    }
  }
  return pending + failed;
}

/* Returns 0, or -1 when the request could not be written (the connection is then done). */
static int
send_request (const Options *o, Conn *c)
{
  char req[1024];
  int len = snprintf (req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s:%d\r\n\r\n", c->path, o->host,
                      o->port);

  c->len = 0;
  c->status = 0;
  c->t_done = -1;
  c->t_sent = now_ms ();
  /* A request this small always fits in a fresh socket's send buffer. */
  if (write (c->fd, req, (size_t)len) == len)
    return 0;
  c->t_done = c->t_sent;
  return -1;
}

/* TRUE once the buffered bytes hold a whole response (headers + Content-Length body). */
static int
response_complete (Conn *c)
{
  char *end, *cl;
  long body = 0;

  c->buf[c->len < RESPONSE_MAX ? c->len : RESPONSE_MAX - 1] = '\0';
  end = strstr (c->buf, "\r\n\r\n");
  if (end == NULL)
    return 0;
  if (c->status == 0 && sscanf (c->buf, "HTTP/1.%*d %d", &c->status) != 1)
    c->status = -1;
  cl = strcasestr (c->buf, "\r\ncontent-length:");
  if (cl != NULL && cl < end)
    body = strtol (cl + strlen ("\r\ncontent-length:"), NULL, 10);
  return (size_t)(end + 4 - c->buf) + (size_t)body <= c->len || c->len >= RESPONSE_MAX - 1;
}

/* Reads what is there; returns 1 when the connection has its answer (or is dead). */
static int
on_readable (Conn *c)
{
  for (;;) {
    ssize_t r = read (c->fd, c->buf + c->len, RESPONSE_MAX - 1 - c->len);
    if (r > 0) {
      c->len += (size_t)r;
      if (response_complete (c)) {
        c->t_done = now_ms ();
        return 1;
      }
      continue;
    }
    if (r < 0 && (errno == EAGAIN || errno == EINTR))
      return 0;
    /* closed or reset before a whole answer */
    c->status = 0;
    c->t_done = now_ms ();
    return 1;
  }
}

/* Runs the event loop until `want` more answers arrived or `until` (ms) passed. Returns the
 * number of answers received. */
static int
pump (int epfd, int want, double until)
{
  struct epoll_event events[256];
  int got = 0;

  while (got < want) {
    double left = until - now_ms ();
    if (left <= 0)
      break;
    int k = epoll_wait (epfd, events, 256, left > 1 ? (int)left : 1);
    for (int i = 0; i < k; i++) {
      Conn *c = events[i].data.ptr;
      if (c->t_done < 0 && on_readable (c)) {
        epoll_ctl (epfd, EPOLL_CTL_DEL, c->fd, NULL);
        got++;
      }
    }
  }
  return got;
}

/* ---- the modes ---- */

typedef struct {
  double total_ms;
  int ok, errors, early;
  double probe_ms;
  int probe_status;
  long rss_before, rss_after;
} RoundResult;

static void
close_all (Conn *conns, int count)
{
  for (int i = 0; i < count; i++)
    if (conns[i].fd >= 0)
      close (conns[i].fd);
}

/* One simultaneous round; latencies of this round are appended to `lat`. */
static RoundResult
run_round (const Options *o, double *lat, int *nlat)
{
  int total = o->n + (o->probe != NULL);
  Conn *conns = calloc ((size_t)total, sizeof *conns);
  Conn *probe = o->probe != NULL ? &conns[o->n] : NULL;
  int epfd = epoll_create1 (EPOLL_CLOEXEC), answered = 0;
  double t0, deadline;
  RoundResult res = {.probe_ms = -1, .rss_before = -1, .rss_after = -1};

  if (conns == NULL || epfd < 0)
    die ("out of memory or file descriptors");
  if (o->rss_pid > 0)
    res.rss_before = rss_kib (o->rss_pid);
  for (int i = 0; i < total; i++) {
    conns[i].path = i < o->n ? o->paths[i % o->npaths] : o->probe;
    if (open_conn (o, epfd, &conns[i]) != 0) {
      conns[i].t_done = now_ms ();
      answered++;
    }
  }
  answered += wait_connected (epfd, conns, total - answered, now_ms () + o->timeout_ms);

  t0 = now_ms ();
  for (int i = 0; i < o->n; i++)
    if (conns[i].t_done < 0 && send_request (o, &conns[i]) != 0) {
      epoll_ctl (epfd, EPOLL_CTL_DEL, conns[i].fd, NULL);
      answered++;
    }
  deadline = t0 + (o->hold_ms > 0 ? o->hold_ms : o->timeout_ms);
  if (probe != NULL) {
    answered += pump (epfd, total, t0 + o->probe_delay_ms);
    if (probe->t_done < 0 && send_request (o, probe) == 0) {
      /* the probe must come back before we go on, whatever the others do */
      while (probe->t_done < 0 && now_ms () < t0 + o->timeout_ms)
        answered += pump (epfd, 1, t0 + o->timeout_ms);
    }
    res.probe_status = probe->status;
    res.probe_ms = probe->t_done >= 0 ? probe->t_done - probe->t_sent : -1;
  }
  answered += pump (epfd, total - answered, deadline);
  if (o->rss_pid > 0)
    res.rss_after = rss_kib (o->rss_pid);

  res.total_ms = 0;
  for (int i = 0; i < o->n; i++) {
    Conn *c = &conns[i];
    if (c->t_done >= 0 && c->status >= 200 && c->status < 300) {
      res.ok++;
      lat[(*nlat)++] = c->t_done - c->t_sent;
      if (c->t_done - t0 > res.total_ms)
        res.total_ms = c->t_done - t0;
    } else if (c->t_done >= 0 || o->hold_ms <= 0) {
      res.errors++; /* refused, failed, or (not parking) never answered */
    }
  }
  if (o->hold_ms > 0) {
    res.early = res.ok;
    res.total_ms = now_ms () - t0;
  }
  close_all (conns, total);
  close (epfd);
  free (conns);
  return res;
}

static void
print_latencies (double *lat, int nlat)
{
  qsort (lat, (size_t)nlat, sizeof *lat, cmp_double);
  printf ("\"lat_p50_ms\":%.4f,\"lat_p99_ms\":%.4f,\"lat_max_ms\":%.4f", percentile (lat, nlat, 50),
          percentile (lat, nlat, 99), nlat ? lat[nlat - 1] : -1.0);
}

static int
run_simultaneous (const Options *o)
{
  double *lat = calloc ((size_t)o->n * (size_t)o->repeat + 1, sizeof *lat);
  double *totals = calloc ((size_t)o->repeat, sizeof *totals);
  double *probes = calloc ((size_t)o->repeat, sizeof *probes);
  int nlat = 0, ok = 0, errors = 0, probe_bad = 0;
  RoundResult last = {0};

  if (lat == NULL || totals == NULL || probes == NULL)
    die ("out of memory");
  for (int r = 0; r < o->repeat; r++) {
    last = run_round (o, lat, &nlat);
    totals[r] = last.total_ms;
    probes[r] = last.probe_ms;
    ok += last.ok;
    errors += last.errors;
    probe_bad += o->probe != NULL && (last.probe_status < 200 || last.probe_status >= 300);
  }
  qsort (totals, (size_t)o->repeat, sizeof *totals, cmp_double);
  qsort (probes, (size_t)o->repeat, sizeof *probes, cmp_double);
  printf ("{\"mode\":\"%s\",\"n\":%d,\"repeat\":%d,\"ok\":%d,\"errors\":%d,",
          o->hold_ms > 0 ? "hold" : "simultaneous", o->n, o->repeat, ok, errors);
  printf ("\"total_ms\":%.4f,\"total_min_ms\":%.4f,\"total_p10_ms\":%.4f,\"total_p90_ms\":%.4f,",
          percentile (totals, o->repeat, 50), totals[0], percentile (totals, o->repeat, 10),
          percentile (totals, o->repeat, 90));
  print_latencies (lat, nlat);
  printf (",\"totals_ms\":[");
  for (int r = 0; r < o->repeat; r++)
    printf ("%s%.4f", r ? "," : "", totals[r]);
  printf ("]");
  if (o->probe != NULL)
    printf (",\"probe_ms\":%.4f,\"probe_max_ms\":%.4f,\"probe_errors\":%d",
            percentile (probes, o->repeat, 50), probes[o->repeat - 1], probe_bad);
  if (o->hold_ms > 0)
    printf (",\"answered_early\":%d", last.early);
  if (o->rss_pid > 0)
    printf (",\"rss_before_kib\":%ld,\"rss_after_kib\":%ld", last.rss_before, last.rss_after);
  printf ("}\n");
  free (lat);
  free (totals);
  free (probes);
  return 0;
}

/* K requests one after another on one keep-alive connection; a fresh one if the server closes. */
static int
run_serial (const Options *o)
{
  double *lat = calloc ((size_t)o->serial, sizeof *lat);
  /* per path too: interleaving paths on one connection cancels slow drifts in machine load */
  int per = o->serial / o->npaths + 1;
  double *by_path = calloc ((size_t)per * (size_t)o->npaths, sizeof *by_path);
  int *nby = calloc ((size_t)o->npaths, sizeof *nby);
  int epfd = epoll_create1 (EPOLL_CLOEXEC), nlat = 0, errors = 0;
  Conn *c = calloc (1, sizeof *c);

  if (lat == NULL || by_path == NULL || nby == NULL || c == NULL || epfd < 0)
    die ("out of memory");
  c->fd = -1;
  for (int i = 0; i < o->serial; i++) {
    if (c->fd < 0 && (open_conn (o, epfd, c) != 0 ||
                      wait_connected (epfd, c, 1, now_ms () + o->timeout_ms) != 0))
      die ("cannot connect to %s:%d", o->host, o->port);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
    /* pump() unregisters an answered connection; a fresh one is still registered */
    if (epoll_ctl (epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0)
      epoll_ctl (epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->path = o->paths[i % o->npaths];
    if (send_request (o, c) == 0)
      pump (epfd, 1, now_ms () + o->timeout_ms);
    if (c->t_done >= 0 && c->status >= 200 && c->status < 300) {
      int k = i % o->npaths;
      lat[nlat++] = c->t_done - c->t_sent;
      by_path[k * per + nby[k]++] = c->t_done - c->t_sent;
    } else
      errors++;
    if (c->t_done < 0 || c->status <= 0 || strcasestr (c->buf, "connection: close") != NULL) {
      close (c->fd);
      c->fd = -1;
    }
  }
  printf ("{\"mode\":\"serial\",\"n\":%d,\"ok\":%d,\"errors\":%d,", o->serial, nlat, errors);
  print_latencies (lat, nlat);
  printf (",\"by_path\":{");
  for (int k = 0; k < o->npaths; k++) {
    printf ("%s\"%s\":{", k ? "," : "", o->paths[k]);
    print_latencies (by_path + k * per, nby[k]);
    printf ("}");
  }
  printf ("}}\n");
  if (c->fd >= 0)
    close (c->fd);
  close (epfd);
  free (c);
  free (lat);
  free (by_path);
  free (nby);
  return 0;
}

/* ---- command line ---- */

static void
usage (void)
{
  fputs ("usage: nsim [-h HOST] -p PORT [-b ADDR[,ADDR...]] [-n N] [-r REPEAT] [-s SERIAL]\n"
         "            [--probe PATH] [--probe-delay MS] [--hold MS] [--rss-pid PID]\n"
         "            [--timeout S] PATH...\n"
         "       nsim --free-port   (print a free TCP port on 127.0.0.1)\n",
         stderr);
  exit (2);
}

static int
free_port (void)
{
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl (INADDR_LOOPBACK)};
  socklen_t len = sizeof addr;
  int fd = socket (AF_INET, SOCK_STREAM, 0);

  if (fd < 0 || bind (fd, (struct sockaddr *)&addr, sizeof addr) != 0 ||
      getsockname (fd, (struct sockaddr *)&addr, &len) != 0)
    die ("cannot find a free port: %s", strerror (errno));
  printf ("%d\n", ntohs (addr.sin_port));
  close (fd);
  return 0;
}

static void
raise_fd_limit (int wanted)
{
  struct rlimit rl;

  if (getrlimit (RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)wanted) {
    rl.rlim_cur = rl.rlim_max < (rlim_t)wanted ? rl.rlim_max : (rlim_t)wanted;
    setrlimit (RLIMIT_NOFILE, &rl);
  }
}

int
main (int argc, char **argv)
{
  static const struct option longopts[] = {
      {"probe", required_argument, NULL, 'P'},
      {"probe-delay", required_argument, NULL, 'D'},
      {"hold", required_argument, NULL, 'H'},
      {"rss-pid", required_argument, NULL, 'R'},
      {"timeout", required_argument, NULL, 'T'},
      {"free-port", no_argument, NULL, 'F'},
      {NULL, 0, NULL, 0},
  };
  Options o = {.host = "127.0.0.1", .n = 1, .repeat = 1, .timeout_ms = 60000};
  int opt;

  while ((opt = getopt_long (argc, argv, "h:p:b:n:r:s:", longopts, NULL)) != -1) {
    switch (opt) {
    case 'h':
      o.host = optarg;
      break;
    case 'p':
      o.port = atoi (optarg);
      break;
    case 'b': {
      char *list = strdup (optarg), *save = NULL;

      for (char *a = strtok_r (list, ",", &save); a != NULL; a = strtok_r (NULL, ",", &save))
        if (o.nbinds == BIND_MAX || inet_pton (AF_INET, a, &o.binds[o.nbinds++]) != 1)
          die ("-b: not a list of at most %d IPv4 addresses: %s", BIND_MAX, optarg);
      free (list);
      break;
    }
    case 'n':
      o.n = atoi (optarg);
      break;
    case 'r':
      o.repeat = atoi (optarg);
      break;
    case 's':
      o.serial = atoi (optarg);
      break;
    case 'P':
      o.probe = optarg;
      break;
    case 'D':
      o.probe_delay_ms = atof (optarg);
      break;
    case 'H':
      o.hold_ms = atof (optarg);
      break;
    case 'R':
      o.rss_pid = atoi (optarg);
      break;
    case 'T':
      o.timeout_ms = atof (optarg) * 1e3;
      break;
    case 'F':
      return free_port ();
    default:
      usage ();
    }
  }
  o.paths = argv + optind;
  o.npaths = argc - optind;
  if (o.port <= 0 || o.port > 65535 || o.npaths == 0 || o.n < 1 || o.repeat < 1 || o.serial < 0 ||
      o.timeout_ms <= 0)
    usage ();
  raise_fd_limit (o.n + 64);
  return o.serial > 0 ? run_serial (&o) : run_simultaneous (&o);
}
