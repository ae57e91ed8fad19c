/* vz-agent --mount-api | --mount-root [--quiet] [--disk DEV]: the init's mounts done with mount(2),
 * without forking BusyBox once per mount (every fork+exec costs 10-20 ms of boot under TCG).
 *
 * --mount-api mounts what PID 1 needs in the initramfs: proc, sysfs, devtmpfs, devpts (+ /dev/ptmx),
 * tmpfs on /dev/shm, /tmp and /run, and cgroup2 when the kernel has it. A target that already holds
 * a filesystem of that type is left as it is, so running it twice (or after the shell) is harmless.
 * It also brings the loopback interface up (one fork of `ip` less in init).
 *
 * --mount-root switches the guest's root as the init's shell functions did: without --disk, the
 * virtiofs share "rootfs" read-only under a tmpfs-backed overlay at /mnt/root; with --disk DEV, the
 * ext4 disk DEV read-write at /mnt/root (a persistent VM). Either way the new root gets /proc, /sys,
 * /dev (recursive binds), fresh tmpfs on /tmp and /run, BusyBox under /run/vz/bin and a copy of this
 * agent (sbin/vz-agent, or run/vz/vz-agent on a disk). Every path inside the new root is resolved
 * with openat2(RESOLVE_IN_ROOT): an absolute symlink there (/sbin -> /usr/sbin) resolves inside the
 * new root, never in the initramfs. On failure everything mounted is detached again.
 *
 * Exit codes (the init maps them, docs/guest.md "Init"): 0 done; 10 nothing to switch to (no
 * "rootfs" share, DEV not a block device) or an API filesystem could not be mounted; 11 the root was
 * mounted but could not be prepared (undone: stay in the initramfs); 1 bad usage or another failure
 * (the init then falls back to its shell functions).
 *
 * --oci-prepare (a container VM restored from its template, docs/oci.md "Fast start"): config.json
 * from stdin, the image disk mounted read-only, the overlay on it and the container's working
 * directory made inside it (resolved in the container's root: an image's symlink cannot point it
 * elsewhere). Exit codes: 0 done; 1 bad usage; 2 a step failed (said on stderr).
 *
 * --mkdir-in ROOT PATH: only that last step (a cold-booted container VM, whose image is a share). */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/magic.h>
#include <linux/openat2.h>

#include "agent.h"

#define NEWROOT "/mnt/root"
#define EXIT_NOTHING 10
#define EXIT_UNDONE 11

#ifndef CGROUP2_SUPER_MAGIC
#define CGROUP2_SUPER_MAGIC 0x63677270
#endif
#ifndef DEVPTS_SUPER_MAGIC
#define DEVPTS_SUPER_MAGIC 0x1cd1
#endif

static int g_quiet;

static void say(const char *fmt, ...)
{
    va_list ap;
    if (g_quiet)
        return;
    va_start(ap, fmt);
    fputs("[vz-init] ", stdout);
    vprintf(fmt, ap);
    fputc('\n', stdout);
    fflush(stdout);
    va_end(ap);
}

/* --- --mount-api --------------------------------------------------------------------------------- */
struct api_mount {
    const char *source, *target, *type;
    unsigned long flags;
    const char *data;
    long magic;
    int optional; /* a failure is logged, not fatal (as the shell's `2>/dev/null`) */
};

static const struct api_mount API_MOUNTS[] = {
    {"proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL, PROC_SUPER_MAGIC, 0},
    {"sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL, SYSFS_MAGIC, 0},
    /* CONFIG_DEVTMPFS_MOUNT does not apply to an initramfs root. */
    {"devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755", TMPFS_MAGIC, 1},
    {"devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620",
     DEVPTS_SUPER_MAGIC, 1},
    {"tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777", TMPFS_MAGIC, 0},
    {"tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777", TMPFS_MAGIC, 0},
    {"tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755", TMPFS_MAGIC, 0},
};

/* True when `path` is the root of a mount of filesystem `magic` (statfs of it differs from its parent). */
static int mounted_as(const char *path, long magic)
{
    struct statfs st;
    struct stat self, parent;
    char up[64];
    if (statfs(path, &st) != 0 || (long)st.f_type != magic)
        return 0;
    snprintf(up, sizeof up, "%s/..", path);
    if (stat(path, &self) != 0 || stat(up, &parent) != 0)
        return 0;
    return self.st_dev != parent.st_dev;
}

static int kernel_has_fs(const char *name)
{
    char line[128];
    int found = 0;
    FILE *f = fopen("/proc/filesystems", "re");
    if (!f)
        return 0;
    while (!found && fgets(line, sizeof line, f)) {
        char *tab = strrchr(line, '\t');
        char *word = tab ? tab + 1 : line;
        word[strcspn(word, "\n")] = 0;
        found = strcmp(word, name) == 0;
    }
    fclose(f);
    return found;
}

/* `ip link set lo up`; a failure is only logged (as init ignored `ip`'s). */
static void loopback_up(void)
{
    struct ifreq ifr;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    if (fd < 0 || ioctl(fd, SIOCGIFFLAGS, &ifr) != 0 ||
        (!(ifr.ifr_flags & IFF_UP) && (ifr.ifr_flags |= IFF_UP, ioctl(fd, SIOCSIFFLAGS, &ifr) != 0)))
        fprintf(stderr, "vz-agent: lo up: %s\n", strerror(errno));
    if (fd >= 0)
        close(fd);
}

static int mount_api(void)
{
    size_t n = sizeof API_MOUNTS / sizeof API_MOUNTS[0];
    for (size_t i = 0; i < n; i++) {
        const struct api_mount *m = &API_MOUNTS[i];
        if (mkdir(m->target, 0755) != 0 && errno != EEXIST)
            fprintf(stderr, "vz-agent: mkdir %s: %s\n", m->target, strerror(errno));
        if (mounted_as(m->target, m->magic))
            continue;
        if (mount(m->source, m->target, m->type, m->flags, m->data) != 0) {
            if (m->optional) {
                say("%s: not available (%s)", m->type, strerror(errno));
                continue;
            }
            fprintf(stderr, "vz-agent: mount %s on %s: %s\n", m->type, m->target, strerror(errno));
            return EXIT_NOTHING;
        }
    }
    if (access("/dev/ptmx", F_OK) != 0 && symlink("pts/ptmx", "/dev/ptmx") != 0)
        fprintf(stderr, "vz-agent: /dev/ptmx: %s\n", strerror(errno));
    if (kernel_has_fs("cgroup2") && !mounted_as("/sys/fs/cgroup", CGROUP2_SUPER_MAGIC) &&
        mount("cgroup2", "/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0) {
        fprintf(stderr, "vz-agent: mount cgroup2: %s\n", strerror(errno));
        return EXIT_NOTHING;
    }
    loopback_up();
    return 0;
}

/* --- --mount-root -------------------------------------------------------------------------------- */
/* `path` (relative) inside the directory `root`; symlinks on the way, ".." and absolute ones included,
 * stay inside it. The last component is followed only with `follow`. */
static int in_new_root(int root, const char *path, int flags, int follow)
{
    struct open_how how = {.flags = (uint64_t)(flags | O_CLOEXEC | (follow ? 0 : O_NOFOLLOW)),
                           .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS};
    if (flags & O_CREAT)
        how.mode = 0755;
    return (int)syscall(SYS_openat2, root, path, &how, sizeof how);
}

/* mkdir `rel` inside the new root (its parent resolved there); an existing entry is fine. */
static void mkdir_in(int root, const char *rel)
{
    char dir[256];
    const char *slash = strrchr(rel, '/');
    int dfd;
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - rel) : 1, slash ? rel : ".");
    dfd = in_new_root(root, dir, O_PATH | O_DIRECTORY, 1);
    if (dfd >= 0) {
        (void)mkdirat(dfd, slash ? slash + 1 : rel, 0755);
        close(dfd);
    }
}

/* Mount on a directory inside the new root (made if missing, resolved there), through its
 * /proc/self/fd link: the mount lands on the resolved directory, not on a path walked again. */
static int mount_in(int root, const char *source, const char *dir, const char *type, unsigned long flags,
                    const char *data)
{
    char target[64];
    int fd, rc;
    mkdir_in(root, dir);
    fd = in_new_root(root, dir, O_PATH | O_DIRECTORY, 1);
    if (fd < 0) {
        fprintf(stderr, "vz-agent: %s in the new root: %s\n", dir, strerror(errno));
        return -1;
    }
    snprintf(target, sizeof target, "/proc/self/fd/%d", fd);
    rc = mount(source, target, type, flags, data);
    if (rc != 0)
        fprintf(stderr, "vz-agent: mount %s on %s in the new root: %s\n", source, dir, strerror(errno));
    close(fd);
    return rc;
}

/* Replace the file `rel` in the new root (never following it) by a copy of the host file `src`. */
static int copy_in(int root, const char *src, const char *rel, mode_t mode)
{
    char dir[256], buf[65536];
    const char *slash = strrchr(rel, '/');
    const char *name = slash ? slash + 1 : rel;
    int dfd, in, out, rc = -1;
    ssize_t n;
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - rel) : 1, slash ? rel : ".");
    dfd = in_new_root(root, dir, O_PATH | O_DIRECTORY, 1);
    if (dfd < 0) {
        fprintf(stderr, "vz-agent: %s in the new root: %s\n", dir, strerror(errno));
        return -1;
    }
    if (unlinkat(dfd, name, 0) != 0 && errno != ENOENT) {
        fprintf(stderr, "vz-agent: replacing %s in the new root: %s\n", rel, strerror(errno));
        close(dfd);
        return -1;
    }
    in = open(src, O_RDONLY | O_CLOEXEC);
    out = openat(dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (in >= 0 && out >= 0) {
        while ((n = read(in, buf, sizeof buf)) > 0)
            if (write(out, buf, (size_t)n) != n)
                break;
        rc = n == 0 && fchmod(out, mode) == 0 ? 0 : -1;
    }
    if (rc != 0)
        fprintf(stderr, "vz-agent: copying %s to %s in the new root: %s\n", src, rel, strerror(errno));
    if (in >= 0)
        close(in);
    if (out >= 0 && close(out) != 0)
        rc = -1;
    close(dfd);
    return rc;
}

static int empty_or_missing(int root, const char *rel)
{
    struct stat st;
    int fd = in_new_root(root, rel, O_RDONLY, 1);
    int empty = fd < 0 || fstat(fd, &st) != 0 || st.st_size == 0;
    if (fd >= 0)
        close(fd);
    return empty;
}

/* The API filesystems, BusyBox, the agent and resolv.conf in the new root (populate_newroot in init). */
static int populate(const char *agent_rel, int disk)
{
    int root = open(NEWROOT, O_PATH | O_DIRECTORY | O_CLOEXEC);
    int ok;
    if (root < 0)
        return -1;
    ok = mount_in(root, "/proc", "proc", NULL, MS_BIND | MS_REC, NULL) == 0 &&
         mount_in(root, "/sys", "sys", NULL, MS_BIND | MS_REC, NULL) == 0 &&
         mount_in(root, "/dev", "dev", NULL, MS_BIND | MS_REC, NULL) == 0 &&
         mount_in(root, "tmpfs", "tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") == 0 &&
         mount_in(root, "tmpfs", "run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755") == 0 &&
         (mkdir_in(root, "run/vz"), mount_in(root, "/bin", "run/vz/bin", NULL, MS_BIND, NULL) == 0);
    if (ok && !disk) {
        mkdir_in(root, "sbin");
        mkdir_in(root, "etc");
    }
    ok = ok && copy_in(root, "/proc/self/exe", agent_rel, 0755) == 0;
    /* With eth0 we own DNS (udhcpc.script keeps both copies current); else keep the root's own (a
     * disk root's only with a network: its files are the user's). */
    if (ok && (access("/sys/class/net/eth0", F_OK) == 0 || (!disk && empty_or_missing(root, "etc/resolv.conf"))))
        ok = copy_in(root, "/etc/resolv.conf", "etc/resolv.conf", 0644) == 0;
    close(root);
    return ok ? 0 : -1;
}

static int root_from_share(void)
{
    mkdir("/mnt/lower", 0755);
    mkdir("/mnt/rw", 0755);
    mkdir(NEWROOT, 0755);
    if (mount("rootfs", "/mnt/lower", "virtiofs", MS_RDONLY, NULL) != 0)
        return EXIT_NOTHING;
    say("rootfs: virtiofs share mounted");
    if (mount("tmpfs", "/mnt/rw", "tmpfs", 0, "mode=0755") == 0 &&
        (mkdir("/mnt/rw/upper", 0755) == 0 || errno == EEXIST) &&
        (mkdir("/mnt/rw/work", 0755) == 0 || errno == EEXIST) &&
        mount("overlay", NEWROOT, "overlay", 0, "lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work") == 0 &&
        populate("sbin/vz-agent", 0) == 0) {
        say("rootfs: overlay ready, switching into it");
        return 0;
    }
    say("rootfs: overlay failed, staying in the initramfs");
    umount2(NEWROOT, MNT_DETACH);
    umount2("/mnt/rw", MNT_DETACH);
    umount2("/mnt/lower", MNT_DETACH);
    return EXIT_UNDONE;
}

static int root_from_disk(const char *dev)
{
    struct stat st;
    mkdir(NEWROOT, 0755);
    if (stat(dev, &st) != 0 || !S_ISBLK(st.st_mode)) {
        say("root: %s is not a block device, staying in the initramfs", dev);
        return EXIT_NOTHING;
    }
    if (mount(dev, NEWROOT, "ext4", MS_NOATIME, NULL) != 0) {
        say("root: mounting %s failed (%s), staying in the initramfs", dev, strerror(errno));
        return EXIT_NOTHING;
    }
    if (populate("run/vz/vz-agent", 1) == 0) {
        say("root: %s mounted, switching into it", dev);
        return 0;
    }
    say("root: preparing %s failed, staying in the initramfs", dev);
    umount2(NEWROOT, MNT_DETACH);
    return EXIT_UNDONE;
}

/* --- --oci-prepare ------------------------------------------------------------------------------ */
#define CONFIG_MAX (1 << 20)
#define MOUNT_TRIES 50

static int fail(const char *what, const char *path)
{
    fprintf(stderr, "vz-agent: %s %s: %s\n", what, path, strerror(errno));
    return 2;
}

/* stdin (at most CONFIG_MAX bytes) to `path`, through `path`.part and a rename. */
static int write_stdin_to(const char *path)
{
    static char buf[CONFIG_MAX + 1];
    char part[512];
    size_t len = 0;
    ssize_t n;
    int fd, ok;
    while (len <= CONFIG_MAX && (n = read(0, buf + len, CONFIG_MAX + 1 - len)) != 0) {
        if (n < 0 && errno != EINTR)
            return fail("reading", "stdin");
        len += n > 0 ? (size_t)n : 0;
    }
    if (len > CONFIG_MAX) {
        fprintf(stderr, "vz-agent: %s: more than %d bytes on stdin\n", path, CONFIG_MAX);
        return 2;
    }
    snprintf(part, sizeof part, "%s.part", path);
    fd = open(part, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0)
        return fail("creating", part);
    ok = write(fd, buf, len) == (ssize_t)len;
    ok = close(fd) == 0 && ok;
    if (!ok || rename(part, path) != 0)
        return fail("writing", path);
    return 0;
}

static void drop_page_cache(void)
{
    int fd = open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        (void)!write(fd, "1", 1); /* clean page cache only: nothing is dirty, slabs stay */
        close(fd);
    }
}

/* mkdir -p `rel` inside `root`: every prefix resolved there (symlinks, "..", absolute ones), a
 * missing component made in its resolved parent. */
static int mkdir_p_in(int root, const char *rel)
{
    char path[4096];
    size_t len = strlen(rel);
    int parent = -1;
    if (len >= sizeof path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(path, rel, len + 1);
    for (size_t i = 0, start = 0; i <= len; i++) {
        int fd;
        if (path[i] != '/' && path[i] != 0)
            continue;
        if (i == start) { /* an empty component ("a//b") */
            start = i + 1;
            continue;
        }
        path[i] = 0;
        fd = in_new_root(root, path, O_PATH | O_DIRECTORY, 1);
        if (fd < 0 && errno == ENOENT) {
            (void)mkdirat(parent >= 0 ? parent : root, path + start, 0755);
            fd = in_new_root(root, path, O_PATH | O_DIRECTORY, 1);
        }
        if (parent >= 0)
            close(parent);
        if (fd < 0)
            return -1;
        parent = fd;
        path[i] = i < len ? '/' : 0;
        start = i + 1;
    }
    if (parent >= 0)
        close(parent);
    return 0;
}

/* The container's working directory `cwd` made inside its root `rootfs` (--mkdir-in). */
static int workdir_in(const char *rootfs, const char *cwd)
{
    int root = open(rootfs, O_PATH | O_DIRECTORY | O_CLOEXEC), rc;
    if (root < 0)
        return fail("opening", rootfs);
    while (*cwd == '/')
        cwd++;
    rc = mkdir_p_in(root, *cwd ? cwd : ".");
    close(root);
    return rc == 0 ? 0 : fail("making the working directory", cwd);
}

static int oci_prepare(const char *config, const char *disk, const char *image, const char *work,
                       const char *rootfs, const char *cwd)
{
    char data[1024];
    int tries = 0, rc;
    if ((rc = write_stdin_to(config)) != 0)
        return rc;
    /* A template saved with the placeholder's blocks cached would show them instead of the image. */
    while (mount(disk, image, "ext4", MS_RDONLY, "noload") != 0) {
        if (++tries >= MOUNT_TRIES)
            return fail("mounting the image disk", disk);
        drop_page_cache();
        usleep(20000);
    }
    if ((size_t)snprintf(data, sizeof data, "lowerdir=%s,upperdir=%s/upper,workdir=%s/work", image, work, work) >=
        sizeof data) {
        fprintf(stderr, "vz-agent: overlay paths too long\n");
        return 2;
    }
    if (mount("vz-oci-rootfs", rootfs, "overlay", 0, data) != 0)
        return fail("mounting the overlay on", rootfs);
    return workdir_in(rootfs, cwd);
}

int mounts_main(int argc, char **argv)
{
    const char *disk = NULL;
    int api = strcmp(argv[1], "--mount-api") == 0;
    if (strcmp(argv[1], "--mkdir-in") == 0) {
        if (argc != 4 || argv[2][0] != '/' || argv[3][0] != '/') {
            fprintf(stderr, "vz-agent: usage: --mkdir-in ROOT PATH (absolute paths)\n");
            return 1;
        }
        return workdir_in(argv[2], argv[3]);
    }
    if (strcmp(argv[1], "--oci-prepare") == 0) {
        if (argc != 8 || argv[2][0] != '/' || argv[3][0] != '/' || argv[4][0] != '/' || argv[5][0] != '/' ||
            argv[6][0] != '/' || argv[7][0] != '/') {
            fprintf(stderr, "vz-agent: usage: --oci-prepare CONFIG DISK IMAGE WORK ROOTFS CWD (absolute paths)\n");
            return 1;
        }
        return oci_prepare(argv[2], argv[3], argv[4], argv[5], argv[6], argv[7]);
    }
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--quiet") == 0)
            g_quiet = 1;
        else if (!api && strcmp(argv[i], "--disk") == 0 && i + 1 < argc && argv[i + 1][0] == '/')
            disk = argv[++i];
        else {
            fprintf(stderr, "vz-agent: usage: --mount-api [--quiet] | --mount-root [--quiet] [--disk /dev/DEV]\n");
            return 1;
        }
    }
    if (api)
        return mount_api();
    return disk ? root_from_disk(disk) : root_from_share();
}
