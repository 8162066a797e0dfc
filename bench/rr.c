/* rr: the benchmark's request/reply load generator and its servers.
 *
 * Hand-written because no packaged tool does what the datapath-cost figures
 * need: sockperf keeps one connection open, iperf3 measures bulk throughput,
 * and netperf (whose TCP_CRR is connect/request/response/close) is not in
 * Debian's main archive. A C loop also keeps the client's own cost per
 * connection small, so a connection rate shows the kernel's and the mesh's
 * work rather than an interpreter's.
 *
 *   rr serve-tcp ADDR:PORT...     accept; read the 2-byte request; reply; close
 *   rr serve-udp ADDR:PORT...     echo every datagram to its sender
 *   rr tcp COUNT DST:PORT [SRC]   COUNT times: connect, send 2 bytes, read the
 *                                 reply and the server's close, close
 *   rr tcp-for SECONDS DST:PORT [SRC]   the same, for a duration (a rate)
 *   rr udp-one COUNT DST:PORT [SRC]     one unconnected socket: COUNT x
 *                                       (sendto, recvfrom)
 *   rr udp-new COUNT DST:PORT [SRC]     a new socket per request
 *
 * Servers print "ready" once listening and run until killed. Clients print
 * one JSON line: {"count", "succeeded", "errnos", "seconds"}.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_ENDPOINTS 64
#include "errno_counts.h"

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void parse_endpoint(const char *text, struct sockaddr_in *out)
{
	char host[64];
	const char *colon = strrchr(text, ':');
	size_t length = colon ? (size_t)(colon - text) : 0;
	memset(out, 0, sizeof(*out));
	out->sin_family = AF_INET;
	if (!colon || length >= sizeof(host)) {
		fprintf(stderr, "rr: want ADDR:PORT, got %s\n", text);
		exit(2);
	}
	memcpy(host, text, length);
	host[length] = 0;
	out->sin_port = htons(atoi(colon + 1));
	if (inet_pton(AF_INET, host, &out->sin_addr) != 1) {
		fprintf(stderr, "rr: not an IPv4 address: %s\n", host);
		exit(2);
	}
}


static int bound_socket(int type, const char *source)
{
	int fd = socket(AF_INET, type, 0);
	if (fd < 0)
		return -1;
	if (source) {
		struct sockaddr_in address;
		int one = 1;
		memset(&address, 0, sizeof(address));
		address.sin_family = AF_INET;
		inet_pton(AF_INET, source, &address.sin_addr);
		/* The port is chosen at connect(), by the 4-tuple: bind() with port 0 would
		 * pick from the ports not held by TIME_WAIT sockets, and run out. */
		if (type == SOCK_STREAM)
			setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
		if (bind(fd, (struct sockaddr *)&address, sizeof(address)) < 0) {
			int error = errno;
			close(fd);
			errno = error;
			return -1;
		}
	}
	return fd;
}

/* A loopback reply takes microseconds: a UDP request unanswered for 200 ms was lost,
 * and waiting longer would only stall the loop. TCP gets 2 s (a SYN retransmits at 1 s). */
static void set_timeout(int fd, int udp)
{
	struct timeval timeout = {.tv_sec = udp ? 0 : 2, .tv_usec = udp ? 200000 : 0};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
}

/* One connection: connect, request, reply, the server's close, close. */
static int tcp_once(const struct sockaddr_in *target, const char *source)
{
	char reply[8];
	int fd;
	errno = 0;
	fd = bound_socket(SOCK_STREAM, source);
	if (fd < 0)
		return errno;
	set_timeout(fd, 0);
	if (connect(fd, (const struct sockaddr *)target, sizeof(*target)) < 0 ||
	    send(fd, "rq", 2, 0) != 2 || recv(fd, reply, 2, MSG_WAITALL) != 2 ||
	    recv(fd, reply, sizeof(reply), 0) != 0) {
		int error = errno ? errno : EPROTO;
		close(fd);
		return error;
	}
	close(fd);
	return 0;
}

static int udp_exchange(int fd, const struct sockaddr_in *target)
{
	char reply[64];
	errno = 0;
	if (sendto(fd, "rq", 2, 0, (const struct sockaddr *)target, sizeof(*target)) != 2)
		return errno;
	if (recv(fd, reply, sizeof(reply), 0) != 2)
		return errno ? errno : EPROTO;
	return 0;
}

static void report(unsigned long count, unsigned long succeeded, double seconds)
{
	printf("{\"count\": %lu, \"succeeded\": %lu, \"seconds\": %.6f, ", count, succeeded,
	       seconds);
	print_errnos();
	printf("}\n");
}

static int client(const char *mode, const char *amount, const char *destination,
		  const char *source)
{
	struct sockaddr_in target;
	unsigned long count = 0, succeeded = 0, wanted = strtoul(amount, NULL, 10);
	double started, deadline = 0;
	int udp_fd = -1;
	parse_endpoint(destination, &target);
	if (!strcmp(mode, "tcp-for"))
		deadline = now() + atof(amount);
	if (!strcmp(mode, "udp-one")) {
		udp_fd = bound_socket(SOCK_DGRAM, source);
		if (udp_fd < 0) {
			perror("rr: udp socket");
			return 1;
		}
		set_timeout(udp_fd, 1);
	}
	started = now();
	for (;;) {
		int error;
		if (deadline ? now() >= deadline : count >= wanted)
			break;
		if (!strcmp(mode, "tcp") || !strcmp(mode, "tcp-for")) {
			error = tcp_once(&target, source);
		} else if (udp_fd >= 0) {
			error = udp_exchange(udp_fd, &target);
		} else if (!strcmp(mode, "udp-new")) {
			int fd = bound_socket(SOCK_DGRAM, source);
			if (fd < 0) {
				error = errno;
			} else {
				set_timeout(fd, 1);
				error = udp_exchange(fd, &target);
				close(fd);
			}
		} else {
			fprintf(stderr, "rr: unknown mode %s\n", mode);
			return 2;
		}
		count++;
		if (error)
			count_error(error);
		else
			succeeded++;
	}
	report(count, succeeded, now() - started);
	if (udp_fd >= 0)
		close(udp_fd);
	return 0;
}

static int serve(int type, int count, char **endpoints)
{
	int epoll_fd = epoll_create1(0), one = 1;
	if (count > MAX_ENDPOINTS) {
		fprintf(stderr, "rr: at most %d endpoints\n", MAX_ENDPOINTS);
		return 2;
	}
	for (int i = 0; i < count; i++) {
		struct sockaddr_in address;
		struct epoll_event event = {.events = EPOLLIN};
		int fd = socket(AF_INET, type, 0);
		parse_endpoint(endpoints[i], &address);
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(fd, (struct sockaddr *)&address, sizeof(address)) < 0 ||
		    (type == SOCK_STREAM && listen(fd, 1024) < 0)) {
			fprintf(stderr, "rr: listening on %s: %s\n", endpoints[i], strerror(errno));
			return 1;
		}
		event.data.fd = fd;
		epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &event);
	}
	printf("ready\n");
	fflush(stdout);
	for (;;) {
		struct epoll_event events[MAX_ENDPOINTS];
		int ready = epoll_wait(epoll_fd, events, MAX_ENDPOINTS, -1);
		for (int i = 0; i < ready; i++) {
			int fd = events[i].data.fd;
			char buffer[2048];
			if (type == SOCK_DGRAM) {
				struct sockaddr_in peer;
				socklen_t length = sizeof(peer);
				ssize_t got = recvfrom(fd, buffer, sizeof(buffer), 0,
						       (struct sockaddr *)&peer, &length);
				if (got > 0)
					sendto(fd, buffer, got, 0, (struct sockaddr *)&peer, length);
				continue;
			}
			int connection = accept(fd, NULL, NULL);
			if (connection < 0)
				continue;
			set_timeout(connection, 0);
			if (recv(connection, buffer, 2, MSG_WAITALL) == 2)
				send(connection, "rp", 2, 0);
			/* The server closes first: its side keeps the TIME_WAIT, the client's
			 * port is free at once. */
			close(connection);
		}
	}
}

int main(int argc, char **argv)
{
	if (argc >= 3 && !strcmp(argv[1], "serve-tcp"))
		return serve(SOCK_STREAM, argc - 2, argv + 2);
	if (argc >= 3 && !strcmp(argv[1], "serve-udp"))
		return serve(SOCK_DGRAM, argc - 2, argv + 2);
	if (argc == 4 || argc == 5)
		return client(argv[1], argv[2], argv[3], argc == 5 ? argv[4] : NULL);
	fprintf(stderr, "usage: see the comment at the top of bench/rr.c\n");
	return 2;
}
