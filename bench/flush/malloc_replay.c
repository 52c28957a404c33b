/*
 * malloc_replay.c — the flush worker's allocation pattern during a Kafka drain,
 * without PostgreSQL or librdkafka, timed with glibc's fastbins on and off.
 *
 * Per message: one librdkafka message with its copied payload (~380-460 B), a
 * header list (two allocations) and three headers; 12,000 messages in flight,
 * freed oldest first in delivery reports; every 200 messages a large block
 * (64 kB .. 560 kB, like PostgreSQL's batch memory) allocated, 16 of them freed
 * together. The flush worker turns fastbins off (mallopt(M_MXFAST, 0)).
 *
 *     gcc -O2 bench/flush/malloc_replay.c -o /tmp/malloc_replay
 *     for i in 1 2 3; do /tmp/malloc_replay 0; /tmp/malloc_replay 1; done
 *
 * On the project's VM (2026-11-28, five alternating pairs): fastbins on
 * 0.66-0.95 s, off 0.50-0.70 s for 2M messages. A larger tcache (GLIBC_TUNABLES=glibc.malloc.tcache_count=4000)
 * made it slower (1.37-1.68 s).
 */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define IN_FLIGHT 12000
#define PER_MSG 6

static double
now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

int
main(int argc, char **argv)
{
	int			no_fastbins = argc > 1 && atoi(argv[1]);
	const long	n = 2000000;
	const long	ring = IN_FLIGHT * PER_MSG;
	void	  **q = malloc(sizeof(void *) * ring);
	void	   *big[16];
	int			nbig = 0;
	long		head = 0,
				tail = 0;
	unsigned	s = 1;
	double		t0;

	if (no_fastbins)
		mallopt(M_MXFAST, 0);
	t0 = now();
	for (long i = 0; i < n; i++)
	{
		s = s * 1103515245 + 12345;
		q[head++ % ring] = malloc(380 + (s >> 16) % 80); /* message + payload */
		q[head++ % ring] = malloc(48);	/* header list */
		q[head++ % ring] = malloc(24);	/* its array */
		q[head++ % ring] = malloc(56);	/* "op" */
		q[head++ % ring] = malloc(62);	/* "table" */
		q[head++ % ring] = malloc(80);	/* "idempotency_key" */
		if (head - tail >= ring)
			while (head - tail > ring / 2)
				free(q[tail++ % ring]); /* delivery reports of half the window */
		if (i % 200 == 0)
		{
			big[nbig++] = malloc(65536 + (s >> 8) % 500000);
			if (nbig == 16)
				while (nbig)
					free(big[--nbig]);
		}
	}
	while (tail < head)
		free(q[tail++ % ring]);
	printf("fastbins %s: %.3f s for %ld messages\n", no_fastbins ? "off" : "on", now() - t0, n);
	return 0;
}
