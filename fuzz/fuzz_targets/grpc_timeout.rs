//! Any bytes as a `grpc-timeout` value: never a panic; a value that parses formats back to
//! a header that parses to no more than it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_firebreak::http::{format_grpc_timeout, parse_grpc_timeout};

fuzz_target!(|bytes: &[u8]| {
    if let Some(timeout) = parse_grpc_timeout(bytes) {
        let formatted = format_grpc_timeout(timeout);
        let again = parse_grpc_timeout(formatted.as_bytes()).expect("our own format parses");
        assert!(again <= timeout);
    }
});
