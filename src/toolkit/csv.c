/* SPDX-License-Identifier: MIT */
/* csv.c: numeric CSV files into a tg_dataset.
 *
 * The file is read into memory once, then walked twice: the first walk finds
 * the first non-blank line (header or data, and the number of columns) and
 * counts the non-blank lines, so the dataset is allocated once at its final
 * size; the second walk splits and parses every row straight into it. Rows
 * are checked completely: the field count, every number (strtod must consume
 * the whole field, and the value must be finite and fit a float), and class
 * labels (non-negative integers). Every message is "tg_load_csv: path:line:
 * what", with fields numbered from 1 and named when there is a header.
 *
 * Accepted: CRLF or LF line ends, a UTF-8 byte-order mark, blank lines
 * anywhere (skipped), spaces or tabs around fields, fields in double quotes
 * ("" inside quotes is a quote). Not accepted: quoted fields that span lines.
 */
#include "toolkit.h"

#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static const char FN[] = "tg_load_csv";


tg_csv_opts tg_csv_defaults(void) {
    tg_csv_opts o;
    memset(&o, 0, sizeof o);
    o.delimiter = ',';
    o.header = TG_CSV_HEADER_AUTO;
    o.y_kind = TG_CSV_Y_LABELS;
    o.y_name = NULL;
    o.y_col = -1;
    o.n_y = 1;
    return o;
}

typedef struct {
    const char *p;
    size_t n;
} span;

typedef struct {
    tg_ctx *ctx;
    const char *path;
    char delim;
    span *names;     /* header fields, or NULL */
    int ncols;
} csv_state;

static int is_blank(char c, char delim) { return (c == ' ' || c == '\t') && c != delim; }

static int blank_line(const char *s, const char *e) {
    for (; s < e; s++)
        if (*s != ' ' && *s != '\t') return 0;
    return 1;
}

/* Split [s, e) into fields; stores the first maxf spans (trimmed, quotes
 * removed) and returns the number of fields, or -1 on a quoting error
 * (*bad = the 1-based field, *why = what). */
static int split_line(const char *s, const char *e, char delim, span *out, int maxf, int *bad,
                      const char **why) {
    int nf = 0;
    const char *p = s;
    for (;;) {
        while (p < e && is_blank(*p, delim)) p++;
        const char *fs, *fe;
        if (p < e && *p == '"') {
            const char *q = p + 1;
            for (;;) {
                if (q >= e) {
                    *bad = nf + 1;
                    *why = "unterminated quote (quoted fields cannot span lines)";
                    return -1;
                }
                if (*q == '"') {
                    if (q + 1 < e && q[1] == '"') {
                        q += 2;
                        continue;
                    }
                    break;
                }
                q++;
            }
            fs = p + 1;
            fe = q;
            p = q + 1;
            while (p < e && is_blank(*p, delim)) p++;
            if (p < e && *p != delim) {
                *bad = nf + 1;
                *why = "text after the closing quote";
                return -1;
            }
        } else {
            fs = p;
            while (p < e && *p != delim) p++;
            fe = p;
            while (fe > fs && is_blank(fe[-1], delim)) fe--;
        }
        if (nf < maxf) {
            out[nf].p = fs;
            out[nf].n = (size_t)(fe - fs);
        }
        if (nf == INT_MAX - 1) {
            *bad = nf + 1;
            *why = "too many fields";
            return -1;
        }
        nf++;
        if (p >= e) break;
        p++; /* the delimiter */
    }
    return nf;
}

enum { NUM_OK, NUM_EMPTY, NUM_BAD, NUM_INF, NUM_RANGE };

/* Parse a whole field as a number. */
static int parse_num(span f, double *v) {
    char tmp[128];
    if (f.n == 0) return NUM_EMPTY;
    if (f.n >= sizeof tmp) return NUM_BAD;
    memcpy(tmp, f.p, f.n);
    tmp[f.n] = '\0';
    char *end;
    errno = 0;
    double d = strtod(tmp, &end);
    if (end != tmp + f.n || end == tmp) return NUM_BAD;
    if (!isfinite(d)) return NUM_INF;
    if (fabs(d) > FLT_MAX) return NUM_RANGE;
    *v = d;
    return NUM_OK;
}

/* " (\"name\")" for field i (0-based) when there is a header */
static const char *field_name(const csv_state *st, int i, char *buf, size_t size) {
    buf[0] = '\0';
    if (st->names && i < st->ncols)
        snprintf(buf, size, " (\"%.*s\")", (int)(st->names[i].n > 60 ? 60 : st->names[i].n),
                 st->names[i].p);
    return buf;
}

static void num_error(const csv_state *st, int64_t line, int i, span f, int why,
                      const char *role) {
    char nb[96];
    field_name(st, i, nb, sizeof nb);
    int shown = (int)(f.n > 40 ? 40 : f.n);
    const char *more = f.n > 40 ? "..." : "";
    switch (why) {
    case NUM_EMPTY:
        tg_set_error(st->ctx, "%s: %s:%lld: %s field %d%s is empty", FN, st->path,
                     (long long)line, role, i + 1, nb);
        break;
    case NUM_INF:
        tg_set_error(st->ctx, "%s: %s:%lld: %s field %d%s \"%.*s%s\" is not finite", FN,
                     st->path, (long long)line, role, i + 1, nb, shown, f.p, more);
        break;
    case NUM_RANGE:
        tg_set_error(st->ctx, "%s: %s:%lld: %s field %d%s \"%.*s%s\" is outside the float range",
                     FN, st->path, (long long)line, role, i + 1, nb, shown, f.p, more);
        break;
    default:
        tg_set_error(st->ctx, "%s: %s:%lld: %s field %d%s \"%.*s%s\" is not a number", FN,
                     st->path, (long long)line, role, i + 1, nb, shown, f.p, more);
        break;
    }
}

/* Whole file into a NUL-terminated buffer from the ctx allocator. Only a
 * regular file is read (tgi_open_regular: a FIFO or a device is refused before
 * anything blocks), and no more than the size fstat gave: what is read is
 * bounded by the file, and the buffer is allocated once. */
static char *read_file(tg_ctx *ctx, const char *path, size_t *len, size_t *cap) {
    struct stat st;
    int fd = tgi_open_regular(path, &st);
    if (fd == TGI_NOT_REGULAR) {
        tg_set_error(ctx, "%s: %s is %s, not a regular file", FN, path, tgi_file_kind(st.st_mode));
        return NULL;
    }
    if (fd < 0) {
        tg_set_error(ctx, "%s: cannot open %s: %s", FN, path, strerror(errno));
        return NULL;
    }
    if ((uint64_t)st.st_size >= TGI_ALLOC_MAX) {
        tg_set_error(ctx, "%s: %s is too large (%lld bytes)", FN, path, (long long)st.st_size);
        close(fd);
        return NULL;
    }
    size_t want = (size_t)st.st_size, n = 0, c = want + 1;
    char *buf = tgi_malloc(ctx, c);
    while (buf && n < want) {
        ssize_t k = read(fd, buf + n, want - n);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) {
            tg_set_error(ctx, "%s: %s: read error: %s", FN, path, strerror(errno));
            tgi_free(ctx, buf, c);
            buf = NULL;
        }
        if (k <= 0) break; /* (shrunk while reading: what was there) */
        n += (size_t)k;
    }
    close(fd);
    if (!buf) return NULL;
    buf[n] = '\0';
    *len = n;
    *cap = c;
    return buf;
}

/* Next line: [*s, *e) without the line end; returns the position after it. */
static const char *next_line(const char *p, const char *end, const char **s, const char **e) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    const char *le = nl ? nl : end;
    *s = p;
    *e = (le > p && le[-1] == '\r') ? le - 1 : le;
    return nl ? nl + 1 : end;
}

/* The layout of a file, from its first non-blank line: the line number and
 * text of that line, the number of non-blank lines, whether it is a header,
 * and where the y columns are (n_y of them from column y0). */
typedef struct {
    int64_t first_line, nonblank;
    const char *fs, *fe;
    int header, n_y, y0;
} csv_layout;

/* Walk 1: the first non-blank line and the number of non-blank lines of
 * [p, end). -1 (error recorded) when there is none. */
static int scan_lines(const csv_state *st, const char *p, const char *end, csv_layout *lay) {
    const char *s, *e;
    int64_t lines = 0;
    for (const char *q = p; q < end;) {
        q = next_line(q, end, &s, &e);
        lines++;
        if (blank_line(s, e)) continue;
        if (!lay->nonblank) {
            lay->first_line = lines;
            lay->fs = s;
            lay->fe = e;
        }
        lay->nonblank++;
    }
    if (!lay->nonblank) {
        tg_set_error(st->ctx, "%s: %s: the file has no data rows", FN, st->path);
        return -1;
    }
    return 0;
}

/* Whether the first line (split into fields) is a header: as the options say,
 * or with TG_CSV_HEADER_AUTO when any of its fields is not a number. */
static int is_header(const csv_state *st, const tg_csv_opts *o, const span *fields) {
    int header = o->header == TG_CSV_HEADER_YES;
    if (o->header == TG_CSV_HEADER_AUTO) {
        for (int i = 0; i < st->ncols && !header; i++) {
            double v;
            header = parse_num(fields[i], &v) == NUM_BAD;
        }
    }
    return header;
}

/* The y columns (lay->n_y from lay->y0) from the options and the header;
 * checks that they and at least one feature column fit, and that there are
 * data rows. -1 with the error recorded otherwise. */
static int find_y_columns(const csv_state *st, const tg_csv_opts *o, csv_layout *lay) {
    tg_ctx *ctx = st->ctx;
    const char *path = st->path;
    const int ncols = st->ncols;
    int n_y = o->y_kind == TG_CSV_Y_NONE ? 0 : o->y_kind == TG_CSV_Y_LABELS ? 1 : o->n_y;
    int y0 = 0;
    if (o->y_kind == TG_CSV_Y_TARGETS && n_y < 1) {
        tg_set_error(ctx, "%s: n_y must be >= 1 for targets, got %d", FN, n_y);
        return -1;
    }
    if (n_y > 0 && o->y_name) {
        if (!lay->header) {
            tg_set_error(ctx, "%s: %s:%lld: y_name \"%s\" needs a header line, but the first "
                              "line is numeric (set header to TG_CSV_HEADER_YES)",
                         FN, path, (long long)lay->first_line, o->y_name);
            return -1;
        }
        y0 = -1;
        size_t nl = strlen(o->y_name);
        for (int i = 0; i < ncols && y0 < 0; i++)
            if (st->names[i].n == nl && memcmp(st->names[i].p, o->y_name, nl) == 0) y0 = i;
        if (y0 < 0) {
            tg_set_error(ctx, "%s: %s:%lld: no column named \"%s\" in the header (%.*s)", FN,
                         path, (long long)lay->first_line, o->y_name,
                         (int)((lay->fe - lay->fs) > 200 ? 200 : (lay->fe - lay->fs)), lay->fs);
            return -1;
        }
    } else if (n_y > 0) {
        y0 = o->y_col < 0 ? ncols + o->y_col : o->y_col;
        if (y0 < 0 || y0 >= ncols) {
            tg_set_error(ctx, "%s: %s: y_col %d is outside the %d columns", FN, path, o->y_col,
                         ncols);
            return -1;
        }
    }
    if (n_y > 0 && n_y > ncols - y0) {
        tg_set_error(ctx, "%s: %s: %d target columns from column %d (0-based) go past the %d "
                          "columns", FN, path, n_y, y0, ncols);
        return -1;
    }
    if (ncols - n_y < 1) {
        tg_set_error(ctx, "%s: %s: no feature columns (%d columns, %d of them y)", FN, path,
                     ncols, n_y);
        return -1;
    }
    if (lay->nonblank - (lay->header ? 1 : 0) < 1) {
        tg_set_error(ctx, "%s: %s: the file has a header but no data rows", FN, path);
        return -1;
    }
    lay->n_y = n_y;
    lay->y0 = y0;
    return 0;
}

/* Row `row` of ds from the fields of file line `line`: features, and the
 * label (its maximum so far in *label_max) or targets. -1 on a bad field. */
static int parse_row(const csv_state *st, const tg_csv_opts *o, const csv_layout *lay,
                     const span *fields, int64_t line, tg_dataset *ds, int64_t row,
                     int64_t *label_max) {
    const int n_y = lay->n_y, y0 = lay->y0;
    const int64_t nf = st->ncols - n_y;
    float *x = ds->x + row * nf;
    int64_t k = 0;
    for (int i = 0; i < st->ncols; i++) {
        double v = 0;
        int in_y = n_y > 0 && i >= y0 && i < y0 + n_y;
        int r = parse_num(fields[i], &v);
        if (r != NUM_OK) {
            num_error(st, line, i, fields[i], r,
                      !in_y ? "feature" : o->y_kind == TG_CSV_Y_LABELS ? "label" : "target");
            return -1;
        }
        if (!in_y) {
            x[k++] = (float)v;
        } else if (o->y_kind == TG_CSV_Y_LABELS) {
            if (v < 0 || v != floor(v) || v >= INT32_MAX) {
                char nb[96];
                tg_set_error(st->ctx, "%s: %s:%lld: label field %d%s \"%.*s\" is not a "
                                      "non-negative integer class", FN, st->path,
                             (long long)line, i + 1, field_name(st, i, nb, sizeof nb),
                             (int)(fields[i].n > 40 ? 40 : fields[i].n), fields[i].p);
                return -1;
            }
            ds->labels[row] = (int32_t)v;
            if (v > *label_max) *label_max = (int64_t)v;
        } else {
            ds->targets[row * n_y + (i - y0)] = (float)v;
        }
    }
    return 0;
}

/* Walk 2: split and parse every data row of [p, end) into ds (fields: room
 * for ncols spans). -1 with the error recorded on the first bad line. */
static int parse_rows(const csv_state *st, const tg_csv_opts *o, const csv_layout *lay,
                      const char *p, const char *end, span *fields, tg_dataset *ds) {
    const char *s, *e, *why = NULL;
    int bad = 0;
    int64_t line = 0, row = 0, label_max = -1;
    int skip_header = lay->header;
    for (const char *q = p; q < end;) {
        q = next_line(q, end, &s, &e);
        line++;
        if (blank_line(s, e)) continue;
        if (skip_header) {
            skip_header = 0;
            continue;
        }
        int got = split_line(s, e, st->delim, fields, st->ncols, &bad, &why);
        if (got < 0) {
            tg_set_error(st->ctx, "%s: %s:%lld: field %d: %s", FN, st->path, (long long)line,
                         bad, why);
            return -1;
        }
        if (got != st->ncols) {
            tg_set_error(st->ctx, "%s: %s:%lld: expected %d fields (as in line %lld), got %d",
                         FN, st->path, (long long)line, st->ncols, (long long)lay->first_line,
                         got);
            return -1;
        }
        if (parse_row(st, o, lay, fields, line, ds, row, &label_max) != 0) return -1;
        row++;
    }
    if (o->y_kind == TG_CSV_Y_LABELS) ds->n_classes = (int)(label_max + 1);
    return 0;
}

/* The dataset of the file's text buf[0, len): the layout from walk 1 and the
 * first line, one allocation at the final size, the rows from walk 2. */
static tg_dataset *parse_csv(tg_ctx *ctx, const char *path, const tg_csv_opts *o,
                             const char *buf, size_t len) {
    csv_state st = {ctx, path, o->delimiter ? o->delimiter : ',', NULL, 0};
    const char *p = buf, *end = buf + len;
    if (len >= 3 && (unsigned char)p[0] == 0xEF && (unsigned char)p[1] == 0xBB &&
        (unsigned char)p[2] == 0xBF)
        p += 3; /* a UTF-8 byte-order mark */
    csv_layout lay = {0};
    if (scan_lines(&st, p, end, &lay) != 0) return NULL;
    int bad = 0;
    const char *why = NULL;
    int ncols = split_line(lay.fs, lay.fe, st.delim, NULL, 0, &bad, &why);
    if (ncols < 0) {
        tg_set_error(ctx, "%s: %s:%lld: field %d: %s", FN, path, (long long)lay.first_line, bad,
                     why);
        return NULL;
    }
    st.ncols = ncols;
    span *fields = tgi_malloc(ctx, (size_t)ncols * sizeof(span));
    span *names = NULL;
    tg_dataset *ds = NULL;
    if (!fields) return NULL;
    split_line(lay.fs, lay.fe, st.delim, fields, ncols, &bad, &why);
    lay.header = is_header(&st, o, fields);
    if (lay.header) {
        names = tgi_malloc(ctx, (size_t)ncols * sizeof(span));
        if (!names) goto fail;
        memcpy(names, fields, (size_t)ncols * sizeof(span));
        st.names = names;
    }
    if (find_y_columns(&st, o, &lay) != 0) goto fail;
    int64_t rows = lay.nonblank - (lay.header ? 1 : 0);
    ds = tgi_dataset_alloc(ctx, FN, rows, ncols - lay.n_y,
                           o->y_kind == TG_CSV_Y_LABELS    ? 0
                           : o->y_kind == TG_CSV_Y_TARGETS ? lay.n_y
                                                           : -1,
                           0);
    if (!ds || parse_rows(&st, o, &lay, p, end, fields, ds) != 0) goto fail;
    tgi_free(ctx, fields, (size_t)ncols * sizeof(span));
    tgi_free(ctx, names, (size_t)ncols * sizeof(span));
    return ds;
fail:
    tgi_free(ctx, fields, (size_t)ncols * sizeof(span));
    tgi_free(ctx, names, (size_t)ncols * sizeof(span));
    tg_dataset_free(ds);
    return NULL;
}

tg_dataset *tg_load_csv(tg_ctx *ctx, const char *path, const tg_csv_opts *opts) {
    if (!tg_ok(ctx)) return NULL;
    if (!path) {
        tg_set_error(ctx, "%s: argument path is NULL", FN);
        return NULL;
    }
    tg_csv_opts o = opts ? *opts : tg_csv_defaults();
    if (o.delimiter == '"' || o.delimiter == '\n' || o.delimiter == '\r') {
        tg_set_error(ctx, "%s: delimiter 0x%02x cannot separate fields", FN,
                     (unsigned)(unsigned char)o.delimiter);
        return NULL;
    }
    if (o.y_kind != TG_CSV_Y_LABELS && o.y_kind != TG_CSV_Y_TARGETS && o.y_kind != TG_CSV_Y_NONE) {
        tg_set_error(ctx, "%s: unknown y_kind %d", FN, (int)o.y_kind);
        return NULL;
    }
    if (o.header != TG_CSV_HEADER_AUTO && o.header != TG_CSV_HEADER_YES &&
        o.header != TG_CSV_HEADER_NO) {
        tg_set_error(ctx, "%s: unknown header mode %d", FN, (int)o.header);
        return NULL;
    }
    tgi_api(ctx, FN);
    size_t len = 0, cap = 0;
    char *buf = read_file(ctx, path, &len, &cap);
    if (!buf) return NULL;
    tg_dataset *ds = parse_csv(ctx, path, &o, buf, len);
    tgi_free(ctx, buf, cap);
    return ds;
}
