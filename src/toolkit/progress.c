/* SPDX-License-Identifier: MIT */
/* progress.c: a training progress line.
 *
 * On a terminal the line is redrawn in place ("\r" ... erase to end of line),
 * at most every 0.1 s, and the epoch's summary replaces it at the end of the
 * epoch. On anything else (a log file, a pipe, CI) nothing is drawn during
 * the epoch and one plain summary line is printed per epoch, so logs stay
 * readable.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* clock_gettime, isatty, fileno */
#endif
#include "toolkit.h"

#include <math.h>
#include <stdarg.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* "1h02m", "3m07s", "12s" */
static void fmt_duration(char *buf, size_t size, double s) {
    if (!(s >= 0) || s > 1e8) {
        snprintf(buf, size, "?");
        return;
    }
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, size, "%ldh%02ldm", t / 3600, (t / 60) % 60);
    else if (t >= 60) snprintf(buf, size, "%ldm%02lds", t / 60, t % 60);
    else snprintf(buf, size, "%lds", t);
}

/* "3/10" or "3" when the total is unknown */
static void fmt_count(char *buf, size_t size, int64_t i, int64_t total) {
    if (total > 0) snprintf(buf, size, "%lld/%lld", (long long)i, (long long)total);
    else snprintf(buf, size, "%lld", (long long)i);
}

void tg_progress_begin(tg_progress *p, FILE *out, int64_t epochs, int64_t batches_per_epoch) {
    if (!p) return;
    memset(p, 0, sizeof *p);
    p->out = out ? out : stderr;
    p->tty = isatty(fileno(p->out));
    p->epochs = epochs > 0 ? epochs : 0;
    p->batches = batches_per_epoch > 0 ? batches_per_epoch : 0;
    p->t_begin = p->t_epoch = p->t_last = now();
    p->t_drawn = 0;
}

static void draw(tg_progress *p, double t) {
    char ep[48], bt[48], eta[32] = "";
    fmt_count(ep, sizeof ep, p->epoch + 1, p->epochs);
    fmt_count(bt, sizeof bt, p->batch, p->batches);
    double el = t - p->t_epoch;
    double rate = el > 0 ? (double)p->samples / el : 0;
    if (p->epochs > 0 && p->batches > 0 && p->batches_done > 0) {
        int64_t left = (p->epochs - p->epoch) * p->batches - p->batch;
        double per = (t - p->t_begin) / (double)p->batches_done;
        char d[24];
        fmt_duration(d, sizeof d, per * (double)(left > 0 ? left : 0));
        snprintf(eta, sizeof eta, "  ETA %s", d);
    }
    fprintf(p->out, "\repoch %s  batch %s  loss %.4f  %.0f samples/s%s\033[K", ep, bt,
            tg_mean_meter_mean(&p->loss), rate, eta);
    fflush(p->out);
    p->drawn = 1;
    p->t_drawn = t;
}

void tg_progress_update(tg_progress *p, int64_t batch_samples, double loss) {
    if (!p || !p->out) return;
    p->batch++;
    p->batches_done++;
    p->samples += batch_samples > 0 ? batch_samples : 0;
    tg_mean_meter_add(&p->loss, loss, batch_samples);
    double t = now();
    p->t_last = t;
    if (!p->tty) return;
    if (t - p->t_drawn >= 0.1 || (p->batches > 0 && p->batch >= p->batches)) draw(p, t);
}

double tg_progress_end_epoch(tg_progress *p, const char *fmt, ...) {
    if (!p || !p->out) return NAN;
    /* the rate counts training time only (up to the last batch), the
     * seconds the whole epoch (with any evaluation before this call) */
    double t = now(), el = t - p->t_epoch, train = p->t_last - p->t_epoch;
    double loss = tg_mean_meter_mean(&p->loss);
    char ep[48];
    fmt_count(ep, sizeof ep, p->epoch + 1, p->epochs);
    if (p->tty && p->drawn) fputs("\r", p->out);
    fprintf(p->out, "epoch %s  loss %.4f  %.0f samples/s  %.1f s", ep, loss,
            train > 0 ? (double)p->samples / train : 0.0, el);
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        fputs("  ", p->out);
        vfprintf(p->out, fmt, ap);
        va_end(ap);
    }
    fputs(p->tty ? "\033[K\n" : "\n", p->out);
    fflush(p->out);
    p->epoch++;
    p->batch = 0;
    p->samples = 0;
    p->drawn = 0;
    tg_mean_meter_reset(&p->loss);
    p->t_epoch = p->t_last = now();
    return loss;
}
