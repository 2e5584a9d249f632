/* Attention within each sequence of a packed batch, on CPU, in portable C: the same
 * entry points and results as attention.c (its AVX-512 sibling), for every other CPU
 * (AVX2-only x86; ARM64 by design). The loops are written so that the compiler
 * vectorises them for the machine it builds on (-O3 -march=native, OpenMP simd):
 *   - per (sequence, head) the keys are transposed into key-major rows [dim][len]
 *     and the values widened to fp32 [len][dim], once;
 *   - a query's scores are then a sum over dim of (q[d] * keys row d), each a
 *     contiguous multiply-add over the keys (no horizontal sums), its softmax runs
 *     in fp32 over exactly the keys it may see (causal and sliding-window masks
 *     included), and its output is a sum over keys of (p[j] * values row j);
 *   - bf16 inputs are widened exactly, a bf16 output rounded once, to nearest even.
 * Built once per machine by cenote/models/kernels.py, and kept only where a model's
 * load measures it faster than torch's SDPA (layers.settle_cpu_attention). */
#include <stdint.h>
#include <string.h>
#include <omp.h>
#include "portable.h"


#define QB 6  /* queries per block: 6 x 16 fp32 sums are 12 AVX2 or 24 NEON registers; on
              the AVX2 EPYC 1.03-1.38x QB 4 alone (and 8, which spills), 1.02-1.06x end to
              end */
#define KB 16 /* keys (and value columns) per register block */
/* Floats a whole sequence's staged keys and values may take (1 MB, about a core's L2):
   past it, one (sequence, head) at a time, and the work space stays small. */
#define WHOLE_MAX_FLOATS (256 * 1024)

/* A sequence's keys and values for `heads` consecutive kv heads, laid out for
   attend_one: per head, kt [lp/KB][dim][KB] (keys transposed in blocks of KB, each block
   contiguous; zero past len) and vf [len][dim] (values widened), lp = len rounded up to
   KB; head g's at kt + g * dim * lp and vf + g * dim * lp. Each row of k and v is read
   once, whole, in order: a narrow slice per head of rows spread over a batch larger
   than the cache stalls on memory (a third of the time for 130 x 63 tokens, Zen 3). */
static void stage(const void *k, int64_t ld_k, const void *v, int64_t ld_v, int64_t len,
                  int64_t heads, int64_t dim, int fp32, float *kt, float *vf)
{
    const int64_t lp = (len + KB - 1) / KB * KB, stride = dim * lp;
    for (int64_t g = 0; g < heads; g++)
        for (int64_t j = len; j < lp; j++)
            for (int64_t d = 0; d < dim; d++)
                kt[g * stride + (j / KB * dim + d) * KB + j % KB] = 0.0f;
    for (int64_t j = 0; j < len; j++) {
        float *kb = kt + (j / KB * dim) * KB + j % KB;
        for (int64_t g = 0; g < heads; g++)
            for (int64_t d = 0; d < dim; d++) {
                kb[g * stride + d * KB] = load(k, j * ld_k + g * dim + d, fp32);
                vf[g * stride + j * dim + d] = load(v, j * ld_v + g * dim + d, fp32);
            }
    }
}

/* One (sequence, head) on keys and values that stage() laid out. s: [QB][lp]. */
static void attend_one(const void *q, int64_t ld_q, const float *kt, const float *vf,
                       void *out, int64_t ld_out, int64_t len, int64_t i_begin,
                       int64_t i_end, int64_t dim, float scale, int causal, int64_t window,
                       int fp32, float *s)
{
    const int64_t lp = (len + KB - 1) / KB * KB;
    /* scores in base 2: softmax(x) = 2^(x log2 e - max) / sum. Queries go QB at a time
       and keys KB at a time, the QB x KB partial sums held in registers over dim. */
    const float scale2 = scale * 1.4426950408889634f;
    float qs[QB][dim], acc[QB][dim];
    for (int64_t i0 = i_begin; i0 < i_end; i0 += QB) {
        const int64_t nq = i_end - i0 < QB ? i_end - i0 : QB;
        int64_t lo[QB], hi[QB], blo = len, bhi = 0;
        for (int64_t r = 0; r < QB; r++) {
            const int64_t i = i0 + (r < nq ? r : nq - 1);  /* a short block repeats its last */
            lo[r] = window > 0 && i - window + 1 > 0 ? i - window + 1 : 0;
            hi[r] = causal ? i + 1 : window > 0 && i + window < len ? i + window : len;
            blo = lo[r] < blo ? lo[r] : blo;
            bhi = hi[r] > bhi ? hi[r] : bhi;
            for (int64_t d = 0; d < dim; d++) qs[r][d] = load(q, i * ld_q + d, fp32) * scale2;
        }
        const int64_t jb = blo / KB * KB, je = (bhi + KB - 1) / KB * KB;
        for (int64_t j0 = jb; j0 < je; j0 += KB) {
            float t[QB][KB] = {{0.0f}};
            const float *block = kt + j0 * dim;  /* [dim][KB] */
            for (int64_t d = 0; d < dim; d++) {
                const float *row = block + d * KB;
                for (int r = 0; r < QB; r++) {
                    const float qd = qs[r][d];
                    #pragma omp simd
                    for (int c = 0; c < KB; c++) t[r][c] += qd * row[c];
                }
            }
            for (int r = 0; r < QB; r++)
                for (int c = 0; c < KB; c++) s[r * lp + j0 + c] = t[r][c];
        }
        float inv[QB];
        for (int64_t r = 0; r < nq; r++) {
            float *sr = s + r * lp;
            /* the keys this query may not see weigh nothing */
            for (int64_t j = jb; j < lo[r]; j++) sr[j] = -1e30f;
            for (int64_t j = hi[r]; j < je; j++) sr[j] = -1e30f;
            float top = sr[lo[r]];
            #pragma omp simd reduction(max:top)
            for (int64_t j = jb; j < je; j++) top = sr[j] > top ? sr[j] : top;
            #pragma omp simd
            for (int64_t j = jb; j < je; j++) sr[j] = exp2_nonpositive(sr[j] - top);
            for (int64_t j = jb; j < lo[r]; j++) sr[j] = 0.0f;  /* exactly nothing */
            for (int64_t j = hi[r]; j < je; j++) sr[j] = 0.0f;
            float sum = 0.0f;
            #pragma omp simd reduction(+:sum)
            for (int64_t j = lo[r]; j < hi[r]; j++) sum += sr[j];
            inv[r] = 1.0f / sum;
        }
        const int64_t ve = bhi;  /* past it every probability is 0 */
        for (int64_t d0 = 0; d0 < dim; d0 += KB) {
            float a[QB][KB] = {{0.0f}};
            for (int64_t j = jb; j < ve; j++) {
                const float *row = vf + j * dim + d0;
                for (int r = 0; r < QB; r++) {
                    const float p = s[r * lp + j];
                    #pragma omp simd
                    for (int c = 0; c < KB; c++) a[r][c] += p * row[c];
                }
            }
            for (int r = 0; r < QB; r++)
                for (int c = 0; c < KB; c++) acc[r][d0 + c] = a[r][c];
        }
        for (int64_t r = 0; r < nq; r++) {
            const int64_t o = (i0 + r - i_begin) * ld_out;
            if (fp32) {
                float *dst = (float *)out + o;
                for (int64_t d = 0; d < dim; d++) dst[d] = acc[r][d] * inv[r];
            } else {
                uint16_t *dst = (uint16_t *)out + o;
                for (int64_t d = 0; d < dim; d++) dst[d] = round_bf16(acc[r][d] * inv[r]);
            }
        }
    }
}

/* Whether sequences of up to lp (padded) tokens can be staged whole, all kv heads. */
static int fits_whole(int64_t lp, int64_t dim, int64_t kv_heads)
{
    return 2 * kv_heads * dim * lp <= WHOLE_MAX_FLOATS;
}

/* Floats of work space one thread needs for sequences of up to max_len tokens: keys
   [dim][max_len] and values [max_len][dim] for every kv head where a whole sequence
   fits (else for one), scores [QB][max_len], rounded to 64 bytes. */
int64_t cenote_attention_workspace(int64_t max_len, int64_t dim, int64_t kv_heads)
{
    const int64_t lp = (max_len + KB - 1) / KB * KB;
    const int64_t staged = fits_whole(lp, dim, kv_heads) ? kv_heads : 1;
    return (2 * staged * dim * lp + QB * lp + 15) & ~(int64_t)15;
}

/* As attention.c's: query_mode 0 (every token a query, out row per token), 1 or 2
   (each sequence's first or last token only, out row b sequence b's). Returns 0, or
   -1 for an unsupported shape, mode or work space. */
int cenote_attention(const void *q, const void *k, const void *v,
                     int64_t ld_q, int64_t ld_k, int64_t ld_v,
                     void *out, int64_t ld_out, const int64_t *cu, int64_t num_seqs,
                     int64_t heads, int64_t kv_heads, int64_t dim, float scale,
                     int causal, int64_t window, int query_mode, int fp32,
                     float *workspace, int64_t workspace_floats, int threads)
{
    const size_t es = fp32 ? 4 : 2;
    if (dim % 16 || heads % kv_heads || query_mode < 0 || query_mode > 2 || threads < 1)
        return -1;
    int64_t max_len = 0;
    for (int64_t b = 0; b < num_seqs; b++)
        if (cu[b + 1] - cu[b] > max_len) max_len = cu[b + 1] - cu[b];
    const int64_t per_thread = cenote_attention_workspace(max_len, dim, kv_heads);
    if (workspace_floats < per_thread * threads || ((uintptr_t)workspace & 63)) return -1;
    const int64_t group = heads / kv_heads;
    /* A work item is a whole sequence (staged once for all heads) where there are enough
       of them to share between the threads, else one (sequence, head). */
    const int64_t lpmax = (max_len + KB - 1) / KB * KB;
    const int whole = num_seqs >= 4 * threads && fits_whole(lpmax, dim, kv_heads);
    const int64_t items = whole ? num_seqs : num_seqs * heads;
    const int64_t staged = whole ? kv_heads : 1;
    #pragma omp parallel num_threads(threads)
    {
        float *buf = workspace + per_thread * omp_get_thread_num();
        float *kt = buf, *vf = buf + staged * dim * lpmax;
        float *s = vf + staged * dim * lpmax;
        #pragma omp for schedule(guided)
        for (int64_t item = 0; item < items; item++) {
            const int64_t b = whole ? item : item / heads;
            const int64_t h_first = whole ? 0 : item % heads;
            const int64_t h_end = whole ? heads : h_first + 1;
            const int64_t start = cu[b], len = cu[b + 1] - start;
            const int64_t lp = (len + KB - 1) / KB * KB;
            const int64_t g_first = h_first / group, g_count = whole ? kv_heads : 1;
            if (whole && query_mode == 0)  /* the queries' rows, on their way during stage() */
                for (int64_t j = 0; j < len; j++)
                    for (int64_t o = 0; o < heads * dim * (int64_t)es; o += 64)
                        __builtin_prefetch((const char *)q + (start + j) * ld_q * es + o, 0, 3);
            stage((const char *)k + (start * ld_k + g_first * dim) * es, ld_k,
                  (const char *)v + (start * ld_v + g_first * dim) * es, ld_v, len,
                  g_count, dim, fp32, kt, vf);
            const int64_t i_begin = query_mode == 2 ? len - 1 : 0;
            const int64_t i_end = query_mode == 1 ? 1 : len;
            const int64_t out_row = query_mode == 0 ? start : b;
            for (int64_t h = h_first; h < h_end; h++) {
                const int64_t g = h / group - g_first;
                attend_one((const char *)q + (start * ld_q + h * dim) * es, ld_q,
                           kt + g * dim * lp, vf + g * dim * lp,
                           (char *)out + (out_row * ld_out + h * dim) * es, ld_out,
                           len, i_begin, i_end, dim, scale, causal, window, fp32, s);
            }
        }
    }
    return 0;
}
