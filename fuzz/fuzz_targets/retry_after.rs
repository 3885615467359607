//! Any bytes as a `Retry-After` value, once alone and once twice in a header map: never a
//! panic, never a wait above the cap, and a repeated header is always ignored.
#![no_main]

use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use libfuzzer_sys::fuzz_target;
use tower_firebreak::http::{MAX_RETRY_AFTER, parse_retry_after, retry_after};

fuzz_target!(|input: (u32, &[u8])| {
    let (seconds, bytes) = input;
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(seconds));
    let parsed = parse_retry_after(bytes, now);
    if let Some(wait) = parsed {
        assert!(wait <= MAX_RETRY_AFTER);
    }
    if let Ok(value) = HeaderValue::from_bytes(bytes) {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, value.clone());
        assert_eq!(retry_after(&headers, now), parsed);
        headers.append(RETRY_AFTER, value);
        assert_eq!(retry_after(&headers, now), None);
    }
});
