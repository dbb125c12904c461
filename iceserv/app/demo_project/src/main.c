/* Runs every module once and checks known answers; prints "demo OK" when all agree. */
#include <stdio.h>
#include <string.h>
#include "demo.h"

#define CHECK(cond) do { if (!(cond)) { printf("FAILED: %s\n", #cond); return 1; } } while (0)

int main(void)
{
    const unsigned char text[] = "123456789";
    int values[] = {5, 3, 9, 1, 7, 2, 8};
    double id[4] = {1, 0, 0, 1}, m[4] = {1, 2, 3, 4}, out[4];
    double samples[] = {2, 4, 4, 4, 5, 5, 7, 9};
    char b64[16], word[] = "icecream";
    unsigned char rle[16];

    CHECK(demo_crc32(text, 9) == 0xCBF43926u);
    demo_sort(values, 7);
    CHECK(values[0] == 1 && values[6] == 9);
    CHECK(demo_primes_below(100) == 25);
    demo_matmul(id, m, out, 2);
    CHECK(memcmp(out, m, sizeof m) == 0);
    CHECK(demo_base64((const unsigned char *)"Man", 3, b64) == 4 && strcmp(b64, "TWFu") == 0);
    CHECK(demo_fnv1a("a") == 0xaf63dc4c8601ec8cull);
    CHECK(demo_rle((const unsigned char *)"aaab", 4, rle) == 4 && rle[0] == 3);
    CHECK(demo_fib(50) == 12586269025ull);
    demo_reverse(word);
    CHECK(strcmp(word, "maerceci") == 0);
    CHECK(demo_mean(samples, 8) == 5.0 && demo_stddev(samples, 8) == 2.0);
    CHECK(demo_queue_selftest());
    puts("demo OK");
    return 0;
}
