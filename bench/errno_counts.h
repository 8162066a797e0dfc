/* The load generators' failed operations, counted by errno and printed as the
 * JSON object their last line carries: "errnos": {"111": 3, ...}. */
#ifndef EBMESH_BENCH_ERRNO_COUNTS_H
#define EBMESH_BENCH_ERRNO_COUNTS_H

#include <stdio.h>

#define MAX_ERRNO 256

static unsigned long errnos[MAX_ERRNO];

/* An errno out of range is counted as 0. */
static void count_error(int error)
{
	errnos[error >= 0 && error < MAX_ERRNO ? error : 0]++;
}

static void print_errnos(void)
{
	int first = 1;

	printf("\"errnos\": {");
	for (int i = 0; i < MAX_ERRNO; i++) {
		if (!errnos[i])
			continue;
		printf("%s\"%d\": %lu", first ? "" : ", ", i, errnos[i]);
		first = 0;
	}
	printf("}");
}

#endif
