/* mandelbrot.c - example crunchd plugin: a Mandelbrot tile as a grayscale PNG.
 *
 * CPU-bound and binary: GET /fn/mandelbrot?cx=-0.5&cy=0&width=3&size=256&iter=256 returns
 * image/png. It checks for cancellation once per row, so a cancelled tile stops within one row,
 * and reports the rows done as its progress (crunchd_progress(), ABI 2).
 * The PNG is written by hand with "stored" (uncompressed) deflate blocks, so the plugin needs
 * nothing beyond the C library. Build: cc -shared -fPIC $(pkg-config --cflags crunchd-plugin) */
#include <crunchd/crunchd-plugin.h>
#include <stdlib.h>
#include <string.h>

static const CrunchdArg args[] = {
    {"cx", CRUNCHD_ARG_FLOAT, -2, 2, "-0.5", "real part of the tile's centre"},
    {"cy", CRUNCHD_ARG_FLOAT, -2, 2, "0", "imaginary part of the tile's centre"},
    {"width", CRUNCHD_ARG_FLOAT, 1e-12, 4, "3", "width of the tile in the complex plane"},
    {"size", CRUNCHD_ARG_INT, 1, 2048, "256", "pixels per side"},
    {"iter", CRUNCHD_ARG_INT, 1, 100000, "256", "iterations before a point counts as inside"},
};

static uint32_t
crc32_update (uint32_t crc, const unsigned char *p, size_t n)
{
  crc = ~crc;
  while (n--) {
    crc ^= *p++;
    for (int k = 0; k < 8; k++)
      crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1)));
  }
  return ~crc;
}

typedef struct {
  unsigned char *data;
  size_t len;
} Buffer;

static void
put32 (unsigned char *p, uint32_t v)
{
  p[0] = v >> 24, p[1] = v >> 16, p[2] = v >> 8, p[3] = v;
}

/* Appends a chunk: length, type, data, CRC of type + data. */
static void
chunk (Buffer *out, const char *type, const unsigned char *data, uint32_t len)
{
  unsigned char *p = out->data + out->len;

  put32 (p, len);
  memcpy (p + 4, type, 4);
  if (len > 0)
    memcpy (p + 8, data, len);
  put32 (p + 8 + len, crc32_update (0, p + 4, len + 4));
  out->len += 12 + len;
}

/* zlib stream of stored blocks around `raw` (filter byte + pixels for each row). */
static size_t
zlib_stored (unsigned char *z, const unsigned char *raw, size_t n)
{
  size_t at = 0, pos = 0;
  uint32_t a = 1, b = 0;

  z[at++] = 0x78, z[at++] = 0x01;
  do {
    size_t block = n - pos > 65535 ? 65535 : n - pos;
    z[at++] = pos + block == n; /* BFINAL, BTYPE 00 */
    z[at++] = block & 0xff, z[at++] = block >> 8;
    z[at++] = ~block & 0xff, z[at++] = (~block >> 8) & 0xff;
    memcpy (z + at, raw + pos, block);
    at += block, pos += block;
  } while (pos < n);
  for (size_t i = 0; i < n; i++) {
    a = (a + raw[i]) % 65521;
    b = (b + a) % 65521;
  }
  put32 (z + at, (b << 16) | a);
  return at + 4;
}

static int
encode_png (const unsigned char *raw, uint32_t size, CrunchdResult *result)
{
  size_t raw_len = (size_t)size * (size + 1);
  size_t z_cap = raw_len + 5 * (raw_len / 65535 + 1) + 6;
  unsigned char ihdr[13] = {0};
  unsigned char *z = malloc (z_cap);
  Buffer out = {malloc (8 + 25 + 12 + z_cap + 12), 0};
  size_t z_len;

  if (z == NULL || out.data == NULL) {
    free (z), free (out.data);
    return -1;
  }
  memcpy (out.data, "\x89PNG\r\n\x1a\n", 8);
  out.len = 8;
  put32 (ihdr, size), put32 (ihdr + 4, size);
  ihdr[8] = 8; /* bit depth; colour type 0 = grayscale */
  chunk (&out, "IHDR", ihdr, sizeof ihdr);
  z_len = zlib_stored (z, raw, raw_len);
  chunk (&out, "IDAT", z, (uint32_t)z_len);
  chunk (&out, "IEND", NULL, 0);
  free (z);
  result->data = out.data;
  result->len = out.len;
  return 0;
}

static CrunchdStatus
mandelbrot_run (const CrunchdCall *call, CrunchdResult *result)
{
  double cx = call->args[0].v.f, cy = call->args[1].v.f, width = call->args[2].v.f;
  uint32_t size = (uint32_t)call->args[3].v.i;
  int64_t iter = call->args[4].v.i;
  unsigned char *raw = malloc ((size_t)size * (size + 1));
  double step = width / size;

  if (raw == NULL)
    return crunchd_result_error (result, "out of memory for a %u x %u tile", size, size);
  for (uint32_t row = 0; row < size; row++) {
    unsigned char *line = raw + (size_t)row * (size + 1);
    char message[48];

    if (crunchd_cancelled (call)) { /* coarse enough: one check per row */
      free (raw);
      return CRUNCHD_CANCELLED;
    }
    snprintf (message, sizeof message, "row %u of %u", row, size);
    crunchd_progress (call, (double)row / size, message);
    line[0] = 0; /* PNG filter: none */
    for (uint32_t col = 0; col < size; col++) {
      double x0 = cx - width / 2 + (col + 0.5) * step, y0 = cy + width / 2 - (row + 0.5) * step;
      double x = 0, y = 0;
      int64_t i = 0;
      while (i < iter && x * x + y * y <= 4) {
        double t = x * x - y * y + x0;
        y = 2 * x * y + y0;
        x = t;
        i++;
      }
      line[1 + col] = i == iter ? 0 : (unsigned char)(255 - (i * 255) / iter);
    }
  }
  if (encode_png (raw, size, result) != 0) {
    free (raw);
    return crunchd_result_error (result, "out of memory encoding the PNG");
  }
  free (raw);
  return CRUNCHD_OK;
}

static const CrunchdFunction mandelbrot = {
    .name = "mandelbrot",
    .description = "a grayscale Mandelbrot tile as PNG",
    .args = args,
    .n_args = sizeof args / sizeof args[0],
    .pure = 1,
    .deadline = 60,
    .content_type = "image/png",
    .run = mandelbrot_run,
};

static int
init (CrunchdHost *host)
{
  return host->register_function (host, &mandelbrot);
}

CRUNCHD_PLUGIN_DEFINE ("mandelbrot", "1.0", init);
