#include <string.h>
#include "demo.h"

void demo_reverse(char *text)
{
    size_t n = strlen(text);
    for (size_t i = 0; i < n / 2; i++) {
        char t = text[i];
        text[i] = text[n - 1 - i];
        text[n - 1 - i] = t;
    }
}
