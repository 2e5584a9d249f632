/* What the portable kernels (attention_portable.c, rowwise_portable.c) share: bf16
 * widening and rounding, and an exp2 that compilers vectorise. Plain C: every loop
 * that calls these stays vectorisable at -O3 (no floorf/rintf, no branches). */
#ifndef CENOTE_PORTABLE_H
#define CENOTE_PORTABLE_H
#include <stdint.h>
#include <string.h>

static inline float widen_bf16(uint16_t x) {
    uint32_t u = (uint32_t)x << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Nearest, ties to even; a NaN stays a (quiet) NaN. */
static inline uint16_t round_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    const uint32_t nearest = u + 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)((((u & 0x7fffffffu) > 0x7f800000u) ? (u | 0x00400000u) : nearest) >> 16);
}

static inline float load(const void *p, int64_t at, int fp32) {
    return fp32 ? ((const float *)p)[at] : widen_bf16(((const uint16_t *)p)[at]);
}

/* 2^t for t <= 0: 2^n * P(f), n = round(t), f = t - n in [-1/2, 1/2], P a degree-5
   fit of 2^f (relative error 2.4e-7); t clamped at -126 (no subnormal results). */
static inline float exp2_nonpositive(float t) {
    t = t < -126.0f ? -126.0f : t;  /* not fmaxf: its NaN rules keep the loop scalar */
    /* round to nearest by the 1.5 * 2^23 trick: plain float arithmetic, which every
       vectoriser handles (floorf and rintf are not vectorised everywhere) */
    const float n = (t + 12582912.0f) - 12582912.0f;
    const float f = t - n;
    float y = 1.327647245e-3f;
    y = y * f + 9.675541893e-3f;
    y = y * f + 5.550713092e-2f;
    y = y * f + 2.402212024e-1f;
    y = y * f + 6.931469440e-1f;
    y = y * f + 1.000000119f;
    const int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return y * scale;
}

#endif
