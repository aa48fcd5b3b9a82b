//! Any bytes as a gate value, under a fixed key and exporter: the gate must
//! refuse or pass without panicking, and never pass what it cannot decrypt.
#![no_main]

use burrow_obfs::gate::{Binding, Gate, GateSecret};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let gate = Gate::new(GateSecret::from_bytes([0x11; 32]));
    let binding = Binding::Exporter([0x5a; 32]);
    let _ = gate.check(&binding, Some(data));
    let _ = gate.check_raw(&binding, data);
});
