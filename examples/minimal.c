/*
 * minimal.c — causal attention with libflashattn's C API, start to finish.
 *
 *   cc minimal.c -lflashattn -lm -o minimal && ./minimal
 *
 * One sequence of 4 tokens, 2 heads of dimension 8, float32, batched layout
 * (batch, seqlen, nheads, headdim). Under causal masking the first query sees only the first
 * key, so its output must equal the first value row: the program checks that.
 */
#include <math.h>
#include <stdio.h>

#include "flashattn.h"

enum { B = 1, S = 4, H = 2, D = 8 };

/* A contiguous tensor view of `data` with the given shape (strides in elements). */
static fa_tensor view(void *data, int32_t dtype, int ndim, const int64_t *shape) {
    fa_tensor t = {data, dtype, ndim, {0}, {0}};
    int64_t stride = 1;
    for (int k = ndim - 1; k >= 0; --k) {
        t.shape[k] = shape[k];
        t.stride[k] = stride;
        stride *= shape[k];
    }
    return t;
}

static int fail(const char *what, fa_status status) {
    fprintf(stderr, "%s: %s: %s\n", what, fa_status_string(status), fa_last_error_message());
    return 1;
}

int main(void) {
    static float q[B][S][H][D], k[B][S][H][D], v[B][S][H][D], out[B][S][H][D], lse[B][H][S];
    for (int s = 0; s < S; ++s)
        for (int h = 0; h < H; ++h)
            for (int d = 0; d < D; ++d) {
                q[0][s][h][d] = sinf(0.3f * (float)(s + h + d));
                k[0][s][h][d] = cosf(0.2f * (float)(s * d + h));
                v[0][s][h][d] = (float)(s + 1) + 0.01f * (float)d;
            }

    fa_context *ctx = NULL;
    fa_status status = fa_context_create(FA_BACKEND_CPU, 0, &ctx);
    if (status != FA_OK) return fail("fa_context_create", status);

    const int64_t qkv_shape[4] = {B, S, H, D}, lse_shape[3] = {B, H, S};
    fa_fwd_args args = {0};
    args.q = view(q, FA_DTYPE_F32, 4, qkv_shape);
    args.k = view(k, FA_DTYPE_F32, 4, qkv_shape);
    args.v = view(v, FA_DTYPE_F32, 4, qkv_shape);
    args.out = view(out, FA_DTYPE_F32, 4, qkv_shape);
    args.softmax_lse = view(lse, FA_DTYPE_F32, 3, lse_shape);

    fa_options opts = fa_options_default(); /* scale 1/sqrt(D), no window, no dropout */
    opts.causal = true;

    /* The caller owns all memory: ask how much scratch the call needs, then run it. */
    size_t bytes = 0;
    status = fa_fwd_workspace_size(ctx, &args, &opts, &bytes);
    if (status != FA_OK) return fail("fa_fwd_workspace_size", status);
    static unsigned char workspace[1 << 22];
    if (bytes > sizeof workspace) return fail("workspace larger than expected", FA_ERR_INTERNAL);
    status = fa_fwd(ctx, &args, &opts, workspace, bytes);
    if (status != FA_OK) return fail("fa_fwd", status);

    printf("libflashattn %s, backend %s\n", fa_version_string(),
           fa_backend_name(fa_context_backend(ctx)));
    for (int s = 0; s < S; ++s)
        printf("token %d: out[head 0][0..3] = %.4f %.4f %.4f %.4f, lse = %.4f\n", s,
               out[0][s][0][0], out[0][s][0][1], out[0][s][0][2], out[0][s][0][3], lse[0][0][s]);
    fa_context_destroy(ctx);

    for (int h = 0; h < H; ++h)
        for (int d = 0; d < D; ++d)
            if (fabsf(out[0][0][h][d] - v[0][0][h][d]) > 1e-6f) {
                fprintf(stderr, "token 0 must see only key 0: out %g != v %g\n",
                        out[0][0][h][d], v[0][0][h][d]);
                return 1;
            }
    return 0;
}
