//! The audit log: every refusal (and, when asked, every approval), bounded
//! in memory. Records hold endpoints and reasons, never message content.

use std::collections::VecDeque;
use std::time::SystemTime;

use crate::target::Target;

/// What was decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Approved { reason: String },
    Refused { reason: String },
}

/// One decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Position in this process's log, from 1; set by [`Audit::record`].
    pub seq: u64,
    pub time: SystemTime,
    /// The part of the program that asked (`relay-upstream`, `carrier`, …).
    pub component: String,
    pub target: Target,
    pub verdict: Verdict,
}

/// A bounded log of decisions; the oldest records go first.
#[derive(Debug, Clone)]
pub struct Audit {
    records: VecDeque<Record>,
    capacity: usize,
    log_approvals: bool,
    /// Records dropped because the log was full.
    dropped: u64,
    last_seq: u64,
}

/// Records kept in memory unless configured otherwise.
pub const DEFAULT_AUDIT_CAPACITY: usize = 10_000;

impl Default for Audit {
    fn default() -> Self {
        Self::new(DEFAULT_AUDIT_CAPACITY, false)
    }
}

impl Audit {
    pub fn new(capacity: usize, log_approvals: bool) -> Self {
        Self {
            records: VecDeque::with_capacity(capacity.min(1024)),
            capacity: capacity.max(1),
            log_approvals,
            dropped: 0,
            last_seq: 0,
        }
    }

    pub fn record(&mut self, mut record: Record) {
        if matches!(record.verdict, Verdict::Approved { .. }) && !self.log_approvals {
            return;
        }
        self.last_seq += 1;
        record.seq = self.last_seq;
        if self.records.len() == self.capacity {
            self.records.pop_front();
            self.dropped += 1;
        }
        self.records.push_back(record);
    }

    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.records.iter()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Records after `seq` (0: all still held), oldest first.
    pub fn since(&self, seq: u64) -> Vec<Record> {
        self.records
            .iter()
            .filter(|r| r.seq > seq)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::Proto;

    fn rec(n: u16, approved: bool) -> Record {
        let reason = format!("r{n}");
        Record {
            seq: 0,
            time: SystemTime::UNIX_EPOCH,
            component: "test".into(),
            target: Target::parse(&format!("10.0.0.1:{n}"), Proto::Tcp, None).expect("target"),
            verdict: if approved {
                Verdict::Approved { reason }
            } else {
                Verdict::Refused { reason }
            },
        }
    }

    #[test]
    fn bounded_oldest_first_and_approvals_optional() {
        let mut a = Audit::new(3, false);
        for n in 1..=5 {
            a.record(rec(n, false));
            a.record(rec(n, true));
        }
        let ports: Vec<u16> = a.records().map(|r| r.target.port).collect();
        assert_eq!(ports, [3, 4, 5]);
        assert_eq!(a.dropped(), 2);
        let mut a = Audit::new(10, true);
        a.record(rec(1, true));
        assert_eq!(a.records().count(), 1);
        a.record(rec(2, false));
        let after: Vec<u64> = a.since(1).iter().map(|r| r.seq).collect();
        assert_eq!(after, [2]);
        assert_eq!(a.since(0).len(), 2);
    }
}
