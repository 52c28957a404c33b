-- A text description of every SQL object of the batchkit extension in the current
-- database, one line per object property, free of OIDs: test_upgrade.py compares it
-- between a fresh install and a database updated through the upgrade scripts (pg_dump
-- cannot: it dumps an extension's members as one CREATE EXTENSION line).
--
-- Covered: the extension row (version, configuration tables and their filters), every
-- member object (pg_depend deptype 'e') by kind — functions (full definition, owner,
-- ACL, comment), relations (kind, persistence, owner, ACL, options, comment, columns
-- with types, defaults, identity, generation, storage, compression, column ACLs and
-- comments, constraints, indexes, triggers, policies, partition bounds, view
-- definitions, sequence parameters), types, schemas, event triggers — and the roles the
-- install creates. ACLs are compared as sorted sets (the order of grants is no difference).
WITH ext AS (
    SELECT oid, extname, extversion, extrelocatable, extconfig, extcondition, extnamespace
      FROM pg_catalog.pg_extension WHERE extname = 'batchkit'
), member AS (
    SELECT d.classid, d.objid, d.objsubid
      FROM pg_catalog.pg_depend d, ext
     WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.refobjid = ext.oid
       AND d.deptype = 'e'
), rel AS (
    SELECT c.* FROM pg_catalog.pg_class c JOIN member m
        ON m.classid = 'pg_catalog.pg_class'::regclass AND m.objid = c.oid
), lines(line) AS (
    -- the extension itself
    SELECT format('extension %s: schema %s, relocatable %s', extname,
                  extnamespace::regnamespace, extrelocatable) FROM ext
    UNION ALL
    SELECT format('extension config: %s filter %L', cfg::regclass, cond)
      FROM ext, unnest(extconfig, extcondition) AS u(cfg, cond)
    UNION ALL
    -- every member, as PostgreSQL names it
    SELECT 'member: ' || pg_catalog.pg_describe_object(classid, objid, objsubid) FROM member
    UNION ALL
    -- functions
    SELECT format('function %s: %s owner %s acl %s comment %L',
                  p.oid::regprocedure, pg_catalog.pg_get_functiondef(p.oid),
                  p.proowner::regrole, (SELECT array_agg(x::text ORDER BY x::text) FROM unnest(p.proacl) x), pg_catalog.obj_description(p.oid, 'pg_proc'))
      FROM pg_catalog.pg_proc p JOIN member m
        ON m.classid = 'pg_catalog.pg_proc'::regclass AND m.objid = p.oid
     WHERE p.prokind <> 'a'
    UNION ALL
    -- relations
    SELECT format('relation %s: kind %s persistence %s owner %s acl %s options %s partitioned %s bound %s comment %L',
                  c.oid::regclass, c.relkind, c.relpersistence, c.relowner::regrole, (SELECT array_agg(x::text ORDER BY x::text) FROM unnest(c.relacl) x),
                  c.reloptions, c.relispartition,
                  pg_catalog.pg_get_expr(c.relpartbound, c.oid),
                  pg_catalog.obj_description(c.oid, 'pg_class'))
      FROM rel c
    UNION ALL
    SELECT format('partition key of %s: %s', c.oid::regclass, pg_catalog.pg_get_partkeydef(c.oid))
      FROM rel c WHERE c.relkind = 'p'
    UNION ALL
    SELECT format('column %s.%s #%s: %s notnull %s default %s identity %L generated %L storage %s compression %L collation %s acl %s comment %L',
                  c.oid::regclass, a.attname, a.attnum,
                  pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
                  pg_catalog.pg_get_expr(ad.adbin, ad.adrelid), a.attidentity, a.attgenerated,
                  a.attstorage, a.attcompression, a.attcollation::regcollation, (SELECT array_agg(x::text ORDER BY x::text) FROM unnest(a.attacl) x),
                  pg_catalog.col_description(c.oid, a.attnum))
      FROM rel c JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
      LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
     WHERE NOT a.attisdropped
    UNION ALL
    SELECT format('constraint %s on %s: %s deferrable %s', co.conname, c.oid::regclass,
                  pg_catalog.pg_get_constraintdef(co.oid), co.condeferrable)
      FROM rel c JOIN pg_catalog.pg_constraint co ON co.conrelid = c.oid
    UNION ALL
    SELECT format('index on %s: %s', c.oid::regclass,
                  -- index names a fresh install derives (queue_sink_id_chunk_id_idx) stay
                  pg_catalog.pg_get_indexdef(i.indexrelid))
      FROM rel c JOIN pg_catalog.pg_index i ON i.indrelid = c.oid
    UNION ALL
    SELECT format('trigger on %s: %s', c.oid::regclass, pg_catalog.pg_get_triggerdef(t.oid))
      FROM rel c JOIN pg_catalog.pg_trigger t ON t.tgrelid = c.oid AND NOT t.tgisinternal
    UNION ALL
    SELECT format('policy on %s: %s %s %s using %s check %s', c.oid::regclass, po.polname,
                  po.polcmd, po.polpermissive, pg_catalog.pg_get_expr(po.polqual, po.polrelid),
                  pg_catalog.pg_get_expr(po.polwithcheck, po.polrelid))
      FROM rel c JOIN pg_catalog.pg_policy po ON po.polrelid = c.oid
    UNION ALL
    SELECT format('view %s: %s', c.oid::regclass, pg_catalog.pg_get_viewdef(c.oid, true))
      FROM rel c WHERE c.relkind IN ('v', 'm')
    UNION ALL
    SELECT format('sequence %s: type %s start %s increment %s min %s max %s cache %s cycle %s owned by %s',
                  c.oid::regclass, s.seqtypid::regtype, s.seqstart, s.seqincrement, s.seqmin,
                  s.seqmax, s.seqcache, s.seqcycle,
                  (SELECT pg_catalog.pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid)
                     FROM pg_catalog.pg_depend d
                    WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
                      AND d.deptype IN ('a', 'i') AND d.refobjsubid > 0))
      FROM rel c JOIN pg_catalog.pg_sequence s ON s.seqrelid = c.oid
    UNION ALL
    -- types, schemas, event triggers
    SELECT format('type %s: %s len %s align %s storage %s input %s output %s receive %s send %s owner %s acl %s comment %L',
                  t.oid::regtype, t.typtype, t.typlen, t.typalign, t.typstorage,
                  t.typinput::regproc, t.typoutput::regproc, t.typreceive::regproc,
                  t.typsend::regproc, t.typowner::regrole,
                  (SELECT array_agg(x::text ORDER BY x::text) FROM unnest(t.typacl) x),
                  pg_catalog.obj_description(t.oid, 'pg_type'))
      FROM pg_catalog.pg_type t JOIN member m
        ON m.classid = 'pg_catalog.pg_type'::regclass AND m.objid = t.oid
    UNION ALL
    SELECT format('schema %s: owner %s acl %s comment %L', n.nspname, n.nspowner::regrole,
                  (SELECT array_agg(x::text ORDER BY x::text) FROM unnest(n.nspacl) x), pg_catalog.obj_description(n.oid, 'pg_namespace'))
      FROM pg_catalog.pg_namespace n, ext WHERE n.oid = ext.extnamespace
    UNION ALL
    SELECT format('event trigger %s: on %s enabled %s tags %s function %s owner %s comment %L',
                  e.evtname, e.evtevent, e.evtenabled, e.evttags, e.evtfoid::regprocedure,
                  e.evtowner::regrole, pg_catalog.obj_description(e.oid, 'pg_event_trigger'))
      FROM pg_catalog.pg_event_trigger e JOIN member m
        ON m.classid = 'pg_catalog.pg_event_trigger'::regclass AND m.objid = e.oid
    UNION ALL
    SELECT format('role %s: login %s inherit %s member of %s', r.rolname, r.rolcanlogin,
                  r.rolinherit,
                  (SELECT array_agg(g.rolname ORDER BY g.rolname) FROM pg_catalog.pg_auth_members am
                     JOIN pg_catalog.pg_roles g ON g.oid = am.roleid WHERE am.member = r.oid))
      FROM pg_catalog.pg_roles r WHERE r.rolname LIKE 'batchkit%'
)
SELECT line FROM lines ORDER BY line;
