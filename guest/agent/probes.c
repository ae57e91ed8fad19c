/* `vz-agent --probe NAME`: the dispatcher, shared helpers and the probes that need no devices
 * (io_uring, seccomp, overlayfs, virtiofs, hvc0_serial, nested_virt). See probes.h. */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/io_uring.h>
#include <linux/kvm.h>
#include <linux/seccomp.h>

#include "probes.h"

#define FUSE_SUPER_MAGIC 0x65735546

/* ---- helpers ---- */

int probe_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return PROBE_FAIL;
}

int probe_fail_errno(const char *what) { return probe_fail("%s: %s", what, strerror(errno)); }

int private_mounts(void)
{
    if (unshare(CLONE_NEWNS) != 0)
        return probe_fail_errno("unshare(CLONE_NEWNS)");
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
        return probe_fail_errno("make / private");
    return 0;
}

int scratch_dir(char *out, size_t len)
{
    snprintf(out, len, "/tmp/vz-probe.XXXXXX");
    if (!mkdtemp(out))
        return probe_fail_errno("mkdtemp under /tmp");
    return 0;
}

int write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

int read_file_str(const char *path, char *out, size_t len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n;
    if (fd < 0)
        return -1;
    n = read(fd, out, len - 1);
    close(fd);
    if (n < 0)
        return -1;
    out[n] = 0;
    return (int)n;
}

int nth_field(const char *line, int n, char *out, size_t len)
{
    const char *p = line;
    for (int i = 0;; i++) {
        p += strspn(p, " \t\n");
        size_t w = strcspn(p, " \t\n");
        if (w == 0)
            return -1;
        if (i == n) {
            snprintf(out, len, "%.*s", (int)w, p);
            return 0;
        }
        p += w;
    }
}

int write_file_str(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int rc;
    if (fd < 0)
        return -1;
    rc = write_all(fd, text, strlen(text));
    if (close(fd) != 0)
        rc = -1;
    return rc;
}

/* ---- io_uring: submit one NOP and reap its completion through the mapped rings ---- */

static int probe_io_uring(int argc, char **argv)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    int fd = (int)syscall(__NR_io_uring_setup, 4, &p);
    if (fd < 0)
        return probe_fail_errno("io_uring_setup");
    size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(uint32_t);
    size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    int single = (p.features & IORING_FEAT_SINGLE_MMAP) != 0;
    if (single)
        sq_len = cq_len = sq_len > cq_len ? sq_len : cq_len;
    uint8_t *sq = mmap(NULL, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
    uint8_t *cq = single ? sq : mmap(NULL, cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                                     IORING_OFF_CQ_RING);
    struct io_uring_sqe *sqes = mmap(NULL, p.sq_entries * sizeof *sqes, PROT_READ | PROT_WRITE,
                                     MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
    if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED)
        return probe_fail_errno("mmap io_uring rings");
    uint32_t *sq_tail = (uint32_t *)(sq + p.sq_off.tail), sq_mask = *(uint32_t *)(sq + p.sq_off.ring_mask);
    uint32_t *sq_array = (uint32_t *)(sq + p.sq_off.array);
    uint32_t tail = *sq_tail, idx = tail & sq_mask;
    memset(&sqes[idx], 0, sizeof sqes[idx]);
    sqes[idx].opcode = IORING_OP_NOP;
    sqes[idx].user_data = 0x767a2d6e6f70ULL; /* "vz-nop" */
    sq_array[idx] = idx;
    __atomic_store_n(sq_tail, tail + 1, __ATOMIC_RELEASE);
    long r = syscall(__NR_io_uring_enter, fd, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0);
    if (r != 1)
        return probe_fail("io_uring_enter submitted %ld of 1 NOP: %s", r, r < 0 ? strerror(errno) : "short");
    uint32_t *cq_head = (uint32_t *)(cq + p.cq_off.head), *cq_tail = (uint32_t *)(cq + p.cq_off.tail);
    uint32_t cq_mask = *(uint32_t *)(cq + p.cq_off.ring_mask);
    uint32_t head = *cq_head;
    if (__atomic_load_n(cq_tail, __ATOMIC_ACQUIRE) == head)
        return probe_fail("io_uring_enter returned but the completion ring is empty");
    struct io_uring_cqe *cqe = (struct io_uring_cqe *)(cq + p.cq_off.cqes) + (head & cq_mask);
    if (cqe->user_data != 0x767a2d6e6f70ULL || cqe->res != 0)
        return probe_fail("NOP completion is wrong: user_data=0x%llx res=%d", (unsigned long long)cqe->user_data,
                          cqe->res);
    __atomic_store_n(cq_head, head + 1, __ATOMIC_RELEASE);
    printf("io_uring: NOP submitted and completed (user_data 0x%llx, res 0; sq %u cq %u, features 0x%x)\n",
           (unsigned long long)cqe->user_data, p.sq_entries, p.cq_entries, p.features);
    close(fd);
    return 0;
}

/* ---- seccomp: a child installs a filter denying getppid with EPERM; the parent is unaffected ---- */

#if defined(__x86_64__)
#define PROBE_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define PROBE_AUDIT_ARCH AUDIT_ARCH_AARCH64
#else
#error "unsupported architecture"
#endif

struct seccomp_result {
    int install_errno; /* 0: the filter was installed */
    int denied_errno;  /* errno of the filtered getppid */
    long denied_ret, pid;
};

static int seccomp_child(int out)
{
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PROBE_AUDIT_ARCH, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_getppid, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = sizeof f / sizeof f[0], .filter = f};
    struct seccomp_result res = {0};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0) {
        res.install_errno = errno;
    } else {
        errno = 0;
        res.denied_ret = syscall(__NR_getppid);
        res.denied_errno = errno;
        res.pid = syscall(__NR_getpid);
    }
    write_all(out, &res, sizeof res);
    return 0;
}

static int probe_seccomp(int argc, char **argv)
{
    int fds[2], status = 0;
    struct seccomp_result res;
    if (pipe(fds) != 0)
        return probe_fail_errno("pipe");
    pid_t pid = fork();
    if (pid < 0)
        return probe_fail_errno("fork");
    if (pid == 0) {
        close(fds[0]);
        _exit(seccomp_child(fds[1]));
    }
    close(fds[1]);
    ssize_t n = read(fds[0], &res, sizeof res);
    close(fds[0]);
    waitpid(pid, &status, 0);
    if (n != (ssize_t)sizeof res)
        return probe_fail("seccomp child said nothing (status 0x%x)", status);
    if (res.install_errno)
        return probe_fail("install a seccomp filter: %s", strerror(res.install_errno));
    if (res.denied_ret != -1 || res.denied_errno != EPERM)
        return probe_fail("filter installed but getppid returned %ld (errno %d), not EPERM", res.denied_ret,
                          res.denied_errno);
    if (res.pid != pid || syscall(__NR_getppid) <= 0)
        return probe_fail("filter leaked: getpid in the child gave %ld, getppid in the parent failed", res.pid);
    printf("seccomp: filter installed in child %d, getppid denied with EPERM there, parent unaffected\n", (int)pid);
    return 0;
}

/* ---- overlayfs: write through the merged dir; the change lands in upper, lower stays ---- */

static int overlay_check(const char *d)
{
    char p[4][300], opts[1024], got[64];
    const char *names[4] = {"lower", "upper", "work", "merged"};
    for (int i = 0; i < 4; i++) {
        snprintf(p[i], sizeof p[i], "%s/%s", d, names[i]);
        if (mkdir(p[i], 0755) != 0)
            return probe_fail_errno("mkdir overlay dirs");
    }
    char lf[320], mf[320], uf[320];
    snprintf(lf, sizeof lf, "%s/file", p[0]);
    snprintf(mf, sizeof mf, "%s/file", p[3]);
    snprintf(uf, sizeof uf, "%s/file", p[1]);
    if (write_file_str(lf, "lower\n") != 0)
        return probe_fail_errno("write lower/file");
    snprintf(opts, sizeof opts, "lowerdir=%s,upperdir=%s,workdir=%s", p[0], p[1], p[2]);
    if (mount("overlay", p[3], "overlay", 0, opts) != 0)
        return probe_fail_errno("mount -t overlay");
    int rc = write_file_str(mf, "through\n");
    int e = errno;
    umount2(p[3], MNT_DETACH);
    if (rc != 0)
        return probe_fail("write merged/file: %s", strerror(e));
    if (read_file_str(uf, got, sizeof got) < 0 || strcmp(got, "through\n") != 0)
        return probe_fail("upper/file does not hold what was written through the overlay");
    if (read_file_str(lf, got, sizeof got) < 0 || strcmp(got, "lower\n") != 0)
        return probe_fail("lower/file changed under the overlay");
    printf("overlayfs: mounted, wrote through merged/file, copied up to upper (lower unchanged)\n");
    return 0;
}

static int probe_overlayfs(int argc, char **argv)
{
    char d[64];
    int rc;
    if ((rc = private_mounts()) != 0 || (rc = scratch_dir(d, sizeof d)) != 0)
        return rc;
    if (mount("tmpfs", d, "tmpfs", 0, "size=1m") != 0) {
        rc = probe_fail_errno("mount tmpfs scratch");
    } else {
        rc = overlay_check(d);
        umount2(d, MNT_DETACH);
    }
    rmdir(d);
    return rc;
}

/* ---- virtiofs: read the host's token through the share; the file system must be virtiofs ---- */

/* The file system type of the mount holding PATH (longest matching mount point in mountinfo). */
static int mount_type(const char *path, char *type, size_t len)
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    char line[1024], mp[512], fstype[64];
    size_t best = 0;
    if (!f)
        return -1;
    type[0] = 0;
    while (fgets(line, sizeof line, f)) {
        char *sep = strstr(line, " - ");
        size_t n;
        if (!sep || nth_field(line, 4, mp, sizeof mp) != 0 || nth_field(sep + 3, 0, fstype, sizeof fstype) != 0)
            continue;
        n = strlen(mp);
        if (strncmp(path, mp, n) == 0 && (path[n] == '/' || path[n] == 0 || n == 1) && n >= best) {
            best = n;
            snprintf(type, len, "%s", fstype);
        }
    }
    fclose(f);
    return type[0] ? 0 : -1;
}

static int probe_virtiofs(int argc, char **argv)
{
    char got[300], type[64];
    struct statfs sf;
    int n;
    if (argc != 2)
        return probe_fail("usage: --probe virtiofs PATH TOKEN"), PROBE_USAGE;
    if ((n = read_file_str(argv[0], got, sizeof got)) < 0)
        return probe_fail("read %s: %s", argv[0], strerror(errno));
    got[strcspn(got, "\n")] = 0;
    if (statfs(argv[0], &sf) != 0)
        return probe_fail_errno("statfs");
    if (mount_type(argv[0], type, sizeof type) != 0 || strcmp(type, "virtiofs") != 0 ||
        (unsigned long)sf.f_type != FUSE_SUPER_MAGIC)
        return probe_fail("%s is on %s (magic 0x%lx), not virtiofs", argv[0], type[0] ? type : "?",
                          (unsigned long)sf.f_type);
    if (strcmp(got, argv[1]) != 0)
        return probe_fail("%s holds '%.40s', not the host's token", argv[0], got);
    printf("virtiofs: read the host's token %.16s from %s\n", got, argv[0]);
    return 0;
}

/* ---- hvc0_serial: write a line to the virtio console ---- */

static int probe_hvc0(int argc, char **argv)
{
    static const char msg[] = "vz-agent: hvc0_serial probe\r\n";
    struct stat st;
    int fd = open("/dev/hvc0", O_WRONLY | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        return probe_fail_errno("open /dev/hvc0");
    if (!isatty(fd) || fstat(fd, &st) != 0)
        return close(fd), probe_fail("/dev/hvc0 is not a terminal");
    ssize_t n = write(fd, msg, sizeof msg - 1);
    int e = errno;
    close(fd);
    if (n != (ssize_t)(sizeof msg - 1))
        return probe_fail("write /dev/hvc0: %s", n < 0 ? strerror(e) : "short write");
    printf("hvc0_serial: wrote %zd bytes to /dev/hvc0 (tty %u:%u)\n", n, major(st.st_rdev), minor(st.st_rdev));
    return 0;
}

/* ---- nested_virt: /dev/kvm answers API 12 and creates a VM; else say what the CPU offers ---- */

static const char *cpu_virt_flags(void)
{
    static char out[96];
    char line[4096];
    FILE *f = fopen("/proc/cpuinfo", "re");
    int svm = 0, vmx = 0;
    if (!f)
        return "cpuinfo unreadable";
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "flags", 5) != 0)
            continue;
        svm |= strstr(line, " svm") != NULL;
        vmx |= strstr(line, " vmx") != NULL;
        break;
    }
    fclose(f);
#if defined(__aarch64__)
    (void)svm, (void)vmx;
    snprintf(out, sizeof out, "arm64: KVM needs the guest booted at EL2 (QEMU -M virt,virtualization=on)");
#else
    snprintf(out, sizeof out, "guest CPU offers %s", svm ? "svm (AMD-V)" : vmx ? "vmx (VT-x)" : "neither svm nor vmx");
#endif
    return out;
}

static int probe_nested_virt(int argc, char **argv)
{
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0)
        return probe_fail("open /dev/kvm: %s; %s", strerror(errno), cpu_virt_flags());
    int api = ioctl(kvm, KVM_GET_API_VERSION, 0);
    if (api != KVM_API_VERSION)
        return close(kvm), probe_fail("KVM_GET_API_VERSION = %d, not %d", api, KVM_API_VERSION);
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) {
        int e = errno;
        close(kvm);
        return probe_fail("KVM_CREATE_VM: %s; %s", strerror(e), cpu_virt_flags());
    }
    close(vm);
    close(kvm);
    printf("nested_virt: /dev/kvm API %d, KVM_CREATE_VM ok; %s\n", api, cpu_virt_flags());
    return 0;
}

/* ---- dispatcher ---- */

static const struct probe PROBES[] = {
    {"io_uring", probe_io_uring, ""},
    {"seccomp", probe_seccomp, ""},
    {"overlayfs", probe_overlayfs, ""},
    {"virtiofs", probe_virtiofs, "PATH TOKEN"},
    {"hvc0_serial", probe_hvc0, ""},
    {"nested_virt", probe_nested_virt, ""},
    {"netns", probe_netns, ""},
    {"nfsd", probe_nfsd, ""},
    {"vsock", probe_vsock, ""},
    {"btrfs_snapshots", probe_btrfs, "IMAGE"},
    {"device_mapper", probe_dm_linear, ""},
    {"dm_crypt", probe_dm_crypt, ""},
};

int run_probe(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (size_t i = 0; argc >= 1 && i < sizeof PROBES / sizeof PROBES[0]; i++)
        if (strcmp(argv[0], PROBES[i].name) == 0)
            return PROBES[i].run(argc - 1, argv + 1);
    fprintf(stderr, "vz-agent: unknown probe %s; known:", argc >= 1 ? argv[0] : "(none)");
    for (size_t i = 0; i < sizeof PROBES / sizeof PROBES[0]; i++)
        fprintf(stderr, " %s%s%s", PROBES[i].name, PROBES[i].args[0] ? " " : "", PROBES[i].args);
    fputc('\n', stderr);
    return PROBE_USAGE;
}
