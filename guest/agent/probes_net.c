/* Network probes: netns (a veth pair across two new network namespaces, made over rtnetlink, and a
 * ping through it), nfsd (the kernel NFS server, v4 only, on 127.0.0.1:2049 in a new network
 * namespace) and vsock (listen on AF_VSOCK and, with the loopback transport, connect to it).
 * Everything happens in namespaces of the probe's own, which vanish when it exits. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/ip_icmp.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/if_link.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <linux/vm_sockets.h>

#include "probes.h"

#define VETH_A "vz-veth0"
#define VETH_B "vz-veth1"
#define ADDR_A "10.200.0.1"
#define ADDR_B "10.200.0.2"

/* ---- rtnetlink: RTM_NEWLINK for a veth pair whose peer goes to another namespace ---- */

struct nlreq {
    struct nlmsghdr n;
    struct ifinfomsg i;
    char buf[512];
};

static struct rtattr *nl_add(struct nlmsghdr *n, unsigned short type, const void *data, size_t len)
{
    struct rtattr *a = (struct rtattr *)((char *)n + NLMSG_ALIGN(n->nlmsg_len));
    a->rta_type = type;
    a->rta_len = (unsigned short)RTA_LENGTH(len);
    if (len)
        memcpy(RTA_DATA(a), data, len);
    n->nlmsg_len = NLMSG_ALIGN(n->nlmsg_len) + RTA_ALIGN(a->rta_len);
    return a;
}

static void nl_end(struct nlmsghdr *n, struct rtattr *nest)
{
    nest->rta_len = (unsigned short)((char *)n + n->nlmsg_len - (char *)nest);
}

static int veth_create(pid_t peer_pid)
{
    struct nlreq req;
    uint32_t pid = (uint32_t)peer_pid;
    char ack[1024];
    memset(&req, 0, sizeof req);
    req.n.nlmsg_len = NLMSG_LENGTH(sizeof req.i);
    req.n.nlmsg_type = RTM_NEWLINK;
    req.n.nlmsg_flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK;
    req.n.nlmsg_seq = 1;
    nl_add(&req.n, IFLA_IFNAME, VETH_A, sizeof VETH_A);
    struct rtattr *info = nl_add(&req.n, IFLA_LINKINFO, NULL, 0);
    nl_add(&req.n, IFLA_INFO_KIND, "veth", 4);
    struct rtattr *data = nl_add(&req.n, IFLA_INFO_DATA, NULL, 0);
    struct rtattr *peer = nl_add(&req.n, VETH_INFO_PEER, NULL, 0);
    req.n.nlmsg_len += sizeof(struct ifinfomsg); /* the peer's (empty) ifinfomsg */
    nl_add(&req.n, IFLA_IFNAME, VETH_B, sizeof VETH_B);
    nl_add(&req.n, IFLA_NET_NS_PID, &pid, sizeof pid);
    nl_end(&req.n, peer);
    nl_end(&req.n, data);
    nl_end(&req.n, info);
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0)
        return probe_fail_errno("socket(AF_NETLINK)");
    ssize_t n = send(fd, &req, req.n.nlmsg_len, 0) < 0 ? -1 : recv(fd, ack, sizeof ack, 0);
    int e = errno;
    close(fd);
    if (n < (ssize_t)NLMSG_LENGTH(sizeof(struct nlmsgerr)))
        return probe_fail("rtnetlink RTM_NEWLINK veth: %s", n < 0 ? strerror(e) : "short answer");
    struct nlmsghdr *h = (struct nlmsghdr *)ack;
    int err = h->nlmsg_type == NLMSG_ERROR ? ((struct nlmsgerr *)NLMSG_DATA(h))->error : 0;
    if (err != 0)
        return probe_fail("rtnetlink RTM_NEWLINK veth: %s", strerror(-err));
    return 0;
}

/* Address ADDR/24 on IFNAME and link up, through the classic ioctls. */
static int if_up(const char *ifname, const char *addr)
{
    struct ifreq ifr;
    struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), rc = 0;
    if (fd < 0)
        return probe_fail_errno("socket(AF_INET)");
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", ifname);
    if (addr) {
        sin->sin_family = AF_INET;
        inet_pton(AF_INET, addr, &sin->sin_addr);
        if (ioctl(fd, SIOCSIFADDR, &ifr) != 0)
            rc = probe_fail("set %s address %s: %s", ifname, addr, strerror(errno));
        inet_pton(AF_INET, "255.255.255.0", &sin->sin_addr);
        if (!rc && ioctl(fd, SIOCSIFNETMASK, &ifr) != 0)
            rc = probe_fail("set %s netmask: %s", ifname, strerror(errno));
    }
    if (!rc && ioctl(fd, SIOCGIFFLAGS, &ifr) == 0) {
        ifr.ifr_flags |= IFF_UP;
        if (ioctl(fd, SIOCSIFFLAGS, &ifr) != 0)
            rc = probe_fail("set %s up: %s", ifname, strerror(errno));
    } else if (!rc) {
        rc = probe_fail("%s: %s", ifname, strerror(errno));
    }
    close(fd);
    return rc;
}

static uint16_t icmp_sum(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint32_t s = 0;
    for (size_t i = 0; i + 1 < n; i += 2)
        s += (uint32_t)(b[i] << 8 | b[i + 1]);
    if (n & 1)
        s += (uint32_t)b[n - 1] << 8;
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    return htons((uint16_t)~s);
}

static double mono_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

/* One echo request to ADDR_B per second, up to 5, until a matching reply arrives. */
static int ping_peer(double *rtt_ms, int *tries)
{
    struct sockaddr_in to = {.sin_family = AF_INET};
    uint8_t pkt[64], in[256];
    uint16_t id = (uint16_t)getpid();
    int fd = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMP);
    if (fd < 0)
        return probe_fail_errno("socket(SOCK_RAW, ICMP)");
    inet_pton(AF_INET, ADDR_B, &to.sin_addr);
    for (int seq = 1; seq <= 5; seq++) {
        struct icmphdr *h = (struct icmphdr *)pkt;
        memset(pkt, 0, sizeof pkt);
        h->type = ICMP_ECHO;
        h->un.echo.id = htons(id);
        h->un.echo.sequence = htons((uint16_t)seq);
        h->checksum = icmp_sum(pkt, sizeof pkt);
        double sent = mono_ms();
        if (sendto(fd, pkt, sizeof pkt, 0, (struct sockaddr *)&to, sizeof to) < 0)
            return close(fd), probe_fail_errno("send ICMP echo");
        for (struct pollfd p = {.fd = fd, .events = POLLIN}; poll(&p, 1, 1000) == 1;) {
            struct sockaddr_in from;
            socklen_t fl = sizeof from;
            ssize_t n = recvfrom(fd, in, sizeof in, 0, (struct sockaddr *)&from, &fl);
            struct iphdr *ip = (struct iphdr *)in;
            if (n < (ssize_t)sizeof *ip || n < (ssize_t)(ip->ihl * 4 + sizeof(struct icmphdr)))
                continue;
            struct icmphdr *r = (struct icmphdr *)(in + ip->ihl * 4);
            if (r->type == ICMP_ECHOREPLY && ntohs(r->un.echo.id) == id && from.sin_addr.s_addr == to.sin_addr.s_addr) {
                *rtt_ms = mono_ms() - sent;
                *tries = seq;
                close(fd);
                return 0;
            }
        }
    }
    close(fd);
    return probe_fail("no ICMP echo reply from " ADDR_B " through the veth pair after 5 tries");
}

/* Child: enter namespace B, say so, wait for the peer to arrive, configure it, say so, stay alive. */
static int netns_child(int to_parent, int from_parent)
{
    char c;
    if (unshare(CLONE_NEWNET) != 0)
        return 1;
    if (write(to_parent, "r", 1) != 1 || read(from_parent, &c, 1) != 1)
        return 1;
    if (if_up("lo", NULL) != 0 || if_up(VETH_B, ADDR_B) != 0)
        return 1;
    if (write(to_parent, "r", 1) != 1)
        return 1;
    while (read(from_parent, &c, 1) > 0) /* until the parent is done */
        ;
    return 0;
}

int probe_netns(int argc, char **argv)
{
    int up[2], down[2], status, rc, tries = 0;
    double rtt = 0;
    char c;
    if (unshare(CLONE_NEWNET) != 0)
        return probe_fail_errno("unshare(CLONE_NEWNET)");
    if (pipe2(up, O_CLOEXEC) != 0 || pipe2(down, O_CLOEXEC) != 0)
        return probe_fail_errno("pipe");
    pid_t pid = fork();
    if (pid < 0)
        return probe_fail_errno("fork");
    if (pid == 0) {
        close(up[0]);
        close(down[1]);
        _exit(netns_child(up[1], down[0]));
    }
    close(up[1]);
    close(down[0]);
    if (read(up[0], &c, 1) != 1)
        rc = probe_fail("the child could not enter a new network namespace");
    else if ((rc = veth_create(pid)) == 0 && (rc = if_up(VETH_A, ADDR_A)) == 0) {
        if (write(down[1], "g", 1) != 1 || read(up[0], &c, 1) != 1)
            rc = probe_fail("the child could not configure " VETH_B " in its namespace");
        else
            rc = ping_peer(&rtt, &tries);
    }
    close(down[1]);
    waitpid(pid, &status, 0);
    if (rc == 0)
        printf("netns: veth " VETH_A " (" ADDR_A ") <-> " VETH_B " (" ADDR_B ", other netns): ping reply in %.1f ms"
               " (try %d)\n", rtt, tries);
    return rc;
}

/* ---- nfsd: v4 only on 127.0.0.1:2049, seen in LISTEN state in /proc/net/tcp ---- */

static int tcp_listening(uint32_t addr_be, unsigned port)
{
    char line[256], want[32];
    FILE *f = fopen("/proc/self/net/tcp", "re");
    int found = 0;
    if (!f)
        return 0;
    snprintf(want, sizeof want, "%08X:%04X", addr_be, port);
    while (!found && fgets(line, sizeof line, f)) {
        char local[64], state[8];
        if (nth_field(line, 1, local, sizeof local) == 0 && nth_field(line, 3, state, sizeof state) == 0 &&
            strcmp(local, want) == 0 && strcmp(state, "0A") == 0)
            found = 1;
    }
    fclose(f);
    return found;
}

static int nfsd_write(const char *dir, const char *file, const char *text)
{
    char p[300];
    snprintf(p, sizeof p, "%s/%s", dir, file);
    return write_file_str(p, text);
}

static int nfsd_start(const char *d, char *versions, size_t vlen)
{
    char p[300];
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(2049)};
    char fdnum[16];
    /* Each write is one newline-terminated line. v2/v3 may be compiled out (then "-2" is an error):
     * only "+4" must be accepted. */
    nfsd_write(d, "versions", "-2\n");
    nfsd_write(d, "versions", "-3\n");
    if (nfsd_write(d, "versions", "+4\n") != 0)
        return probe_fail("nfsd versions +4: %s", strerror(errno));
    snprintf(p, sizeof p, "%s/versions", d);
    if (read_file_str(p, versions, vlen) < 0)
        return probe_fail_errno("read nfsd versions");
    versions[strcspn(versions, "\n")] = 0;
    if (strstr(versions, "+3") || strstr(versions, "+2") || !strstr(versions, "+4"))
        return probe_fail("nfsd versions are '%s', not v4 only", versions);
    /* Like rpc.nfsd: hand the kernel a listening socket bound where we want it. */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (s < 0 || bind(s, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(s, 64) != 0)
        return probe_fail_errno("bind 127.0.0.1:2049");
    snprintf(fdnum, sizeof fdnum, "%d\n", s);
    int rc = nfsd_write(d, "portlist", fdnum);
    int e = errno;
    close(s);
    if (rc != 0)
        return probe_fail("nfsd portlist: %s", strerror(e));
    if (nfsd_write(d, "threads", "1\n") != 0)
        return probe_fail("start nfsd threads: %s", strerror(errno));
    return 0;
}

int probe_nfsd(int argc, char **argv)
{
    char d[64], versions[128], threads[32] = "?";
    int rc;
    if (unshare(CLONE_NEWNET) != 0)
        return probe_fail_errno("unshare(CLONE_NEWNET)");
    if ((rc = private_mounts()) != 0 || (rc = if_up("lo", NULL)) != 0 || (rc = scratch_dir(d, sizeof d)) != 0)
        return rc;
    if (mount("nfsd", d, "nfsd", 0, NULL) != 0) {
        rc = probe_fail_errno("mount -t nfsd");
    } else {
        if ((rc = nfsd_start(d, versions, sizeof versions)) == 0) {
            char p[300];
            snprintf(p, sizeof p, "%s/threads", d);
            read_file_str(p, threads, sizeof threads);
            threads[strcspn(threads, "\n")] = 0;
            if (!tcp_listening(htonl(INADDR_LOOPBACK), 2049))
                rc = probe_fail("nfsd started (%s threads) but nothing listens on 127.0.0.1:2049", threads);
            nfsd_write(d, "threads", "0\n");
        }
        umount2(d, MNT_DETACH);
    }
    rmdir(d);
    if (rc == 0)
        printf("nfsd: versions '%s', %s thread(s), LISTEN on 127.0.0.1:2049 in /proc/net/tcp\n", versions, threads);
    return rc;
}

/* ---- vsock: bind and listen; connect over the loopback transport when there is one ---- */

int probe_vsock(int argc, char **argv)
{
    struct sockaddr_vm sa = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = VMADDR_PORT_ANY};
    socklen_t sl = sizeof sa;
    unsigned cid = VMADDR_CID_ANY;
    char loop[96] = "", got[4] = {0};
    int dev = open("/dev/vsock", O_RDONLY | O_CLOEXEC);
    if (dev >= 0) {
        ioctl(dev, IOCTL_VM_SOCKETS_GET_LOCAL_CID, &cid);
        close(dev);
    }
    int l = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l < 0)
        return probe_fail_errno("socket(AF_VSOCK)");
    if (bind(l, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(l, 1) != 0 ||
        getsockname(l, (struct sockaddr *)&sa, &sl) != 0)
        return close(l), probe_fail_errno("bind/listen AF_VSOCK");
    struct sockaddr_vm to = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_LOCAL, .svm_port = sa.svm_port};
    int c = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0), a = -1;
    if (c >= 0 && connect(c, (struct sockaddr *)&to, sizeof to) == 0 && (a = accept(l, NULL, NULL)) >= 0 &&
        write(c, "vz", 2) == 2 && read(a, got, 2) == 2 && strcmp(got, "vz") == 0)
        snprintf(loop, sizeof loop, ", loopback connect to CID 1 carried data");
    else
        snprintf(loop, sizeof loop, ", no loopback transport (%s)", strerror(errno));
    if (a >= 0)
        close(a);
    if (c >= 0)
        close(c);
    close(l);
    printf("vsock: listening on port %u (local CID %u)%s\n", sa.svm_port, cid, loop);
    return 0;
}
