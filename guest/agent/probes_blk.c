/* Block probes on loop devices over files in a scratch tmpfs directory:
 *   btrfs_snapshots  loop-mount the host's btrfs image, make a subvolume, snapshot it, change the
 *                    original and read the old content back from the snapshot (btrfs ioctls);
 *   device_mapper    create a `linear` mapping (DM ioctls), write through it, find the block at the
 *                    mapped offset of the backing file, remove the mapping;
 *   dm_crypt         a `crypt` mapping (aes-xts-plain64, random key): the backing file holds
 *                    ciphertext, and a fresh mapping with the same key reads the plaintext back.
 * Loop devices are set up with LO_FLAGS_AUTOCLEAR and mappings removed, so nothing is left behind. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <linux/btrfs.h>
#include <linux/dm-ioctl.h>
#include <linux/loop.h>

#include "probes.h"

#define BLK 4096
#define SUBVOL_ROOT_INO 256 /* BTRFS_FIRST_FREE_OBJECTID: every subvolume root has it */

struct loopdev {
    int fd;
    int num;
    dev_t rdev;
};

/* Attach FILE to a free loop device (auto-clearing once its last user has gone). */
static int loop_attach(const char *file, struct loopdev *lo)
{
    struct loop_config cfg;
    struct stat st;
    char dev[32];
    int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC), ffd;
    if (ctl < 0)
        return probe_fail_errno("open /dev/loop-control");
    if ((ffd = open(file, O_RDWR | O_CLOEXEC)) < 0)
        return close(ctl), probe_fail_errno("open the loop backing file");
    for (int attempt = 0; attempt < 5; attempt++) { /* another user may take the free device first */
        lo->num = ioctl(ctl, LOOP_CTL_GET_FREE);
        snprintf(dev, sizeof dev, "/dev/loop%d", lo->num);
        if (lo->num < 0 || (lo->fd = open(dev, O_RDWR | O_CLOEXEC)) < 0)
            break;
        memset(&cfg, 0, sizeof cfg);
        cfg.fd = (uint32_t)ffd;
        cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR;
        if (ioctl(lo->fd, LOOP_CONFIGURE, &cfg) == 0 && fstat(lo->fd, &st) == 0) {
            lo->rdev = st.st_rdev;
            close(ffd);
            close(ctl);
            return 0;
        }
        close(lo->fd);
        if (errno != EBUSY)
            break;
    }
    int e = errno;
    close(ffd);
    close(ctl);
    return probe_fail("attach a loop device: %s", strerror(e));
}

static int make_file(const char *path, off_t size)
{
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 || ftruncate(fd, size) != 0)
        return probe_fail_errno("create the loop backing file");
    close(fd);
    return 0;
}

/* ---- btrfs_snapshots ---- */

static int all_zero(const char *p, size_t n)
{
    return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

/* Copy SRC to DST keeping holes (the image is mostly zeros). */
static int copy_sparse(const char *src, const char *dst)
{
    static char buf[65536];
    int in = open(src, O_RDONLY | O_CLOEXEC), out;
    off_t off = 0;
    ssize_t n;
    if (in < 0)
        return probe_fail("open the btrfs image %s: %s", src, strerror(errno));
    if ((out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) < 0)
        return close(in), probe_fail_errno("create the image copy");
    while ((n = read(in, buf, sizeof buf)) > 0) {
        if (!all_zero(buf, (size_t)n) && pwrite(out, buf, (size_t)n, off) != n)
            break;
        off += n;
    }
    int rc = n != 0 || ftruncate(out, off) != 0 ? probe_fail_errno("copy the btrfs image") : 0;
    close(in);
    close(out);
    return rc;
}

static int btrfs_steps(const char *mnt, char *why, size_t len)
{
    char sub[300], snap[300], f_sub[320], f_snap[320], got[32];
    struct btrfs_ioctl_vol_args va;
    struct btrfs_ioctl_vol_args_v2 v2;
    struct stat st;
    int mfd = open(mnt, O_RDONLY | O_DIRECTORY | O_CLOEXEC), sfd;
    snprintf(sub, sizeof sub, "%s/sub", mnt);
    snprintf(snap, sizeof snap, "%s/snap", mnt);
    snprintf(f_sub, sizeof f_sub, "%s/file", sub);
    snprintf(f_snap, sizeof f_snap, "%s/file", snap);
    memset(&va, 0, sizeof va);
    strcpy(va.name, "sub");
    if (mfd < 0 || ioctl(mfd, BTRFS_IOC_SUBVOL_CREATE, &va) != 0)
        return snprintf(why, len, "BTRFS_IOC_SUBVOL_CREATE: %s", strerror(errno)), -1;
    if (write_file_str(f_sub, "before\n") != 0 || (sfd = open(sub, O_RDONLY | O_CLOEXEC)) < 0)
        return close(mfd), snprintf(why, len, "write sub/file: %s", strerror(errno)), -1;
    memset(&v2, 0, sizeof v2);
    v2.fd = sfd;
    v2.flags = BTRFS_SUBVOL_RDONLY;
    strcpy(v2.name, "snap");
    int rc = ioctl(mfd, BTRFS_IOC_SNAP_CREATE_V2, &v2);
    close(sfd);
    close(mfd);
    if (rc != 0)
        return snprintf(why, len, "BTRFS_IOC_SNAP_CREATE_V2: %s", strerror(errno)), -1;
    if (write_file_str(f_sub, "after\n") != 0)
        return snprintf(why, len, "change sub/file: %s", strerror(errno)), -1;
    if (read_file_str(f_snap, got, sizeof got) < 0 || strcmp(got, "before\n") != 0)
        return snprintf(why, len, "snap/file does not hold the old content"), -1;
    if (read_file_str(f_sub, got, sizeof got) < 0 || strcmp(got, "after\n") != 0)
        return snprintf(why, len, "sub/file lost the change"), -1;
    if (stat(snap, &st) != 0 || st.st_ino != SUBVOL_ROOT_INO)
        return snprintf(why, len, "snap is not a subvolume root"), -1;
    return 0;
}

int probe_btrfs(int argc, char **argv)
{
    char d[64], img[96], mnt[96], why[200] = "";
    struct loopdev lo;
    int rc;
    if (argc != 1)
        return probe_fail("usage: --probe btrfs_snapshots IMAGE"), PROBE_USAGE;
    if ((rc = private_mounts()) != 0 || (rc = scratch_dir(d, sizeof d)) != 0)
        return rc;
    snprintf(img, sizeof img, "%s/btrfs.img", d);
    snprintf(mnt, sizeof mnt, "%s/mnt", d);
    if ((rc = copy_sparse(argv[0], img)) == 0 && (rc = loop_attach(img, &lo)) == 0) {
        char dev[32];
        snprintf(dev, sizeof dev, "/dev/loop%d", lo.num);
        if (mkdir(mnt, 0755) != 0 || mount(dev, mnt, "btrfs", 0, NULL) != 0) {
            rc = probe_fail("mount -t btrfs %s: %s", dev, strerror(errno));
        } else {
            rc = btrfs_steps(mnt, why, sizeof why) == 0 ? 0 : probe_fail("%s", why);
            umount2(mnt, 0);
        }
        rmdir(mnt);
        close(lo.fd);
    }
    unlink(img);
    rmdir(d);
    if (rc == 0)
        printf("btrfs_snapshots: on loop%d: subvolume sub, read-only snapshot snap; sub/file changed, "
               "snap/file still 'before'\n", lo.num);
    return rc;
}

/* ---- device mapper ---- */

#define DM_BUF 16384

struct dm {
    int ctl;
    char name[DM_NAME_LEN];
    union {
        struct dm_ioctl io;
        char raw[DM_BUF];
    } u;
};

static struct dm_ioctl *dm_req(struct dm *dm, uint32_t flags)
{
    memset(&dm->u, 0, sizeof dm->u);
    dm->u.io.version[0] = DM_VERSION_MAJOR;
    dm->u.io.data_size = DM_BUF;
    dm->u.io.data_start = sizeof(struct dm_ioctl);
    dm->u.io.flags = flags;
    snprintf(dm->u.io.name, sizeof dm->u.io.name, "%s", dm->name);
    return &dm->u.io;
}

static int dm_open(struct dm *dm, const char *what)
{
    snprintf(dm->name, sizeof dm->name, "vz-probe-%s-%d", what, (int)getpid());
    dm->ctl = open("/dev/mapper/control", O_RDWR | O_CLOEXEC);
    if (dm->ctl < 0)
        return probe_fail("open /dev/mapper/control: %s (no device-mapper in this kernel?)", strerror(errno));
    return 0;
}

/* Create the device, load one target of SECTORS, resume it; *rdev = its device number. */
static int dm_create(struct dm *dm, const char *type, uint64_t sectors, const char *params, dev_t *rdev)
{
    struct dm_ioctl *io = dm_req(dm, 0);
    if (ioctl(dm->ctl, DM_DEV_CREATE, io) != 0)
        return probe_fail("DM_DEV_CREATE %s: %s", dm->name, strerror(errno));
    io = dm_req(dm, 0);
    io->target_count = 1;
    struct dm_target_spec *t = (struct dm_target_spec *)(dm->u.raw + sizeof *io);
    t->sector_start = 0;
    t->length = sectors;
    snprintf(t->target_type, sizeof t->target_type, "%s", type);
    snprintf((char *)(t + 1), DM_BUF - sizeof *io - sizeof *t, "%s", params);
    if (ioctl(dm->ctl, DM_TABLE_LOAD, io) != 0) {
        int e = errno;
        ioctl(dm->ctl, DM_DEV_REMOVE, dm_req(dm, 0));
        return probe_fail("DM_TABLE_LOAD %s target: %s", type, strerror(e));
    }
    io = dm_req(dm, 0);
    if (ioctl(dm->ctl, DM_DEV_SUSPEND, io) != 0) { /* no SUSPEND flag: resume = activate the table */
        int e = errno;
        ioctl(dm->ctl, DM_DEV_REMOVE, dm_req(dm, 0));
        return probe_fail("resume %s: %s", dm->name, strerror(e));
    }
    *rdev = (dev_t)io->dev;
    return 0;
}

/* Remove the mapping and check it is gone. */
static int dm_remove(struct dm *dm)
{
    if (ioctl(dm->ctl, DM_DEV_REMOVE, dm_req(dm, 0)) != 0)
        return probe_fail("DM_DEV_REMOVE %s: %s", dm->name, strerror(errno));
    if (ioctl(dm->ctl, DM_DEV_STATUS, dm_req(dm, 0)) == 0 || errno != ENXIO)
        return probe_fail("%s still exists after DM_DEV_REMOVE", dm->name);
    return 0;
}

/* O_DIRECT block I/O on the device RDEV through a node made in DIR. */
static int dev_io(const char *dir, dev_t rdev, int write_it, void *buf, off_t off)
{
    char node[96];
    snprintf(node, sizeof node, "%s/dev", dir);
    unlink(node);
    if (mknod(node, S_IFBLK | 0600, rdev) != 0)
        return probe_fail_errno("mknod the mapping's node");
    int fd = open(node, O_RDWR | O_DIRECT | O_CLOEXEC);
    unlink(node);
    if (fd < 0)
        return probe_fail_errno("open the mapping");
    ssize_t n = write_it ? pwrite(fd, buf, BLK, off) : pread(fd, buf, BLK, off);
    int e = errno, rc = n == BLK && (!write_it || fsync(fd) == 0) ? 0 : -1;
    close(fd);
    if (rc != 0)
        return probe_fail("%s the mapping: %s", write_it ? "write" : "read", n < 0 ? strerror(e) : "short");
    return 0;
}

static int file_block(const char *path, void *buf, off_t off)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n = fd < 0 ? -1 : pread(fd, buf, BLK, off);
    if (fd >= 0)
        close(fd);
    return n == BLK ? 0 : probe_fail_errno("read the backing file");
}

struct blkprobe {
    char dir[64], file[96];
    int mounted;
    struct loopdev lo;
    struct dm dm;
    char *plain, *back;
    unsigned char cipher_head[4]; /* first bytes of the ciphertext, for the evidence */
};

static void fill_plain(char *p)
{
    for (int i = 0; i < BLK; i += 32)
        snprintf(p + i, 33, "vz-linux dm probe block %07d\n", i / 32);
}

/* Private mounts, a scratch tmpfs, a 4 MiB backing file on a loop device, DM control, aligned buffers. */
static int blk_setup(struct blkprobe *b, const char *what)
{
    int rc;
    memset(b, 0, sizeof *b);
    b->lo.fd = -1;
    b->dm.ctl = -1;
    if ((rc = dm_open(&b->dm, what)) != 0 || (rc = private_mounts()) != 0 ||
        (rc = scratch_dir(b->dir, sizeof b->dir)) != 0)
        return rc;
    /* Our own tmpfs: the guest's /tmp is nodev, and the mapping's node is made here. */
    if (mount("tmpfs", b->dir, "tmpfs", MS_NOSUID, "size=8m,mode=0700") != 0)
        return probe_fail_errno("mount a scratch tmpfs");
    b->mounted = 1;
    snprintf(b->file, sizeof b->file, "%s/backing", b->dir);
    if ((rc = make_file(b->file, 4 << 20)) != 0 || (rc = loop_attach(b->file, &b->lo)) != 0)
        return rc;
    if (posix_memalign((void **)&b->plain, BLK, BLK) != 0 || posix_memalign((void **)&b->back, BLK, BLK) != 0)
        return probe_fail("out of memory");
    fill_plain(b->plain);
    return 0;
}

static void blk_teardown(struct blkprobe *b)
{
    if (b->lo.fd >= 0)
        close(b->lo.fd);
    if (b->dm.ctl >= 0)
        close(b->dm.ctl);
    if (b->dir[0]) {
        unlink(b->file);
        if (b->mounted)
            umount2(b->dir, MNT_DETACH);
        rmdir(b->dir);
    }
    free(b->plain);
    free(b->back);
}

static int linear_steps(struct blkprobe *b, dev_t *rdev)
{
    char params[64];
    int rc;
    /* 1 MiB of the mapping = the backing device's second MiB (sectors 2048..4095). */
    snprintf(params, sizeof params, "%u:%u 2048", major(b->lo.rdev), minor(b->lo.rdev));
    if ((rc = dm_create(&b->dm, "linear", 2048, params, rdev)) != 0)
        return rc;
    rc = dev_io(b->dir, *rdev, 1, b->plain, BLK);
    if (rc == 0 && (rc = file_block(b->file, b->back, (1 << 20) + BLK)) == 0 && memcmp(b->back, b->plain, BLK) != 0)
        rc = probe_fail("the block written at mapping offset 4 KiB is not at backing offset 1 MiB + 4 KiB");
    int rm = dm_remove(&b->dm);
    return rc ? rc : rm;
}

int probe_dm_linear(int argc, char **argv)
{
    struct blkprobe b;
    dev_t rdev = 0;
    int rc = blk_setup(&b, "linear");
    if (rc == 0 && (rc = linear_steps(&b, &rdev)) == 0)
        printf("device_mapper: linear %u:%u -> loop%d+1MiB: write landed at the mapped offset; removed\n",
               major(rdev), minor(rdev), b.lo.num);
    blk_teardown(&b);
    return rc;
}

static int crypt_steps(struct blkprobe *b, dev_t *rdev)
{
    unsigned char key[64];
    char params[256], hex[129];
    int rc, zero;
    if (getrandom(key, sizeof key, 0) != (ssize_t)sizeof key)
        return probe_fail_errno("getrandom");
    for (size_t i = 0; i < sizeof key; i++)
        snprintf(hex + 2 * i, 3, "%02x", key[i]);
    snprintf(params, sizeof params, "aes-xts-plain64 %s 0 %u:%u 0", hex, major(b->lo.rdev), minor(b->lo.rdev));
    if ((rc = dm_create(&b->dm, "crypt", 8192, params, rdev)) != 0)
        return rc;
    rc = dev_io(b->dir, *rdev, 1, b->plain, 0);
    int rm = dm_remove(&b->dm);
    if (rc || (rc = rm) || (rc = file_block(b->file, b->back, 0)))
        return rc;
    zero = all_zero(b->back, BLK);
    if (zero || memcmp(b->back, b->plain, BLK) == 0 || memmem(b->back, BLK, "vz-linux dm probe", 17))
        return probe_fail("the backing file holds %s, not ciphertext", zero ? "zeros" : "the plaintext");
    memcpy(b->cipher_head, b->back, sizeof b->cipher_head);
    /* A fresh mapping with the same key: the plaintext comes back from the ciphertext alone. */
    if ((rc = dm_create(&b->dm, "crypt", 8192, params, rdev)) != 0)
        return rc;
    memset(b->back, 0, BLK);
    rc = dev_io(b->dir, *rdev, 0, b->back, 0);
    rm = dm_remove(&b->dm);
    if (rc == 0 && memcmp(b->back, b->plain, BLK) != 0)
        rc = probe_fail("a fresh crypt mapping with the same key does not read the plaintext back");
    memset(params, 0, sizeof params);
    return rc ? rc : rm;
}

int probe_dm_crypt(int argc, char **argv)
{
    struct blkprobe b;
    dev_t rdev = 0;
    int rc = blk_setup(&b, "crypt");
    if (rc == 0 && (rc = crypt_steps(&b, &rdev)) == 0)
        printf("dm_crypt: aes-xts-plain64, random 512-bit key on loop%d: backing holds ciphertext "
               "(%02x%02x%02x%02x...), remapped reads plaintext\n", b.lo.num, b.cipher_head[0], b.cipher_head[1],
               b.cipher_head[2], b.cipher_head[3]);
    blk_teardown(&b);
    return rc;
}
