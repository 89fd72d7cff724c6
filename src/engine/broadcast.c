/* SPDX-License-Identifier: MIT */
/* broadcast.c: NumPy broadcasting of two shapes, for the elementwise binary ops
 * (ops/elementwise.c) and whatever else pairs two shapes. */
#include "internal.h"

int tgi_bcast_init(tg_ctx *ctx, const char *fn, const tg_tensor *a, const tg_tensor *b,
                   tgi_bcast *bc) {
    int nd = a->ndim > b->ndim ? a->ndim : b->ndim;
    memset(bc, 0, sizeof *bc);
    bc->ndim = nd;
    int64_t stride_a = 1, stride_b = 1;
    for (int i = nd - 1; i >= 0; i--) {
        int ia = i - (nd - a->ndim), ib = i - (nd - b->ndim);
        int64_t da = ia >= 0 ? a->shape[ia] : 1;
        int64_t db = ib >= 0 ? b->shape[ib] : 1;
        if (da != db && da != 1 && db != 1) {
            char ba[96], bb[96];
            tg_set_error(ctx, "%s: shapes %s and %s cannot be broadcast (dimension %d: %lld vs %lld)",
                         fn, TGI_SHAPE(a, ba), TGI_SHAPE(b, bb), i, (long long)da, (long long)db);
            return -1;
        }
        bc->shape[i] = da > db ? da : db;
        if (da == 0 || db == 0) bc->shape[i] = 0;
        bc->sa[i] = da == 1 ? 0 : stride_a;
        bc->sb[i] = db == 1 ? 0 : stride_b;
        stride_a *= da;
        stride_b *= db;
    }
    bc->numel = tgi_numel(nd, bc->shape);
    bc->a_full = a->numel == bc->numel;
    bc->b_full = b->numel == bc->numel;
    return 0;
}
