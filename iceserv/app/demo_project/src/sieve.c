#include <stdlib.h>
#include "demo.h"

size_t demo_primes_below(unsigned limit)
{
    if (limit < 3) return 0;
    unsigned char *composite = calloc(limit, 1);
    if (!composite) return 0;
    size_t found = 0;
    for (unsigned i = 2; i < limit; i++) {
        if (composite[i]) continue;
        found++;
        for (unsigned long j = (unsigned long)i * i; j < limit; j += i) composite[j] = 1;
    }
    free(composite);
    return found;
}
