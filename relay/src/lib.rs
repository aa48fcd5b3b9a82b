//! burrow-relay: relay mode — circuit relay, RAM-only mailbox and tracker (not built yet).
#![forbid(unsafe_code)]
