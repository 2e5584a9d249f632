/* Row-wise steps around attention, on CPU, for packed [rows, n] bf16 or fp32
 * activations: LayerNorm (BERT family), RMSNorm, the rotary embedding and the
 * gated MLP's silu(gate) * up (decoders).
 *
 * Why a kernel of our own: torch's bf16 layer_norm on CPU runs at about a tenth
 * of the memory speed at embedding-model widths (0.76 ms for 8192 x 384 on two
 * cores, a copy of the same tensor 0.08 ms). A row of a few hundred values sits
 * in L1, so three passes over it cost little: the mean, then the variance
 * around it (two passes, no cancellation), then (x - mean) * rstd * w + b. All
 * arithmetic in fp32; a bf16 result is rounded once, to nearest even. RMSNorm
 * (the decoders') is one pass for what takes torch five operations with fp32
 * temporaries (square, mean, rsqrt, scale, cast, weight), with the same two
 * roundings as the reference; the rotary embedding likewise replaces five (two
 * products, a negation, a concatenation, a sum). Rows are split over OpenMP
 * threads (torch's libgomp) when there are enough of them.
 * Built once per machine by cenote/models/kernels.py. */
#include <stdint.h>
#include <math.h>
#include <omp.h>
#include "simd.h"

/* y[r] = (x[r] - mean) / sqrt(var + eps) * w + b for each row r < rows; x and y
   rows at strides ld_x, ld_y (elements); w, b: n fp32 values. Returns 0, or -1
   when n is not a positive multiple of 16. */
int cenote_layer_norm(const void *x, int64_t ld_x, void *y, int64_t ld_y,
                      const float *w, const float *b, int64_t rows, int64_t n,
                      float eps, int fp32, int threads)
{
    if (n <= 0 || n % 16 || threads < 1) return -1;
    const size_t es = fp32 ? 4 : 2;
    const float inv_n = 1.0f / (float)n;
    /* Small batches (a server's few sentences) are not worth waking threads for. */
    #pragma omp parallel for num_threads(threads) schedule(static) if (rows * n >= 65536)
    for (int64_t r = 0; r < rows; r++) {
        const char *xr = (const char *)x + r * ld_x * es;
        char *yr = (char *)y + r * ld_y * es;
        __m512 acc = _mm512_setzero_ps();
        for (int64_t d = 0; d < n; d += 16) acc = _mm512_add_ps(acc, load16(xr, d, fp32));
        const __m512 mean = _mm512_set1_ps(_mm512_reduce_add_ps(acc) * inv_n);
        __m512 sq = _mm512_setzero_ps();
        for (int64_t d = 0; d < n; d += 16) {
            const __m512 t = _mm512_sub_ps(load16(xr, d, fp32), mean);
            sq = _mm512_fmadd_ps(t, t, sq);
        }
        const __m512 rstd = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(sq) * inv_n + eps));
        for (int64_t d = 0; d < n; d += 16) {
            const __m512 t = _mm512_mul_ps(_mm512_sub_ps(load16(xr, d, fp32), mean), rstd);
            store16(yr, d, _mm512_fmadd_ps(t, _mm512_loadu_ps(w + d), _mm512_loadu_ps(b + d)), fp32);
        }
    }
    return 0;
}

/* RMSNorm as Qwen2/Qwen3/Llama/Mistral define it: t = x / sqrt(mean(x^2) + eps) in
   fp32, rounded to the input's type (bf16) before y = t * w, rounded again; fp32
   input: no intermediate rounding. Each row of x holds `groups` vectors of n
   (per-head norms: a row is a token, a group one head); x rows at stride ld_x,
   groups contiguous; y is [rows, groups * n] contiguous. w: n fp32 values. */
int cenote_rms_norm(const void *x, int64_t ld_x, void *y, const float *w, int64_t rows,
                    int64_t groups, int64_t n, float eps, int fp32, int threads)
{
    if (n <= 0 || n % 16 || groups < 1 || threads < 1) return -1;
    const size_t es = fp32 ? 4 : 2;
    const float inv_n = 1.0f / (float)n;
    const int64_t items = rows * groups;
    #pragma omp parallel for num_threads(threads) schedule(static) if (items * n >= 65536)
    for (int64_t item = 0; item < items; item++) {
        const int64_t r = item / groups, g = item % groups;
        const char *xr = (const char *)x + (r * ld_x + g * n) * es;
        char *yr = (char *)y + item * n * es;
        __m512 sq = _mm512_setzero_ps();
        for (int64_t d = 0; d < n; d += 16) {
            const __m512 v = load16(xr, d, fp32);
            sq = _mm512_fmadd_ps(v, v, sq);
        }
        const __m512 rstd = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(sq) * inv_n + eps));
        for (int64_t d = 0; d < n; d += 16) {
            __m512 t = _mm512_mul_ps(load16(xr, d, fp32), rstd);
            if (!fp32) t = round_bf16(t);
            store16(yr, d, _mm512_mul_ps(t, _mm512_loadu_ps(w + d)), fp32);
        }
    }
    return 0;
}

/* Rotary position embedding, half-split layout, as transformers writes it:
   out = x * cos + cat(-x2, x1) * sin, with cos/sin [rows, n] per token (each half
   the same frequencies). bf16: each product and the sum rounded to bf16, as the
   reference's three bf16 operations are; fp32: no rounding. x rows hold `groups`
   heads of n at stride ld_x (heads contiguous); out is [rows, groups * n]. */
int cenote_rotary(const void *x, int64_t ld_x, void *out, const void *cos_, const void *sin_,
                  int64_t rows, int64_t groups, int64_t n, int fp32, int threads)
{
    if (n <= 0 || n % 32 || groups < 1 || threads < 1) return -1;
    const size_t es = fp32 ? 4 : 2;
    const int64_t half = n / 2, items = rows * groups;
    const __m512 sign = _mm512_castsi512_ps(_mm512_set1_epi32((int)0x80000000u));
    #pragma omp parallel for num_threads(threads) schedule(static) if (items * n >= 65536)
    for (int64_t item = 0; item < items; item++) {
        const int64_t r = item / groups, g = item % groups;
        const char *xr = (const char *)x + (r * ld_x + g * n) * es;
        const char *cr = (const char *)cos_ + r * n * es, *sr = (const char *)sin_ + r * n * es;
        char *o = (char *)out + item * n * es;
        for (int64_t d = 0; d < half; d += 16) {
            const __m512 x1 = load16(xr, d, fp32), x2 = load16(xr, half + d, fp32);
            __m512 a1 = _mm512_mul_ps(x1, load16(cr, d, fp32));
            __m512 b1 = _mm512_mul_ps(_mm512_xor_ps(x2, sign), load16(sr, d, fp32));
            __m512 a2 = _mm512_mul_ps(x2, load16(cr, half + d, fp32));
            __m512 b2 = _mm512_mul_ps(x1, load16(sr, half + d, fp32));
            if (!fp32) {
                a1 = round_bf16(a1); b1 = round_bf16(b1);
                a2 = round_bf16(a2); b2 = round_bf16(b2);
            }
            store16(o, d, _mm512_add_ps(a1, b1), fp32);
            store16(o, half + d, _mm512_add_ps(a2, b2), fp32);
        }
    }
    return 0;
}

/* The gated MLP's activation: out = silu(gate) * up for x = [gate | up] rows of 2n
   (one fused projection, rows at stride ld_x); out is [rows, n]. bf16: silu
   rounded to bf16 before the product, and the product rounded, as the
   reference's two bf16 operations are; fp32: no rounding. silu(g) = g * sigmoid(g),
   the sigmoid from exp(-|g|) so that the exponent never overflows. */
int cenote_silu_mul(const void *x, int64_t ld_x, void *out, int64_t rows, int64_t n,
                    int fp32, int threads)
{
    if (n <= 0 || n % 16 || threads < 1) return -1;
    const size_t es = fp32 ? 4 : 2;
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512 abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    #pragma omp parallel for num_threads(threads) schedule(static) if (rows * n >= 65536)
    for (int64_t r = 0; r < rows; r++) {
        const char *xr = (const char *)x + r * ld_x * es;
        char *o = (char *)out + r * n * es;
        for (int64_t d = 0; d < n; d += 16) {
            const __m512 g = load16(xr, d, fp32), u = load16(xr, n + d, fp32);
            const __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_and_ps(g, abs_mask)));
            const __m512 inv = _mm512_div_ps(one, _mm512_add_ps(one, e));
            /* sigmoid(g) = 1 / (1 + e) for g >= 0, e / (1 + e) for g < 0 */
            const __mmask16 neg = _mm512_cmp_ps_mask(g, _mm512_setzero_ps(), _CMP_LT_OQ);
            const __m512 sig = _mm512_mask_mul_ps(inv, neg, inv, e);
            __m512 act = _mm512_mul_ps(g, sig);
            if (!fp32) act = round_bf16(act);
            store16(o, d, _mm512_mul_ps(act, u), fp32);
        }
    }
    return 0;
}
