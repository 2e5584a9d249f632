/* The two passes around an int8 matmul with one scale per token (per row), in plain C
 * that the compiler vectorises (AVX2, AVX-512 or NEON): one kernel on every CPU.
 *
 * cenote_quantize_rows: each row of x, times the per-channel smoothing factor, is mapped
 * onto 0..255 by its own range: q = round((x * smooth - lo) / scale), with
 * scale = (hi - lo) / 255, so that x * smooth ~= scale * q + lo.
 *
 * cenote_dequantize_rows: from the matmul's sums acc[m][n] = sum_k q[m][k] * w[n][k]
 * (already times the weight row's scale), the real product is
 * scale[m] * acc[m][n] + lo[m] * wsum[n], wsum[n] the weight row's sum; plus the bias
 * and, when given, a residual. In place on acc. */
#include <stdint.h>
#include <omp.h>

static inline void quantize_row(const float *xr, const float *smooth, uint8_t *qr,
                                float *scale, float *lo_out, int64_t n)
{
    float lo = xr[0] * smooth[0], hi = lo;
    #pragma omp simd reduction(min:lo) reduction(max:hi)
    for (int64_t k = 0; k < n; k++) {
        const float v = xr[k] * smooth[k];
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    /* A constant row: every q is 0 and the product is lo * wsum, exactly. */
    const float s = hi > lo ? (hi - lo) / 255.0f : 1.0f;
    const float inv = 1.0f / s;
    #pragma omp simd
    for (int64_t k = 0; k < n; k++) {
        float t = (xr[k] * smooth[k] - lo) * inv + 0.5f;  /* >= 0.5: truncation rounds */
        t = t > 255.0f ? 255.0f : t;
        qr[k] = (uint8_t)(int32_t)t;
    }
    *scale = s;
    *lo_out = lo;
}

int cenote_quantize_rows(const float *x, int64_t ld_x, const float *smooth, uint8_t *q,
                         float *scale, float *lo, int64_t rows, int64_t n, int threads)
{
    if (n <= 0 || threads < 1) return -1;
    #pragma omp parallel for num_threads(threads) schedule(static) if (rows * n >= 65536)
    for (int64_t r = 0; r < rows; r++)
        quantize_row(x + r * ld_x, smooth, q + r * n, scale + r, lo + r, n);
    return 0;
}

int cenote_dequantize_rows(float *acc, const float *scale, const float *lo,
                           const float *wsum, const float *bias, const float *residual,
                           int64_t ld_residual, int64_t rows, int64_t n, int threads)
{
    if (n <= 0 || threads < 1) return -1;
    #pragma omp parallel for num_threads(threads) schedule(static) if (rows * n >= 65536)
    for (int64_t r = 0; r < rows; r++) {
        float *ar = acc + r * n;
        const float s = scale[r], l = lo[r];
        if (residual) {
            const float *rr = residual + r * ld_residual;
            #pragma omp simd
            for (int64_t c = 0; c < n; c++) ar[c] = s * ar[c] + l * wsum[c] + bias[c] + rr[c];
        } else {
            #pragma omp simd
            for (int64_t c = 0; c < n; c++) ar[c] = s * ar[c] + l * wsum[c] + bias[c];
        }
    }
    return 0;
}
