/* Connection-rate client and reply server for benchmarks/e2e.py (compiled there with cc).
 *
 *   connrate client HOST PORT SECONDS [SOCKS_HOST SOCKS_PORT]
 *       sequential connections: connect (through SOCKS5 when given: greeting and CONNECT in
 *       one write, so the client's handshake costs one round trip, as curl's would not), send
 *       one request byte, read to EOF, close. Prints "rate <conn/s>" and "p50_ms <median
 *       connect+request+close time>".
 *   connrate server HOST PORT
 *       accept, read the request byte, answer one byte, close (the server closes first: the
 *       client reads to EOF), one connection at a time.
 *
 * C so that the client is not the bottleneck of the figure it measures. IPv4 only. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SAMPLES 1000000

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static struct sockaddr_in addr(const char *host, const char *port) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)atoi(port));
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        fprintf(stderr, "bad address %s\n", host);
        exit(2);
    }
    return a;
}

static int read_n(int fd, unsigned char *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int one(struct sockaddr_in *to, struct sockaddr_in *socks) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    unsigned char buf[64];
    if (fd < 0) return -1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)(socks ? socks : to), sizeof *to) != 0) goto fail;
    if (socks) {
        unsigned char req[3 + 10] = {5, 1, 0, 5, 1, 0, 1};
        memcpy(req + 7, &to->sin_addr, 4);
        memcpy(req + 11, &to->sin_port, 2);
        if (write(fd, req, sizeof req) != (ssize_t)sizeof req) goto fail;
        if (read_n(fd, buf, 2 + 10) != 0 || buf[1] != 0 || buf[3] != 0) goto fail;
    }
    if (write(fd, "x", 1) != 1) goto fail;
    for (;;) { /* to EOF */
        ssize_t r = read(fd, buf, sizeof buf);
        if (r == 0) break;
        if (r < 0) goto fail;
    }
    close(fd);
    return 0;
fail:
    close(fd);
    return -1;
}

static int client(int argc, char **argv) {
    struct sockaddr_in to = addr(argv[2], argv[3]), socks;
    double seconds = atof(argv[4]);
    int via = argc >= 7;
    if (via) socks = addr(argv[5], argv[6]);
    double *samples = malloc(sizeof(double) * MAX_SAMPLES);
    long n = 0, failed = 0;
    double t0 = now(), end = t0 + seconds;
    while (n < MAX_SAMPLES) {
        double a = now();
        if (a >= end) break;
        if (one(&to, via ? &socks : NULL) != 0) {
            if (++failed > 100) { fprintf(stderr, "too many failed connections\n"); return 1; }
            continue;
        }
        samples[n++] = now() - a;
    }
    double took = now() - t0;
    if (n == 0) { fprintf(stderr, "no connection completed\n"); return 1; }
    qsort(samples, (size_t)n, sizeof(double), cmp);
    printf("count %ld\nfailed %ld\np50_ms %.4f\nrate %.1f\n", n, failed, samples[n / 2] * 1e3,
           n / took);
    return 0;
}

static int server(char **argv) {
    struct sockaddr_in a = addr(argv[2], argv[3]);
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) != 0 || listen(ls, 1024) != 0) {
        perror("bind/listen");
        return 1;
    }
    for (;;) {
        int fd = accept(ls, NULL, NULL);
        unsigned char c;
        if (fd < 0) continue;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (read(fd, &c, 1) == 1) (void)!write(fd, "y", 1);
        close(fd);
    }
}

int main(int argc, char **argv) {
    if (argc >= 5 && strcmp(argv[1], "client") == 0) return client(argc, argv);
    if (argc == 4 && strcmp(argv[1], "server") == 0) return server(argv);
    fprintf(stderr, "usage: connrate client HOST PORT SECONDS [SOCKS_HOST SOCKS_PORT]\n"
                    "       connrate server HOST PORT\n");
    return 2;
}
