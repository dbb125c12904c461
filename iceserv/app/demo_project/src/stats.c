#include <math.h>
#include "demo.h"

double demo_mean(const double *values, size_t count)
{
    double sum = 0.0;
    for (size_t i = 0; i < count; i++) sum += values[i];
    return count ? sum / (double)count : 0.0;
}

double demo_stddev(const double *values, size_t count)
{
    double mean = demo_mean(values, count), acc = 0.0;
    for (size_t i = 0; i < count; i++) acc += (values[i] - mean) * (values[i] - mean);
    return count ? sqrt(acc / (double)count) : 0.0;
}
