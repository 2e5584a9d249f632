/* rowwise.c's four kernels (LayerNorm, RMSNorm, the rotary embedding, the gated MLP's
 * silu(gate) * up) in plain C that the compiler vectorises for the CPU it builds on:
 * AVX2 here, NEON on ARM. Same entry points, arguments, arithmetic (fp32 throughout)
 * and roundings as the AVX-512 version, which kernels.py loads instead where the CPU
 * has AVX-512.
 *
 * Each kernel's row is an always-inlined function called with the dtype flag as a
 * constant, so every loop is compiled once for fp32 and once for bf16 without a branch
 * in it (which would keep it scalar); bf16 values widen by a shift and narrow to
 * nearest even, and the SiLU's exponential is portable.h's polynomial (relative error
 * 2.4e-7). */
#include <stdint.h>
#include <math.h>
#include <omp.h>
#include "portable.h"

#define ROW static inline __attribute__((always_inline)) void
/* Call `row` with the dtype flag as a compile-time constant. */
#define BY_DTYPE(row, ...) do { if (fp32) row(__VA_ARGS__, 1); else row(__VA_ARGS__, 0); } while (0)

static inline void store(void *row, int64_t d, float v, int fp32)
{
    if (fp32) ((float *)row)[d] = v;
    else ((uint16_t *)row)[d] = round_bf16(v);
}

/* v rounded to bf16 where the data is bf16 (the reference rounds between steps). */
static inline float rounded(float v, int fp32)
{
    return fp32 ? v : widen_bf16(round_bf16(v));
}

ROW layer_norm_row(const char *xr, char *yr, const float *w, const float *b, int64_t n,
                   float eps, const int fp32)
{
    float sum = 0.0f;
    #pragma omp simd reduction(+:sum)
    for (int64_t d = 0; d < n; d++) sum += load(xr, d, fp32);
    const float mean = sum / (float)n;
    float sq = 0.0f;  /* the variance around the mean: two passes, no cancellation */
    #pragma omp simd reduction(+:sq)
    for (int64_t d = 0; d < n; d++) {
        const float t = load(xr, d, fp32) - mean;
        sq += t * t;
    }
    const float rstd = 1.0f / sqrtf(sq / (float)n + eps);
    #pragma omp simd
    for (int64_t d = 0; d < n; d++)
        store(yr, d, (load(xr, d, fp32) - mean) * rstd * w[d] + b[d], fp32);
}

int cenote_layer_norm(const void *x, int64_t ld_x, void *y, int64_t ld_y,
                      const float *w, const float *b, int64_t rows, int64_t n,
                      float eps, int fp32, int threads)
{
    if (n <= 0 || n % 16 || threads < 1) return -1;
    const size_t es = fp32 ? 4 : 2;
    #pragma omp parallel for num_threads(threads) schedule(static) if (rows * n >= 65536)
    for (int64_t r = 0; r < rows; r++)
        BY_DTYPE(layer_norm_row, (const char *)x + r * ld_x * es, (char *)y + r * ld_y * es,
                 w, b, n, eps);
    return 0;
}

ROW rms_norm_row(const char *xr, char *yr, const float *w, int64_t n, float eps,
                 const int fp32)
{
    float sq = 0.0f;
    #pragma omp simd reduction(+:sq)
    for (int64_t d = 0; d < n; d++) {
        const float v = load(xr, d, fp32);
        sq += v * v;
    }
    const float rstd = 1.0f / sqrtf(sq / (float)n + eps);
    #pragma omp simd
    for (int64_t d = 0; d < n; d++)
        store(yr, d, rounded(load(xr, d, fp32) * rstd, fp32) * w[d], fp32);
}

int cenote_rms_norm(const void *x, int64_t ld_x, void *y, const float *w, int64_t rows,
                    int64_t groups, int64_t n, float eps, int fp32, int threads)
{
    if (n <= 0 || n % 16 || groups < 1 || threads < 1) return -1;
    const size_t es = fp32 ? 4 : 2;
    const int64_t items = rows * groups;
    #pragma omp parallel for num_threads(threads) schedule(static) if (items * n >= 65536)
    for (int64_t item = 0; item < items; item++) {
        const int64_t r = item / groups, g = item % groups;
        BY_DTYPE(rms_norm_row, (const char *)x + (r * ld_x + g * n) * es,
                 (char *)y + item * n * es, w, n, eps);
    }
    return 0;
}

ROW rotary_row(const char *xr, const char *cr, const char *sr, char *o, int64_t n,
               const int fp32)
{
    const int64_t half = n / 2;
    #pragma omp simd
    for (int64_t d = 0; d < half; d++) {
        const float x1 = load(xr, d, fp32), x2 = load(xr, half + d, fp32);
        const float a1 = rounded(x1 * load(cr, d, fp32), fp32);
        const float b1 = rounded(-x2 * load(sr, d, fp32), fp32);
        const float a2 = rounded(x2 * load(cr, half + d, fp32), fp32);
        const float b2 = rounded(x1 * load(sr, half + d, fp32), fp32);
        store(o, d, a1 + b1, fp32);
        store(o, half + d, a2 + b2, fp32);
    }
}

int cenote_rotary(const void *x, int64_t ld_x, void *out, const void *cos_, const void *sin_,
                  int64_t rows, int64_t groups, int64_t n, int fp32, int threads)
{
    if (n <= 0 || n % 32 || groups < 1 || threads < 1) return -1;
    const size_t es = fp32 ? 4 : 2;
    const int64_t items = rows * groups;
    #pragma omp parallel for num_threads(threads) schedule(static) if (items * n >= 65536)
    for (int64_t item = 0; item < items; item++) {
        const int64_t r = item / groups, g = item % groups;
        BY_DTYPE(rotary_row, (const char *)x + (r * ld_x + g * n) * es,
                 (const char *)cos_ + r * n * es, (const char *)sin_ + r * n * es,
                 (char *)out + item * n * es, n);
    }
    return 0;
}

ROW silu_mul_row(const char *xr, char *o, int64_t n, const int fp32)
{
    #pragma omp simd
    for (int64_t d = 0; d < n; d++) {
        const float g = load(xr, d, fp32), u = load(xr, n + d, fp32);
        /* sigmoid from exp(-|g|), which never overflows: 1 / (1 + e) for g >= 0,
           e / (1 + e) below */
        const float e = exp2_nonpositive(-fabsf(g) * 1.44269504089f);
        const float sig = (g >= 0.0f ? 1.0f : e) / (1.0f + e);
        store(o, d, rounded(g * sig, fp32) * u, fp32);
    }
}

int cenote_silu_mul(const void *x, int64_t ld_x, void *out, int64_t rows, int64_t n,
                    int fp32, int threads)
{
    if (n <= 0 || n % 16 || threads < 1) return -1;
    const size_t es = fp32 ? 4 : 2;
    #pragma omp parallel for num_threads(threads) schedule(static) if (rows * n >= 65536)
    for (int64_t r = 0; r < rows; r++)
        BY_DTYPE(silu_mul_row, (const char *)x + r * ld_x * es, (char *)out + r * n * es, n);
    return 0;
}
