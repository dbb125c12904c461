#include "demo.h"

size_t demo_rle(const unsigned char *in, size_t len, unsigned char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t run = 1;
        while (i + run < len && in[i + run] == in[i] && run < 255) run++;
        out[o++] = (unsigned char)run;
        out[o++] = in[i];
        i += run;
    }
    return o;
}
