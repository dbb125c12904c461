#include "demo.h"

uint64_t demo_fnv1a(const char *text)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *text; text++) {
        h ^= (unsigned char)*text;
        h *= 0x100000001b3ull;
    }
    return h;
}
