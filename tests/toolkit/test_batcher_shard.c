/* SPDX-License-Identifier: MIT */
/* test_batcher_shard.c: tg_batcher_shard, the data-parallel share of each
 * batch. P batchers (one per "rank", each with its own context seeded alike)
 * must give, put end to end in rank order, exactly the batches of one
 * unsharded batcher, sample for sample and in the same order. */
#include <criterion/criterion.h>

#include <string.h>

#include "tapegrad.h"
#include "tg_test.h"

#define SEED 20261203u

/* element i of an f32 or f64 batch */
static double elem(const tg_tensor *t, int64_t i) {
    return tg_dtype_of(t) == TG_F32 ? (double)((const float *)tg_data(t))[i]
                                    : ((const double *)tg_data(t))[i];
}

typedef struct {
    tg_ctx *ctx;
    tg_dataset *ds;
    tg_batcher b;
} rank_state;

static void rank_open(rank_state *r, int64_t n, int64_t batch, int flags, int rank, int count) {
    r->ctx = tg_ctx_new(SEED);
    cr_assert_not_null(r->ctx);
    r->ds = counting_dataset(r->ctx, n);
    cr_assert_eq(tg_batcher_init(&r->b, r->ctx, r->ds, batch, flags), 0, "%s", tg_errmsg(r->ctx));
    if (count > 0)
        cr_assert_eq(tg_batcher_shard(&r->b, rank, count), 0, "%s", tg_errmsg(r->ctx));
}

static void rank_close(rank_state *r) {
    tg_batcher_free(&r->b);
    tg_dataset_free(r->ds);
    tg_ctx_free(r->ctx);
}

/* One epoch of the unsharded batcher against `count` sharded ones, over
 * `epochs` epochs; returns the number of batches compared. */
static int compare_shards(int64_t n, int64_t batch, int flags, int count, int epochs) {
    rank_state whole, part[4];
    cr_assert(count <= 4);
    rank_open(&whole, n, batch, flags, 0, 0);
    for (int r = 0; r < count; r++) rank_open(&part[r], n, batch, flags, r, count);
    int compared = 0;
    for (int e = 0; e < epochs; e++) {
        int64_t nb = 0;
        for (;;) {
            tg_tensor *x, *y;
            int rc = tg_batcher_next(&whole.b, &x, &y);
            cr_assert_neq(rc, -1, "%s", tg_errmsg(whole.ctx));
            const int64_t m = rc == 1 ? tg_dim(x, 0) : 0;
            const tg_tensor *wx = rc == 1 ? x : NULL;
            const int32_t *wy = rc == 1 ? tg_data(y) : NULL;
            int64_t at = 0, given = 0;
            for (int r = 0; r < count; r++) {
                tg_tensor *px, *py;
                int prc = tg_batcher_next(&part[r].b, &px, &py);
                cr_assert_neq(prc, -1, "%s", tg_errmsg(part[r].ctx));
                if (prc == 0) continue;
                given++;
                cr_assert_eq(rc, 1, "rank %d has a batch the whole batcher does not", r);
                const int64_t pm = tg_dim(px, 0);
                cr_assert_eq(pm, part[r].b.share_size);
                cr_assert_eq(part[r].b.global_size, m, "global_size is the whole batch");
                cr_assert_geq(pm, m / count, "shares are as even as can be");
                cr_assert_leq(pm, m / count + 1);

                const int32_t *yd = tg_data(py);
                for (int64_t i = 0; i < pm; i++, at++) {
                    cr_assert_eq(elem(px, 2 * i), elem(wx, 2 * at), "epoch %d batch %lld rank %d "
                                 "row %lld", e, (long long)nb, r, (long long)i);
                    cr_assert_eq(elem(px, 2 * i + 1), elem(wx, 2 * at + 1));
                    cr_assert_eq(yd[i], wy[at]);
                }
                tg_reset(part[r].ctx);
            }
            if (rc == 1 && m < count) {
                /* too small to share: every rank ends the epoch instead */
                cr_assert_eq(given, 0);
                tg_reset(whole.ctx);
                cr_assert_eq(tg_batcher_next(&whole.b, &x, &y), 0, "it was the last batch");
                break;
            }
            if (rc == 0) {
                cr_assert_eq(given, 0, "all ranks end the epoch together");
                break;
            }
            cr_assert_eq(given, count, "every rank has a share of every batch");
            cr_assert_eq(at, m, "the shares cover the batch exactly");
            tg_reset(whole.ctx);
            nb++;
            compared++;
        }
        for (int r = 0; r < count; r++) {
            cr_assert_eq(part[r].b.epoch, e + 1);
            cr_assert_eq(part[r].b.n_batches, nb, "n_batches counts the batches given");
        }
    }
    rank_close(&whole);
    for (int r = 0; r < count; r++) rank_close(&part[r]);
    return compared;
}

Test(batcher_shard, shares_put_together_are_the_unsharded_batches) {
    /* 2 ranks, batch 64 of 1000 shuffled samples: 15 full batches and one of 40 */
    cr_assert_eq(compare_shards(1000, 64, TG_BATCH_SHUFFLE, 2, 3), 3 * 16);
    /* 3 ranks: shares of 22, 21, 21 (and 13, 13, 14 of the last batch of 40) */
    cr_assert_eq(compare_shards(1000, 64, TG_BATCH_SHUFFLE, 3, 2), 2 * 16);
    /* in order, f64, dropping the last partial batch */
    cr_assert_eq(compare_shards(100, 8, TG_BATCH_DROP_LAST | TG_BATCH_F64, 4, 1), 12);
    /* one rank is the unsharded batcher */
    cr_assert_eq(compare_shards(10, 3, TG_BATCH_SHUFFLE, 1, 2), 2 * 4);
}

Test(batcher_shard, a_last_batch_smaller_than_the_ranks_is_dropped) {
    /* 10 samples, batch 4: the last batch has 2 samples; 3 ranks cannot share it */
    cr_assert_eq(compare_shards(10, 4, TG_BATCH_SHUFFLE, 3, 2), 2 * 2);
    cr_assert_eq(compare_shards(10, 4, TG_BATCH_SHUFFLE, 2, 2), 2 * 3);
}

Test(batcher_shard, sizes_of_each_share) {
    rank_state r;
    rank_open(&r, 10, 4, 0, 1, 2);
    cr_assert_eq(r.b.n_batches, 3);
    tg_tensor *x, *y;
    int64_t shares[3], globals[3];
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(tg_batcher_next(&r.b, &x, &y), 1);
        shares[i] = r.b.share_size;
        globals[i] = r.b.global_size;
        /* rank 1 of 2 takes the second half: samples 4i+2, 4i+3 (and 9 of 8, 9) */
        cr_assert_eq(((const float *)tg_data(x))[0], (float)(4 * i + (i < 2 ? 2 : 1)));
        tg_reset(r.ctx);
    }
    cr_assert_eq(shares[0], 2);
    cr_assert_eq(shares[2], 1);
    cr_assert_eq(globals[1], 4);
    cr_assert_eq(globals[2], 2);
    cr_assert_eq(tg_batcher_next(&r.b, &x, &y), 0);
    /* count 1 undoes the sharding */
    cr_assert_eq(tg_batcher_shard(&r.b, 0, 1), 0);
    cr_assert_eq(tg_batcher_next(&r.b, &x, &y), 1);
    cr_assert_eq(tg_dim(x, 0), 4);
    cr_assert_eq(r.b.share_size, 4);
    rank_close(&r);
}

Test(batcher_shard, bad_arguments) {
    rank_state r;
    rank_open(&r, 10, 4, 0, 0, 0);
    struct {
        int rank, count;
    } bad[] = {{0, 0}, {2, 2}, {-1, 2}, {0, 5}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(tg_batcher_shard(&r.b, bad[i].rank, bad[i].count), -1);
        cr_assert(strstr(tg_errmsg(r.ctx), "tg_batcher_shard: need 0 <= rank < count <= "
                                           "batch_size (4)"),
                  "%s", tg_errmsg(r.ctx));
        tg_clear_error(r.ctx);
    }
    tg_tensor *x, *y;
    cr_assert_eq(tg_batcher_next(&r.b, &x, &y), 1);
    cr_assert_eq(tg_batcher_shard(&r.b, 0, 2), -1);
    cr_assert(strstr(tg_errmsg(r.ctx), "inside an epoch"), "%s", tg_errmsg(r.ctx));
    tg_clear_error(r.ctx);
    cr_assert_eq(tg_batcher_shard(NULL, 0, 2), -1);
    tg_batcher zero;
    memset(&zero, 0, sizeof zero);
    cr_assert_eq(tg_batcher_shard(&zero, 0, 2), -1);
    rank_close(&r);
}
