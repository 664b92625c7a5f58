/* Row-wise exact sparsemax kernels for mmin_plugin (plain C99 + pthreads, no torch headers).
 *
 * Loaded through ctypes by mmin_plugin/_sparsemax_native.py; every buffer is a contiguous
 * (rows, n) array of float or double.  Build: cc -O3 -std=c99 -shared -fPIC -pthread
 * -fopenmp -fno-trapping-math -ffp-contract=off (-fno-trapping-math lets the compiler
 * vectorise the selects; -ffp-contract=off keeps it from fusing a*b+c).
 *
 * Forward, per row z (Martins & Astudillo 2016):
 *     p = max(z - tau, 0)   where tau is the root of   f(t) = sum_i max(z_i - t, 0) - 1.
 * Work on y = z - max(z) in double, so the partial sums are O(1) whatever the scale of z
 * (tau(z + c) = tau(z) + c).  As tau - max lies in [-1, 0), only the candidates y > -1 can
 * be in the support: one vectorised pass finds the max, a second collects the indices of
 * the candidates (in long rows skipping blocks of 16 whose max is too small).
 * f is convex, decreasing, piecewise linear with slope -|{y > t}|, so Newton's method from
 * the lower bound t0 = -1 (Michelot's algorithm) on the candidates,
 *     S_k = {y > t_k},   t_{k+1} = (sum_{S_k} y - 1) / |S_k|,
 * increases monotonically to tau, typically in 2-4 steps, and t_{k+1} is exactly tau as
 * soon as S_k = {y > t_{k+1}} (min_{S_k} y > t_{k+1} >= max of the rest), which the same
 * pass checks.  A row not settled after `max_passes` steps is finished by the exact
 * sort-based rule (M&A Alg. 1) on its candidates, never by an approximation.  The output
 * is written as zeros, then y - tau on the candidates (one pass over short rows).
 *
 * Conventions: -inf entries are masked and give exactly 0; a row that is all -inf gives
 * all zeros; a row containing NaN or +inf gives all NaN (only that row).
 *
 * Backward (vector-Jacobian product; the Jacobian is symmetric, M&A eq. 14):
 *     dz = s * (g - sum_S g / |S|),   s = 1[p > 0];   a row with empty support gets 0.
 *
 * Fused sparsemax attention (mmin_attn_*), per (sample b, head h), q (B, Lq, H, dh), k and v
 * (B, Lk, H, dh), all contiguous (the layout of a linear layer's output viewed as heads):
 *     out_i = sum_j p_ij v_j,   p_i = sparsemax(s_i) over the real keys,   s_ij = q_i . k_j.
 * Per query row the scores are computed into a row buffer (the keys transposed once per (b, h),
 * so the row is dh vectorised passes over Lk), the padded keys' scores set to -inf (key mask km
 * (B, Lk), uint8, 1 = real; nothing to set in a sample whose keys are all real), so that a padded
 * key never enters the threshold and gets weight 0, normalised by the row kernel above, and
 * multiplied by v over the support only: no (Lq, Lk) map is
 * ever written to memory.  Kept for the backward: st = (max, t) per row, tau = max + t
 * (t = +inf: empty row, i.e. no real key or a padded query (query mask qm (B, Lq) or NULL);
 * t = NaN: a NaN/+inf row, output NaN, zero gradient).  Backward, per row: the same scores
 * again (same code, same order: the same floats), p_j = max((s_j - max) - t, 0) exactly as the
 * forward had it, support S = {p > 0}, and with dP_j = dout_i . v_j on S only,
 *     dS_j = dP_j - mean_S dP,   dq_i = sum_S dS_j k_j,   dk_j += dS_j q_i,   dv_j += p_j dout_i;
 * dk, dv accumulate in double per (b, h) and are written once.  Sums over dh and over S are in
 * double, the scores in T like a matrix product in T.
 *
 * Dropout (mmin_dropout), the other kernel of this file: out = x * scale where element i is kept,
 * 0 elsewhere; element i is kept iff u_i < keep (probability keep / 2^32), u_i the (i mod 4)-th
 * word of Philox4x32-10 (Salmon et al. 2011, the Random123 generator; cuRAND's, and so torch's
 * CUDA dropout's) at counter (i / 4, 0) under the 64-bit key `seed`.  A counter-based generator:
 * the mask of any element follows from (seed, i) alone, so the backward (the same map applied
 * to the gradient) needs no stored mask, and the result does not depend on the threads.
 *
 * Rows are split into contiguous chunks over at most `nthreads` threads: an OpenMP parallel
 * for when built with -fopenmp (libgomp.so.1, i.e. the copy torch has already loaded, so the
 * kernel runs on torch's own thread pool), else pthreads created per call.  nthreads = 1
 * runs on the calling thread only.
 */
#ifndef T /* ------------------------------------------------------------ common part */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MIN_ELEMS_PER_THREAD 16384
#define MAX_THREADS 256
/* On x86-64 Linux the row kernels get an AVX2 clone, picked at load time (GCC/clang ifunc);
 * the loader retries with -DMMIN_NO_CLONES where that is not supported. */
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(MMIN_NO_CLONES)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif
/* Small helpers are inlined into the (cloned) callers, so they run with the callers' AVX2. */
#if defined(__GNUC__)
#define INLINE __attribute__((always_inline)) inline
#else
#define INLINE inline
#endif
#define CBLOCK 16      /* candidates are looked for in blocks of 16: most hold none */
#define LANES 8        /* rows of LANE_FROM keys or more: the max is taken in 8 lanes, whose maxima */
#define LANE_FROM 128  /* give a first lower bound of tau (lower_bound) */
#define DENSE_K 24     /* more candidates than this: 8 of them give a better start (threshold) */
#define SHORT_ROW 128  /* up to this length the output is one pass over the row */

#define MAX_DH 1024  /* head width limit of the fused attention (MMIN: d_model / nheads) */

/* One fused-attention call: pointers at element 0 of (B, L, H, dh) buffers. */
typedef struct {
    int f64, max_passes, fwd;
    int64_t batch, heads, lq, lk, dh;
    const void *q, *k, *v, *dout;
    void *out, *dq, *dk, *dv;
    double *st;                 /* (B, H, Lq, 2) */
    const uint8_t *km, *qm;     /* (B, Lk), (B, Lq) or NULL */
    int64_t u0, u1;             /* units (b, h) of this thread: u = b H + h */
    int64_t fell_back;
} attn_job_t;

static int cmp_desc(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x < y) - (x > y);
}

/* Exact threshold of the candidates c[0..k) (k >= 1, a superset of the support), by
 * sorting: tau = (sum_{j<=K} c_(j) - 1) / K,  K = max{j : 1 + j c_(j) > sum_{i<=j} c_(i)}. */
static double sort_threshold(double *c, int64_t k)
{
    double cs = 0.0, cs_sup = c[0];
    int64_t j, k_sup = 1;
    qsort(c, (size_t)k, sizeof(double), cmp_desc);
    for (j = 0; j < k; j++) {
        cs += c[j];
        if (1.0 + (double)(j + 1) * c[j] > cs) { k_sup = j + 1; cs_sup = cs; }
    }
    return (cs_sup - 1.0) / (double)k_sup;
}

/* A lower bound of tau - max from a few elements y[0..r) of a row (y = z - max <= 0, the max
 * among them): for ANY subset S of a row, (sum_S y - 1) / |S| <= tau - max, with equality for the
 * support (tau = max_r (sum of the r largest - 1) / r, Duchi et al. 2008), so the best prefix of
 * the r values sorted decreasingly is a bound, often tau itself.  Less a margin of a few units in
 * the last place of |max| + 2 for the rounding of the sums; never below -1 (the max alone). */
INLINE static double lower_bound(double *y, int r, double dm)
{
    double cs = 0.0, best = -1.0;
    int i, j;
    for (i = 1; i < r; i++)  /* insertion sort, decreasing: r <= LANES */
        for (j = i; j > 0 && y[j] > y[j - 1]; j--) {
            double tmp = y[j];
            y[j] = y[j - 1];
            y[j - 1] = tmp;
        }
    for (i = 0; i < r; i++) {
        double g;
        cs += y[i];
        g = (cs - 1.0) / (double)(i + 1);
        best = g > best ? g : best;
    }
    best -= 16.0 * DBL_EPSILON * (fabs(dm) + 2.0);
    return best > -1.0 ? best : -1.0 - 16.0 * DBL_EPSILON * (fabs(dm) + 2.0);
}

/* Newton steps (Michelot's algorithm) on the candidates y[0..k) (a superset of the support,
 * y = z - max, so the max is 0), from a lower bound t of tau - max (every element left out of
 * the candidates is at most max_out <= t):  S = {y > t}, t' = (sum_S y - 1) / |S|.  t' is exact as
 * soon as S = {y > t'}, i.e. min_S y > t' >= max_{not S} y: then t' = (sum_S y - 1)/|S| is the
 * fixed point tau - max(z).  Both extremes come with the sums, so no extra pass is needed.
 * t only increases, so an element that leaves S never returns: when a step finds at most half
 * of the elements still in S, S is compacted into c (what leaves is in max_out) and later steps
 * read only S.  After max_passes steps: the exact sort on what is left, still a superset of the
 * support. */
INLINE static double threshold(const double *y, int64_t k, double *c, double t, double max_out, double dm,
                               int max_passes, int *fell_back)
{
    const double *src = y;
    int pass;
    if (k > DENSE_K) {  /* many candidates (short dense rows): a better start from 8 of them */
        double lm[LANES];
        int64_t j0, l;
        for (l = 0; l < LANES; l++) lm[l] = -INFINITY;
        for (j0 = 0; j0 + LANES <= k; j0 += LANES)
#pragma omp simd
            for (l = 0; l < LANES; l++) lm[l] = y[j0 + l] > lm[l] ? y[j0 + l] : lm[l];
        for (l = 0; j0 + l < k; l++) lm[l] = y[j0 + l] > lm[l] ? y[j0 + l] : lm[l];
        lm[0] = lower_bound(lm, LANES, dm);  /* the max (y = 0) is among them: k > LANES */
        t = lm[0] > t ? lm[0] : t;
    }
    for (pass = 0; pass < max_passes; pass++) {
        double s = 0.0, ks = 0.0, min_in = INFINITY, mo = -INFINITY, tn;
        int64_t j;
#pragma omp simd reduction(+:s,ks) reduction(min:min_in) reduction(max:mo)
        for (j = 0; j < k; j++) {
            double v = src[j], a = v > t ? v : INFINITY, b = v > t ? -INFINITY : v;
            ks += v > t ? 1.0 : 0.0;
            s += v > t ? v : 0.0;
            min_in = a < min_in ? a : min_in;
            mo = b > mo ? b : mo;
        }
        max_out = mo > max_out ? mo : max_out;
        tn = (s - 1.0) / ks;  /* ks >= 1: the max (y = 0) is in S since t < 0 */
        if (min_in > tn && max_out <= tn) return tn;  /* S = {y > tn}: tn is exact */
        if (2.0 * ks <= (double)k) {  /* compact S = {y > t}: what leaves is in max_out */
            int64_t w = 0;
            for (j = 0; j < k; j++) {
                double v = src[j];
                c[w] = v;
                w += v > t;
            }
            src = c;
            k = w;
        }
        t = tn;
    }
    *fell_back = 1;
    if (src != c) memcpy(c, src, (size_t)k * sizeof(double));
    return sort_threshold(c, k);
}


#define T float
#define FN(name) name##_f32
#define nextafter_f32 nextafterf
#include "_sparsemax.c"  /* this file again, with T set */
#undef T
#undef FN
#define T double
#define FN(name) name##_f64
#define nextafter_f64 nextafter
#include "_sparsemax.c"  /* this file again, with T set */
#undef T
#undef FN

/* ------------------------------------------------------------------ threading */

typedef struct {
    int fwd, f64, max_passes;
    const void *a, *b;  /* forward: z, unused;  backward: p, g */
    void *out;
    int64_t n, r0, r1;
    int64_t fell_back;  /* forward: rows finished by the sort; -1 if malloc failed */
} job_t;

/* Runs fn on each of the nt jobs (elements of `size` bytes from `jobs`), in parallel when nt > 1. */
static void run_parallel(void *(*fn)(void *), void *jobs, size_t size, int nt)
{
    char *base = (char *)jobs;
    int t;
    if (nt == 1) {
        fn(base);
        return;
    }
#ifdef _OPENMP  /* torch's own libgomp (same soname, already loaded): its thread pool */
#pragma omp parallel for schedule(static, 1) num_threads(nt)
    for (t = 0; t < nt; t++) fn(base + (size_t)t * size);
#else
    {
        pthread_t tid[MAX_THREADS];
        int started[MAX_THREADS];
        for (t = 1; t < nt; t++)  /* a thread that cannot be created leaves its chunk to us */
            started[t] = pthread_create(&tid[t], NULL, fn, base + (size_t)t * size) == 0;
        fn(base);
        for (t = 1; t < nt; t++) {
            if (started[t]) pthread_join(tid[t], NULL);
            else fn(base + (size_t)t * size);
        }
    }
#endif
}

static void *run_job(void *arg)
{
    job_t *j = (job_t *)arg;
    int64_t r, n = j->n, fell_back = 0;  /* counted here, stored once: the jobs share cache lines */
    double *y = NULL;  /* forward scratch: y, c (doubles) and idx (int64), n each */
    if (j->fwd && !(y = (double *)malloc((size_t)(n > 0 ? n : 1) * 3 * sizeof(double)))) {
        j->fell_back = -1;
        return NULL;
    }
    for (r = j->r0; r < j->r1; r++) {
        if (j->fwd && j->f64)
            fell_back += fwd_row_f64((const double *)j->a + r * n, (double *)j->out + r * n, n,
                                        y, y + n, (int64_t *)(y + 2 * n), j->max_passes);
        else if (j->fwd)
            fell_back += fwd_row_f32((const float *)j->a + r * n, (float *)j->out + r * n, n,
                                        y, y + n, (int64_t *)(y + 2 * n), j->max_passes);
        else if (j->f64)
            bwd_row_f64((const double *)j->a + r * n, (const double *)j->b + r * n,
                        (double *)j->out + r * n, n);
        else
            bwd_row_f32((const float *)j->a + r * n, (const float *)j->b + r * n,
                        (float *)j->out + r * n, n);
    }
    free(y);
    j->fell_back = fell_back;
    return NULL;
}

static int64_t dispatch(int fwd, int f64, const void *a, const void *b, void *out, int64_t rows,
                        int64_t n, int max_passes, int nthreads)
{
    job_t jobs[MAX_THREADS];
    int64_t by_size = rows * n / MIN_ELEMS_PER_THREAD, total = 0;
    int t, nt = nthreads < 1 ? 1 : nthreads > MAX_THREADS ? MAX_THREADS : nthreads;
    if ((int64_t)nt > by_size) nt = by_size > 1 ? (int)by_size : 1;
    if ((int64_t)nt > rows) nt = rows > 1 ? (int)rows : 1;
    for (t = 0; t < nt; t++) {
        job_t jb = {fwd, f64, max_passes, a, b, out, n, rows * t / nt, rows * (t + 1) / nt, 0};
        jobs[t] = jb;
    }
    run_parallel(run_job, jobs, sizeof jobs[0], nt);
    for (t = 0; t < nt; t++) {
        if (jobs[t].fell_back < 0) return -1;
        total += jobs[t].fell_back;
    }
    return total;
}

/* Entry points.  Forward returns the number of rows finished by the sort (>= 0), or -1 if a
 * scratch buffer could not be allocated (the output is then incomplete). */
int64_t mmin_sparsemax_fwd_f32(const float *z, float *p, int64_t rows, int64_t n, int max_passes,
                               int nthreads)
{ return dispatch(1, 0, z, NULL, p, rows, n, max_passes, nthreads); }

int64_t mmin_sparsemax_fwd_f64(const double *z, double *p, int64_t rows, int64_t n,
                               int max_passes, int nthreads)
{ return dispatch(1, 1, z, NULL, p, rows, n, max_passes, nthreads); }

int64_t mmin_sparsemax_bwd_f32(const float *p, const float *g, float *dz, int64_t rows, int64_t n,
                               int nthreads)
{ return dispatch(0, 0, p, g, dz, rows, n, 0, nthreads); }

int64_t mmin_sparsemax_bwd_f64(const double *p, const double *g, double *dz, int64_t rows,
                               int64_t n, int nthreads)
{ return dispatch(0, 1, p, g, dz, rows, n, 0, nthreads); }

/* ------------------------------------------------------------------ fused attention */

static size_t attn_scratch_bytes(const attn_job_t *a)
{
    size_t n = (size_t)a->lk, dh = (size_t)a->dh, ts = a->f64 ? sizeof(double) : sizeof(float);
    /* kT + s (T), 8 bytes of alignment slack, then doubles / int64: forward y, c, idx;
     * backward dkacc, dvacc (n dh each), P, D, J, idx */
    return (dh * n + n) * ts + 8 + (a->fwd ? 3 * n : 2 * n * dh + 4 * n) * sizeof(double);
}

static void *run_attn_job(void *arg)
{
    attn_job_t *a = (attn_job_t *)arg;
    int64_t u, H = a->heads, dh = a->dh, lq = a->lq, lk = a->lk, fell_back = 0;  /* stored once, as run_job */
    size_t ts = a->f64 ? sizeof(double) : sizeof(float);
    char *scratch = (char *)malloc(attn_scratch_bytes(a));
    if (!scratch) {
        a->fell_back = -1;
        return NULL;
    }
    for (u = a->u0; u < a->u1; u++) {
        int64_t b = u / H, h = u % H;
        size_t qo = (size_t)((b * lq * H + h) * dh) * ts, ko = (size_t)((b * lk * H + h) * dh) * ts;
        const uint8_t *mk = a->km + b * lk, *qm = a->qm ? a->qm + b * lq : NULL;
        if (!memchr(mk, 0, (size_t)lk)) mk = NULL;  /* every key of this sample is real: no masking */
        double *st = a->st + 2 * u * lq;
#define P_(ptr, off) ((void *)((char *)(ptr) + (off)))
        if (a->fwd && a->f64)
            attn_fwd_unit_f64(a, P_(a->q, qo), P_(a->k, ko), P_(a->v, ko), P_(a->out, qo), st, mk, qm,
                              scratch, &fell_back);
        else if (a->fwd)
            attn_fwd_unit_f32(a, P_(a->q, qo), P_(a->k, ko), P_(a->v, ko), P_(a->out, qo), st, mk, qm,
                              scratch, &fell_back);
        else if (a->f64)
            attn_bwd_unit_f64(a, P_(a->q, qo), P_(a->k, ko), P_(a->v, ko), P_(a->dout, qo), P_(a->dq, qo),
                              P_(a->dk, ko), P_(a->dv, ko), st, mk, qm, scratch);
        else
            attn_bwd_unit_f32(a, P_(a->q, qo), P_(a->k, ko), P_(a->v, ko), P_(a->dout, qo), P_(a->dq, qo),
                              P_(a->dk, ko), P_(a->dv, ko), st, mk, qm, scratch);
#undef P_
    }
    free(scratch);
    a->fell_back = fell_back;
    return NULL;
}

static int64_t attn_dispatch(const attn_job_t *tpl, int nthreads)
{
    attn_job_t jobs[MAX_THREADS];
    int64_t units = tpl->batch * tpl->heads, total = 0;
    int64_t by_size = units * tpl->lq * tpl->lk / MIN_ELEMS_PER_THREAD;
    int t, nt = nthreads < 1 ? 1 : nthreads > MAX_THREADS ? MAX_THREADS : nthreads;
    if (tpl->dh > MAX_DH) return -2;
    if ((int64_t)nt > by_size) nt = by_size > 1 ? (int)by_size : 1;
    if ((int64_t)nt > units) nt = units > 1 ? (int)units : 1;
    if (units == 0) return 0;
    for (t = 0; t < nt; t++) {
        jobs[t] = *tpl;
        jobs[t].u0 = units * t / nt;
        jobs[t].u1 = units * (t + 1) / nt;
        jobs[t].fell_back = 0;
    }
    run_parallel(run_attn_job, jobs, sizeof jobs[0], nt);
    for (t = 0; t < nt; t++) {
        if (jobs[t].fell_back < 0) return -1;
        total += jobs[t].fell_back;
    }
    return total;
}

/* Fused attention entry points.  Forward: out and st written, returns the rows finished by the
 * sort (>= 0), -1 if scratch memory could not be allocated, -2 if dh > MAX_DH.  Backward: dq, dk,
 * dv written (every element), same error codes. */
int64_t mmin_attn_fwd(int f64, const void *q, const void *k, const void *v, void *out, double *st,
                      const uint8_t *km, const uint8_t *qm, int64_t batch, int64_t heads, int64_t lq,
                      int64_t lk, int64_t dh, int max_passes, int nthreads)
{
    attn_job_t a;
    memset(&a, 0, sizeof a);
    a.f64 = f64; a.fwd = 1; a.max_passes = max_passes;
    a.batch = batch; a.heads = heads; a.lq = lq; a.lk = lk; a.dh = dh;
    a.q = q; a.k = k; a.v = v; a.out = out; a.st = st; a.km = km; a.qm = qm;
    return attn_dispatch(&a, nthreads);
}

int64_t mmin_attn_bwd(int f64, const void *q, const void *k, const void *v, const void *dout,
                      void *dq, void *dk, void *dv, double *st, const uint8_t *km, const uint8_t *qm,
                      int64_t batch, int64_t heads, int64_t lq, int64_t lk, int64_t dh, int nthreads)
{
    attn_job_t a;
    memset(&a, 0, sizeof a);
    a.f64 = f64; a.fwd = 0;
    a.batch = batch; a.heads = heads; a.lq = lq; a.lk = lk; a.dh = dh;
    a.q = q; a.k = k; a.v = v; a.dout = dout; a.dq = dq; a.dk = dk; a.dv = dv; a.st = st;
    a.km = km; a.qm = qm;
    return attn_dispatch(&a, nthreads);
}

/* ------------------------------------------------------------------ dropout (Philox4x32-10) */

#define PHILOX_M0 0xD2511F53u  /* Random123's multipliers and Weyl key increments */
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u
#define PHILOX_LANES 8  /* counters per pass: the rounds run as vector code over them */

/* Philox4x32-10 of the counters (c0, c1, c2, c3)[l], l < PHILOX_LANES, in place, key (k0, k1):
 * 10 rounds of (c0, c1, c2, c3) <- (hi(M1 c2) ^ c1 ^ k0, lo(M1 c2), hi(M0 c0) ^ c3 ^ k1, lo(M0 c0)),
 * the key bumped by (W0, W1) between rounds. */
INLINE static void philox_rounds(uint32_t *c0, uint32_t *c1, uint32_t *c2, uint32_t *c3, uint32_t k0,
                                 uint32_t k1)
{
    int r, l;
    for (r = 0; r < 10; r++) {
#pragma omp simd
        for (l = 0; l < PHILOX_LANES; l++) {
            uint64_t p0 = (uint64_t)PHILOX_M0 * c0[l], p1 = (uint64_t)PHILOX_M1 * c2[l];
            uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1[l] ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3[l] ^ k1;
            c1[l] = (uint32_t)p1;
            c3[l] = (uint32_t)p0;
            c0[l] = n0;
            c2[l] = n2;
        }
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
}

/* One Philox4x32-10 block, for the tests: Random123's known answers. */
void mmin_philox4x32_10(const uint32_t *ctr, const uint32_t *key, uint32_t *out)
{
    uint32_t c[4][PHILOX_LANES] = {{0}};
    int w;
    for (w = 0; w < 4; w++) c[w][0] = ctr[w];
    philox_rounds(c[0], c[1], c[2], c[3], key[0], key[1]);
    for (w = 0; w < 4; w++) out[w] = c[w][0];
}

typedef struct {
    int f64;
    const void *x;
    void *out;
    int64_t e0, e1;  /* elements [e0, e1) of this thread; e0 a multiple of 4 PHILOX_LANES */
    uint64_t seed;
    uint32_t keep;
    double scale;
} drop_job_t;

CLONES static void *run_drop_job(void *arg)
{
    drop_job_t *j = (drop_job_t *)arg;
    const int64_t span = 4 * PHILOX_LANES;
    int64_t e;
    for (e = j->e0; e < j->e1; e += span) {
        uint32_t c0[PHILOX_LANES], c1[PHILOX_LANES], c2[PHILOX_LANES], c3[PHILOX_LANES], u[4 * PHILOX_LANES];
        int64_t m = j->e1 - e < span ? j->e1 - e : span;
        int l;
        for (l = 0; l < PHILOX_LANES; l++) {  /* counter = element / 4, as (low, high, 0, 0) */
            uint64_t block = (uint64_t)(e / 4 + l);
            c0[l] = (uint32_t)block;
            c1[l] = (uint32_t)(block >> 32);
            c2[l] = c3[l] = 0;
        }
        philox_rounds(c0, c1, c2, c3, (uint32_t)j->seed, (uint32_t)(j->seed >> 32));
        for (l = 0; l < PHILOX_LANES; l++) {
            u[4 * l] = c0[l];
            u[4 * l + 1] = c1[l];
            u[4 * l + 2] = c2[l];
            u[4 * l + 3] = c3[l];
        }
        if (j->f64)
            drop_f64((const double *)j->x + e, (double *)j->out + e, m, u, j->keep, j->scale);
        else
            drop_f32((const float *)j->x + e, (float *)j->out + e, m, u, j->keep, (float)j->scale);
    }
    return NULL;
}

/* out = x * scale where u_i < keep, else 0, over n contiguous float (f64 = 0) or double elements;
 * returns 0.  The same call maps a gradient to the input's gradient. */
int64_t mmin_dropout(int f64, const void *x, void *out, int64_t n, uint64_t seed, uint32_t keep, double scale,
                     int nthreads)
{
    drop_job_t jobs[MAX_THREADS];
    const int64_t span = 4 * PHILOX_LANES, spans = (n + span - 1) / span;
    int64_t by_size = n / MIN_ELEMS_PER_THREAD;
    int t, nt = nthreads < 1 ? 1 : nthreads > MAX_THREADS ? MAX_THREADS : nthreads;
    if ((int64_t)nt > by_size) nt = by_size > 1 ? (int)by_size : 1;
    for (t = 0; t < nt; t++) {
        drop_job_t jb = {f64, x, out, spans * t / nt * span, spans * (t + 1) / nt * span, seed, keep, scale};
        if (jb.e1 > n) jb.e1 = n;
        jobs[t] = jb;
    }
    run_parallel(run_drop_job, jobs, sizeof jobs[0], nt);
    return 0;
}

#else /* ------------------------------------ row kernels, included once per type T */

/* The indices i of the candidates z[i] > lo, in order, into idx; returns their number.  Blocks of
 * CBLOCK are first tested with one vectorised compare and skipped when they hold none (most do:
 * candidates lie within 1 of the max); inside a block the collection is branch-free. */
INLINE static int64_t FN(candidates)(const T *z, int64_t n, T lo, int64_t *idx)
{
    int64_t i, i0 = 0, k = 0, hit = 0;
    for (; i0 + CBLOCK <= n; i0 += CBLOCK) {
        int any = 0;
        if (i0 == 4 * CBLOCK && hit >= 3) break;  /* dense row (candidates everywhere): no tests */
#pragma omp simd reduction(|:any)
        for (i = i0; i < i0 + CBLOCK; i++) any |= z[i] > lo;
        if (!any) continue;
        hit++;
        for (i = i0; i < i0 + CBLOCK; i++) { idx[k] = i; k += z[i] > lo; }
    }
    for (i = i0; i < n; i++) { idx[k] = i; k += z[i] > lo; }
    return k;
}

/* The largest T not above x - 1 (the candidates' bound: tau >= max - 1): (T)(x - 1) may round
 * up, so step down while it is above; exact near -1 by Sterbenz, so this also holds for
 * |x| >= 2^53, where x - 1 rounds back to x. */
INLINE static T FN(below)(double x)
{
    T lo = (T)(x - 1.0);
    while ((double)lo - x > -1.0) lo = FN(nextafter)(lo, (T)-INFINITY);
    return lo;
}

/* The largest T not above x. */
INLINE static T FN(not_above)(double x)
{
    T lo = (T)x;
    while ((double)lo > x) lo = FN(nextafter)(lo, (T)-INFINITY);
    return lo;
}

/* First pass over a row z[0..n): the max in LANES lanes, and whether a NaN is there.  Returns the
 * max (-inf: every key masked; +inf or *bad: the row is NaN); lm receives the lanes' maxima. */
INLINE static T FN(lane_max)(const T *z, int64_t n, T *lm, int *bad)
{
    int64_t i0, l;
    int nan = 0;
    T m = -INFINITY, acc[LANES];
    for (l = 0; l < LANES; l++) acc[l] = -INFINITY;
    for (i0 = 0; i0 + LANES <= n; i0 += LANES)
#pragma omp simd reduction(|:nan)
        for (l = 0; l < LANES; l++) {
            T v = z[i0 + l];
            acc[l] = v > acc[l] ? v : acc[l];
            nan |= v != v;
        }
    for (l = 0; i0 + l < n; l++) {
        T v = z[i0 + l];
        acc[l] = v > acc[l] ? v : acc[l];
        nan |= v != v;
    }
    for (l = 0; l < LANES; l++) {
        lm[l] = acc[l];
        m = acc[l] > m ? acc[l] : m;
    }
    *bad = nan;
    return m;
}

/* tau - max of a finite row with max dm: the candidates (a superset of the support) in idx[0..*kout),
 * y = z - max on them, then Newton's steps.  Rows of at least LANE_FROM keys pass the maxima of
 * their LANES lanes (lm, from FN(lane_max)): these give a lower bound t0 (lower_bound), the
 * candidates are the keys above max + t0 and the steps start at t0, which is what keeps dense rows
 * cheap (an untrained MMIN has most keys within 1 of the max, but a support of 10-20).  Shorter rows
 * (lm = NULL) start from the bound max - 1. */
INLINE static double FN(row_threshold)(const T *z, int64_t n, double dm, const T *lm,
                                       double *y, double *c, int64_t *idx, int64_t *kout, int max_passes,
                                       int *fell_back)
{
    double ly[LANES], t0 = -1.0, max_out = -INFINITY;  /* max - 1: the rest is below t0 already */
    int64_t j, k;
    int r = 0, l;
    T lo;
    if (lm) {
        for (l = 0; l < LANES; l++)
            if (lm[l] > -INFINITY) ly[r++] = (double)lm[l] - dm;
        t0 = lower_bound(ly, r, dm);
        lo = FN(not_above)(dm + t0);
        max_out = (double)lo - dm;  /* everything left out is <= lo */
    } else {
        lo = FN(below)(dm);
    }
    k = FN(candidates)(z, n, lo, idx);
    for (j = 0; j < k; j++) y[j] = (double)z[idx[j]] - dm;
    *kout = k;
    return threshold(y, k, c, t0, max_out, dm, max_passes, fell_back);
}

/* The max of a row, whether it holds a NaN, and for rows of at least LANE_FROM keys the lanes'
 * maxima; returns lm, or NULL for a short row. */
INLINE static T *FN(row_max)(const T *z, int64_t n, T *m, int *bad, T *lm)
{
    int64_t i;
    int nan = 0;
    T mx = -INFINITY;
    if (n >= LANE_FROM) {
        *m = FN(lane_max)(z, n, lm, bad);
        return lm;
    }
#pragma omp simd reduction(max:mx) reduction(|:nan)
    for (i = 0; i < n; i++) {
        T v = z[i];
        mx = v > mx ? v : mx;
        nan |= v != v;
    }
    *m = mx;
    *bad = nan;
    return NULL;
}

/* One row; scratch y, c (doubles) and idx, n entries each.  Returns 1 if the sort was used. */
CLONES static int FN(fwd_row)(const T *z, T *p, int64_t n, double *y, double *c, int64_t *idx,
                              int max_passes)
{
    T m, lmax[LANES], *lm;
    int bad = 0, fell_back = 0;
    int64_t i, j, k;
    double dm, t;
    lm = FN(row_max)(z, n, &m, &bad, lmax);
    if (bad || m == INFINITY || m == -INFINITY) {  /* NaN/+inf row, or all masked */
        T fill = m == -INFINITY && !bad ? (T)0 : (T)NAN;
        for (i = 0; i < n; i++) p[i] = fill;
        return 0;
    }
    dm = (double)m;
    t = FN(row_threshold)(z, n, dm, lm, y, c, idx, &k, max_passes, &fell_back);
    if (n <= SHORT_ROW) {  /* p = max(y - t, 0): one vectorised pass ... */
#pragma omp simd
        for (i = 0; i < n; i++) {
            double v = ((double)z[i] - dm) - t;
            p[i] = v > 0.0 ? (T)v : (T)0;
        }
        return fell_back;
    }
    memset(p, 0, (size_t)n * sizeof(T));  /* ... or zeros, then the candidates */
    for (j = 0; j < k; j++) {
        double v = y[j] - t;
        p[idx[j]] = v > 0.0 ? (T)v : (T)0;
    }
    return fell_back;
}

CLONES static void FN(bwd_row)(const T *p, const T *g, T *dz, int64_t n)
{
    double s = 0.0, k = 0.0;
    T mean;
    int64_t i;
#pragma omp simd reduction(+:s,k)
    for (i = 0; i < n; i++) {  /* a product vectorises better than a select ... */
        double on = p[i] > 0 ? 1.0 : 0.0;
        k += on;
        s += on * (double)g[i];
    }
    if (s != s) {  /* ... but 0 * inf = NaN: redo with a select if g has inf/NaN anywhere */
        for (i = 0, s = 0.0; i < n; i++)
            if (p[i] > 0) s += (double)g[i];
    }
    mean = k > 0.0 ? (T)(s / k) : (T)0;  /* sums in double, the difference in T */
#pragma omp simd
    for (i = 0; i < n; i++) dz[i] = p[i] > 0 ? g[i] - mean : (T)0;
}

/* Scores of one query row against the n keys of its (b, h): s_j = sum_d q[d] kT[d n + j], the
 * dh terms added in order d = 0, 1, ... (kT: the keys transposed, dh x n).  Tiles of 8 vectors of
 * keys stay in registers through the whole sum over d (GCC / clang vector types; one store per
 * score instead of dh); the products and sums are the scalar loop's, in the same order. */
#if defined(__GNUC__)
typedef T FN(vec) __attribute__((vector_size(32), aligned(sizeof(T))));  /* unaligned loads allowed */
#define FN_VL ((int64_t)(32 / sizeof(T)))
#endif
INLINE static void FN(scores)(const T *q, const T *kT, int64_t n, int64_t dh, T *s)
{
    int64_t d, j, j0 = 0;
#if defined(__GNUC__)
    for (; j0 + 4 * FN_VL <= n; j0 += 4 * FN_VL) {
        FN(vec) a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        for (d = 0; d < dh; d++) {
            const FN(vec) *kd = (const FN(vec) *)(kT + d * n + j0);
            T qd = q[d];
            a0 += qd * kd[0];
            a1 += qd * kd[1];
            a2 += qd * kd[2];
            a3 += qd * kd[3];
        }
        memcpy(s + j0, &a0, sizeof a0);
        memcpy(s + j0 + FN_VL, &a1, sizeof a1);
        memcpy(s + j0 + 2 * FN_VL, &a2, sizeof a2);
        memcpy(s + j0 + 3 * FN_VL, &a3, sizeof a3);
    }
    for (; j0 + FN_VL <= n; j0 += FN_VL) {  /* then single vectors */
        FN(vec) a0 = {0};
        for (d = 0; d < dh; d++) a0 += q[d] * *(const FN(vec) *)(kT + d * n + j0);
        memcpy(s + j0, &a0, sizeof a0);
    }
#endif
    for (j = j0; j < n; j++) s[j] = 0;
    for (d = 0; d < dh; d++) {
        T a = q[d];
        const T *kd = kT + d * n;
#pragma omp simd
        for (j = j0; j < n; j++) s[j] += a * kd[j];
    }
}

/* The padded keys' scores set to -inf (mk[j] == 0), which is how the row code knows a masked key:
 * it is never a candidate and gets exactly 0, whatever its score was (even NaN).  One vectorised
 * pass, so that the row code itself has no mask (its loops over the mask did not vectorise). */
INLINE static void FN(mask_scores)(T *s, const uint8_t *mk, int64_t n)
{
    int64_t j;
#pragma omp simd
    for (j = 0; j < n; j++) s[j] = mk[j] ? s[j] : (T)-INFINITY;
}

/* Sparsemax statistics of a score row s (masked keys at -inf), as fwd_row computes them:
 * st = (max, t); the candidates (a superset of the support) in idx[0..k), y = s - max on them.
 * Returns k, or -1 for a row without real key (st = (0, +inf)), -2 for a NaN/+inf row. */
INLINE static int64_t FN(row_stats)(const T *s, int64_t n, double *st, double *y, double *c, int64_t *idx,
                                    int max_passes, int64_t *fell_back)
{
    T m, lmax[LANES], *lm;
    int bad = 0, sorted = 0;
    int64_t k;
    double dm;
    lm = FN(row_max)(s, n, &m, &bad, lmax);
    if (bad || m == INFINITY || m == -INFINITY) {
        st[0] = 0.0;
        st[1] = m == -INFINITY && !bad ? INFINITY : NAN;
        return m == -INFINITY && !bad ? -1 : -2;
    }
    dm = (double)m;
    st[0] = dm;
    st[1] = FN(row_threshold)(s, n, dm, lm, y, c, idx, &k, max_passes, &sorted);
    *fell_back += sorted;
    return k;
}

/* The support of one score row (masked keys at -inf), with p exactly as the forward has it: J[0..m)
 * the keys with p_j = (T)(((double)s_j - max) - t) > 0, P their weights; returns m.  A support
 * key has (s_j - max) - t > 0 up to the rounding of doubles near 1, so s_j > max + t less a
 * margin of a few units of max + 2 in the last place: the candidates above that bound hold the
 * support (usually a handful of keys), and only they get the exact test. */
INLINE static int64_t FN(support)(const T *s, int64_t n, double dm, double t,
                                  int64_t *idx, int64_t *J, double *P)
{
    double bound = dm + t - 8.0 * DBL_EPSILON * (fabs(dm) + 2.0);
    T lo = (T)bound;
    int64_t j, m = 0, k;
    while ((double)lo > bound) lo = FN(nextafter)(lo, (T)-INFINITY);
    k = FN(candidates)(s, n, lo, idx);
    for (j = 0; j < k; j++) {
        double pv = ((double)s[idx[j]] - dm) - t;
        T p = pv > 0.0 ? (T)pv : (T)0;
        J[m] = idx[j];
        P[m] = (double)p;
        m += p > 0;
    }
    return m;
}

INLINE static void FN(transpose_keys)(const T *k, int64_t n, int64_t stride, int64_t dh, T *kT)
{
    int64_t j, d;
    for (j = 0; j < n; j++)
        for (d = 0; d < dh; d++) kT[d * n + j] = k[j * stride + d];
}

/* Forward of one (b, h): q, k, v, out point at its first row / key; stride = H dh. */
CLONES static void FN(attn_fwd_unit)(const attn_job_t *a, const T *q, const T *k, const T *v, T *out,
                                     double *st, const uint8_t *mk, const uint8_t *qm, char *scratch,
                                     int64_t *fell_back)
{
    int64_t n = a->lk, dh = a->dh, stride = a->heads * dh, i, j, d, kc, m;
    T *kT = (T *)scratch, *s = kT + dh * n;
    double *y = (double *)(((uintptr_t)(s + n) + 7) & ~(uintptr_t)7), *c = y + n, acc[MAX_DH];
    int64_t *idx = (int64_t *)(c + n);
    FN(transpose_keys)(k, n, stride, dh, kT);
    for (i = 0; i < a->lq; i++) {
        T *o = out + i * stride;
        double *sti = st + 2 * i;
        if (qm && !qm[i]) {
            sti[0] = 0.0;
            sti[1] = INFINITY;
            for (d = 0; d < dh; d++) o[d] = 0;
            continue;
        }
        FN(scores)(q + i * stride, kT, n, dh, s);
        if (mk) FN(mask_scores)(s, mk, n);
        kc = FN(row_stats)(s, n, sti, y, c, idx, a->max_passes, fell_back);
        if (kc < 0) {
            for (d = 0; d < dh; d++) o[d] = kc == -1 ? (T)0 : (T)NAN;
            continue;
        }
        for (j = 0, m = 0; j < kc; j++) {  /* the support, compacted in place (branch-free) */
            double pv = y[j] - sti[1];
            T p = pv > 0.0 ? (T)pv : (T)0;
            idx[m] = idx[j];
            y[m] = (double)p;
            m += p > 0;
        }
        for (d = 0; d < dh; d++) acc[d] = 0.0;
        for (j = 0; j < m; j++) {
            const T *vj = v + idx[j] * stride;
            double pj = y[j];
#pragma omp simd
            for (d = 0; d < dh; d++) acc[d] += pj * (double)vj[d];
        }
        for (d = 0; d < dh; d++) o[d] = (T)acc[d];
    }
}

/* Backward of one (b, h); dq, dk, dv point like q, k, v. */
CLONES static void FN(attn_bwd_unit)(const attn_job_t *a, const T *q, const T *k, const T *v,
                                     const T *dout, T *dq, T *dk, T *dv, const double *st,
                                     const uint8_t *mk, const uint8_t *qm, char *scratch)
{
    int64_t n = a->lk, dh = a->dh, stride = a->heads * dh, i, j, d, m;
    T *kT = (T *)scratch, *s = kT + dh * n;
    double *base = (double *)(((uintptr_t)(s + n) + 7) & ~(uintptr_t)7);
    double *dkacc = base, *dvacc = dkacc + n * dh, *P = dvacc + n * dh, *D = P + n, acc[MAX_DH];
    int64_t *J = (int64_t *)(D + n), *idx = J + n;
    FN(transpose_keys)(k, n, stride, dh, kT);
    memset(dkacc, 0, (size_t)(2 * n * dh) * sizeof(double));
    for (i = 0; i < a->lq; i++) {
        const T *qi = q + i * stride, *gi = dout + i * stride;
        T *dqi = dq + i * stride;
        double dm = st[2 * i], t = st[2 * i + 1], sum = 0.0, mean;
        if ((qm && !qm[i]) || !(t < INFINITY)) {  /* empty or NaN row: zero gradient */
            for (d = 0; d < dh; d++) dqi[d] = 0;
            continue;
        }
        FN(scores)(qi, kT, n, dh, s);
        if (mk) FN(mask_scores)(s, mk, n);
        m = FN(support)(s, n, dm, t, idx, J, P);  /* p exactly as the forward had it */
        for (j = 0; j < m; j++) {
            const T *vj = v + J[j] * stride;
            double dp = 0.0;
#pragma omp simd reduction(+:dp)
            for (d = 0; d < dh; d++) dp += (double)gi[d] * (double)vj[d];
            D[j] = dp;
            sum += dp;
        }
        mean = m > 0 ? sum / (double)m : 0.0;
        for (d = 0; d < dh; d++) acc[d] = 0.0;
        for (j = 0; j < m; j++) {
            const T *kj = k + J[j] * stride;
            double g = D[j] - mean, *dkj = dkacc + J[j] * dh, *dvj = dvacc + J[j] * dh;
#pragma omp simd
            for (d = 0; d < dh; d++) {
                acc[d] += g * (double)kj[d];
                dkj[d] += g * (double)qi[d];
                dvj[d] += P[j] * (double)gi[d];
            }
        }
        for (d = 0; d < dh; d++) dqi[d] = (T)acc[d];
    }
    for (j = 0; j < n; j++)
        for (d = 0; d < dh; d++) {
            dk[j * stride + d] = (T)dkacc[j * dh + d];
            dv[j * stride + d] = (T)dvacc[j * dh + d];
        }
}

/* Dropout of m <= 4 PHILOX_LANES elements given their Philox words u. */
INLINE static void FN(drop)(const T *x, T *out, int64_t m, const uint32_t *u, uint32_t keep, T scale)
{
    int64_t i;
#pragma omp simd
    for (i = 0; i < m; i++) out[i] = u[i] < keep ? x[i] * scale : (T)0;
}

#endif
