/*
 * ao_smoke: proves that the qemu test VM has a working TCP-AO (RFC 5925) kernel.
 * Infrastructure check only; it does not use aokd.
 *
 * For each algorithm (hmac(sha1), cmac(aes128)):
 *   good:     a listener and a client with matching MKTs (TCP_AO_ADD_KEY) connect,
 *             exchange data, and TCP_AO_INFO on both ends shows pkt_good > 0 and
 *             pkt_bad == 0;
 *   wrongkey: a client whose master key differs cannot connect, and the listener's
 *             TCP_AO_INFO counts pkt_bad > 0.
 *
 * Usage: ao_smoke [-n NETNS_PATH] [-l LISTEN_ADDR] [-c CLIENT_ADDR]
 *   Default: both ends on 127.0.0.1. With -n, the listener's socket is created in the
 *   network namespace NETNS_PATH (e.g. /var/run/netns/a) and the client's in ours.
 *
 * Output: one line per case, then a summary line; exit status 0 only if all passed:
 *   AO-SMOKE case=good alg=hmac(sha1) result=ok bytes=32768 client_good=.. client_bad=0 server_good=.. server_bad=0
 *   AO-SMOKE case=wrongkey alg=hmac(sha1) result=ok connect=timeout listener_bad=2
 *   AO-SMOKE-RESULT pass=4 fail=0
 *
 * Build: gcc -static -O2 -Wall -Wextra -I <kernel uapi include dir> ao_smoke.c
 * (the uapi headers from the kernel tree; Debian 12's linux-libc-dev 6.1 predates
 * TCP-AO).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/tcp.h> /* TCP_AO_*, struct tcp_ao_add, struct tcp_ao_info_opt */
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef TCP_AO_ADD_KEY
#error "linux/tcp.h has no TCP_AO_ADD_KEY: compile with -I <kernel>/usr/include (uapi >= 6.7)"
#endif

_Static_assert(sizeof(struct tcp_ao_add) == 288, "struct tcp_ao_add size");
_Static_assert(sizeof(struct tcp_ao_info_opt) == 48, "struct tcp_ao_info_opt size");

#define DATA_BYTES 32768
#define GOOD_TIMEOUT_MS 5000
#define BAD_TIMEOUT_MS 2000

static const char *netns_path;
static struct in_addr listen_addr, client_addr;
static int own_ns = -1, peer_ns = -1;
static int passed, failed;

static void die(const char *fmt, ...)
{
	va_list ap;
	int e = errno;

	va_start(ap, fmt);
	fprintf(stdout, "AO-SMOKE fatal: ");
	vfprintf(stdout, fmt, ap);
	fprintf(stdout, ": %s\n", strerror(e));
	va_end(ap);
	printf("AO-SMOKE-RESULT pass=%d fail=%d\n", passed, failed + 1);
	exit(1);
}

static void enter_ns(int fd)
{
	if (fd >= 0 && setns(fd, CLONE_NEWNET) != 0)
		die("setns");
}

static void add_key(int fd, const char *alg, struct in_addr peer, uint8_t sndid,
		    uint8_t rcvid, const char *key)
{
	struct tcp_ao_add ao;
	struct sockaddr_in *sin = (struct sockaddr_in *)&ao.addr;

	memset(&ao, 0, sizeof(ao));
	sin->sin_family = AF_INET;
	sin->sin_addr = peer;
	sin->sin_port = 0; /* the kernel requires port 0 */
	strncpy(ao.alg_name, alg, sizeof(ao.alg_name) - 1);
	ao.prefix = 32;
	ao.sndid = sndid;
	ao.rcvid = rcvid;
	ao.maclen = 0; /* default: 12 */
	ao.keylen = (uint8_t)strlen(key);
	memcpy(ao.key, key, ao.keylen);
	if (setsockopt(fd, IPPROTO_TCP, TCP_AO_ADD_KEY, &ao, sizeof(ao)) != 0)
		die("setsockopt(TCP_AO_ADD_KEY, %s)", alg);
}

static struct tcp_ao_info_opt ao_info(int fd)
{
	struct tcp_ao_info_opt info;
	socklen_t len = sizeof(info);

	memset(&info, 0, sizeof(info));
	if (getsockopt(fd, IPPROTO_TCP, TCP_AO_INFO, &info, &len) != 0)
		die("getsockopt(TCP_AO_INFO)");
	return info;
}

/* A listener on listen_addr (in the peer netns if any) holding an MKT for client_addr. */
static int make_listener(const char *alg, const char *key, uint16_t *port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr = listen_addr };
	socklen_t len = sizeof(sa);
	int fd;

	enter_ns(peer_ns);
	fd = socket(AF_INET, SOCK_STREAM, 0);
	if (peer_ns >= 0)
		enter_ns(own_ns);
	if (fd < 0)
		die("socket(listener)");
	add_key(fd, alg, client_addr, 1, 2, key);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
		die("bind(listener %s)", inet_ntoa(listen_addr));
	if (listen(fd, 4) != 0)
		die("listen");
	if (getsockname(fd, (struct sockaddr *)&sa, &len) != 0)
		die("getsockname");
	*port = ntohs(sa.sin_port);
	return fd;
}

/* Starts a non-blocking connect with an MKT for the listener; returns the fd. */
static int start_client(const char *alg, const char *key, uint16_t port)
{
	struct sockaddr_in src = { .sin_family = AF_INET, .sin_addr = client_addr };
	struct sockaddr_in dst = { .sin_family = AF_INET, .sin_addr = listen_addr,
				   .sin_port = htons(port) };
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	if (fd < 0)
		die("socket(client)");
	add_key(fd, alg, listen_addr, 2, 1, key);
	if (bind(fd, (struct sockaddr *)&src, sizeof(src)) != 0)
		die("bind(client %s)", inet_ntoa(client_addr));
	if (fcntl(fd, F_SETFL, O_NONBLOCK) != 0)
		die("fcntl");
	if (connect(fd, (struct sockaddr *)&dst, sizeof(dst)) != 0 && errno != EINPROGRESS)
		die("connect");
	return fd;
}

/* 0 once connected, else the errno (ETIMEDOUT if still connecting after ms). */
static int wait_connected(int fd, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLOUT };
	int err = 0;
	socklen_t len = sizeof(err);
	int n = poll(&p, 1, ms);

	if (n < 0)
		die("poll");
	if (n == 0)
		return ETIMEDOUT;
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
		die("getsockopt(SO_ERROR)");
	return err;
}

static void set_blocking_with_timeout(int fd)
{
	struct timeval tv = { .tv_sec = 5 };

	if (fcntl(fd, F_SETFL, 0) != 0)
		die("fcntl");
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) != 0)
		die("SO_RCVTIMEO");
}

static void verdict(int ok)
{
	if (ok)
		passed++;
	else
		failed++;
}

static void case_good(const char *alg)
{
	static char buf[DATA_BYTES];
	const char *key = "aokd-vm-smoke-master-key";
	uint16_t port;
	int lfd = make_listener(alg, key, &port);
	int cfd = start_client(alg, key, port);
	int err = wait_connected(cfd, GOOD_TIMEOUT_MS);
	int sfd;
	size_t got = 0;
	ssize_t n;
	char reply[3] = { 0 };
	struct tcp_ao_info_opt ci, si;
	int ok;

	if (err != 0) {
		printf("AO-SMOKE case=good alg=%s result=fail connect=%s\n", alg, strerror(err));
		verdict(0);
		close(cfd);
		close(lfd);
		return;
	}
	sfd = accept(lfd, NULL, NULL);
	if (sfd < 0)
		die("accept");
	set_blocking_with_timeout(cfd);
	set_blocking_with_timeout(sfd);

	memset(buf, 'a', sizeof(buf));
	if (send(cfd, buf, sizeof(buf), 0) != (ssize_t)sizeof(buf))
		die("send(client)");
	while (got < sizeof(buf)) {
		n = recv(sfd, buf, sizeof(buf) - got, 0);
		if (n <= 0)
			die("recv(server) after %zu bytes", got);
		got += (size_t)n;
	}
	if (send(sfd, "ok", 2, 0) != 2)
		die("send(server)");
	if (recv(cfd, reply, 2, MSG_WAITALL) != 2)
		die("recv(client)");

	ci = ao_info(cfd);
	si = ao_info(sfd);
	ok = strcmp(reply, "ok") == 0 && got == sizeof(buf) && ci.pkt_good > 0 &&
	     si.pkt_good > 0 && ci.pkt_bad == 0 && si.pkt_bad == 0;
	printf("AO-SMOKE case=good alg=%s result=%s bytes=%zu client_good=%llu client_bad=%llu "
	       "server_good=%llu server_bad=%llu\n",
	       alg, ok ? "ok" : "fail", got, (unsigned long long)ci.pkt_good,
	       (unsigned long long)ci.pkt_bad, (unsigned long long)si.pkt_good,
	       (unsigned long long)si.pkt_bad);
	verdict(ok);
	close(cfd);
	close(sfd);
	close(lfd);
}

static void case_wrongkey(const char *alg)
{
	uint16_t port;
	int lfd = make_listener(alg, "aokd-vm-smoke-master-key", &port);
	int cfd = start_client(alg, "a-different-master-key!!", port);
	int err = wait_connected(cfd, BAD_TIMEOUT_MS);
	struct tcp_ao_info_opt li = ao_info(lfd);
	int ok = err != 0 && li.pkt_bad > 0;

	printf("AO-SMOKE case=wrongkey alg=%s result=%s connect=%s listener_bad=%llu "
	       "listener_good=%llu\n",
	       alg, ok ? "ok" : "fail", err == 0 ? "connected" : err == ETIMEDOUT ? "timeout" : strerror(err),
	       (unsigned long long)li.pkt_bad, (unsigned long long)li.pkt_good);
	verdict(ok);
	close(cfd);
	close(lfd);
}

int main(int argc, char **argv)
{
	static const char *algs[] = { "hmac(sha1)", "cmac(aes128)" };
	int opt;
	size_t i;

	setvbuf(stdout, NULL, _IOLBF, 0);
	inet_pton(AF_INET, "127.0.0.1", &listen_addr);
	client_addr = listen_addr;
	while ((opt = getopt(argc, argv, "n:l:c:")) != -1) {
		switch (opt) {
		case 'n':
			netns_path = optarg;
			break;
		case 'l':
		case 'c':
			if (inet_pton(AF_INET, optarg, opt == 'l' ? &listen_addr : &client_addr) != 1) {
				fprintf(stderr, "ao_smoke: bad IPv4 address '%s'\n", optarg);
				return 2;
			}
			break;
		default:
			fprintf(stderr, "usage: ao_smoke [-n NETNS_PATH] [-l LISTEN_ADDR] [-c CLIENT_ADDR]\n");
			return 2;
		}
	}
	if (netns_path) {
		own_ns = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
		if (own_ns < 0)
			die("open /proc/self/ns/net");
		peer_ns = open(netns_path, O_RDONLY | O_CLOEXEC);
		if (peer_ns < 0)
			die("open %s", netns_path);
	}
	printf("AO-SMOKE listener=%s%s%s", inet_ntoa(listen_addr), netns_path ? " netns=" : "",
	       netns_path ? netns_path : "");
	printf(" client=%s\n", inet_ntoa(client_addr));

	for (i = 0; i < sizeof(algs) / sizeof(algs[0]); i++) {
		case_good(algs[i]);
		case_wrongkey(algs[i]);
	}
	printf("AO-SMOKE-RESULT pass=%d fail=%d\n", passed, failed);
	return failed == 0 && passed > 0 ? 0 : 1;
}
