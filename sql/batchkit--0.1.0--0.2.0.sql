-- batchkit upgrade script 0.1.0 -> 0.2.0 (ALTER EXTENSION batchkit UPDATE TO '0.2.0').
--
-- Every change of SQL objects made since 0.1.0 goes here AND into sql/install/ (which
-- describes the current version for a fresh install). test_upgrade.py proves that a
-- database updated through this script has exactly the catalog of a fresh install.
-- The library (batchkit.so) serves databases still at 0.1.0 until they are updated.
\echo Use "ALTER EXTENSION batchkit UPDATE TO '0.2.0'" to load this file. \quit
