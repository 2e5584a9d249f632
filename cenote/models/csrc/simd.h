/* AVX-512 helpers shared by cenote's CPU kernels (attention.c, rowwise.c). */
#ifndef CENOTE_SIMD_H
#define CENOTE_SIMD_H

#include <stdint.h>
#include <immintrin.h>

#if !defined(__AVX512F__)
#error "needs AVX-512"
#endif

static inline __m512 exp512(__m512 x) {  /* exp(x) for x <= 0; Cephes polynomial, rel. err ~2e-7 */
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    x = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), x);
    __m512 y = _mm512_set1_ps(1.9875691500e-4f);
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507e-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073e-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894e-2f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459e-1f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201e-1f));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(x, x), _mm512_add_ps(x, _mm512_set1_ps(1.0f)));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(y, _mm512_castsi512_ps(e));
}

static inline __m512 load_bf16x16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(
        _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

/* fp32 -> nearest bf16 (ties to even; inputs are finite), as the 16 high bits of
   each 32-bit lane. */
static inline __m512i bf16_bits(__m512 x) {
    __m512i u = _mm512_castps_si512(x);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    return _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
}

/* fp32 -> nearest bf16 -> fp32. */
static inline __m512 round_bf16(__m512 x) {
    return _mm512_castsi512_ps(_mm512_and_si512(bf16_bits(x), _mm512_set1_epi32((int)0xffff0000u)));
}

static inline void store_bf16x16(uint16_t *p, __m512 x) {
#if defined(__AVX512BF16__)
    _mm256_storeu_si256((__m256i *)p, (__m256i)_mm512_cvtneps_pbh(x));
#else
    _mm256_storeu_si256((__m256i *)p, _mm512_cvtepi32_epi16(_mm512_srli_epi32(bf16_bits(x), 16)));
#endif
}

/* 16 values at p + at: fp32, or bf16 widened to fp32. */
static inline __m512 load16(const void *p, int64_t at, int fp32) {
    if (fp32) return _mm512_loadu_ps((const float *)p + at);
    return load_bf16x16((const uint16_t *)p + at);
}

static inline void store16(void *p, int64_t at, __m512 x, int fp32) {
    if (fp32) _mm512_storeu_ps((float *)p + at, x);
    else store_bf16x16((uint16_t *)p + at, x);
}

#endif
