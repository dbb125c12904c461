/* The demo project's shared declarations: a dozen small, independent modules. */
#ifndef DEMO_H
#define DEMO_H
#include <stddef.h>
#include <stdint.h>

uint32_t demo_crc32(const unsigned char *data, size_t len);
void demo_sort(int *values, size_t count);
size_t demo_primes_below(unsigned limit);
void demo_matmul(const double *a, const double *b, double *out, size_t n);
size_t demo_base64(const unsigned char *in, size_t len, char *out);
uint64_t demo_fnv1a(const char *text);
size_t demo_rle(const unsigned char *in, size_t len, unsigned char *out);
uint64_t demo_fib(unsigned n);
void demo_reverse(char *text);
double demo_mean(const double *values, size_t count);
double demo_stddev(const double *values, size_t count);
int demo_queue_selftest(void);
#endif
