-- blocks_live_ranges (family, range_start, range_end) is dropped. The one
-- query it served, "live blocks overlapping a network" when the allowlist
-- grows, compares range_start <= end AND range_end >= start, which an index
-- led by range_start narrows only to every live row that starts before the
-- network ends: on average half of them. It saved little on that rare
-- query, and cost every new block a random insert into a b-tree of 75-byte
-- keys: measured on a bulk import into SQLite, a third of the time of
-- writing a million blocks.
DROP INDEX blocks_live_ranges;
