/* libcublas.so.12 for a host that has only cuBLAS 13.
 *
 * PyPI's faiss-gpu-cu12 links cuBLAS 12, whose wheel (~600 MB) cannot travel to a lent GPU
 * machine with no network. FAISS calls the eight functions below (its float GEMMs; binary
 * Hamming search uses none of them), and their cuBLAS 13 signatures are unchanged, so each is
 * forwarded to libcublas.so.13. Enums and handles are passed as int and void* alike.
 * Built by scripts/gpu/prepare.sh; never part of the service.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

static void *forward(const char *name) {
    static void *lib;
    if (!lib && !(lib = dlopen("libcublas.so.13", RTLD_NOW | RTLD_GLOBAL))) {
        fprintf(stderr, "cublas12 shim: %s\n", dlerror());
        abort();
    }
    void *fn = dlsym(lib, name);
    if (!fn) {
        fprintf(stderr, "cublas12 shim: no %s in libcublas.so.13\n", name);
        abort();
    }
    return fn;
}

#define FORWARD(name, params, args)                 \
    int name params {                               \
        static int(*fn) params;                     \
        if (!fn) fn = (int(*) params)forward(#name); \
        return fn args;                             \
    }

FORWARD(cublasCreate_v2, (void **handle), (handle))
FORWARD(cublasDestroy_v2, (void *handle), (handle))
FORWARD(cublasSetStream_v2, (void *handle, void *stream), (handle, stream))
FORWARD(cublasGetMathMode, (void *handle, int *mode), (handle, mode))
FORWARD(cublasSetMathMode, (void *handle, int mode), (handle, mode))
FORWARD(cublasSgemmEx,
        (void *h, int ta, int tb, int m, int n, int k, const float *alpha, const void *a,
         int at, int lda, const void *b, int bt, int ldb, const float *beta, void *c, int ct,
         int ldc),
        (h, ta, tb, m, n, k, alpha, a, at, lda, b, bt, ldb, beta, c, ct, ldc))
FORWARD(cublasGemmEx,
        (void *h, int ta, int tb, int m, int n, int k, const void *alpha, const void *a,
         int at, int lda, const void *b, int bt, int ldb, const void *beta, void *c, int ct,
         int ldc, int compute, int algo),
        (h, ta, tb, m, n, k, alpha, a, at, lda, b, bt, ldb, beta, c, ct, ldc, compute, algo))
FORWARD(cublasGemmStridedBatchedEx,
        (void *h, int ta, int tb, int m, int n, int k, const void *alpha, const void *a,
         int at, int lda, long long sa, const void *b, int bt, int ldb, long long sb,
         const void *beta, void *c, int ct, int ldc, long long sc, int batch, int compute,
         int algo),
        (h, ta, tb, m, n, k, alpha, a, at, lda, sa, b, bt, ldb, sb, beta, c, ct, ldc, sc, batch,
         compute, algo))
