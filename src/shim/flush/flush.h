/*
 * flush/flush.h — the background workers (launcher.c, flush_worker.c) and the
 * utility hook that makes a flush worker leave its database (utility_hook.c).
 * Only module.c and this folder include it: nothing else calls a worker (the
 * queue wakes them through shmem/shmem.h).
 */
#ifndef BATCHKIT_SHIM_FLUSH_H
#define BATCHKIT_SHIM_FLUSH_H

#include "postgres.h"

/* launcher.c */
extern void bk_register_launcher(void);
PGDLLEXPORT void batchkit_launcher_main(Datum main_arg);

/* utility_hook.c */
extern void bk_install_utility_hook(void);

/* flush_worker.c */
PGDLLEXPORT void batchkit_flush_worker_main(Datum main_arg);

#endif /* BATCHKIT_SHIM_FLUSH_H */
