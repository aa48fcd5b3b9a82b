//! Any bytes from an origin, split at any point: the proxy's response
//! reader ends in a bounded response or an error, never a panic.
#![no_main]

use burrow_obfs::upstream::ResponseReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let head_request = split & 1 == 1;
    let cut = usize::from(split).min(rest.len());
    let mut reader = ResponseReader::new(head_request);
    for part in [&rest[..cut], &rest[cut..]] {
        match reader.feed(part) {
            Ok(Some(resp)) => {
                assert!(resp.body.len() <= rest.len());
                return;
            }
            Ok(None) => {}
            Err(_) => return,
        }
    }
    let _ = reader.eof();
});
