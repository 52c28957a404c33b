/*
 * batchkit/net_probe.h — "can this server be reached at all?", with a deadline.
 *
 * create_sink and alter_sink use it to warn early about a sink that is down or
 * mistyped. It opens one TCP (or Unix-socket) connection and closes it: no
 * protocol is spoken, no Postgres API is called.
 *
 * Lifetime: the probe runs on a short-lived helper thread (so a slow DNS lookup
 * cannot hold the caller past the deadline) with every signal blocked, so
 * Postgres's signals keep going to the backend's own thread. When the deadline
 * passes the call returns and the helper finishes on its own; it touches only
 * memory it shares by reference count with nobody else.
 */
#ifndef BATCHKIT_NET_PROBE_H
#define BATCHKIT_NET_PROBE_H

#include "batchkit/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Connect to host:port (TCP, every address the name resolves to, in order) or,
 * when unix_path is not NULL, to that Unix socket; give up after timeout_ms.
 * Returns BK_OK when a connection was established, BK_UNAVAILABLE with the
 * reason ("connection refused", "could not resolve host ...", "no answer
 * within 1000 ms") otherwise, BK_INVALID_ARGUMENT for bad arguments.
 */
bk_code bk_net_probe(const char *host, int port, const char *unix_path, int timeout_ms,
                     bk_status *st);

#ifdef __cplusplus
}
#endif

#endif /* BATCHKIT_NET_PROBE_H */
