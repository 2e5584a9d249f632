/* The two passes around an int8 matmul with one scale per token (per row), in plain C
 * that the compiler vectorises (AVX2, AVX-512 or NEON): one kernel on every CPU.
 *
 * cenote_quantize_rows: each row of x, times the per-channel smoothing factor, is mapped
 * onto 0..255 by its own range: q = round((x * smooth - lo) / scale), with
 * scale = (hi - lo) / 255, so that x * smooth ~= scale * q + lo. x is fp32 or bf16.
 *
 * cenote_dequantize_rows: from the matmul's sums acc[m][n] = sum_k q[m][k] * w[n][k]
 * (already times the weight row's scale), the real product is
 * scale[m] * acc[m][n] + lo[m] * wsum[n], wsum[n] the weight row's sum; plus the bias,
 * then the activation (GELU, its tanh form or ReLU: applied here, since oneDNN cannot
 * apply it to sums that are not yet the product) and, when given, a residual. In place
 * on acc, or rounded to bf16 into a separate output (for the bf16 attention kernel). */
#include <stdint.h>
#include <omp.h>
#include "portable.h"

enum { NONE = 0, GELU = 1, GELU_TANH = 2, RELU = 3 };

/* erf as x * P(x^2) / Q(x^2) on x clamped to [-4, 4] (erf(4) = 1 - 1.5e-8): a rational
 * fit made for this kernel (iteratively reweighted least squares on [0, 4], largest
 * error 1.5e-7 in exact arithmetic, ~1e-6 in float), with no exp and one division:
 * GELU 1.25x cheaper than the exp-based form (Abramowitz and Stegun 7.1.26) it replaced. */
static inline float erf_approx(float x)
{
    x = x < -4.0f ? -4.0f : (x > 4.0f ? 4.0f : x);
    const float t = x * x;
    float p = 1.9463388159e-08f;
    p = p * t - 1.9411999736e-06f;
    p = p * t + 1.4270738829e-04f;
    p = p * t + 3.7578267832e-03f;
    p = p * t + 5.0713618083e-02f;
    p = p * t + 2.0137414985e-01f;
    p = p * t + 1.1283790405e+00f;
    float q = 9.6882049851e-04f;
    q = q * t + 1.4455931684e-02f;
    q = q * t + 1.1555347364e-01f;
    q = q * t + 5.1179398794e-01f;
    q = q * t + 1.0f;
    return x * p / q;
}

static inline float activate(float v, const int activation)
{
    if (activation == GELU) return 0.5f * v * (1.0f + erf_approx(v * 0.70710678118f));
    if (activation == GELU_TANH) {
        const float u = 0.7978845608f * (v + 0.044715f * v * v * v);
        const float a = u < 0.0f ? -u : u;
        const float e = exp2_nonpositive(-2.0f * a * 1.4426950409f);  /* e^-2|u| */
        const float th = (1.0f - e) / (1.0f + e);
        return 0.5f * v * (1.0f + (u < 0.0f ? -th : th));
    }
    if (activation == RELU) return v > 0.0f ? v : 0.0f;
    return v;
}

/* The codes of one row of values v = x * smooth (smooth null: v = x, fp32) whose range is
 * [lo, hi], and the row's scale and offset. */
static inline __attribute__((always_inline)) void write_codes(
    const void *xr, const float *smooth, float lo, float hi, uint8_t *qr, float *scale,
    float *lo_out, int64_t n, const int fp32)
{
    /* A constant row: every q is 0 and the product is lo * wsum, exactly. */
    const float s = hi > lo ? (hi - lo) / 255.0f : 1.0f;
    const float inv = 1.0f / s;
    /* smooth is the same for the whole loop: the compiler makes one loop per case */
    #pragma omp simd
    for (int64_t k = 0; k < n; k++) {
        const float v = smooth ? load(xr, k, fp32) * smooth[k] : ((const float *)xr)[k];
        float t = (v - lo) * inv + 0.5f;  /* >= 0.5: truncation rounds */
        t = t > 255.0f ? 255.0f : t;
        qr[k] = (uint8_t)(int32_t)t;
    }
    *scale = s;
    *lo_out = lo;
}

/* One row; fp32 a compile-time constant (fp32 or bf16 input, no branch in the loops). */
static inline __attribute__((always_inline)) void quantize_row(
    const void *xr, const float *smooth, uint8_t *qr, float *scale, float *lo_out,
    int64_t n, const int fp32)
{
    float lo = load(xr, 0, fp32) * smooth[0], hi = lo;
    #pragma omp simd reduction(min:lo) reduction(max:hi)
    for (int64_t k = 0; k < n; k++) {
        const float v = load(xr, k, fp32) * smooth[k];
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    write_codes(xr, smooth, lo, hi, qr, scale, lo_out, n, fp32);
}

/* x: rows of fp32 (x_fp32 = 1) or bf16 (0), ld_x elements apart. */
int cenote_quantize_rows(const void *x, int64_t ld_x, const float *smooth, uint8_t *q,
                         float *scale, float *lo, int64_t rows, int64_t n, int x_fp32,
                         int threads)
{
    if (n <= 0 || threads < 1) return -1;
    const int64_t bytes = x_fp32 ? 4 : 2;
    #pragma omp parallel for num_threads(threads) schedule(static) if (rows * n >= 65536)
    for (int64_t r = 0; r < rows; r++) {
        const char *xr = (const char *)x + r * ld_x * bytes;
        if (x_fp32) quantize_row(xr, smooth, q + r * n, scale + r, lo + r, n, 1);
        else quantize_row(xr, smooth, q + r * n, scale + r, lo + r, n, 0);
    }
    return 0;
}

/* Call `row` with the activation as a compile-time constant (no branch in its loop). */
#define BY_ACTIVATION(activation, row, ...) do { switch (activation) { \
    case GELU: row(__VA_ARGS__, GELU); break; \
    case GELU_TANH: row(__VA_ARGS__, GELU_TANH); break; \
    case RELU: row(__VA_ARGS__, RELU); break; \
    default: row(__VA_ARGS__, NONE); } } while (0)

/* One row, with the activation a compile-time constant (no branch in the loop); into
 * ob as bf16 where ob is given (no residual then), else in place. */
static inline __attribute__((always_inline)) void dequantize_row(
    float *ar, uint16_t *ob, float s, float l, const float *wsum, const float *bias,
    const float *rr, int64_t n, const int activation)
{
    if (ob) {
        #pragma omp simd
        for (int64_t c = 0; c < n; c++)
            ob[c] = round_bf16(activate(s * ar[c] + l * wsum[c] + bias[c], activation));
    } else if (rr) {
        #pragma omp simd
        for (int64_t c = 0; c < n; c++)
            ar[c] = activate(s * ar[c] + l * wsum[c] + bias[c], activation) + rr[c];
    } else {
        #pragma omp simd
        for (int64_t c = 0; c < n; c++)
            ar[c] = activate(s * ar[c] + l * wsum[c] + bias[c], activation);
    }
}

/* out_bf16: null (the result replaces acc) or [rows, n] bf16 (then no residual). */
int cenote_dequantize_rows(float *acc, const float *scale, const float *lo,
                           const float *wsum, const float *bias, const float *residual,
                           int64_t ld_residual, uint16_t *out_bf16, int64_t rows, int64_t n,
                           int activation, int threads)
{
    if (n <= 0 || threads < 1 || activation < NONE || activation > RELU
            || (out_bf16 && residual)) return -1;
    #pragma omp parallel for num_threads(threads) schedule(static) if (rows * n >= 65536)
    for (int64_t r = 0; r < rows; r++) {
        float *ar = acc + r * n;
        const float *rr = residual ? residual + r * ld_residual : 0;
        uint16_t *ob = out_bf16 ? out_bf16 + r * n : 0;
        BY_ACTIVATION(activation, dequantize_row, ar, ob, scale[r], lo[r], wsum, bias, rr, n);
    }
    return 0;
}

/* One row of sums dequantized, activated and smoothed into v, in one pass that also
 * takes v's range; the activation a compile-time constant. */
static inline __attribute__((always_inline)) void activate_smoothed_row(
    const float *ar, float *v, float s, float l, const float *wsum, const float *bias,
    const float *smooth, int64_t n, float *lo_out, float *hi_out, const int activation)
{
    float lo = activate(s * ar[0] + l * wsum[0] + bias[0], activation) * smooth[0], hi = lo;
    #pragma omp simd reduction(min:lo) reduction(max:hi)
    for (int64_t c = 0; c < n; c++) {
        const float t = activate(s * ar[c] + l * wsum[c] + bias[c], activation) * smooth[c];
        v[c] = t;
        lo = t < lo ? t : lo;
        hi = t > hi ? t : hi;
    }
    *lo_out = lo;
    *hi_out = hi;
}

/* Between the two matmuls of a feed-forward block: the first's sums dequantized and
 * activated (as cenote_dequantize_rows, no residual), times the second's smoothing,
 * quantized per row for it (as cenote_quantize_rows). Each row passes through a buffer
 * on the stack, so the wide activation is never written out in fp32 (n <= 16384). */
int cenote_requantize_rows(const float *acc, const float *scale, const float *lo,
                           const float *wsum, const float *bias, int activation,
                           const float *smooth, uint8_t *q, float *scale_out,
                           float *lo_out, int64_t rows, int64_t n, int threads)
{
    if (n <= 0 || n > 16384 || threads < 1 || activation < NONE || activation > RELU)
        return -1;
    #pragma omp parallel num_threads(threads) if (rows * n >= 65536)
    {
        float row[n];
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            float low, high;
            BY_ACTIVATION(activation, activate_smoothed_row, acc + r * n, row, scale[r], lo[r],
                          wsum, bias, smooth, n, &low, &high);
            write_codes(row, 0, low, high, q + r * n, scale_out + r, lo_out + r, n, 1);
        }
    }
    return 0;
}
