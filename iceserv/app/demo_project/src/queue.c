#include "demo.h"

#define CAPACITY 16

struct ring { int items[CAPACITY]; unsigned head, tail; };

static int push(struct ring *r, int v)
{
    if (r->tail - r->head == CAPACITY) return 0;
    r->items[r->tail++ % CAPACITY] = v;
    return 1;
}

static int pop(struct ring *r, int *v)
{
    if (r->tail == r->head) return 0;
    *v = r->items[r->head++ % CAPACITY];
    return 1;
}

int demo_queue_selftest(void)
{
    struct ring r = {{0}, 0, 0};
    for (int i = 0; i < CAPACITY; i++) if (!push(&r, i)) return 0;
    if (push(&r, 99)) return 0;
    for (int i = 0; i < CAPACITY; i++) { int v; if (!pop(&r, &v) || v != i) return 0; }
    return 1;
}
