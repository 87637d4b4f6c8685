/* The sandbox test suite's workload: one static program, one attempt per subcommand.
 * Prints "refused: <what> <errno name>" and exits 0 when every attempt of the subcommand is
 * refused; prints "ESCAPED: <what>" and exits 1 when one succeeds; exits 2 on misuse.
 * Benchmark subcommands print "ns_per_op <n>". Built by the tests with `gcc -static`. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/perf_event.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <arpa/inet.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>

static const char *ename(int e) {
    switch (e) {
    case EPERM: return "EPERM";
    case EACCES: return "EACCES";
    case ENOENT: return "ENOENT";
    case EROFS: return "EROFS";
    case ESRCH: return "ESRCH";
    case EAGAIN: return "EAGAIN";
    case ENOSYS: return "ENOSYS";
    case EBADF: return "EBADF";
    case EINVAL: return "EINVAL";
    case ELOOP: return "ELOOP";
    case ENETUNREACH: return "ENETUNREACH";
    case ENXIO: return "ENXIO";
    case EIO: return "EIO";
    case ENOTTY: return "ENOTTY";
    case ECONNREFUSED: return "ECONNREFUSED";
    case ENOMEM: return "ENOMEM";
    case EINPROGRESS: return "EINPROGRESS";
    case EAFNOSUPPORT: return "EAFNOSUPPORT";
    case EPROTONOSUPPORT: return "EPROTONOSUPPORT";
    default: return strerror(e);
    }
}

static int escaped = 0;

/* For the egress race: a second thread rewriting the connect address (or the descriptor)
   while the main thread connects. */
static volatile int race_stop = 0;
static volatile struct sockaddr_in race_addr;
static unsigned short race_good, race_bad;
static int race_fd = -1, race_unix = -1, race_tcp = -1;

static void spin_us(uint64_t us);

static void *flip_port(void *arg) {
    (void)arg;
    /* Windows of 2 to 64 us each way: about as long as a supervisor's answer takes, so a
       check-then-continue design would often see one port and the kernel the other. */
    for (unsigned i = 0; !race_stop; i++) {
        uint64_t us = 2u << (i % 6);
        race_addr.sin_port = race_good;
        spin_us(us);
        race_addr.sin_port = race_bad;
        spin_us(us);
    }
    return NULL;
}

static void *flip_fd(void *arg) {
    (void)arg;
    for (unsigned i = 0; !race_stop; i++) {
        uint64_t us = 2u << (i % 6);
        dup2(race_unix, race_fd);
        spin_us(us);
        dup2(race_tcp, race_fd);
        spin_us(us);
    }
    return NULL;
}

static int tcp_to(const char *ip, int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    inet_pton(AF_INET, ip, &a.sin_addr);
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) {
        int e = errno;
        close(s);
        errno = e;
        return -1;
    }
    return s;
}

/* rc < 0 means refused with errno; otherwise the attempt worked. */
static void expect_refused(const char *what, long rc) {
    if (rc < 0) {
        printf("refused: %s %s\n", what, ename(errno));
    } else {
        printf("ESCAPED: %s (rc=%ld)\n", what, rc);
        escaped = 1;
    }
}

static void *exec_from_thread(void *arg) {
    (void)arg;
    char *const argv[] = {"probe", "hello", NULL};
    char *const envp[] = {NULL};
    execve("/bin/probe", argv, envp);
    printf("thread exec failed: %s\n", strerror(errno));
    exit(3);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void spin_us(uint64_t us) {
    uint64_t end = now_ns() + us * 1000;
    while (now_ns() < end) {}
}

static int copy_self(const char *dst, int extra_byte) {
    int in = open("/proc/self/exe", O_RDONLY);
    if (in < 0) in = open("/bin/probe", O_RDONLY);
    int out = open(dst, O_CREAT | O_WRONLY | O_TRUNC, 0755);
    if (in < 0 || out < 0) return -1;
    char buf[65536];
    ssize_t n;
    while ((n = read(in, buf, sizeof buf)) > 0) {
        if (write(out, buf, (size_t)n) != n) return -1;
    }
    if (extra_byte) {
        if (write(out, "\n", 1) != 1) return -1;
    }
    close(in);
    return out;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc < 2) {
        fprintf(stderr, "usage: probe <test> [args]\n");
        return 2;
    }
    const char *t = argv[1];
    char *const child_argv[] = {"probe", "hello", NULL};
    char *const envp[] = {NULL};

    if (!strcmp(t, "hello")) {
        printf("hello from pid %d\n", getpid());
        return 0;
    } else if (!strcmp(t, "write-outside")) {
        expect_refused("create /escape", open("/escape", O_CREAT | O_WRONLY, 0644));
        expect_refused("create /../../escape", open("/../../escape", O_CREAT | O_WRONLY, 0644));
        expect_refused("write /bin/probe", open("/bin/probe", O_WRONLY));
        expect_refused("mkdir /newdir", mkdir("/newdir", 0755));
        expect_refused("write /proc/sys/kernel/hostname",
                       open("/proc/sys/kernel/hostname", O_WRONLY));
        expect_refused("write /proc/sysrq-trigger", open("/proc/sysrq-trigger", O_WRONLY));
        expect_refused("create via /proc/1/root", open("/proc/1/root/../escape", O_CREAT | O_WRONLY, 0644));
        int fd = open("/tmp/inside", O_CREAT | O_WRONLY, 0644);
        printf("tmp writable: %s\n", fd >= 0 ? "yes" : "no");
    } else if (!strcmp(t, "read-shadow")) {
        expect_refused("open /etc/shadow", open("/etc/shadow", O_RDONLY));
        expect_refused("open /../../etc/shadow", open("/../../etc/shadow", O_RDONLY));
        expect_refused("open /proc/1/root/etc/shadow", open("/proc/1/root/etc/shadow", O_RDONLY));
        expect_refused("open /proc/1/cwd/../etc/shadow", open("/proc/1/cwd/../etc/shadow", O_RDONLY));
    } else if (!strcmp(t, "ptrace")) {
        pid_t host = argc > 2 ? atoi(argv[2]) : 1;
        expect_refused("ptrace attach host pid", ptrace(PTRACE_ATTACH, host, 0, 0));
        expect_refused("ptrace seize host pid", ptrace(PTRACE_SEIZE, host, 0, 0));
        expect_refused("kill host pid", kill(host, SIGTERM));
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/mem", host);
        expect_refused("open host /proc/pid/mem", open(path, O_RDONLY));
    } else if (!strcmp(t, "mount")) {
        expect_refused("mount tmpfs", mount("tmpfs", "/tmp", "tmpfs", 0, NULL));
        expect_refused("mount proc", mount("proc", "/tmp", "proc", 0, NULL));
        expect_refused("remount / rw", mount(NULL, "/", NULL, MS_REMOUNT, NULL));
        expect_refused("umount /proc", umount2("/proc", MNT_DETACH));
    } else if (!strcmp(t, "module")) {
        expect_refused("init_module", syscall(SYS_init_module, NULL, 0, ""));
        int fd = open("/bin/probe", O_RDONLY);
        expect_refused("finit_module", syscall(SYS_finit_module, fd, "", 0));
        expect_refused("delete_module", syscall(SYS_delete_module, "ext4", 0));
    } else if (!strcmp(t, "raw-socket")) {
        expect_refused("socket AF_INET SOCK_RAW", socket(AF_INET, SOCK_RAW, IPPROTO_ICMP));
        expect_refused("socket AF_PACKET", socket(17 /* AF_PACKET */, SOCK_RAW, 0));
        expect_refused("socket AF_VSOCK", socket(40 /* AF_VSOCK */, SOCK_STREAM, 0));
        /* Outliving the sandbox: pid 1 may not drop the signal that ends it with its init. */
        expect_refused("prctl(PR_SET_PDEATHSIG, 0)", prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0));
    } else if (!strcmp(t, "leaked-fd")) {
        for (int fd = 3; fd < 1024; fd++) {
            if (fcntl(fd, F_GETFD) >= 0) {
                char link[64], target[256] = {0};
                snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
                readlink(link, target, sizeof target - 1);
                printf("ESCAPED: fd %d is open (%s)\n", fd, target);
                escaped = 1;
            }
        }
        char cwd[256] = {0};
        if (getcwd(cwd, sizeof cwd) == NULL || strcmp(cwd, "/") != 0) {
            printf("ESCAPED: cwd outside the root (%s)\n", cwd);
            escaped = 1;
        }
        expect_refused("open /proc/self/fd/7/etc/shadow", open("/proc/self/fd/7/etc/shadow", O_RDONLY));
        expect_refused("open /proc/1/fd/7", open("/proc/1/fd/7", O_RDONLY));
        if (!escaped) printf("refused: no inherited descriptor above 2\n");
    } else if (!strcmp(t, "exec-written")) {
        int fd = copy_self("/tmp/dropped", 1);
        if (fd < 0) { printf("setup failed: %s\n", ename(errno)); return 2; }
        close(fd);
        expect_refused("execve /tmp/dropped", execve("/tmp/dropped", child_argv, envp));
    } else if (!strcmp(t, "memfd-exec")) {
        int fd = (int)syscall(SYS_memfd_create, "payload", 0);
        if (fd < 0) {
            expect_refused("memfd_create", fd);
        } else {
            int in = open("/proc/self/exe", O_RDONLY);
            char buf[65536];
            ssize_t n;
            while (in >= 0 && (n = read(in, buf, sizeof buf)) > 0) write(fd, buf, (size_t)n);
            write(fd, "\n", 1);
            expect_refused("execveat memfd AT_EMPTY_PATH",
                           syscall(SYS_execveat, fd, "", child_argv, envp, AT_EMPTY_PATH));
            char path[64];
            snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
            expect_refused("execve /proc/self/fd/N of memfd", execve(path, child_argv, envp));
        }
        /* The same through a descriptor of a file written at run time. */
        int copy = copy_self("/tmp/fdcopy", 1);
        if (copy >= 0) {
            close(copy);
            int rd = open("/tmp/fdcopy", O_RDONLY);
            expect_refused("execveat fd of /tmp/fdcopy AT_EMPTY_PATH",
                           syscall(SYS_execveat, rd, "", child_argv, envp, AT_EMPTY_PATH));
            char path[64];
            snprintf(path, sizeof path, "/proc/self/fd/%d", rd);
            expect_refused("execve /proc/self/fd/N of /tmp/fdcopy", execve(path, child_argv, envp));
        }
    } else if (!strcmp(t, "int80")) {
        long ret;
        /* getpid through the ia32 entry point: the filter must kill us before it runs. */
        __asm__ volatile("int $0x80" : "=a"(ret) : "a"(20) : "memory");
        printf("ESCAPED: ia32 syscall returned %ld\n", ret);
        return 1;
    } else if (!strcmp(t, "fork-bomb")) {
        int n = 0;
        for (;;) {
            pid_t p = fork();
            if (p == 0) { pause(); _exit(0); }
            if (p < 0) {
                printf("refused: fork %s after %d children\n", ename(errno), n);
                break;
            }
            if (++n >= 100000) { printf("ESCAPED: %d children\n", n); escaped = 1; break; }
        }
        kill(-1, SIGKILL);
        while (wait(NULL) > 0) {}
    } else if (!strcmp(t, "mem-bomb")) {
        size_t total = 0;
        for (;;) {
            char *p = malloc(1 << 20);
            if (!p) { printf("refused: malloc ENOMEM after %zu MiB\n", total >> 20); return 0; }
            memset(p, 1, 1 << 20);
            total += 1 << 20;
            if (total >= (size_t)4 << 30) { printf("ESCAPED: %zu MiB\n", total >> 20); return 1; }
        }
    } else if (!strcmp(t, "connect")) {
        /* probe connect IP PORT: one TCP connection, one line sent. */
        if (argc < 4) return 2;
        int s = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {0};
        a.sin_family = AF_INET;
        a.sin_port = htons((unsigned short)atoi(argv[3]));
        inet_pton(AF_INET, argv[2], &a.sin_addr);
        if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) {
            printf("connect failed: %s\n", ename(errno));
            return 3;
        }
        const char *msg = "hello from the sandbox\n";
        write(s, msg, strlen(msg));
        printf("connected\n");
    } else if (!strcmp(t, "egress")) {
        /* probe egress IP GOOD BAD: under an allow-list naming IP:GOOD only, every way of
           reaching IP:BAD. Prints one line per attempt. */
        if (argc < 5) return 2;
        const char *ip = argv[2];
        int good = atoi(argv[3]), bad = atoi(argv[4]);
        int s = tcp_to(ip, good);
        if (s < 0) { printf("allowed port failed: %s\n", ename(errno)); return 3; }
        write(s, "good\n", 5);
        close(s);
        printf("allowed port: connected\n");
        expect_refused("connect to the other port", tcp_to(ip, bad));
        /* The IPv4-mapped IPv6 spelling of the refused address. */
        {
            int s6 = socket(AF_INET6, SOCK_STREAM, 0);
            struct sockaddr_in6 a6 = {0};
            a6.sin6_family = AF_INET6;
            a6.sin6_port = htons((unsigned short)bad);
            char mapped[64];
            snprintf(mapped, sizeof mapped, "::ffff:%s", ip);
            inet_pton(AF_INET6, mapped, &a6.sin6_addr);
            expect_refused("connect to the other port as ::ffff:IP",
                           connect(s6, (struct sockaddr *)&a6, sizeof a6));
            close(s6);
        }
        /* Non-blocking: refused at once, not EINPROGRESS. */
        {
            int nb = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            struct sockaddr_in a = {0};
            a.sin_family = AF_INET;
            a.sin_port = htons((unsigned short)bad);
            inet_pton(AF_INET, ip, &a.sin_addr);
            expect_refused("non-blocking connect to the other port",
                           connect(nb, (struct sockaddr *)&a, sizeof a));
            close(nb);
        }
        /* Datagrams and other stream protocols carry their own addresses. */
        expect_refused("udp socket", socket(AF_INET, SOCK_DGRAM, 0));
        expect_refused("udp6 socket", socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0));
        expect_refused("sctp socket", socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP));
        expect_refused("mptcp socket", socket(AF_INET, SOCK_STREAM, 262));
        expect_refused("raw socket", socket(AF_INET, SOCK_RAW, IPPROTO_TCP));
        /* TCP Fast Open: a sendto that connects. */
        {
            int f = socket(AF_INET, SOCK_STREAM, 0);
            struct sockaddr_in a = {0};
            a.sin_family = AF_INET;
            a.sin_port = htons((unsigned short)bad);
            inet_pton(AF_INET, ip, &a.sin_addr);
            expect_refused("sendto MSG_FASTOPEN",
                           sendto(f, "x", 1, MSG_FASTOPEN, (struct sockaddr *)&a, sizeof a));
            struct iovec iov = {"x", 1};
            struct msghdr m = {0};
            m.msg_name = &a;
            m.msg_namelen = sizeof a;
            m.msg_iov = &iov;
            m.msg_iovlen = 1;
            expect_refused("sendmsg MSG_FASTOPEN", sendmsg(f, &m, MSG_FASTOPEN));
            close(f);
        }
        /* Socket options that would send a checked connection elsewhere. */
        {
            int o = socket(AF_INET, SOCK_STREAM, 0);
            expect_refused("setsockopt TCP_ULP smc", setsockopt(o, IPPROTO_TCP, 31, "smc", 4));
            expect_refused("setsockopt SO_BINDTODEVICE eth0",
                           setsockopt(o, SOL_SOCKET, SO_BINDTODEVICE, "eth0", 5));
            unsigned char lsrr[8] = {1, 131, 7, 4, 10, 0, 0, 1}; /* NOP, LSRR via 10.0.0.1 */
            expect_refused("setsockopt IP_OPTIONS source route",
                           setsockopt(o, IPPROTO_IP, IP_OPTIONS, lsrr, sizeof lsrr));
            int one = 1;
            if (setsockopt(o, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0) {
                printf("ESCAPED: TCP_NODELAY refused too (%s)\n", ename(errno));
                escaped = 1;
            }
            close(o);
        }
        /* A malformed address: too long for any sockaddr. */
        {
            int m = socket(AF_INET, SOCK_STREAM, 0);
            char big[512] = {0};
            ((struct sockaddr_in *)big)->sin_family = AF_INET;
            expect_refused("connect with a 512-byte address", connect(m, (struct sockaddr *)big, sizeof big));
            close(m);
        }
        /* Race 1: another thread flips the port between the good and the bad one while
           this one connects; whatever the supervisor checked is what it connects. */
        {
            race_good = htons((unsigned short)good);
            race_bad = htons((unsigned short)bad);
            race_addr.sin_family = AF_INET;
            race_addr.sin_port = race_good;
            inet_pton(AF_INET, ip, (void *)&race_addr.sin_addr);
            race_stop = 0;
            pthread_t th;
            pthread_create(&th, NULL, flip_port, NULL);
            int ok = 0, refused = 0;
            for (int i = 0; i < 300; i++) {
                int c = socket(AF_INET, SOCK_STREAM, 0);
                if (connect(c, (const struct sockaddr *)&race_addr, sizeof race_addr) == 0) {
                    struct sockaddr_in peer;
                    socklen_t pl = sizeof peer;
                    getpeername(c, (struct sockaddr *)&peer, &pl);
                    if (peer.sin_port == race_bad) { printf("ESCAPED: race reached the other port\n"); escaped = 1; }
                    write(c, "race\n", 5);
                    ok++;
                } else {
                    refused++;
                }
                close(c);
            }
            race_stop = 1;
            pthread_join(th, NULL);
            printf("port race: %d connected to the allowed port, %d refused\n", ok, refused);
        }
        /* Race 2: another thread swaps a unix socket and a TCP socket on the descriptor being
           connected, so the supervisor may see the unix one and let the call continue. */
        {
            race_unix = socket(AF_UNIX, SOCK_STREAM, 0);
            race_tcp = socket(AF_INET, SOCK_STREAM, 0);
            race_fd = socket(AF_UNIX, SOCK_STREAM, 0);
            struct sockaddr_in a = {0};
            a.sin_family = AF_INET;
            a.sin_port = race_bad;
            inet_pton(AF_INET, ip, &a.sin_addr);
            race_stop = 0;
            pthread_t th;
            pthread_create(&th, NULL, flip_fd, NULL);
            int reached = 0;
            for (int i = 0; i < 300; i++) {
                if (connect(race_fd, (struct sockaddr *)&a, sizeof a) == 0) reached++;
            }
            race_stop = 1;
            pthread_join(th, NULL);
            if (reached) { printf("ESCAPED: descriptor race connected %d times\n", reached); escaped = 1; }
            else printf("refused: descriptor race (300 tries)\n");
        }
        return escaped;
    } else if (!strcmp(t, "unix-connect")) {
        /* probe unix-connect PATH [PATH...]: for each, a connection to a unix socket (retried
           for up to 5 s while it does not exist yet), one line each; then stays running. */
        if (argc < 3) return 2;
        for (int i = 2; i < argc; i++) {
            struct sockaddr_un a = {0};
            a.sun_family = AF_UNIX;
            strncpy(a.sun_path, argv[i], sizeof a.sun_path - 1);
            int err = 0;
            for (int tries = 0; tries < 100; tries++) {
                int s = socket(AF_UNIX, SOCK_STREAM, 0);
                if (connect(s, (struct sockaddr *)&a, sizeof a) == 0) {
                    err = 0;
                    close(s);
                    break;
                }
                err = errno;
                close(s);
                if (err != ENOENT && err != ECONNREFUSED) break;
                usleep(50000);
            }
            if (err) printf("%s: connect failed: %s\n", argv[i], ename(err));
            else printf("%s: connected\n", argv[i]);
            fflush(stdout);
        }
        for (;;) pause();
    } else if (!strcmp(t, "loopback")) {
        int l = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {0};
        socklen_t len = sizeof a;
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 1) < 0 ||
            getsockname(l, (struct sockaddr *)&a, &len) < 0) {
            printf("loopback failed: %s\n", ename(errno));
            return 3;
        }
        int c = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(c, (struct sockaddr *)&a, sizeof a) < 0) {
            printf("loopback failed: %s\n", ename(errno));
            return 3;
        }
        printf("loopback works\n");
    } else if (!strcmp(t, "tiocsti")) {
        /* Push a character into the terminal's input (bubblewrap CVE-2017-5226 class). */
        char c = '#';
        printf("stdin is a tty: %s\n", isatty(0) ? "yes" : "no");
        expect_refused("TIOCSTI on stdin", ioctl(0, TIOCSTI, &c));
        int fd = open("/dev/tty", O_RDWR);
        if (fd >= 0) expect_refused("TIOCSTI on /dev/tty", ioctl(fd, TIOCSTI, &c));
        else printf("refused: open /dev/tty %s\n", ename(errno));
    } else if (!strcmp(t, "write-file")) {
        /* probe write-file PATH: create PATH with one line. */
        if (argc < 3) return 2;
        int fd = open(argv[2], O_CREAT | O_WRONLY | O_TRUNC, 0644);
        if (fd < 0 || write(fd, "written inside\n", 15) != 15) {
            printf("write failed: %s\n", ename(errno));
            return 3;
        }
        printf("written\n");
    } else if (!strcmp(t, "copy-and-exec")) {
        /* probe copy-and-exec PATH: put a copy of itself (one byte longer) at PATH, run it. */
        if (argc < 3) return 2;
        int fd = copy_self(argv[2], 1);
        if (fd < 0) { printf("setup failed: %s\n", ename(errno)); return 2; }
        close(fd);
        expect_refused("execve of a copy on the volume", execve(argv[2], child_argv, envp));
    } else if (!strcmp(t, "exec-tricks")) {
        /* Paths meant to make the exec supervisor open host files, block on a FIFO, or read
         * /proc: each must be refused promptly. */
        symlink("/etc/hostname", "/tmp/hostlink");
        expect_refused("execve /proc/self/cwd/tmp/hostlink", execve("/proc/self/cwd/tmp/hostlink", child_argv, envp));
        expect_refused("execve /proc/self/root/bin/probe", execve("/proc/self/root/bin/probe", child_argv, envp));
        expect_refused("execve /proc/kmsg", execve("/proc/kmsg", child_argv, envp));
        expect_refused("execve /fifo", execve("/fifo", child_argv, envp));
        expect_refused("execve /dev/tty", execve("/dev/tty", child_argv, envp));
    } else if (!strcmp(t, "thread-exec")) {
        /* An exec from a thread other than the main one (Go's syscall.Exec does this). */
        pthread_t th;
        pthread_create(&th, NULL, exec_from_thread, NULL);
        pthread_join(th, NULL);
        return 3;
    } else if (!strcmp(t, "sleep")) {
        /* argv[3] is a marker the test looks for in /proc to find us. */
        sleep(argc > 2 ? (unsigned)atoi(argv[2]) : 30);
    } else if (!strcmp(t, "ids")) {
        FILE *f = fopen("/proc/self/status", "r");
        char line[256];
        while (f && fgets(line, sizeof line, f)) {
            if (!strncmp(line, "Uid:", 4) || !strncmp(line, "CapEff:", 7) ||
                !strncmp(line, "CapPrm:", 7) || !strncmp(line, "NoNewPrivs:", 11) ||
                !strncmp(line, "SigIgn:", 7) || !strncmp(line, "SigBlk:", 7))
                fputs(line, stdout);
        }
    } else if (!strcmp(t, "strict-calls")) {
        expect_refused("bpf", syscall(SYS_bpf, 5 /* BPF_PROG_LOAD */, NULL, 0));
        expect_refused("keyctl", syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3, 0));
        expect_refused("userfaultfd", syscall(SYS_userfaultfd, 0));
        struct perf_event_attr a;
        memset(&a, 0, sizeof a);
        a.type = PERF_TYPE_SOFTWARE;
        a.size = sizeof a;
        a.config = PERF_COUNT_SW_CPU_CLOCK;
        expect_refused("perf_event_open", syscall(SYS_perf_event_open, &a, 0, -1, -1, 0));
        expect_refused("unshare(CLONE_NEWUSER)", unshare(CLONE_NEWUSER));
        expect_refused("clone(CLONE_NEWUSER)", syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0));
    } else if (!strcmp(t, "getppid")) {
        long n = argc > 2 ? atol(argv[2]) : 1000000;
        uint64_t t0 = now_ns();
        for (long i = 0; i < n; i++) syscall(SYS_getppid);
        printf("ns_per_op %.1f\n", (double)(now_ns() - t0) / (double)n);
    } else if (!strcmp(t, "getppid-allow-all")) {
        /* The floor for any seccomp filter on this kernel: one that allows everything. */
        struct sock_filter allow[] = {BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
        struct sock_fprog prog = {1, allow};
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog)) {
            printf("setup failed: %s\n", ename(errno));
            return 2;
        }
        long n = argc > 2 ? atol(argv[2]) : 1000000;
        uint64_t t0 = now_ns();
        for (long i = 0; i < n; i++) syscall(SYS_getppid);
        printf("ns_per_op %.1f\n", (double)(now_ns() - t0) / (double)n);
    } else if (!strcmp(t, "fsloop")) {
        long n = argc > 2 ? atol(argv[2]) : 20000;
        const char *dir = argc > 3 ? argv[3] : "/tmp";
        char path[256];
        snprintf(path, sizeof path, "%s/fsloop.%d", dir, getpid());
        struct stat st;
        uint64_t t0 = now_ns();
        for (long i = 0; i < n; i++) {
            int fd = open(path, O_CREAT | O_WRONLY, 0644);
            close(fd);
            stat(path, &st);
            unlink(path);
        }
        printf("ns_per_op %.1f\n", (double)(now_ns() - t0) / (double)n);
    } else if (!strcmp(t, "connectloop")) {
        /* Benchmark: connect to a loopback listener, accept, close; 3000 times. */
        int l = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {0};
        socklen_t len = sizeof a;
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 128) < 0 ||
            getsockname(l, (struct sockaddr *)&a, &len) < 0) return 3;
        int n = 3000;
        uint64_t t0 = now_ns();
        for (int i = 0; i < n; i++) {
            int c = socket(AF_INET, SOCK_STREAM, 0);
            if (connect(c, (struct sockaddr *)&a, sizeof a) < 0) { printf("connect failed: %s\n", ename(errno)); return 3; }
            close(accept(l, NULL, NULL));
            close(c);
        }
        printf("ns_per_op %llu\n", (unsigned long long)((now_ns() - t0) / n));
    } else if (!strcmp(t, "compute")) {
        long n = argc > 2 ? atol(argv[2]) : 200000000;
        volatile uint64_t x = 1;
        uint64_t t0 = now_ns();
        for (long i = 0; i < n; i++) x = x * 6364136223846793005ull + 1442695040888963407ull;
        printf("ns_per_op %.3f\n", (double)(now_ns() - t0) / (double)n);
    } else {
        fprintf(stderr, "unknown test %s\n", t);
        return 2;
    }
    return escaped;
}
