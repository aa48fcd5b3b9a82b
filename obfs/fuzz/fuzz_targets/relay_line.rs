//! Any text as a relay line: parse without panicking, and anything that
//! parses prints back to a line that parses to the same value.
#![no_main]

use burrow_obfs::RelayLine;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(line) = text.parse::<RelayLine>() {
        let again: RelayLine = line.to_string().parse().expect("printed line parses");
        assert_eq!(again, line);
    }
});
