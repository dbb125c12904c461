#include "demo.h"

static void swap(int *a, int *b) { int t = *a; *a = *b; *b = t; }

static void quicksort(int *v, long lo, long hi)
{
    while (lo < hi) {
        int pivot = v[(lo + hi) / 2];
        long i = lo, j = hi;
        while (i <= j) {
            while (v[i] < pivot) i++;
            while (v[j] > pivot) j--;
            if (i <= j) swap(&v[i++], &v[j--]);
        }
        if (j - lo < hi - i) { quicksort(v, lo, j); lo = i; }
        else { quicksort(v, i, hi); hi = j; }
    }
}

void demo_sort(int *values, size_t count)
{
    if (count > 1) quicksort(values, 0, (long)count - 1);
}
