/* SPDX-License-Identifier: MIT */
/* fileio.c: opening a file to read, for the loaders and the checkpoint reader.
 *
 * Every reader refuses what is not a regular file before any call that could
 * block or never end: open() of a FIFO with no writer waits for one, and a
 * device such as /dev/urandom never reaches its end. The file is opened with
 * O_NONBLOCK (which makes open() of a FIFO return at once), checked with fstat,
 * and only a regular file is handed back, switched to blocking reads. */
#include "toolkit.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

int tgi_open_regular(const char *path, struct stat *st) {
    int fd;
    do fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    while (fd < 0 && errno == EINTR);
    if (fd < 0) return -1;
    if (fstat(fd, st) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    if (!S_ISREG(st->st_mode)) {
        close(fd);
        return TGI_NOT_REGULAR;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

const char *tgi_file_kind(unsigned mode) {
    mode_t m = (mode_t)mode;
    return S_ISLNK(m)    ? "a symbolic link"
           : S_ISDIR(m)  ? "a directory"
           : S_ISCHR(m)  ? "a character device"
           : S_ISBLK(m)  ? "a block device"
           : S_ISFIFO(m) ? "a FIFO"
           : S_ISSOCK(m) ? "a socket"
                         : "not a regular file";
}

int tgi_save_target(tg_ctx *ctx, const char *fn, const char *path) {
    struct stat st;
    if (lstat(path, &st) < 0 || S_ISREG(st.st_mode)) return 0; /* (absent: created) */
    tg_set_error(ctx, "%s: %s is %s; %s replaces only a regular file", fn, path,
                 tgi_file_kind(st.st_mode), fn);
    return -1;
}
