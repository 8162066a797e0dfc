/* connect_rate: TCP connects at a steady rate, for the events benchmark.
 *
 *   connect_rate RATE SECONDS DST:PORT
 *
 * Opens a socket and connects it to DST:PORT RATE times a second for SECONDS,
 * paced in 1 ms slots (a burst per slot, not all at once), then prints one
 * JSON line: {"count", "seconds", "rate", "errnos": {errno: count}}. Each
 * connect is one verdict of the policy: a denied one fails with EPERM at once,
 * an allowed one to a port nothing listens on with ECONNREFUSED, so the rate
 * is the datapath's and the events', not a server's. A C loop: Python could
 * not make 20,000 connects a second beside the reader it measures.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "errno_counts.h"

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	struct sockaddr_in target = {.sin_family = AF_INET};
	unsigned long count = 0, wanted;
	double rate, seconds, started, elapsed;
	char host[64];
	const char *colon;

	if (argc != 4 || !(colon = strrchr(argv[3], ':')) || colon - argv[3] >= (long)sizeof(host)) {
		fprintf(stderr, "usage: connect_rate RATE SECONDS ADDR:PORT\n");
		return 2;
	}
	rate = atof(argv[1]);
	seconds = atof(argv[2]);
	memcpy(host, argv[3], colon - argv[3]);
	host[colon - argv[3]] = 0;
	if (inet_pton(AF_INET, host, &target.sin_addr) != 1 || rate <= 0 || seconds <= 0) {
		fprintf(stderr, "connect_rate: bad arguments\n");
		return 2;
	}
	target.sin_port = htons(atoi(colon + 1));
	wanted = (unsigned long)(rate * seconds);
	started = now();
	while (count < wanted) {
		/* as many as are due by now: a late slot catches up, the rate holds */
		unsigned long due = (unsigned long)((now() - started) * rate) + 1;
		if (due > wanted)
			due = wanted;
		while (count < due) {
			int fd = socket(AF_INET, SOCK_STREAM, 0);
			if (fd < 0) {
				count_error(errno);
			} else {
				/* a connect that succeeds counts as errno 0 */
				count_error(connect(fd, (struct sockaddr *)&target, sizeof(target)) < 0 ? errno : 0);
				close(fd);
			}
			count++;
		}
		if (count < wanted) {
			struct timespec slot = {0, 1000000};
			nanosleep(&slot, NULL);
		}
	}
	elapsed = now() - started;
	printf("{\"count\": %lu, \"seconds\": %.6f, \"rate\": %.1f, ", count, elapsed, count / elapsed);
	print_errnos();
	printf("}\n");
	return 0;
}
