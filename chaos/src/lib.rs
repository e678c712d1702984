//! `zerok-chaos`: chaos scenarios over the harness — seeded, deterministic runs of relays and
//! clients with partitions, crashes, actor kills and injected faults; failing seeds become
//! regression tests. Nothing is implemented yet: scenarios come once both node trees exist.
