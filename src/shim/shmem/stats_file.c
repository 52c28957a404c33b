/*
 * stats_file.c — per-sink statistics survive a clean restart, as
 * pg_stat_statements' do: saved to $PGDATA/pg_stat/batchkit.stat by the
 * postmaster when it exits cleanly, loaded back into shared memory by the
 * shmem startup hook, and the file removed once loaded.
 *
 * Lifetime and locking: both run in the postmaster (or a single-user backend)
 * with no other process attached to shared memory — the save after every child
 * has exited, the load before any is started — so neither takes a lock.
 *
 * What is kept: the counters, histograms, last flush and last error of each
 * sink slot, keyed by (database oid, sink id). What is not: the queue depth
 * (`queued` is rebuilt from the queue table on first use, so a row committed
 * or acknowledged around the restart is never counted twice) and the state
 * (a worker sets it again).
 *
 * A crash loses the statistics since start-up, as it loses PostgreSQL's own
 * cumulative statistics: a backend crash reinitialises shared memory (and the
 * exit callback sees a non-zero code and saves nothing); after an immediate
 * shutdown or a postmaster crash the control file says the cluster was not
 * shut down cleanly and the file, if any, is discarded unread — a batch
 * replayed by crash recovery would otherwise be counted twice. The file of the
 * previous clean shutdown was removed when it was loaded, so stale numbers
 * never come back.
 * The file is versioned and checksummed; a file that does not match this
 * build (other version, record size or histogram buckets) is ignored with a LOG.
 */
#include "postgres.h"

#include <unistd.h>

#include "catalog/pg_control.h"
#include "common/controldata_utils.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "port/pg_crc32c.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "utils/timestamp.h"

#include "batchkit/histogram.h"
#include "shmem/shmem.h"

#define BK_STATS_FILE		PGSTAT_STAT_PERMANENT_DIRECTORY "/batchkit.stat"
#define BK_STATS_MAGIC		0x424b5354	/* "BKST" */
#define BK_STATS_VERSION	1

typedef struct BkStatsFileHeader
{
	uint32		magic;
	uint32		version;
	uint32		record_size;
	uint32		layout_crc;		/* of the histogram buckets the counts refer to */
	uint32		nrecords;
} BkStatsFileHeader;

/* The file's record: independent of BkSinkSlot's layout, which may grow. */
typedef struct BkStatsRecord
{
	Oid			dboid;
	int32		sink_id;
	char		name[NAMEDATALEN];
	uint64		batches;
	uint64		rows_sent;
	uint64		rows_failed;
	uint64		rows_dead;
	uint64		bytes_sent;
	uint64		retries;
	uint64		last_batch_size;
	TimestampTz last_flush_at;
	double		last_flush_seconds;
	char		last_error[256];
	TimestampTz last_error_at;
	TimestampTz stats_reset;
	bk_histogram hist[BK_HIST_KIND_COUNT];
} BkStatsRecord;

StaticAssertDecl(sizeof(((BkSinkSlot *) 0)->last_error) == sizeof(((BkStatsRecord *) 0)->last_error),
				 "last_error sizes differ");

/* Histogram counts are only meaningful with the same bucket bounds. */
static uint32
layout_crc(void)
{
	pg_crc32c	crc;

	INIT_CRC32C(crc);
	for (int k = 0; k < BK_HIST_KIND_COUNT; k++)
	{
		int			n = 0;
		const double *bounds = bk_histogram_bounds((bk_histogram_kind) k, &n);

		COMP_CRC32C(crc, &n, sizeof(n));
		if (n > 0)
			COMP_CRC32C(crc, bounds, sizeof(double) * n);
	}
	FIN_CRC32C(crc);
	return crc;
}

static void
record_from_slot(const BkSinkSlot *s, BkStatsRecord *r)
{
	memset(r, 0, sizeof(*r));
	r->dboid = s->dboid;
	r->sink_id = s->sink_id;
	strlcpy(r->name, s->name, sizeof(r->name));
	r->batches = s->batches;
	r->rows_sent = s->rows_sent;
	r->rows_failed = s->rows_failed;
	r->rows_dead = s->rows_dead;
	r->bytes_sent = s->bytes_sent;
	r->retries = s->retries;
	r->last_batch_size = s->last_batch_size;
	r->last_flush_at = s->last_flush_at;
	r->last_flush_seconds = s->last_flush_seconds;
	strlcpy(r->last_error, s->last_error, sizeof(r->last_error));
	r->last_error_at = s->last_error_at;
	r->stats_reset = s->stats_reset;
	memcpy(r->hist, s->hist, sizeof(r->hist));
}

static void
slot_from_record(BkSinkSlot *s, const BkStatsRecord *r)
{
	memset(s, 0, sizeof(*s));
	s->in_use = true;
	s->depth_known = false;		/* rebuilt from the queue table on first use */
	s->dboid = r->dboid;
	s->sink_id = r->sink_id;
	pg_atomic_init_u64(&s->queued, 0);
	pg_atomic_init_u32(&s->committing, 0);
	pg_atomic_init_u32(&s->flush_requested, 0);
	SpinLockInit(&s->mutex);
	strlcpy(s->name, r->name, sizeof(s->name));
	strlcpy(s->state, "idle", sizeof(s->state));
	s->batches = r->batches;
	s->rows_sent = r->rows_sent;
	s->rows_failed = r->rows_failed;
	s->rows_dead = r->rows_dead;
	s->bytes_sent = r->bytes_sent;
	s->retries = r->retries;
	s->last_batch_size = r->last_batch_size;
	s->last_flush_at = r->last_flush_at;
	s->last_flush_seconds = r->last_flush_seconds;
	memcpy(s->last_error, r->last_error, sizeof(s->last_error));
	s->last_error[sizeof(s->last_error) - 1] = '\0';
	s->last_error_at = r->last_error_at;
	s->stats_reset = r->stats_reset;
	memcpy(s->hist, r->hist, sizeof(s->hist));
}

/*
 * on_shmem_exit callback of the postmaster: write every sink's statistics.
 * Not on a crash (code != 0): shared memory may be corrupt.
 */
void
bk_stats_file_save(int code, Datum arg)
{
	FILE	   *file;
	BkStatsFileHeader hdr;
	pg_crc32c	crc;
	int			n = 0;

	if (code != 0 || bk_shared == NULL || bk_shared->sinks == NULL)
		return;

	for (int i = 0; i < bk_shared->max_sinks; i++)
		if (bk_shared->sinks[i].in_use)
			n++;

	file = AllocateFile(BK_STATS_FILE ".tmp", PG_BINARY_W);
	if (file == NULL)
		goto error;
	memset(&hdr, 0, sizeof(hdr));
	hdr.magic = BK_STATS_MAGIC;
	hdr.version = BK_STATS_VERSION;
	hdr.record_size = sizeof(BkStatsRecord);
	hdr.layout_crc = layout_crc();
	hdr.nrecords = n;
	INIT_CRC32C(crc);
	COMP_CRC32C(crc, &hdr, sizeof(hdr));
	if (fwrite(&hdr, sizeof(hdr), 1, file) != 1)
		goto error;
	for (int i = 0; i < bk_shared->max_sinks; i++)
	{
		BkStatsRecord r;

		if (!bk_shared->sinks[i].in_use)
			continue;
		record_from_slot(&bk_shared->sinks[i], &r);
		COMP_CRC32C(crc, &r, sizeof(r));
		if (fwrite(&r, sizeof(r), 1, file) != 1)
			goto error;
	}
	FIN_CRC32C(crc);
	if (fwrite(&crc, sizeof(crc), 1, file) != 1)
		goto error;
	if (FreeFile(file))
	{
		file = NULL;
		goto error;
	}
	/* atomic replace, fsync'ed: a crash during the save leaves no half file */
	(void) durable_rename(BK_STATS_FILE ".tmp", BK_STATS_FILE, LOG);
	return;

error:
	ereport(LOG,
			(errcode_for_file_access(),
			 errmsg("could not write file \"%s\": %m", BK_STATS_FILE ".tmp")));
	if (file)
		FreeFile(file);
	unlink(BK_STATS_FILE ".tmp");
}

/* Whether the control file says the last shutdown was clean (no crash recovery ahead). */
static bool
shut_down_cleanly(void)
{
	bool		crc_ok = false;
	ControlFileData *cf = get_controlfile(DataDir, &crc_ok);
	bool		clean = crc_ok && (cf->state == DB_SHUTDOWNED ||
								   cf->state == DB_SHUTDOWNED_IN_RECOVERY);

	pfree(cf);
	return clean;
}

/*
 * Called once by the shmem startup hook when the segment was just created,
 * with every sink slot free. Reads the file, checks it whole, then fills slots.
 */
void
bk_stats_file_load(void)
{
	FILE	   *file;
	BkStatsFileHeader hdr;
	BkStatsRecord *records = NULL;
	pg_crc32c	crc;
	pg_crc32c	stored;
	int			loaded = 0;

	if (bk_shared == NULL || bk_shared->sinks == NULL)
		return;
	file = AllocateFile(BK_STATS_FILE, PG_BINARY_R);
	if (file == NULL)
	{
		if (errno != ENOENT)
			ereport(LOG,
					(errcode_for_file_access(),
					 errmsg("could not read file \"%s\": %m", BK_STATS_FILE)));
		return;
	}

	if (!shut_down_cleanly())
	{
		ereport(LOG,
				(errmsg("discarding batchkit statistics: the server was not shut down cleanly")));
		goto done;
	}
	if (fread(&hdr, sizeof(hdr), 1, file) != 1)
		goto bad;
	if (hdr.magic != BK_STATS_MAGIC || hdr.version != BK_STATS_VERSION ||
		hdr.record_size != sizeof(BkStatsRecord) || hdr.layout_crc != layout_crc())
	{
		ereport(LOG,
				(errmsg("ignoring batchkit statistics file \"%s\": written by an incompatible "
						"version", BK_STATS_FILE)));
		goto done;
	}
	if (hdr.nrecords > (uint32) PG_INT32_MAX / sizeof(BkStatsRecord))
		goto bad;
	records = palloc(sizeof(BkStatsRecord) * Max(hdr.nrecords, 1));
	INIT_CRC32C(crc);
	COMP_CRC32C(crc, &hdr, sizeof(hdr));
	if (hdr.nrecords > 0 &&
		fread(records, sizeof(BkStatsRecord), hdr.nrecords, file) != hdr.nrecords)
		goto bad;
	COMP_CRC32C(crc, records, sizeof(BkStatsRecord) * hdr.nrecords);
	FIN_CRC32C(crc);
	if (fread(&stored, sizeof(stored), 1, file) != 1 || !EQ_CRC32C(crc, stored))
		goto bad;

	for (uint32 i = 0; i < hdr.nrecords && loaded < bk_shared->max_sinks; i++)
		slot_from_record(&bk_shared->sinks[loaded++], &records[i]);
	if (hdr.nrecords > (uint32) loaded)
		ereport(LOG,
				(errmsg("batchkit.max_sinks (%d) is too small to restore the statistics of %u sinks",
						bk_shared->max_sinks, hdr.nrecords)));
	ereport(LOG, (errmsg("batchkit restored the statistics of %d sinks", loaded)));
	goto done;

bad:
	ereport(LOG,
			(errmsg("ignoring corrupted batchkit statistics file \"%s\"", BK_STATS_FILE)));
done:
	FreeFile(file);
	if (records)
		pfree(records);
	/* loaded once: a later crash must not bring these numbers back */
	unlink(BK_STATS_FILE);
}
