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
 * Fused attention normaliser (mmin_attn_*): the same forward and backward on a (rows, n) score
 * map in place, rows grouped per batch element b = r / rows_per_b, with a key mask km (B, n)
 * (uint8, 1 = real key) and an optional query mask qm (B, lq), query index r % lq.  Masked keys
 * are never read into the threshold and get exactly 0; a row whose query is masked or that has
 * no real key gets zeros.  The forward keeps only the row statistics st[r] = (max, t), tau =
 * max + t (t = +inf marks an empty row, NaN a NaN/+inf row); the backward recomputes
 *     p = max((s - max) - t, 0)
 * bit for bit as the forward wrote it (same expression, same double arithmetic) from the
 * recomputed scores s, and writes p over s and dS = 1[p > 0] * (dP - mean_S dP) over dP.
 *
 * Rows are split into contiguous chunks over at most `nthreads` threads: an OpenMP parallel
 * for when built with -fopenmp (libgomp.so.1, i.e. the copy torch has already loaded, so the
 * kernel runs on torch's own thread pool), else pthreads created per call.  nthreads = 1
 * runs on the calling thread only.
 */
#ifndef T /* ------------------------------------------------------------ common part */
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
#define BLOCK 16       /* rows longer than SKIP_FROM skip blocks of 16 without candidates */
#define SKIP_FROM 512  /* (shorter rows: the mispredicted branches cost more than they save) */
#define SHORT_ROW 128  /* up to this length the output is one pass over the row */

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

/* Sums of one Newton step over c[0..k) at t: |S|, sum_S c, min_S c, max_{not S} c. */
#define NEWTON_SUMS                                                     \
    for (j = 0; j < k; j++) {                                           \
        double v = c[j], a = v > t ? v : INFINITY, b = v > t ? -INFINITY : v; \
        ks += v > t ? 1.0 : 0.0;                                        \
        s += v > t ? v : 0.0;                                           \
        min_in = a < min_in ? a : min_in;                               \
        max_out = b > max_out ? b : max_out;                            \
    }

/* Newton steps on the candidates c[0..k) (a superset of the support; c is short, so no
 * compaction): from t = -1, S = {c > t}, t' = (sum_S c - 1) / |S|.  t' is exact as soon as
 * S = {c > t'}, i.e. min_S c > t' >= max_{not S} c: then t' = (sum_S c - 1)/|S| is the
 * fixed point tau - max(z).  Both extremes come with the sums, so no extra pass is needed.
 * After max_passes steps: the exact sort. */
static double threshold(const double *c, int64_t k, double *scratch, int max_passes,
                        int *fell_back)
{
    double t = -1.0;
    int pass;
    for (pass = 0; pass < max_passes; pass++) {
        double s = 0.0, ks = 0.0, min_in = INFINITY, max_out = -INFINITY;
        int64_t j;
#pragma omp simd reduction(+:s,ks) reduction(min:min_in) reduction(max:max_out)
        NEWTON_SUMS
        t = (s - 1.0) / ks;  /* ks >= 1: the max (c = 0) is in S since t < 0 */
        if (min_in > t && max_out <= t) return t;  /* S = {c > t}: t is exact */
    }
    *fell_back = 1;
    memcpy(scratch, c, (size_t)k * sizeof(double));
    return sort_threshold(scratch, k);
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

enum { FWD, BWD, ATTN_FWD, ATTN_BWD };

typedef struct {
    int kind, f64, max_passes;
    const void *a, *b;  /* forward: z; backward: p, g; attention: unused */
    void *out;          /* forward: p; backward: dz; attention: the scores (in place) */
    void *g;            /* attention backward: dP -> dS (in place) */
    double *st;         /* attention: (max, t) per row */
    const uint8_t *km, *qm;  /* attention: key mask (B, n), query mask (B, lq) or NULL */
    int64_t rows_per_b, lq;
    int64_t n, r0, r1;
    int64_t fell_back;  /* forward: rows finished by the sort; -1 if malloc failed */
} job_t;

static void *run_job(void *arg)
{
    job_t *j = (job_t *)arg;
    int64_t r, n = j->n;
    double *y = NULL;  /* forward scratch: y, c (doubles) and idx (int64), n each */
    int fwd = j->kind == FWD || j->kind == ATTN_FWD;
    if (fwd && !(y = (double *)malloc((size_t)(n > 0 ? n : 1) * 3 * sizeof(double)))) {
        j->fell_back = -1;
        return NULL;
    }
    for (r = j->r0; r < j->r1; r++) {
        if (j->kind == ATTN_FWD || j->kind == ATTN_BWD) {
            int64_t b = r / j->rows_per_b;
            const uint8_t *mk = j->km + b * n;
            double *st = j->st + 2 * r;
            if (j->qm && !j->qm[b * j->lq + r % j->lq]) {  /* padded query: an empty row */
                if (j->kind == ATTN_FWD) { st[0] = 0.0; st[1] = INFINITY; }
                if (j->f64) {
                    memset((double *)j->out + r * n, 0, (size_t)n * sizeof(double));
                    if (j->kind == ATTN_BWD) memset((double *)j->g + r * n, 0, (size_t)n * sizeof(double));
                } else {
                    memset((float *)j->out + r * n, 0, (size_t)n * sizeof(float));
                    if (j->kind == ATTN_BWD) memset((float *)j->g + r * n, 0, (size_t)n * sizeof(float));
                }
                continue;
            }
            if (j->kind == ATTN_FWD && j->f64)
                j->fell_back += attn_fwd_row_f64((double *)j->out + r * n, mk, n, st, y, y + n,
                                                 (int64_t *)(y + 2 * n), j->max_passes);
            else if (j->kind == ATTN_FWD)
                j->fell_back += attn_fwd_row_f32((float *)j->out + r * n, mk, n, st, y, y + n,
                                                 (int64_t *)(y + 2 * n), j->max_passes);
            else if (j->f64)
                attn_bwd_row_f64((double *)j->out + r * n, (double *)j->g + r * n, mk, n, st);
            else
                attn_bwd_row_f32((float *)j->out + r * n, (float *)j->g + r * n, mk, n, st);
        } else if (j->kind == FWD && j->f64)
            j->fell_back += fwd_row_f64((const double *)j->a + r * n, (double *)j->out + r * n, n,
                                        y, y + n, (int64_t *)(y + 2 * n), j->max_passes);
        else if (j->kind == FWD)
            j->fell_back += fwd_row_f32((const float *)j->a + r * n, (float *)j->out + r * n, n,
                                        y, y + n, (int64_t *)(y + 2 * n), j->max_passes);
        else if (j->f64)
            bwd_row_f64((const double *)j->a + r * n, (const double *)j->b + r * n,
                        (double *)j->out + r * n, n);
        else
            bwd_row_f32((const float *)j->a + r * n, (const float *)j->b + r * n,
                        (float *)j->out + r * n, n);
    }
    free(y);
    return NULL;
}

/* Runs the job template `tpl` over rows [0, rows) split into chunks of contiguous rows. */
static int64_t dispatch(const job_t *tpl, int64_t rows, int nthreads)
{
    job_t jobs[MAX_THREADS];
    int64_t n = tpl->n, by_size = rows * n / MIN_ELEMS_PER_THREAD, total = 0;
    int t, nt = nthreads < 1 ? 1 : nthreads > MAX_THREADS ? MAX_THREADS : nthreads;
    if ((int64_t)nt > by_size) nt = by_size > 1 ? (int)by_size : 1;
    if ((int64_t)nt > rows) nt = rows > 1 ? (int)rows : 1;
    for (t = 0; t < nt; t++) {
        jobs[t] = *tpl;
        jobs[t].r0 = rows * t / nt;
        jobs[t].r1 = rows * (t + 1) / nt;
        jobs[t].fell_back = 0;
    }
    if (nt == 1) {
        run_job(&jobs[0]);
    } else {
#ifdef _OPENMP  /* torch's own libgomp (same soname, already loaded): its thread pool */
#pragma omp parallel for schedule(static, 1) num_threads(nt)
        for (t = 0; t < nt; t++) run_job(&jobs[t]);
#else
        pthread_t tid[MAX_THREADS];
        int started[MAX_THREADS];
        for (t = 1; t < nt; t++)  /* a thread that cannot be created leaves its chunk to us */
            started[t] = pthread_create(&tid[t], NULL, run_job, &jobs[t]) == 0;
        run_job(&jobs[0]);
        for (t = 1; t < nt; t++) {
            if (started[t]) pthread_join(tid[t], NULL);
            else run_job(&jobs[t]);
        }
#endif
    }
    for (t = 0; t < nt; t++) {
        if (jobs[t].fell_back < 0) return -1;
        total += jobs[t].fell_back;
    }
    return total;
}

static int64_t plain(int kind, int f64, const void *a, const void *b, void *out, int64_t rows,
                     int64_t n, int max_passes, int nthreads)
{
    job_t tpl;
    memset(&tpl, 0, sizeof tpl);
    tpl.kind = kind; tpl.f64 = f64; tpl.max_passes = max_passes;
    tpl.a = a; tpl.b = b; tpl.out = out; tpl.n = n;
    return dispatch(&tpl, rows, nthreads);
}

static int64_t attn(int kind, int f64, void *s, void *g, double *st, const uint8_t *km,
                    const uint8_t *qm, int64_t rows, int64_t n, int64_t rows_per_b, int64_t lq,
                    int max_passes, int nthreads)
{
    job_t tpl;
    memset(&tpl, 0, sizeof tpl);
    tpl.kind = kind; tpl.f64 = f64; tpl.max_passes = max_passes;
    tpl.out = s; tpl.g = g; tpl.st = st; tpl.km = km; tpl.qm = qm;
    tpl.rows_per_b = rows_per_b > 0 ? rows_per_b : 1; tpl.lq = lq > 0 ? lq : 1; tpl.n = n;
    return dispatch(&tpl, rows, nthreads);
}

/* Entry points.  Forward returns the number of rows finished by the sort (>= 0), or -1 if a
 * scratch buffer could not be allocated (the output is then incomplete). */
int64_t mmin_sparsemax_fwd_f32(const float *z, float *p, int64_t rows, int64_t n, int max_passes,
                               int nthreads)
{ return plain(FWD, 0, z, NULL, p, rows, n, max_passes, nthreads); }

int64_t mmin_sparsemax_fwd_f64(const double *z, double *p, int64_t rows, int64_t n,
                               int max_passes, int nthreads)
{ return plain(FWD, 1, z, NULL, p, rows, n, max_passes, nthreads); }

int64_t mmin_sparsemax_bwd_f32(const float *p, const float *g, float *dz, int64_t rows, int64_t n,
                               int nthreads)
{ return plain(BWD, 0, p, g, dz, rows, n, 0, nthreads); }

int64_t mmin_sparsemax_bwd_f64(const double *p, const double *g, double *dz, int64_t rows,
                               int64_t n, int nthreads)
{ return plain(BWD, 1, p, g, dz, rows, n, 0, nthreads); }

int64_t mmin_attn_fwd_f32(float *s, double *st, const uint8_t *km, const uint8_t *qm, int64_t rows,
                          int64_t n, int64_t rows_per_b, int64_t lq, int max_passes, int nthreads)
{ return attn(ATTN_FWD, 0, s, NULL, st, km, qm, rows, n, rows_per_b, lq, max_passes, nthreads); }

int64_t mmin_attn_fwd_f64(double *s, double *st, const uint8_t *km, const uint8_t *qm, int64_t rows,
                          int64_t n, int64_t rows_per_b, int64_t lq, int max_passes, int nthreads)
{ return attn(ATTN_FWD, 1, s, NULL, st, km, qm, rows, n, rows_per_b, lq, max_passes, nthreads); }

int64_t mmin_attn_bwd_f32(float *s, float *g, const double *st, const uint8_t *km,
                          const uint8_t *qm, int64_t rows, int64_t n, int64_t rows_per_b,
                          int64_t lq, int nthreads)
{ return attn(ATTN_BWD, 0, s, g, (double *)st, km, qm, rows, n, rows_per_b, lq, 0, nthreads); }

int64_t mmin_attn_bwd_f64(double *s, double *g, const double *st, const uint8_t *km,
                          const uint8_t *qm, int64_t rows, int64_t n, int64_t rows_per_b,
                          int64_t lq, int nthreads)
{ return attn(ATTN_BWD, 1, s, g, (double *)st, km, qm, rows, n, rows_per_b, lq, 0, nthreads); }

#else /* ------------------------------------ row kernels, included once per type T */

/* Appends the indices i in [i0, i1) of the candidates z[i] > lo (branch-free). */
static int64_t FN(collect)(const T *z, int64_t i0, int64_t i1, T lo, int64_t *idx, int64_t k)
{
    int64_t i;
    for (i = i0; i < i1; i++) {
        idx[k] = i;
        k += z[i] > lo;
    }
    return k;
}

/* One row; scratch y, c (doubles) and idx, n entries each.  Returns 1 if the sort was used. */
CLONES static int FN(fwd_row)(const T *z, T *p, int64_t n, double *y, double *c, int64_t *idx,
                              int max_passes)
{
    T m = -INFINITY, lo;
    int bad = 0, fell_back = 0;
    int64_t i, i0, j, k = 0;
    double dm, t;
#pragma omp simd reduction(max:m) reduction(|:bad)
    for (i = 0; i < n; i++) {
        T v = z[i];
        m = v > m ? v : m;
        bad |= v != v;
    }
    if (bad || m == INFINITY || m == -INFINITY) {  /* NaN/+inf row, or all masked */
        T fill = m == -INFINITY && !bad ? (T)0 : (T)NAN;
        for (i = 0; i < n; i++) p[i] = fill;
        return 0;
    }
    dm = (double)m;
    /* candidates z > lo, lo <= m - 1 (tau >= m - 1): lo - m is exact near -1 (Sterbenz),
     * so this also holds for |m| >= 2^53, where m - 1 rounds back to m */
    lo = (T)(dm - 1.0);
    while ((double)lo - dm > -1.0) lo = FN(nextafter)(lo, (T)-INFINITY);
    i0 = 0;
    if (n > SKIP_FROM) {  /* long rows: skip the blocks that hold no candidate */
        for (; i0 + BLOCK <= n; i0 += BLOCK) {
            T bmax = lo;
#pragma omp simd reduction(max:bmax)
            for (i = i0; i < i0 + BLOCK; i++) bmax = z[i] > bmax ? z[i] : bmax;
            if (bmax > lo) k = FN(collect)(z, i0, i0 + BLOCK, lo, idx, k);
        }
    }
    k = FN(collect)(z, i0, n, lo, idx, k);
    for (j = 0; j < k; j++) y[j] = (double)z[idx[j]] - dm;
    t = threshold(y, k, c, max_passes, &fell_back);
    if (n <= SHORT_ROW) {  /* p = max(y - t, 0): one vectorised pass ... */
#pragma omp simd
        for (i = 0; i < n; i++) {
            double v = ((double)z[i] - dm) - t;
            p[i] = v > 0.0 ? (T)v : (T)0;
        }
        return fell_back;
    }
    for (i = 0; i < n; i++) p[i] = 0;  /* ... or zeros, then the candidates */
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

/* Fused attention, forward, one row in place (z -> p), only keys with mk[i] != 0; st = (max, t).
 * Same arithmetic as fwd_row on the row with the masked keys set to -inf. */
CLONES static int FN(attn_fwd_row)(T *z, const uint8_t *mk, int64_t n, double *st, double *y,
                                   double *c, int64_t *idx, int max_passes)
{
    T m = -INFINITY, lo;
    int bad = 0, fell_back = 0;
    int64_t i, i0, j, k = 0;
    double dm, t;
#pragma omp simd reduction(max:m) reduction(|:bad)
    for (i = 0; i < n; i++) {
        T v = mk[i] ? z[i] : (T)-INFINITY;
        m = v > m ? v : m;
        bad |= v != v;
    }
    if (bad || m == INFINITY || m == -INFINITY) {  /* NaN/+inf row, or no real key */
        int empty = m == -INFINITY && !bad;
        for (i = 0; i < n; i++) z[i] = empty ? (T)0 : (T)NAN;
        st[0] = 0.0;
        st[1] = empty ? INFINITY : NAN;
        return 0;
    }
    dm = (double)m;
    lo = (T)(dm - 1.0);
    while ((double)lo - dm > -1.0) lo = FN(nextafter)(lo, (T)-INFINITY);
    i0 = 0;
    if (n > SKIP_FROM) {
        for (; i0 + BLOCK <= n; i0 += BLOCK) {
            T bmax = lo;
#pragma omp simd reduction(max:bmax)
            for (i = i0; i < i0 + BLOCK; i++) {
                T v = mk[i] ? z[i] : lo;
                bmax = v > bmax ? v : bmax;
            }
            if (bmax > lo)
                for (i = i0; i < i0 + BLOCK; i++) { idx[k] = i; k += (mk[i] != 0) & (z[i] > lo); }
        }
    }
    for (i = i0; i < n; i++) { idx[k] = i; k += (mk[i] != 0) & (z[i] > lo); }
    for (j = 0; j < k; j++) y[j] = (double)z[idx[j]] - dm;
    t = threshold(y, k, c, max_passes, &fell_back);
    st[0] = dm;
    st[1] = t;
    if (n <= SHORT_ROW) {
#pragma omp simd
        for (i = 0; i < n; i++) {
            double v = ((double)z[i] - dm) - t;
            z[i] = mk[i] && v > 0.0 ? (T)v : (T)0;
        }
        return fell_back;
    }
    for (i = 0; i < n; i++) z[i] = 0;  /* y holds the candidates' values */
    for (j = 0; j < k; j++) {
        double v = y[j] - t;
        z[idx[j]] = v > 0.0 ? (T)v : (T)0;
    }
    return fell_back;
}

/* Fused attention, backward, one row in place: z (recomputed scores) -> p, g (dP) -> dS. */
CLONES static void FN(attn_bwd_row)(T *z, T *g, const uint8_t *mk, int64_t n, const double *st)
{
    double dm = st[0], t = st[1], s = 0.0, k = 0.0;
    T mean;
    int64_t i;
    if (!(t < INFINITY)) {  /* empty row (t = +inf) or NaN row: p = 0 / NaN, zero gradient */
        T fill = t != t ? (T)NAN : (T)0;
        for (i = 0; i < n; i++) { z[i] = fill; g[i] = 0; }
        return;
    }
#pragma omp simd reduction(+:s,k)
    for (i = 0; i < n; i++) {
        double v = ((double)z[i] - dm) - t;
        T p = mk[i] && v > 0.0 ? (T)v : (T)0;
        double on = p > 0 ? 1.0 : 0.0;
        z[i] = p;
        k += on;
        s += on * (double)g[i];
    }
    if (s != s) {
        for (i = 0, s = 0.0; i < n; i++)
            if (z[i] > 0) s += (double)g[i];
    }
    mean = k > 0.0 ? (T)(s / k) : (T)0;
#pragma omp simd
    for (i = 0; i < n; i++) g[i] = z[i] > 0 ? g[i] - mean : (T)0;
}

#endif
