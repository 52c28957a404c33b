/*
 * metrics_http.c — the optional /metrics HTTP endpoint, served by the launcher.
 *
 * Off by default: batchkit.metrics_port = 0. With a port set, the launcher
 * listens on batchkit.metrics_listen_address (127.0.0.1 by default: the
 * endpoint has no authentication) and answers GET /metrics with the Prometheus
 * text of every database's sinks, so one scrape target covers the cluster.
 * Both settings are PGC_SIGHUP: a reload opens, moves or closes the socket.
 *
 * Why the launcher, and shared memory only: the launcher is the one batchkit
 * process that always runs and belongs to no database, so it cannot read any
 * database's catalog. Everything it shows therefore comes from the per-sink
 * slots in shared memory: the counters and histograms the flush workers write,
 * the sink's name and state (the worker copies them there on each catalog
 * reload; "paused" included), the queue depth counter, and gauges the flush
 * worker publishes about once a second while the endpoint is on (oldest queued
 * row, rows in dead_letters, the queue depth while its counter is not rebuilt;
 * bk_metrics_publish_gauges in metrics.c). Database names come from
 * pg_database, a shared catalog the launcher may read. batch_upsert's
 * counters are keyed by relation oid, which only the database itself can name:
 * they are in batchkit.metrics() only.
 *
 * Never stalling the launcher: the launcher's sleep is this file's
 * bk_metrics_http_wait(), one WaitEventSet over its latch, postmaster death,
 * the listening socket(s) and at most BK_HTTP_MAX_CLIENTS client sockets, all
 * non-blocking. A request is read and answered in pieces as the socket allows;
 * a client that is slow or silent is dropped after BK_HTTP_CLIENT_TIMEOUT_MS.
 * Building a response copies the slots (bk_shared->lock SHARED, each slot's
 * spinlock for one struct copy — the locking contract of metrics.c) and
 * formats them with the core; it does not wait on anything a client controls.
 * The launcher's latch still ends the wait at once, so its own work is never
 * delayed by a scrape.
 *
 * Memory: a response is a core-owned bk_buf kept with its connection and freed
 * when the connection closes; a connection's state lives in TopMemoryContext.
 */
#include "postgres.h"

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>
#include <fcntl.h>
#include <errno.h>

#include "access/xact.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/float.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "batchkit/encoding.h"
#include "batchkit/metrics.h"
#include "metrics/metrics.h"

#define BK_HTTP_MAX_LISTEN 4
#define BK_HTTP_MAX_CLIENTS 16
#define BK_HTTP_MAX_REQUEST 8192
#define BK_HTTP_CLIENT_TIMEOUT_MS 5000
#define BK_HTTP_RETRY_BIND_MS 10000

int			bk_metrics_port = 0;
char	   *bk_metrics_listen_address = NULL;

typedef struct HttpClient
{
	pgsocket	fd;
	TimestampTz deadline;
	char		request[BK_HTTP_MAX_REQUEST];
	int			request_len;
	bk_buf		response;		/* headers + body, core-owned */
	size_t		sent;
	bool		responding;
} HttpClient;

static pgsocket listen_fds[BK_HTTP_MAX_LISTEN];
static int	nlisten = 0;
static int	bound_port = 0;
static char *bound_address = NULL;
static TimestampTz bind_failed_at = 0;
static HttpClient *clients[BK_HTTP_MAX_CLIENTS];
static TimestampTz accept_paused_until = 0;	/* after accept() failed (e.g. EMFILE) */

void
bk_metrics_http_define_gucs(void)
{
	DefineCustomIntVariable("batchkit.metrics_port",
							"TCP port of the launcher's /metrics HTTP endpoint (0 = off).",
							"Serves the Prometheus text of every database's sinks. No "
							"authentication: keep it on a loopback or otherwise protected address.",
							&bk_metrics_port, 0, 0, 65535,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("batchkit.metrics_listen_address",
							   "Address the /metrics endpoint listens on.",
							   "A host name or IP address; '*' listens on every address.",
							   &bk_metrics_listen_address, "127.0.0.1",
							   PGC_SIGHUP, 0, NULL, NULL, NULL);
}

/* ---- sockets ---------------------------------------------------------------------- */

static void
close_listeners(void)
{
	for (int i = 0; i < nlisten; i++)
		closesocket(listen_fds[i]);
	nlisten = 0;
	bound_port = 0;
	if (bound_address)
		pfree(bound_address);
	bound_address = NULL;
}

static void
close_client(int i)
{
	HttpClient *c = clients[i];

	if (c == NULL)
		return;
	closesocket(c->fd);
	bk_buf_free(&c->response);
	pfree(c);
	clients[i] = NULL;
}

/* Open, move or close the listening sockets to match the settings. */
static void
configure_listeners(void)
{
	const char *addr = bk_metrics_listen_address ? bk_metrics_listen_address : "127.0.0.1";
	struct addrinfo hints;
	struct addrinfo *res = NULL;
	char		port[16];
	int			rc;

	if (bk_metrics_port == bound_port && bound_address != NULL && strcmp(addr, bound_address) == 0)
		return;
	if (bk_metrics_port == 0)
	{
		if (nlisten > 0)
			ereport(LOG, (errmsg("batchkit metrics endpoint closed")));
		close_listeners();
		bind_failed_at = 0;
		return;
	}
	if (bind_failed_at != 0 &&
		!TimestampDifferenceExceeds(bind_failed_at, GetCurrentTimestamp(), BK_HTTP_RETRY_BIND_MS))
		return;
	close_listeners();

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE;
	snprintf(port, sizeof(port), "%d", bk_metrics_port);
	rc = getaddrinfo(strcmp(addr, "*") == 0 ? NULL : addr, port, &hints, &res);
	if (rc != 0)
	{
		ereport(WARNING,
				(errmsg("batchkit metrics endpoint: cannot resolve \"%s\": %s", addr,
						gai_strerror(rc))));
		bind_failed_at = GetCurrentTimestamp();
		return;
	}
	for (struct addrinfo *ai = res; ai != NULL && nlisten < BK_HTTP_MAX_LISTEN; ai = ai->ai_next)
	{
		pgsocket	fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
		int			one = 1;

		if (fd == PGINVALID_SOCKET)
			continue;
		(void) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
#ifdef IPV6_V6ONLY
		if (ai->ai_family == AF_INET6)
			(void) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
#endif
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 16) < 0 ||
			!pg_set_noblock(fd))
		{
			ereport(WARNING,
					(errcode_for_socket_access(),
					 errmsg("batchkit metrics endpoint: cannot listen on \"%s\" port %d: %m",
							addr, bk_metrics_port)));
			closesocket(fd);
			continue;
		}
		(void) fcntl(fd, F_SETFD, FD_CLOEXEC);
		listen_fds[nlisten++] = fd;
	}
	freeaddrinfo(res);
	if (nlisten == 0)
	{
		bind_failed_at = GetCurrentTimestamp();
		return;
	}
	bind_failed_at = 0;
	bound_port = bk_metrics_port;
	bound_address = MemoryContextStrdup(TopMemoryContext, addr);
	ereport(LOG,
			(errmsg("batchkit metrics endpoint listening on \"%s\" port %d", addr, bound_port)));
}

static void
accept_clients(pgsocket lfd)
{
	for (;;)
	{
		pgsocket	fd = accept(lfd, NULL, NULL);
		int			slot = -1;

		if (fd == PGINVALID_SOCKET)
		{
			/*
			 * EAGAIN: nothing more is waiting. Anything else (out of file
			 * descriptors...) would leave the socket readable and spin the wait:
			 * stop accepting for a second.
			 */
			if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
				accept_paused_until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 1000);
			return;
		}
		for (int i = 0; i < BK_HTTP_MAX_CLIENTS; i++)
			if (clients[i] == NULL)
			{
				slot = i;
				break;
			}
		if (slot < 0 || !pg_set_noblock(fd))
		{
			closesocket(fd);	/* too many at once: the scraper retries */
			continue;
		}
		(void) fcntl(fd, F_SETFD, FD_CLOEXEC);
		clients[slot] = MemoryContextAllocZero(TopMemoryContext, sizeof(HttpClient));
		clients[slot]->fd = fd;
		clients[slot]->deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
															  BK_HTTP_CLIENT_TIMEOUT_MS);
	}
}

/* ---- the response --------------------------------------------------------------------- */

typedef struct DbName
{
	Oid			dboid;
	char	   *name;			/* NULL: the database no longer exists */
} DbName;

/*
 * Every sink slot of every database, as the core's structs. Names of databases
 * come from pg_database (a shared catalog) in a short transaction; slots of a
 * database that is gone, or that no worker has named yet, are left out.
 */
static int
gather_all_sinks(bk_metrics_sink **out)
{
	BkSinkStatsCopy *copies;
	int			ncopies = bk_metrics_copy_slots(InvalidOid, &copies);
	bk_metrics_sink *m = palloc0(sizeof(bk_metrics_sink) * Max(ncopies, 1));
	DbName	   *dbs = palloc0(sizeof(DbName) * Max(ncopies, 1));
	int			ndbs = 0;
	int			n = 0;
	TimestampTz now = GetCurrentTimestamp();
	MemoryContext keep = CurrentMemoryContext;

	/* a transaction for the syscache; the names must outlive it */
	StartTransactionCommand();
	for (int i = 0; i < ncopies; i++)
	{
		Oid			dboid = copies[i].slot.dboid;
		bool		known = false;

		for (int j = 0; j < ndbs && !known; j++)
			known = dbs[j].dboid == dboid;
		if (!known)
		{
			char	   *name = get_database_name(dboid);

			dbs[ndbs].dboid = dboid;
			dbs[ndbs].name = name ? MemoryContextStrdup(keep, name) : NULL;
			ndbs++;
		}
	}
	CommitTransactionCommand();
	MemoryContextSwitchTo(keep);

	for (int i = 0; i < ncopies; i++)
	{
		BkSinkStatsCopy *c = &copies[i];
		const char *dbname = NULL;

		for (int j = 0; j < ndbs; j++)
			if (dbs[j].dboid == c->slot.dboid)
				dbname = dbs[j].name;
		if (dbname == NULL || c->slot.name[0] == '\0')
			continue;
		bk_metrics_fill_sink(c, &m[n]);
		m[n].database = dbname;
		m[n].sink = c->slot.name;
		m[n].state = strcmp(c->slot.state, "paused") == 0 ? "paused" : bk_metrics_state(c);
		if (c->slot.gauges_at != 0)
		{
			m[n].oldest_queued_age_seconds = c->slot.oldest_queued_at == 0 ? 0.0 :
				Max((double) (now - c->slot.oldest_queued_at) / USECS_PER_SEC, 0.0);
			m[n].dead_letters = c->slot.dead_letters;
			if (!c->depth_known && c->slot.queued_in_table >= 0)
			{
				m[n].queued_known = 1;
				m[n].queued = (uint64) c->slot.queued_in_table;
			}
		}
		else
		{
			m[n].oldest_queued_age_seconds = get_float8_nan();
			m[n].dead_letters = -1;
		}
		n++;
	}
	*out = m;
	return n;
}

static const char *
http_status_text(int status)
{
	switch (status)
	{
		case 200:
			return "OK";
		case 400:
			return "Bad Request";
		case 404:
			return "Not Found";
		case 405:
			return "Method Not Allowed";
		default:
			return "Internal Server Error";
	}
}

static void
respond(HttpClient *c, int status, const char *ctype, const char *body, size_t len)
{
	char		head[256];
	int			hlen;
	bk_status	st;

	hlen = snprintf(head, sizeof(head),
					"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
					"Connection: close\r\n\r\n",
					status, http_status_text(status), ctype, len);
	c->response.len = 0;
	if (bk_buf_append(&c->response, head, hlen, &st) != BK_OK ||
		bk_buf_append(&c->response, body, len, &st) != BK_OK)
		c->response.len = 0;	/* out of memory: the connection just closes */
	c->sent = 0;
	c->responding = true;
}

/* A complete request head is in c->request: answer it. */
static void
handle_request(HttpClient *c)
{
	char	   *line_end = strstr(c->request, "\r\n");
	char		method[16];
	char		path[256];

	if (line_end == NULL || sscanf(c->request, "%15s %255s", method, path) != 2)
	{
		respond(c, 400, "text/plain", "bad request\n", 12);
		return;
	}
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
	{
		respond(c, 405, "text/plain", "only GET\n", 9);
		return;
	}
	if (strcmp(path, "/metrics") != 0 && strncmp(path, "/metrics?", 9) != 0)
	{
		respond(c, 404, "text/plain", "try /metrics\n", 13);
		return;
	}
	{
		MemoryContext cxt = AllocSetContextCreate(TopMemoryContext, "batchkit metrics scrape",
												  ALLOCSET_DEFAULT_SIZES);
		MemoryContext old = MemoryContextSwitchTo(cxt);
		bk_metrics_sink *sinks;
		int			n = gather_all_sinks(&sinks);
		bk_buf		body = BK_BUF_INIT;
		bk_status	st;

		if (bk_metrics_prometheus(sinks, (size_t) n, NULL, 0, &body, &st) == BK_OK)
			respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", body.data, body.len);
		else
			respond(c, 500, "text/plain", st.message, strlen(st.message));
		bk_buf_free(&body);
		MemoryContextSwitchTo(old);
		MemoryContextDelete(cxt);
	}
	if (strcmp(method, "HEAD") == 0)
	{
		char	   *end = c->response.data ? strstr(c->response.data, "\r\n\r\n") : NULL;

		if (end)
			c->response.len = (end + 4) - c->response.data;
	}
}

/* Make progress on one client; returns false when it is done (to be closed). */
static bool
serve_client(HttpClient *c)
{
	if (!c->responding)
	{
		for (;;)
		{
			ssize_t		r;

			if (c->request_len >= BK_HTTP_MAX_REQUEST - 1)
			{
				respond(c, 400, "text/plain", "request too large\n", 18);
				break;
			}
			r = recv(c->fd, c->request + c->request_len,
					 BK_HTTP_MAX_REQUEST - 1 - c->request_len, 0);
			if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
				return true;
			if (r <= 0)
				return false;	/* closed before a full request, or an error */
			c->request_len += (int) r;
			c->request[c->request_len] = '\0';
			if (strstr(c->request, "\r\n\r\n") || strstr(c->request, "\n\n"))
			{
				handle_request(c);
				break;
			}
		}
	}
	while (c->sent < c->response.len)
	{
		ssize_t		w = send(c->fd, c->response.data + c->sent, c->response.len - c->sent,
							 MSG_NOSIGNAL);

		if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
			return true;
		if (w <= 0)
			return false;
		c->sent += (size_t) w;
	}
	return false;				/* answered: Connection: close */
}

/* ---- the launcher's wait ----------------------------------------------------------------- */

/*
 * The launcher's sleep: like WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT |
 * WL_EXIT_ON_PM_DEATH, timeout_ms), serving the endpoint meanwhile. Returns
 * WL_LATCH_SET as soon as the latch is set, WL_TIMEOUT after timeout_ms.
 */
int
bk_metrics_http_wait(long timeout_ms)
{
	TimestampTz end = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);

	configure_listeners();
	if (nlisten == 0)
	{
		for (int i = 0; i < BK_HTTP_MAX_CLIENTS; i++)
			close_client(i);
		return WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 timeout_ms, PG_WAIT_EXTENSION);
	}

	for (;;)
	{
		WaitEventSet *set;
		WaitEvent	events[BK_HTTP_MAX_LISTEN + BK_HTTP_MAX_CLIENTS + 2];
		int			nevents;
		TimestampTz now = GetCurrentTimestamp();
		long		wait_ms;
		bool		latch = false;

		/* drop clients past their deadline */
		for (int i = 0; i < BK_HTTP_MAX_CLIENTS; i++)
			if (clients[i] && now >= clients[i]->deadline)
				close_client(i);
		if (now >= end)
			return WL_TIMEOUT;
		wait_ms = (long) ((end - now + 999) / 1000);
		for (int i = 0; i < BK_HTTP_MAX_CLIENTS; i++)
			if (clients[i])
				wait_ms = Min(wait_ms, (long) ((clients[i]->deadline - now + 999) / 1000));

		set = CreateWaitEventSet(CurrentMemoryContext,
								 BK_HTTP_MAX_LISTEN + BK_HTTP_MAX_CLIENTS + 2);
		AddWaitEventToSet(set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
		AddWaitEventToSet(set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
		if (now >= accept_paused_until)
			for (int i = 0; i < nlisten; i++)
				AddWaitEventToSet(set, WL_SOCKET_READABLE, listen_fds[i], NULL,
								  (void *) (intptr_t) -1);
		else
			wait_ms = Min(wait_ms, (long) ((accept_paused_until - now + 999) / 1000));
		for (int i = 0; i < BK_HTTP_MAX_CLIENTS; i++)
			if (clients[i])
				AddWaitEventToSet(set, clients[i]->responding ? WL_SOCKET_WRITEABLE :
								  WL_SOCKET_READABLE, clients[i]->fd, NULL,
								  (void *) (intptr_t) i);
		nevents = WaitEventSetWait(set, Max(wait_ms, 1), events, lengthof(events),
								   PG_WAIT_EXTENSION);
		FreeWaitEventSet(set);

		for (int e = 0; e < nevents; e++)
		{
			intptr_t	who = (intptr_t) events[e].user_data;

			if (events[e].events & WL_LATCH_SET)
				latch = true;
			else if (events[e].events & (WL_SOCKET_READABLE | WL_SOCKET_WRITEABLE))
			{
				if (who < 0)
					accept_clients(events[e].fd);
				else if (clients[who] && !serve_client(clients[who]))
					close_client((int) who);
			}
		}
		if (latch)
			return WL_LATCH_SET;
	}
}
