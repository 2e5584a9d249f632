/* Attention within each sequence of a packed batch, on CPU, for bf16 and fp32 models.
 *
 * Why a kernel of our own: at the short lengths embedding models see (tens to a
 * few hundred tokens), torch's CPU SDPA spends most of its time on per-block
 * overhead, and it needs the batch laid out padded first. This kernel reads
 * queries, keys and values straight from the packed [tokens, heads * dim]
 * projection (no padding, no copies), and for each (sequence, head):
 *   - bf16: keys are regrouped as pairs along dim, so q . k is one AVX-512 BF16
 *     dot product per pair (exact products, fp32 sums); without AVX512_BF16 the
 *     same sums run as fp32 FMAs. fp32: keys transposed, fp32 FMAs;
 *   - the softmax runs in fp32 over exactly the keys each query may see
 *     (causal and sliding-window masks included: a causal window of w keys is
 *     the query and the w - 1 before it; a bidirectional one, the keys less than w
 *     away on either side);
 *   - probabilities stay fp32 for the sum over values; a bf16 result is rounded
 *     once, on the way out.
 * Work is split over (sequence, head) pairs with OpenMP, in the same runtime
 * (libgomp) torch uses. Built once per machine by cenote/models/kernels.py. */
#include <stdint.h>
#include <math.h>
#include <omp.h>
#include "simd.h"

#define QB 8   /* queries per block */
/* bf16 models on CPUs with AVX512_BF16: probabilities rounded to bf16 for the sum
   over values, which then runs as bf16 dot products over pairs of keys. */
#if defined(__AVX512BF16__)
#define BF16_PV 1
#else
#define BF16_PV 0
#endif

/* 2^t for t <= 0 (the scores are kept in base 2: scale * log2(e) folds into the
   score scale): 2^n * P(f) with n = round(t), f = t - n in [-1/2, 1/2] and P a
   degree-5 fit of 2^f (relative error 2.4e-7, as good as fp32's own exp); t is
   clamped at -126 so that no result is subnormal. */
static inline __m512 exp2_nonpositive(__m512 t) {
    t = _mm512_max_ps(t, _mm512_set1_ps(-126.0f));
    const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(t, n);
    __m512 y = _mm512_set1_ps(1.327647245e-3f);
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(9.675541893e-3f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(5.550713092e-2f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(2.402212024e-1f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(6.931469440e-1f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(1.000000119f));
    return _mm512_scalef_ps(y, n);
}

/* Lanes j0 + t (t < 16) with lo <= j0 + t < hi. */
static inline __mmask16 range_mask(int64_t j0, int64_t lo, int64_t hi) {
    int64_t a = lo - j0, b = hi - j0;
    a = a < 0 ? 0 : a > 16 ? 16 : a;
    b = b < 0 ? 0 : b > 16 ? 16 : b;
    return (__mmask16)(((1u << b) - 1u) & ~((1u << a) - 1u));
}

/* 16 x 16 transpose of 32-bit elements: r[i] lane c becomes r[c] lane i. */
static inline void transpose16x16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {  /* rows i, i+1 interleaved within 128-bit lanes */
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int m = 0; m < 16; m += 4) {  /* r[m + c] lane L: column 4L + c, rows m..m+3 */
        r[m] = _mm512_unpacklo_epi64(t[m], t[m + 2]);
        r[m + 1] = _mm512_unpackhi_epi64(t[m], t[m + 2]);
        r[m + 2] = _mm512_unpacklo_epi64(t[m + 1], t[m + 3]);
        r[m + 3] = _mm512_unpackhi_epi64(t[m + 1], t[m + 3]);
    }
    for (int c = 0; c < 4; c++) {  /* 4 x 4 transpose of 128-bit lanes */
        const __m512i x0 = _mm512_shuffle_i32x4(r[c], r[4 + c], 0x44);
        const __m512i x1 = _mm512_shuffle_i32x4(r[c], r[4 + c], 0xee);
        const __m512i y0 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0x44);
        const __m512i y1 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0xee);
        t[c] = _mm512_shuffle_i32x4(x0, y0, 0x88);
        t[4 + c] = _mm512_shuffle_i32x4(x0, y0, 0xdd);
        t[8 + c] = _mm512_shuffle_i32x4(x1, y1, 0x88);
        t[12 + c] = _mm512_shuffle_i32x4(x1, y1, 0xdd);
    }
    for (int i = 0; i < 16; i++) r[i] = t[i];
}

/* dst[c * lp + j] = element c of source row j (32-bit elements, rows ld bytes
   apart) for c < cols, j < lp; rows past `rows` read as zero. In 16 x 16 blocks
   transposed in registers: a source row is one vector load, many in flight (the
   rows are strided through a projection that is mostly not in cache). */
static void transpose32(const void *src, int64_t ld, int64_t rows, int64_t cols,
                        uint32_t *dst, int64_t lp)
{
    for (int64_t c0 = 0; c0 < cols; c0 += 16) {
        const int64_t nc = cols - c0 < 16 ? cols - c0 : 16;
        const __mmask16 cm = (__mmask16)((1u << nc) - 1u);
        for (int64_t j0 = 0; j0 < lp; j0 += 16) {
            __m512i r[16];
            for (int t = 0; t < 16; t++)
                r[t] = j0 + t < rows ? _mm512_maskz_loadu_epi32(
                           cm, (const char *)src + (j0 + t) * ld + c0 * 4) : _mm512_setzero_si512();
            transpose16x16(r);
            for (int64_t t = 0; t < nc; t++) _mm512_storeu_si512(dst + (c0 + t) * lp + j0, r[t]);
        }
    }
}

/* One (sequence, head): q rows [len, dim] at stride ld_q, etc.; the queries
   i_begin <= i < i_end go to out rows i - i_begin. Buffers: kp [dim/2][lp]
   (pairs of key values along dim), vf [lp][dim], s [QB][lp]. */
static void attend_one(const void *q_, int64_t ld_q, const void *k_, int64_t ld_k,
                       const void *v_, int64_t ld_v, void *out_, int64_t ld_out,
                       int64_t len, int64_t i_begin, int64_t i_end, int64_t dim, float scale,
                       int causal, int64_t window, int fp32, uint32_t *kp, float *vf, float *s)
{
    const uint16_t *q = q_, *k = k_, *v = v_;
    const float *qf = q_, *kf = k_, *vf32 = v_;
    const int64_t lp = (len + 15) & ~(int64_t)15;
    const int64_t pairs = dim / 2;
    const float *kt = (const float *)kp;
    /* the rows of this head are strided through a projection mostly not in cache:
       ask for the values and queries now, the keys' loads below are in flight too */
    const int64_t es = fp32 ? 4 : 2;
    for (int64_t j = 0; j < len; j++)
        for (int64_t d = 0; d < dim * es; d += 64)
            _mm_prefetch((const char *)v_ + j * ld_v * es + d, _MM_HINT_T1);
    for (int64_t i = i_begin; i < i_end; i++)
        for (int64_t d = 0; d < dim * es; d += 64)
            _mm_prefetch((const char *)q_ + i * ld_q * es + d, _MM_HINT_T1);
    /* keys, transposed: kp[p][j] = the pair (k[j][2p], k[j][2p + 1]); fp32: kt[d][j] */
    if (fp32) transpose32(kf, ld_k * 4, len, dim, kp, lp);
    else transpose32(k, ld_k * 2, len, pairs, kp, lp);
    if (fp32 || !BF16_PV) {  /* values widened to fp32, zero past len */
        for (int64_t j = 0; j < lp; j++)
            for (int64_t d = 0; d < dim; d += 16)
                _mm512_storeu_ps(vf + j * dim + d, j >= len ? _mm512_setzero_ps()
                                 : fp32 ? _mm512_loadu_ps(vf32 + j * ld_v + d)
                                 : load_bf16x16(v + j * ld_v + d));
    }
#if BF16_PV
    else {  /* values as pairs of keys: vp[j/2][d] = (v[j][d], v[j + 1][d]), zero past len */
        uint32_t *vp = (uint32_t *)vf;
        for (int64_t j = 0; j < lp; j += 2)
            for (int64_t d = 0; d < dim; d += 16) {
                const __m256i zero = _mm256_setzero_si256();
                const __m256i a = j < len ? _mm256_loadu_si256((const __m256i *)(v + j * ld_v + d)) : zero;
                const __m256i b = j + 1 < len ? _mm256_loadu_si256((const __m256i *)(v + (j + 1) * ld_v + d)) : zero;
                _mm512_storeu_si512(vp + (j / 2) * dim + d, _mm512_or_si512(
                    _mm512_cvtepu16_epi32(a), _mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16)));
            }
    }
#endif
    const __m512 vscale = _mm512_set1_ps(scale * 1.44269504088896341f);  /* base-2 scores */
    for (int64_t i0 = i_begin; i0 < i_end; i0 += QB) {
        const int nq = i_end - i0 < QB ? (int)(i_end - i0) : QB;
        /* keys this block may see */
        int64_t jend = causal ? i0 + nq : len;
        if (!causal && window > 0 && i0 + nq - 1 + window < len) jend = i0 + nq - 1 + window;
        int64_t jbeg = 0;
        if (window > 0 && i0 - window + 1 > 0) jbeg = (i0 - window + 1) & ~(int64_t)15;
        const int64_t jend_p = (jend + 15) & ~(int64_t)15;
        /* each query's visible keys [lo, hi), and the running max of its scores there */
        int64_t lo[QB], hi[QB];
        __m512 vmax[QB];
        for (int r = 0; r < nq; r++) {
            const int64_t i = i0 + r;
            lo[r] = window > 0 && i - window + 1 > 0 ? i - window + 1 : 0;
            hi[r] = causal ? i + 1 : window > 0 && i + window < len ? i + window : len;
            vmax[r] = _mm512_set1_ps(-INFINITY);
        }
        /* scores, in base 2: s[r][j] = log2(e) * scale * q_r . k_j */
        for (int64_t j0 = jbeg; j0 < jend_p; j0 += 32) {
            const int two = j0 + 16 < jend_p;
            __m512 acc[QB][2];
            for (int r = 0; r < QB; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
            if (fp32) {
                const float *qrow[QB];
                for (int r = 0; r < QB; r++) qrow[r] = qf + (r < nq ? i0 + r : i0) * ld_q;
                for (int64_t d = 0; d < dim; d++) {
                    const __m512 k0 = _mm512_loadu_ps(kt + d * lp + j0);
                    const __m512 k1 = two ? _mm512_loadu_ps(kt + d * lp + j0 + 16) : k0;
                    for (int r = 0; r < QB; r++) {
                        const __m512 qd = _mm512_set1_ps(qrow[r][d]);
                        acc[r][0] = _mm512_fmadd_ps(qd, k0, acc[r][0]);
                        acc[r][1] = _mm512_fmadd_ps(qd, k1, acc[r][1]);
                    }
                }
            } else {
                const uint32_t *qrow[QB];
                for (int r = 0; r < QB; r++)
                    qrow[r] = (const uint32_t *)(q + (r < nq ? i0 + r : i0) * ld_q);
#if defined(__AVX512BF16__)
                if (!two)  /* 16 keys left: half the work of the loop below */
                    for (int64_t p = 0; p < pairs; p++) {
                        const __m512bh k0 = (__m512bh)_mm512_loadu_si512(kp + p * lp + j0);
                        for (int r = 0; r < QB; r++)
                            acc[r][0] = _mm512_dpbf16_ps(
                                acc[r][0], k0, (__m512bh)_mm512_set1_epi32((int)qrow[r][p]));
                    }
                else
#endif
                for (int64_t p = 0; p < pairs; p++) {
                    const __m512i k0 = _mm512_loadu_si512(kp + p * lp + j0);
                    const __m512i k1 = two ? _mm512_loadu_si512(kp + p * lp + j0 + 16) : k0;
                    for (int r = 0; r < QB; r++) {
                        const uint32_t qpair = qrow[r][p];
#if defined(__AVX512BF16__)
                        const __m512bh qb = (__m512bh)_mm512_set1_epi32((int)qpair);
                        acc[r][0] = _mm512_dpbf16_ps(acc[r][0], (__m512bh)k0, qb);
                        acc[r][1] = _mm512_dpbf16_ps(acc[r][1], (__m512bh)k1, qb);
#else
                        const __m512 qlo = _mm512_castsi512_ps(_mm512_set1_epi32((int)(qpair << 16)));
                        const __m512 qhi = _mm512_castsi512_ps(_mm512_set1_epi32((int)(qpair & 0xffff0000u)));
                        acc[r][0] = _mm512_fmadd_ps(qlo, _mm512_castsi512_ps(_mm512_slli_epi32(k0, 16)), acc[r][0]);
                        acc[r][0] = _mm512_fmadd_ps(qhi, _mm512_castsi512_ps(_mm512_and_si512(k0, _mm512_set1_epi32((int)0xffff0000u))), acc[r][0]);
                        acc[r][1] = _mm512_fmadd_ps(qlo, _mm512_castsi512_ps(_mm512_slli_epi32(k1, 16)), acc[r][1]);
                        acc[r][1] = _mm512_fmadd_ps(qhi, _mm512_castsi512_ps(_mm512_and_si512(k1, _mm512_set1_epi32((int)0xffff0000u))), acc[r][1]);
#endif
                    }
                }
            }
            for (int r = 0; r < nq; r++) {
                const __m512 s0 = _mm512_mul_ps(acc[r][0], vscale);
                _mm512_storeu_ps(s + r * lp + j0, s0);
                vmax[r] = _mm512_mask_max_ps(vmax[r], range_mask(j0, lo[r], hi[r]), vmax[r], s0);
                if (two) {
                    const __m512 s1 = _mm512_mul_ps(acc[r][1], vscale);
                    _mm512_storeu_ps(s + r * lp + j0 + 16, s1);
                    vmax[r] = _mm512_mask_max_ps(vmax[r], range_mask(j0 + 16, lo[r], hi[r]),
                                                 vmax[r], s1);
                }
            }
        }
        /* softmax per query over its visible keys [lo, hi); zeros elsewhere in [jbeg, jend_p) */
        float inv[QB];
        for (int r = 0; r < nq; r++) {
            float *sr = s + r * lp;
            const __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(vmax[r]));
            __m512 vsum = _mm512_setzero_ps();
            for (int64_t j0 = jbeg; j0 < jend_p; j0 += 16) {
                const __mmask16 m = range_mask(j0, lo[r], hi[r]);
                __m512 e = _mm512_maskz_mov_ps(m, exp2_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(sr + j0), mx)));
                vsum = _mm512_add_ps(vsum, e);
#if BF16_PV
                /* bf16 probabilities, in place: element j at byte 2j of the row (the
                   fp32 chunk at 4 * j0 is read before anything at or past it is written) */
                if (!fp32) store_bf16x16((uint16_t *)sr + j0, e);
                else
#endif
                _mm512_storeu_ps(sr + j0, e);
            }
            inv[r] = 1.0f / _mm512_reduce_add_ps(vsum);
        }
        /* out[r] = sum_j p[r][j] v_j / sum */
        for (int64_t d0 = 0; d0 < dim; d0 += 32) {
            const int two = d0 + 16 < dim;
            __m512 acc[QB][2];
            for (int r = 0; r < QB; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
#if BF16_PV
            if (!fp32) {
                const uint32_t *vp = (const uint32_t *)vf;
                for (int64_t jp = jbeg / 2; jp < (jend + 1) / 2; jp++) {
                    const __m512i v0 = _mm512_loadu_si512(vp + jp * dim + d0);
                    const __m512i v1 = two ? _mm512_loadu_si512(vp + jp * dim + d0 + 16) : v0;
                    for (int r = 0; r < QB; r++) {
                        const __m512bh pr = (__m512bh)_mm512_set1_epi32(((const int32_t *)(s + r * lp))[jp]);
                        acc[r][0] = _mm512_dpbf16_ps(acc[r][0], (__m512bh)v0, pr);
                        acc[r][1] = _mm512_dpbf16_ps(acc[r][1], (__m512bh)v1, pr);
                    }
                }
            } else
#endif
            for (int64_t j = jbeg; j < jend; j++) {
                const __m512 v0 = _mm512_loadu_ps(vf + j * dim + d0);
                const __m512 v1 = two ? _mm512_loadu_ps(vf + j * dim + d0 + 16) : v0;
                for (int r = 0; r < QB; r++) {
                    const __m512 pr = _mm512_set1_ps(s[r * lp + j]);
                    acc[r][0] = _mm512_fmadd_ps(pr, v0, acc[r][0]);
                    acc[r][1] = _mm512_fmadd_ps(pr, v1, acc[r][1]);
                }
            }
            for (int r = 0; r < nq; r++) {
                const __m512 vi = _mm512_set1_ps(inv[r]);
                const int64_t at = (i0 + r - i_begin) * ld_out + d0;
                if (fp32) {
                    float *o = (float *)out_ + at;
                    _mm512_storeu_ps(o, _mm512_mul_ps(acc[r][0], vi));
                    if (two) _mm512_storeu_ps(o + 16, _mm512_mul_ps(acc[r][1], vi));
                } else {
                    uint16_t *o = (uint16_t *)out_ + at;
                    store_bf16x16(o, _mm512_mul_ps(acc[r][0], vi));
                    if (two) store_bf16x16(o + 16, _mm512_mul_ps(acc[r][1], vi));
                }
            }
        }
    }
}

/* Floats of work space one thread needs for sequences of up to max_len tokens:
   keys [dim][lp], values [lp][dim], scores [QB][lp], rounded to 64 bytes. */
int64_t cenote_attention_workspace(int64_t max_len, int64_t dim, int64_t kv_heads)
{
    (void)kv_heads;  /* one (sequence, head) at a time here (the portable kernel stages a
                        whole sequence) */
    const int64_t lp = (max_len + 15) & ~(int64_t)15;
    return (dim * lp + lp * dim + QB * lp + 15) & ~(int64_t)15;
}

/* query_mode 0: every token is a query, out has a row per token (the rows of q).
   1 or 2: only each sequence's first or last token is, out row b is sequence b's
   (what CLS or LAST pooling keeps of a last layer).
   workspace: threads * cenote_attention_workspace(longest sequence, dim, kv_heads) floats,
   64-byte aligned, allocated by the caller (so that the OpenMP threads never
   allocate). Returns 0, or -1 for an unsupported shape, mode or work space. */
int cenote_attention(const void *q, const void *k, const void *v,
                     int64_t ld_q, int64_t ld_k, int64_t ld_v,
                     void *out, int64_t ld_out, const int64_t *cu, int64_t num_seqs,
                     int64_t heads, int64_t kv_heads, int64_t dim, float scale,
                     int causal, int64_t window, int query_mode, int fp32,
                     float *workspace, int64_t workspace_floats, int threads)
{
    const size_t es = fp32 ? 4 : 2;  /* bytes per element of q, k, v and out */
    if (dim % 16 || heads % kv_heads || query_mode < 0 || query_mode > 2 || threads < 1)
        return -1;
    int64_t max_len = 0;
    for (int64_t b = 0; b < num_seqs; b++)
        if (cu[b + 1] - cu[b] > max_len) max_len = cu[b + 1] - cu[b];
    const int64_t lp = (max_len + 15) & ~(int64_t)15;
    const int64_t per_thread = cenote_attention_workspace(max_len, dim, kv_heads);
    if (workspace_floats < per_thread * threads || ((uintptr_t)workspace & 63)) return -1;
    const int64_t group = heads / kv_heads;
    #pragma omp parallel num_threads(threads)
    {
        float *buf = workspace + per_thread * omp_get_thread_num();
        /* guided: each thread takes runs of neighbouring heads, whose rows share cache
           lines' neighbours (dynamic, 1 alternated them between the cores: ~5% slower) */
        #pragma omp for schedule(guided)
        for (int64_t item = 0; item < num_seqs * heads; item++) {
            const int64_t b = item / heads, h = item % heads, kvh = h / group;
            const int64_t start = cu[b], len = cu[b + 1] - start;
            const int64_t i_begin = query_mode == 2 ? len - 1 : 0;
            const int64_t i_end = query_mode == 1 ? 1 : len;
            const int64_t out_row = query_mode == 0 ? start : b;
            attend_one((const char *)q + (start * ld_q + h * dim) * es, ld_q,
                       (const char *)k + (start * ld_k + kvh * dim) * es, ld_k,
                       (const char *)v + (start * ld_v + kvh * dim) * es, ld_v,
                       (char *)out + (out_row * ld_out + h * dim) * es, ld_out,
                       len, i_begin, i_end, dim, scale, causal, window, fp32,
                       (uint32_t *)buf, buf + dim * lp, buf + dim * lp + lp * dim);
        }
    }
    return 0;
}
