/* fib.h - the built-in function behind /fib/N: naive recursive Fibonacci, standing for any slow
 * computation. Registered like a plugin function (functions.c); its settings are its own group of
 * crunchd.ini. */
#pragma once

#include <glib.h>

/* [fib] */
typedef struct {
  guint max_n;     /* largest N accepted (at most 93: fib(93) fits in 64 bits) */
  gdouble timeout; /* seconds: the deadline of one fib request */
} CrunchFibConfig;
