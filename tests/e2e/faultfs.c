/*
 * faultfs: an LD_PRELOAD shim that injects disk faults into the real pgark binary, for the
 * fault-injection tests (device-mapper is not available on the test machines). Built by the
 * tests with the system C compiler; never part of pgark.
 *
 * PGARK_FAULTS = RULE[;RULE...]   RULE = OP:PATTERN:N[:ACTION]
 *   OP       write (write, pwrite, writev, pwritev), fsync (fsync, fdatasync), rename (rename,
 *            renameat, renameat2; the source or the destination matches), unlink (unlink,
 *            unlinkat), open (open/openat with O_CREAT), range (sync_file_range)
 *   PATTERN  a substring of the file's path ("*" matches every path; a final "$" anchors it at
 *            the end of the path)
 *   N        the Nth matching call triggers (1-based); "N+" triggers it and every later one
 *   ACTION   eio (default), enospc, kill (SIGKILL before the call), killafter (SIGKILL after
 *            the call has been done), slow (20 ms of sleep before the call, not logged), hang
 *            (before the call, sleep for as long as the file PGARK_FAULT_HANG_WHILE exists: a
 *            stuck disk the test can release; without that file the call goes through at once)
 * PGARK_FAULT_LOG = FILE: appends "INJECT op action path" for each fault, "REFSYNC path" when a
 *   descriptor whose fsync failed is fsynced again (the retry that would trust lost data), and,
 *   with PGARK_FAULT_TRACE=fsync, "FSYNC path" for every fsync/fdatasync.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_RULES 16
#define MAX_FDS 65536

enum op { OP_WRITE, OP_FSYNC, OP_RENAME, OP_UNLINK, OP_OPEN, OP_RANGE };
enum action { ACT_EIO, ACT_ENOSPC, ACT_KILL, ACT_KILLAFTER, ACT_SLOW, ACT_HANG };

struct rule {
    enum op op;
    char pattern[256];
    long n;
    int and_later;
    enum action action;
    long count;
};

static struct rule rules[MAX_RULES];
static int nrules = -1;
static int log_fd = -1;
static int trace_fsync = 0;
static unsigned char fsync_failed[MAX_FDS];

static ssize_t raw_write(int fd, const void *b, size_t n) { return syscall(SYS_write, fd, b, n); }

static void logline(const char *kind, const char *a, const char *b) {
    if (log_fd < 0) return;
    char line[1200];
    int n = snprintf(line, sizeof line, "%s %s %s\n", kind, a, b);
    if (n > 0) raw_write(log_fd, line, (size_t)(n < (int)sizeof line ? n : (int)sizeof line - 1));
}

static void setup(void) {
    if (__atomic_load_n(&nrules, __ATOMIC_ACQUIRE) >= 0) return;
    int count = 0;
    const char *spec = getenv("PGARK_FAULTS");
    const char *logp = getenv("PGARK_FAULT_LOG");
    const char *trace = getenv("PGARK_FAULT_TRACE");
    if (trace && strstr(trace, "fsync")) trace_fsync = 1;
    if (logp) log_fd = (int)syscall(SYS_openat, AT_FDCWD, logp, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0666);
    if (spec) {
        char buf[4096];
        strncpy(buf, spec, sizeof buf - 1);
        buf[sizeof buf - 1] = 0;
        char *save = NULL;
        for (char *r = strtok_r(buf, ";", &save); r && count < MAX_RULES; r = strtok_r(NULL, ";", &save)) {
            char *f[4] = {0};
            int i = 0;
            char *s2 = NULL;
            for (char *t = strtok_r(r, ":", &s2); t && i < 4; t = strtok_r(NULL, ":", &s2)) f[i++] = t;
            if (i < 3) continue;
            struct rule *x = &rules[count];
            memset(x, 0, sizeof *x);
            if (!strcmp(f[0], "write")) x->op = OP_WRITE;
            else if (!strcmp(f[0], "fsync")) x->op = OP_FSYNC;
            else if (!strcmp(f[0], "rename")) x->op = OP_RENAME;
            else if (!strcmp(f[0], "unlink")) x->op = OP_UNLINK;
            else if (!strcmp(f[0], "open")) x->op = OP_OPEN;
            else if (!strcmp(f[0], "range")) x->op = OP_RANGE;
            else continue;
            strncpy(x->pattern, f[1], sizeof x->pattern - 1);
            x->n = strtol(f[2], NULL, 10);
            x->and_later = strchr(f[2], '+') != NULL;
            x->action = ACT_EIO;
            if (f[3]) {
                if (!strcmp(f[3], "enospc")) x->action = ACT_ENOSPC;
                else if (!strcmp(f[3], "kill")) x->action = ACT_KILL;
                else if (!strcmp(f[3], "killafter")) x->action = ACT_KILLAFTER;
                else if (!strcmp(f[3], "slow")) x->action = ACT_SLOW;
                else if (!strcmp(f[3], "hang")) x->action = ACT_HANG;
            }
            count++;
        }
    }
    __atomic_store_n(&nrules, count, __ATOMIC_RELEASE);
}

static int fd_path(int fd, char *out, size_t len) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, len - 1);
    if (n < 0) { out[0] = 0; return -1; }
    out[n] = 0;
    return 0;
}

/* A pattern ending in '$' matches the end of the path only. */
static int matches(const struct rule *r, const char *path) {
    if (r->pattern[0] == '*') return 1;
    if (!path) return 0;
    size_t pl = strlen(r->pattern);
    if (pl > 0 && r->pattern[pl - 1] == '$') {
        size_t n = strlen(path);
        return n >= pl - 1 && !strncmp(path + n - (pl - 1), r->pattern, pl - 1);
    }
    return strstr(path, r->pattern) != NULL;
}

/* The action for a call of `op` on `path` (and `path2`), or -1 for none. */
static int decide(enum op op, const char *path, const char *path2) {
    setup();
    for (int i = 0; i < nrules; i++) {
        struct rule *r = &rules[i];
        if (r->op != op || !(matches(r, path) || (path2 && matches(r, path2)))) continue;
        long c = __atomic_add_fetch(&r->count, 1, __ATOMIC_SEQ_CST);
        if (c == r->n || (r->and_later && c > r->n)) {
            static const char *names[] = {"write", "fsync", "rename", "unlink", "open", "range"};
            static const char *acts[] = {"eio", "enospc", "kill", "killafter", "slow", "hang"};
            if (r->action != ACT_SLOW && r->action != ACT_HANG) {
                logline("INJECT", names[op], acts[r->action]);
                logline("PATH", path ? path : "", path2 ? path2 : "");
            }
            return (int)r->action;
        }
    }
    return -1;
}

static int before(int act) {
    if (act == ACT_SLOW) { usleep(20000); return 0; }
    if (act == ACT_HANG) {
        const char *gate = getenv("PGARK_FAULT_HANG_WHILE");
        if (gate && access(gate, F_OK) == 0) {
            logline("INJECT", "hang", gate);
            while (access(gate, F_OK) == 0) usleep(50000);
        }
        return 0;
    }
    if (act == ACT_KILL) { kill(getpid(), SIGKILL); pause(); }
    if (act == ACT_EIO) { errno = EIO; return 1; }
    if (act == ACT_ENOSPC) { errno = ENOSPC; return 1; }
    return 0;
}

static void after(int act) {
    if (act == ACT_KILLAFTER) { kill(getpid(), SIGKILL); pause(); }
}

#define REAL(name, ret, ...) \
    static ret (*real_##name)(__VA_ARGS__); \
    if (!real_##name) real_##name = dlsym(RTLD_NEXT, #name)

static int fd_action(int fd, enum op op) {
    setup();
    if (nrules == 0 && !(op == OP_FSYNC && (trace_fsync || log_fd >= 0))) return -1;
    char p[1024];
    fd_path(fd, p, sizeof p);
    if (op == OP_FSYNC) {
        if (fd >= 0 && fd < MAX_FDS && fsync_failed[fd]) logline("REFSYNC", p, "");
        if (trace_fsync) logline("FSYNC", p, "");
    }
    if (nrules == 0) return -1;
    return decide(op, p, NULL);
}

ssize_t write(int fd, const void *b, size_t n) {
    REAL(write, ssize_t, int, const void *, size_t);
    int a = fd > 2 ? fd_action(fd, OP_WRITE) : -1;
    if (before(a)) return -1;
    ssize_t r = real_write(fd, b, n);
    after(a);
    return r;
}

ssize_t pwrite64(int fd, const void *b, size_t n, off_t off) {
    REAL(pwrite64, ssize_t, int, const void *, size_t, off_t);
    int a = fd_action(fd, OP_WRITE);
    if (before(a)) return -1;
    ssize_t r = real_pwrite64(fd, b, n, off);
    after(a);
    return r;
}

ssize_t pwrite(int fd, const void *b, size_t n, off_t off) {
    REAL(pwrite, ssize_t, int, const void *, size_t, off_t);
    int a = fd_action(fd, OP_WRITE);
    if (before(a)) return -1;
    ssize_t r = real_pwrite(fd, b, n, off);
    after(a);
    return r;
}

ssize_t writev(int fd, const struct iovec *v, int c) {
    REAL(writev, ssize_t, int, const struct iovec *, int);
    int a = fd > 2 ? fd_action(fd, OP_WRITE) : -1;
    if (before(a)) return -1;
    ssize_t r = real_writev(fd, v, c);
    after(a);
    return r;
}

ssize_t pwritev(int fd, const struct iovec *v, int c, off_t off) {
    REAL(pwritev, ssize_t, int, const struct iovec *, int, off_t);
    int a = fd_action(fd, OP_WRITE);
    if (before(a)) return -1;
    ssize_t r = real_pwritev(fd, v, c, off);
    after(a);
    return r;
}

static int sync_common(int fd, int data) {
    int a = fd_action(fd, OP_FSYNC);
    if (before(a)) {
        if (fd >= 0 && fd < MAX_FDS) fsync_failed[fd] = 1;
        return -1;
    }
    int r;
    if (data) {
        REAL(fdatasync, int, int);
        r = real_fdatasync(fd);
    } else {
        REAL(fsync, int, int);
        r = real_fsync(fd);
    }
    after(a);
    return r;
}

int sync_file_range(int fd, off64_t off, off64_t n, unsigned int flags) {
    int a = fd_action(fd, OP_RANGE);
    if (before(a)) return -1;
    REAL(sync_file_range, int, int, off64_t, off64_t, unsigned int);
    int r = real_sync_file_range(fd, off, n, flags);
    after(a);
    return r;
}

int fsync(int fd) { return sync_common(fd, 0); }
int fdatasync(int fd) { return sync_common(fd, 1); }

int close(int fd) {
    REAL(close, int, int);
    if (fd >= 0 && fd < MAX_FDS) fsync_failed[fd] = 0;
    return real_close(fd);
}

int rename(const char *a, const char *b) {
    REAL(rename, int, const char *, const char *);
    int act = decide(OP_RENAME, a, b);
    if (before(act)) return -1;
    int r = real_rename(a, b);
    after(act);
    return r;
}

int renameat(int d1, const char *a, int d2, const char *b) {
    REAL(renameat, int, int, const char *, int, const char *);
    int act = decide(OP_RENAME, a, b);
    if (before(act)) return -1;
    int r = real_renameat(d1, a, d2, b);
    after(act);
    return r;
}

int renameat2(int d1, const char *a, int d2, const char *b, unsigned int flags) {
    REAL(renameat2, int, int, const char *, int, const char *, unsigned int);
    int act = decide(OP_RENAME, a, b);
    if (before(act)) return -1;
    int r = real_renameat2(d1, a, d2, b, flags);
    after(act);
    return r;
}

int unlink(const char *p) {
    REAL(unlink, int, const char *);
    int act = decide(OP_UNLINK, p, NULL);
    if (before(act)) return -1;
    int r = real_unlink(p);
    after(act);
    return r;
}

int unlinkat(int d, const char *p, int flags) {
    REAL(unlinkat, int, int, const char *, int);
    int act = decide(OP_UNLINK, p, NULL);
    if (before(act)) return -1;
    int r = real_unlinkat(d, p, flags);
    after(act);
    return r;
}

static int open_common(const char *p, int flags) {
    if (!(flags & O_CREAT)) return -1;
    return decide(OP_OPEN, p, NULL);
}

int open64(const char *p, int flags, ...) {
    REAL(open64, int, const char *, int, ...);
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap); }
    int act = open_common(p, flags);
    if (before(act)) return -1;
    int r = real_open64(p, flags, mode);
    after(act);
    return r;
}

int open(const char *p, int flags, ...) {
    REAL(open, int, const char *, int, ...);
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap); }
    int act = open_common(p, flags);
    if (before(act)) return -1;
    int r = real_open(p, flags, mode);
    after(act);
    return r;
}

int openat64(int d, const char *p, int flags, ...) {
    REAL(openat64, int, int, const char *, int, ...);
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap); }
    int act = open_common(p, flags);
    if (before(act)) return -1;
    int r = real_openat64(d, p, flags, mode);
    after(act);
    return r;
}

int openat(int d, const char *p, int flags, ...) {
    REAL(openat, int, int, const char *, int, ...);
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap); }
    int act = open_common(p, flags);
    if (before(act)) return -1;
    int r = real_openat(d, p, flags, mode);
    after(act);
    return r;
}
