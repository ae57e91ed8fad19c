/* vz-agent --in-root ROOT --extract DEST | --create PATH: tar streams confined to a container root.
 *
 * Run through EXEC (no protocol of its own): --extract reads a tar on stdin and writes it under DEST,
 * acknowledging every ACK_EVERY bytes it consumed with a line "ack N" on stdout (the host keeps at
 * most a window in flight: stdin has no flow control of its own, docs/PROTOCOL.md); --create writes
 * a tar of PATH on stdout. Every path is resolved inside ROOT with openat2(RESOLVE_IN_ROOT) — ".."
 * and absolute symlinks stop at ROOT — and the last component is never followed: a symlink is
 * archived or replaced as a symlink. Without openat2 a walk refuses ".." and symlinked components.
 * Formats: ustar, GNU long names (L/K), PAX path/linkpath/size; sizes in base-256 beyond 8 GiB.
 * Details and limits: docs/oci.md, "Copying files". */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/magic.h>
#include <linux/openat2.h>

#include "agent.h"

#define BLK 512
#define NAME_MAX_LEN 4096
#define ACK_EVERY (256u << 10)
#define MAX_DEPTH 128
#define IO_BUF (256u << 10)

static int g_root = -1;
static int g_no_openat2;
static uint64_t g_in_bytes, g_acked;
static uint8_t g_out[IO_BUF];
static size_t g_out_len;

static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("vz-agent: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

/* Without openat2: component by component, never through a symlink, never "..". */
static int walk(const char *path, int flags)
{
    int fd = dup(g_root);
    const char *p = path;
    while (fd >= 0) {
        char comp[NAME_MAX + 1];
        size_t n;
        int nfd, last;
        while (*p == '/')
            p++;
        if (!*p)
            return fd; /* "" or "/": the root itself */
        n = strcspn(p, "/");
        if (n > NAME_MAX || (n == 2 && p[0] == '.' && p[1] == '.')) {
            close(fd);
            errno = n > NAME_MAX ? ENAMETOOLONG : EXDEV;
            return -1;
        }
        memcpy(comp, p, n);
        comp[n] = 0;
        p += n;
        while (*p == '/')
            p++;
        last = !*p;
        nfd = openat(fd, comp, (last ? flags : O_PATH | O_DIRECTORY) | O_NOFOLLOW | O_CLOEXEC);
        close(fd);
        fd = nfd;
        if (last)
            return fd;
    }
    return -1;
}

/* ROOT-relative path → fd. Symlinks on the way resolve inside ROOT; the last component is followed
 * only with `follow` (directories the caller writes into), never for an entry copied itself. */
static int in_root(const char *path, int flags, int follow)
{
    int f = flags | O_CLOEXEC | (follow ? 0 : O_NOFOLLOW);
    struct open_how how = {.flags = (uint64_t)f, .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS};
    if (!g_no_openat2) {
        int fd = (int)syscall(SYS_openat2, g_root, *path ? path : ".", &how, sizeof how);
        if (fd >= 0 || errno != ENOSYS)
            return fd;
        g_no_openat2 = 1;
    }
    return walk(path, flags);
}

/* A member name from a tar: relative, no ".." component, not empty; "./" and trailing "/" dropped. */
static int clean_name(char *name)
{
    char *p = name;
    size_t n;
    while (p[0] == '.' && p[1] == '/')
        p += 2;
    memmove(name, p, strlen(p) + 1);
    n = strlen(name);
    while (n > 1 && name[n - 1] == '/')
        name[--n] = 0;
    if (!*name || name[0] == '/' || strcmp(name, ".") == 0)
        return -1;
    for (p = name; *p;) {
        size_t len = strcspn(p, "/");
        if (len == 2 && p[0] == '.' && p[1] == '.')
            return -1;
        p += len;
        while (*p == '/')
            p++;
    }
    return 0;
}

/* --- reading ------------------------------------------------------------------------------------ */
static int read_full(void *dst, size_t n)
{
    uint8_t *d = dst;
    while (n) {
        ssize_t r = read(0, d, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        d += r;
        n -= (size_t)r;
        g_in_bytes += (uint64_t)r;
    }
    if (g_in_bytes - g_acked >= ACK_EVERY) {
        g_acked = g_in_bytes;
        printf("ack %" PRIu64 "\n", g_acked);
        fflush(stdout);
    }
    return 0;
}

static uint64_t tar_num(const uint8_t *f, size_t len)
{
    uint64_t v = 0;
    if (f[0] & 0x80) { /* base-256 */
        for (size_t i = 1; i < len; i++)
            v = (v << 8) | f[i];
        return v;
    }
    size_t i = 0;
    while (i < len && f[i] == ' ')
        i++;
    for (; i < len && f[i] >= '0' && f[i] <= '7'; i++)
        v = v * 8 + (uint64_t)(f[i] - '0');
    return v;
}

static int header_ok(const uint8_t *h)
{
    uint64_t sum = 0, want = tar_num(h + 148, 8);
    for (int i = 0; i < BLK; i++)
        sum += (i >= 148 && i < 156) ? ' ' : h[i];
    return sum == want;
}

/* Read a member's data into a string (long names, PAX records), bounded. */
static int read_small(uint64_t size, char *dst, size_t cap)
{
    uint8_t blk[BLK];
    size_t got = 0;
    if (size >= cap)
        return -1;
    while (got < size) {
        if (read_full(blk, BLK))
            return -1;
        size_t take = size - got < BLK ? (size_t)(size - got) : BLK;
        memcpy(dst + got, blk, take);
        got += take;
    }
    dst[size] = 0;
    return 0;
}

static void pax_apply(char *rec, size_t len, char *name, char *link, uint64_t *size)
{
    size_t i = 0;
    while (i < len) {
        char *end, *sp = memchr(rec + i, ' ', len - i), *eq;
        unsigned long n = strtoul(rec + i, &end, 10);
        if (!sp || end != sp || n == 0 || i + n > len)
            return;
        rec[i + n - 1] = 0;
        if ((eq = strchr(sp + 1, '=')) != NULL) {
            *eq = 0;
            if (strcmp(sp + 1, "path") == 0)
                snprintf(name, NAME_MAX_LEN + 1, "%s", eq + 1);
            else if (strcmp(sp + 1, "linkpath") == 0)
                snprintf(link, NAME_MAX_LEN + 1, "%s", eq + 1);
            else if (strcmp(sp + 1, "size") == 0)
                *size = strtoull(eq + 1, NULL, 10);
        }
        i += n;
    }
}

struct member {
    char name[NAME_MAX_LEN + 1], link[NAME_MAX_LEN + 1];
    char type;
    uint64_t size, mtime;
    unsigned mode;
};

/* The next member (long names and PAX records folded in); 1 at the end of the archive. */
static int next_member(struct member *m)
{
    static char rec[NAME_MAX_LEN * 4];
    uint8_t h[BLK];
    char long_name[NAME_MAX_LEN + 1] = "", long_link[NAME_MAX_LEN + 1] = "";
    uint64_t pax_size = UINT64_MAX;
    for (;;) {
        if (read_full(h, BLK))
            return fail("tar: truncated archive"), -1;
        if (h[0] == 0)
            return 1;
        if (!header_ok(h))
            return fail("tar: bad header checksum"), -1;
        m->type = (char)h[156];
        m->size = tar_num(h + 124, 12);
        if (m->type == 'L' || m->type == 'K') {
            if (read_small(m->size, m->type == 'L' ? long_name : long_link, NAME_MAX_LEN + 1))
                return fail("tar: long name over %d bytes", NAME_MAX_LEN), -1;
            continue;
        }
        if (m->type == 'x' || m->type == 'g') {
            if (read_small(m->size, rec, sizeof rec))
                return fail("tar: PAX header over %zu bytes", sizeof rec), -1;
            if (m->type == 'x')
                pax_apply(rec, (size_t)m->size, long_name, long_link, &pax_size);
            continue;
        }
        if (*long_name)
            snprintf(m->name, sizeof m->name, "%s", long_name);
        else if (memcmp(h + 257, "ustar", 5) == 0 && h[345])
            snprintf(m->name, sizeof m->name, "%.155s/%.100s", (char *)h + 345, (char *)h);
        else
            snprintf(m->name, sizeof m->name, "%.100s", (char *)h);
        snprintf(m->link, sizeof m->link, "%s", *long_link ? long_link : "");
        if (!*long_link)
            snprintf(m->link, sizeof m->link, "%.100s", (char *)h + 157);
        if (pax_size != UINT64_MAX)
            m->size = pax_size;
        m->mode = (unsigned)tar_num(h + 100, 8) & 07777;
        m->mtime = tar_num(h + 136, 12);
        return 0;
    }
}

static int skip_data(uint64_t size)
{
    uint8_t blk[BLK];
    for (uint64_t left = (size + BLK - 1) / BLK; left; left--)
        if (read_full(blk, BLK))
            return -1;
    return 0;
}

/* --- extracting --------------------------------------------------------------------------------- */
/* The directory holding `path` (ROOT-relative), made with its parents when missing. */
static int parent_dir(const char *path, char *base, size_t cap)
{
    char dir[NAME_MAX_LEN * 2 + 2];
    const char *slash = strrchr(path, '/');
    int fd;
    snprintf(base, cap, "%s", slash ? slash + 1 : path);
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) : 0, path);
    fd = in_root(dir, O_PATH | O_DIRECTORY, 1);
    if (fd < 0 && errno == ENOENT && *dir) {
        char up_base[NAME_MAX_LEN + 1];
        int up = parent_dir(dir, up_base, sizeof up_base);
        if (up < 0)
            return -1;
        if (mkdirat(up, up_base, 0755) && errno != EEXIST) {
            close(up);
            return -1;
        }
        close(up);
        fd = in_root(dir, O_PATH | O_DIRECTORY, 1);
    }
    return fd;
}

/* Make room for a new non-directory entry: remove what is there unless it is a directory. */
static int clear_entry(int dir, const char *name)
{
    struct stat st;
    if (fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) != 0)
        return errno == ENOENT ? 0 : -1;
    if (S_ISDIR(st.st_mode)) {
        errno = EISDIR;
        return -1;
    }
    return unlinkat(dir, name, 0);
}

static int write_data(int fd, uint64_t size)
{
    static uint8_t blk[IO_BUF];
    int err = 0;
    while (size) {
        size_t want = size > sizeof blk ? sizeof blk : (size_t)((size + BLK - 1) / BLK * BLK);
        size_t take = size < want ? (size_t)size : want;
        if (read_full(blk, want))
            return -1;
        for (size_t off = 0; !err && off < take;) {
            ssize_t n = write(fd, blk + off, take - off);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                err = errno ? errno : EIO;
            else
                off += (size_t)n;
        }
        size -= take;
    }
    errno = err;
    return err ? -2 : 0; /* -2: the archive was consumed, the write failed */
}

static int extract_one(const struct member *m, const char *full)
{
    char base[NAME_MAX_LEN + 1];
    int dir = parent_dir(full, base, sizeof base), rc = 0, fd;
    struct timespec ts[2] = {{(time_t)m->mtime, 0}, {(time_t)m->mtime, 0}};
    if (dir < 0)
        return fail("%s: cannot open its directory: %s", full, strerror(errno));
    if (m->type == '5') {
        if (mkdirat(dir, base, m->mode ? m->mode : 0755) && errno != EEXIST)
            rc = fail("%s: mkdir: %s", full, strerror(errno));
        else if ((fd = openat(dir, base, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0)
            rc = fail("%s: not a directory: %s", full, strerror(errno));
        else {
            fchmod(fd, m->mode ? m->mode : 0755);
            close(fd);
        }
    } else if (m->type == '2') {
        if (clear_entry(dir, base) || symlinkat(m->link, dir, base))
            rc = fail("%s: symlink: %s", full, strerror(errno));
    } else {
        fd = clear_entry(dir, base) ? -1
             : openat(dir, base, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0) {
            rc = fail("%s: create: %s", full, strerror(errno));
            close(dir);
            return skip_data(m->size) ? -1 : rc;
        }
        int w = write_data(fd, m->size);
        if (w == 0) {
            fchmod(fd, m->mode);
            futimens(fd, ts);
        }
        close(fd);
        if (w)
            rc = w == -1 ? fail("tar: truncated archive") * -1 : fail("%s: write: %s", full, strerror(errno));
    }
    close(dir);
    return rc;
}

/* DEST is an existing directory: members land in it. Otherwise the archive's one top-level entry
 * becomes DEST itself (its parent must exist): "cp a.txt c:/tmp/b.txt" and "cp dir c:/new". */
static int extract(const char *dest)
{
    static struct member m;
    char top[NAME_MAX_LEN + 1] = "", full[NAME_MAX_LEN * 2 + 2], into[NAME_MAX_LEN + 1], rename_to[NAME_MAX_LEN + 1] = "";
    int errors = 0, rc, fd = in_root(dest, O_PATH | O_DIRECTORY, 1);
    snprintf(into, sizeof into, "%s", dest);
    if (fd >= 0) {
        close(fd);
    } else {
        char *slash = strrchr(into, '/');
        if (errno != ENOENT && errno != ENOTDIR)
            return fail("%s: %s", dest, strerror(errno)), 3;
        snprintf(rename_to, sizeof rename_to, "%s", slash ? slash + 1 : into);
        if (slash)
            *slash = 0;
        else
            into[0] = 0;
        if ((fd = in_root(into, O_PATH | O_DIRECTORY, 1)) < 0)
            return fail("%s: no such directory in the container", *into ? into : "/"), 3;
        close(fd);
        if (!*rename_to || strcmp(rename_to, ".") == 0 || strcmp(rename_to, "..") == 0)
            return fail("%s: not a name to create", dest), 3;
    }
    while ((rc = next_member(&m)) == 0) {
        char name[NAME_MAX_LEN + 1];
        snprintf(name, sizeof name, "%s", m.name);
        if (clean_name(name)) {
            fail("%s: refused (absolute or \"..\")", m.name);
            return 4;
        }
        if (m.type != '0' && m.type != '\0' && m.type != '7' && m.type != '5' && m.type != '2') {
            fail("%s: refused: not a file, directory or link (type %c)", m.name, m.type);
            return 4;
        }
        if (!*top)
            snprintf(top, sizeof top, "%.*s", (int)strcspn(name, "/"), name);
        if (strncmp(name, top, strlen(top)) != 0 || (name[strlen(top)] && name[strlen(top)] != '/')) {
            fail("%s: refused: outside the archive's top-level entry %s", m.name, top);
            return 4;
        }
        const char *rest = name + strlen(top);
        snprintf(full, sizeof full, "%s/%s%s", into, *rename_to ? rename_to : top, rest);
        rc = extract_one(&m, full);
        if (rc < 0)
            return 4;
        errors += rc;
    }
    printf("ack %" PRIu64 "\n", g_in_bytes);
    fflush(stdout);
    return rc < 0 ? 4 : errors ? 5 : 0;
}

/* --- creating ----------------------------------------------------------------------------------- */
static int out_flush(void)
{
    size_t off = 0;
    while (off < g_out_len) {
        ssize_t n = write(1, g_out + off, g_out_len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        off += (size_t)n;
    }
    g_out_len = 0;
    return 0;
}

static int out_put(const void *p, size_t n)
{
    const uint8_t *s = p;
    while (n) {
        size_t take = sizeof g_out - g_out_len < n ? sizeof g_out - g_out_len : n;
        memcpy(g_out + g_out_len, s, take);
        g_out_len += take;
        s += take;
        n -= take;
        if (g_out_len == sizeof g_out && out_flush())
            return -1;
    }
    return 0;
}

static void put_num(uint8_t *f, size_t len, uint64_t v)
{
    if (len == 12 && v >= (1ULL << 33)) { /* base-256 */
        memset(f, 0, len);
        f[0] = 0x80;
        for (size_t i = len - 1; i > 0 && v; i--, v >>= 8)
            f[i] = (uint8_t)v;
        return;
    }
    snprintf((char *)f, len, "%0*" PRIo64, (int)len - 1, v);
}

static int put_header(const char *name, const char *link, char type, const struct stat *st, uint64_t size)
{
    uint8_t h[BLK];
    unsigned sum = 0;
    if (strlen(name) > 100 || strlen(link) > 100) { /* GNU long name / link records first */
        const char *longs[2] = {name, link};
        for (int k = 0; k < 2; k++) {
            if (strlen(longs[k]) <= 100)
                continue;
            struct stat z = {0};
            size_t n = strlen(longs[k]) + 1;
            if (put_header("././@LongLink", "", k ? 'K' : 'L', &z, n) || out_put(longs[k], n) ||
                out_put((uint8_t[BLK]){0}, (BLK - n % BLK) % BLK))
                return -1;
        }
    }
    memset(h, 0, sizeof h);
    memcpy(h, name, strlen(name) > 100 ? 100 : strlen(name));
    put_num(h + 100, 8, st->st_mode & 07777);
    put_num(h + 108, 8, st->st_uid);
    put_num(h + 116, 8, st->st_gid);
    put_num(h + 124, 12, size);
    put_num(h + 136, 12, st->st_mtime > 0 ? (uint64_t)st->st_mtime : 0);
    h[156] = (uint8_t)type;
    memcpy(h + 157, link, strlen(link) > 100 ? 100 : strlen(link));
    memcpy(h + 257, "ustar  ", 8); /* GNU magic: long names are GNU records */
    memset(h + 148, ' ', 8);
    for (int i = 0; i < BLK; i++)
        sum += h[i];
    snprintf((char *)h + 148, 8, "%06o", sum);
    return out_put(h, BLK);
}

static int put_file(int dir, const char *entry, const char *name, const struct stat *st0)
{
    static uint8_t buf[IO_BUF];
    uint64_t left = (uint64_t)st0->st_size;
    struct stat st;
    int fd = openat(dir, entry, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        fail("%s: skipped: %s", name, fd < 0 ? strerror(errno) : "no longer a regular file");
        if (fd >= 0)
            close(fd);
        return 0;
    }
    left = (uint64_t)st.st_size;
    if (put_header(name, "", '0', &st, left))
        return close(fd), -1;
    while (left) { /* a file that shrinks meanwhile is padded with zeros, one that grows is cut */
        ssize_t n = read(fd, buf, left < sizeof buf ? (size_t)left : sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            memset(buf, 0, sizeof buf);
            n = (ssize_t)(left < sizeof buf ? left : sizeof buf);
        }
        if (out_put(buf, (size_t)n))
            return close(fd), -1;
        left -= (uint64_t)n;
    }
    close(fd);
    return out_put((uint8_t[BLK]){0}, (BLK - (size_t)(st.st_size % BLK)) % BLK);
}

static int put_tree(int dir, const char *entry, const char *name, int depth)
{
    struct stat st;
    char link[NAME_MAX_LEN + 1];
    if (fstatat(dir, entry, &st, AT_SYMLINK_NOFOLLOW | (*entry ? 0 : AT_EMPTY_PATH)))
        return fail("%s: %s", name, strerror(errno)), 0;
    if (strlen(name) > NAME_MAX_LEN - 256)
        return fail("%s: skipped: path too long", name), 0;
    if (S_ISREG(st.st_mode))
        return put_file(dir, entry, name, &st);
    if (S_ISLNK(st.st_mode)) {
        ssize_t n = readlinkat(dir, entry, link, sizeof link - 1);
        if (n < 0)
            return fail("%s: readlink: %s", name, strerror(errno)), 0;
        link[n] = 0;
        return put_header(name, link, '2', &st, 0);
    }
    if (!S_ISDIR(st.st_mode))
        return fail("%s: skipped: not a file, directory or link", name), 0;
    if (depth > MAX_DEPTH)
        return fail("%s: skipped: deeper than %d levels", name, MAX_DEPTH), 0;
    int fd = openat(dir, *entry ? entry : ".", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    struct statfs sfs;
    if (fd >= 0 && fstatfs(fd, &sfs) == 0 &&
        (sfs.f_type == PROC_SUPER_MAGIC || sfs.f_type == SYSFS_MAGIC || sfs.f_type == CGROUP2_SUPER_MAGIC)) {
        close(fd); /* the kernel's own views (e.g. "cp c:/ ."): the directory, not its contents */
        fail("%s: contents skipped: a proc/sys/cgroup filesystem", name);
        return put_header(name, "", '5', &st, 0);
    }
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    struct dirent *de;
    char child[NAME_MAX_LEN + 1];
    int rc = put_header(name, "", '5', &st, 0);
    if (!d) {
        if (fd >= 0)
            close(fd);
        return rc ? rc : (fail("%s: %s", name, strerror(errno)), 0);
    }
    while (rc == 0 && (de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        snprintf(child, sizeof child, "%s/%s", name, de->d_name);
        rc = put_tree(fd, de->d_name, child, depth + 1);
    }
    closedir(d);
    return rc;
}

/* PATH's parent resolves inside ROOT (symlinks followed there); PATH itself is archived as what it
 * is — a symlink stays a symlink. ROOT itself ("") is archived as "root". */
static int create(const char *path)
{
    char dir[NAME_MAX_LEN + 1];
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    int fd, rc;
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) : 0, path);
    if (strcmp(base, ".") == 0 || strcmp(base, "..") == 0)
        return fail("%s: not a name to copy", path), 3;
    fd = in_root(*path ? dir : "", O_PATH | O_DIRECTORY, 1);
    if (fd < 0)
        return fail("%s: %s", *dir ? dir : "/", strerror(errno)), 3;
    if (*path && fstatat(fd, base, &(struct stat){0}, AT_SYMLINK_NOFOLLOW)) {
        rc = errno;
        close(fd);
        return fail("%s: %s", path, strerror(rc)), 3;
    }
    rc = put_tree(fd, *path ? base : "", *path ? base : "root", 0);
    close(fd);
    if (rc == 0)
        rc = out_put((uint8_t[2 * BLK]){0}, 2 * BLK);
    if (rc == 0)
        rc = out_flush();
    return rc ? 6 : 0;
}

int files_main(int argc, char **argv)
{
    if (argc != 5 || (strcmp(argv[3], "--extract") != 0 && strcmp(argv[3], "--create") != 0))
        return fail("usage: vz-agent --in-root ROOT --extract DEST | --create PATH"), 2;
    g_root = open(argv[2], O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (g_root < 0)
        return fail("%s: %s", argv[2], strerror(errno)), 3;
    /* Paths are ROOT-relative: "/etc/x" and "etc/x" name the same entry. */
    char path[NAME_MAX_LEN + 1];
    const char *p = argv[4];
    while (*p == '/')
        p++;
    snprintf(path, sizeof path, "%s", p);
    size_t n = strlen(path);
    int dir_wanted = n > 0 && path[n - 1] == '/';
    while (n > 0 && path[n - 1] == '/')
        path[--n] = 0;
    if (argv[3][2] == 'c')
        return create(path);
    if (dir_wanted) { /* "DEST/": it must be a directory that exists */
        int fd = in_root(path, O_PATH | O_DIRECTORY, 1);
        if (fd < 0)
            return fail("%s/: no such directory in the container", path), 3;
        close(fd);
    }
    return extract(path);
}
