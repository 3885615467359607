//! Reading a response's `Retry-After` header, in either of its two forms.

use std::time::{Duration, SystemTime};

use http::HeaderMap;
use http::header::RETRY_AFTER;

use crate::clock::{self, Instant};

/// The longest `Retry-After` this crate believes: one day. A longer one (a misconfigured
/// server, a date years ahead from a wrong clock) is ignored, as if absent.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The longest delta-seconds value worth reading digit by digit: anything longer is above
/// [`MAX_RETRY_AFTER`] whatever its digits, and rejecting it early keeps the work bounded.
const MAX_DIGITS: usize = 12;

/// Where "now" comes from when a `Retry-After` names a date.
///
/// A `Retry-After: Wed, 21 Oct 2026 07:28:00 GMT` means "not before that wall-clock time", so
/// the delay is that time minus the current wall-clock time, which needs a wall clock: the
/// crate's [`clock`] is monotonic and has no date.
///
/// - [`WallClock::System`] (the default) reads [`SystemTime::now`] at each date it converts.
///   It follows the system's clock, corrections included, and not tokio's paused time. As
///   with any HTTP-date, a client whose clock is off by some seconds waits that much more or
///   less; delta-seconds (`Retry-After: 120`) have no such error and need no clock.
/// - [`WallClock::anchored`] is for tests and simulations: a fixed wall time at the moment it
///   is made, moved forward by the crate's [`clock`], so in tokio's paused time it advances
///   only when virtual time does.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tower_firebreak::http::WallClock;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
/// let wall = WallClock::anchored(start);
/// tokio::time::sleep(Duration::from_secs(5)).await; // virtual time
/// assert_eq!(wall.now(), start + Duration::from_secs(5));
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WallClock {
    /// The system's wall clock, [`SystemTime::now`].
    #[default]
    System,
    /// `at` when the crate's clock read `since`, advancing with the crate's clock. Made by
    /// [`WallClock::anchored`].
    Anchored {
        /// The wall time at `since`.
        at: SystemTime,
        /// The crate clock's reading when the wall time was `at`.
        since: Instant,
    },
}

impl WallClock {
    /// A wall clock that reads `at` now and then advances with the crate's [`clock`].
    pub fn anchored(at: SystemTime) -> WallClock {
        WallClock::Anchored {
            at,
            since: clock::now(),
        }
    }

    /// The current wall time, as this clock tells it.
    pub fn now(&self) -> SystemTime {
        match *self {
            WallClock::System => SystemTime::now(),
            WallClock::Anchored { at, since } => {
                let elapsed = clock::now().saturating_duration_since(since);
                at.checked_add(elapsed).unwrap_or(at)
            }
        }
    }
}

/// The delay a response's `Retry-After` header asks for, or `None` if it has none that can be
/// trusted.
///
/// `now` is the current wall time, used only when the header is an HTTP-date (see
/// [`WallClock`]). The header is ignored (`None`) when it is absent, appears more than once,
/// or its value is not one that [`parse_retry_after`] accepts.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use http::{HeaderMap, HeaderValue, header::RETRY_AFTER};
/// use tower_firebreak::http::retry_after;
///
/// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 07:28:00 GMT
/// let mut headers = HeaderMap::new();
/// headers.insert(RETRY_AFTER, HeaderValue::from_static("Wed, 21 Oct 2015 07:28:30 GMT"));
/// assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(30)));
///
/// headers.append(RETRY_AFTER, HeaderValue::from_static("5"));
/// assert_eq!(retry_after(&headers, now), None, "two values: which one? neither");
/// ```
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    retry_after_with(headers, || now)
}

/// [`retry_after`], reading the wall clock only if the value is a date.
pub(crate) fn retry_after_with(
    headers: &HeaderMap,
    now: impl FnOnce() -> SystemTime,
) -> Option<Duration> {
    let mut values = headers.get_all(RETRY_AFTER).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    parse_with(value.as_bytes(), now)
}

/// Parses one `Retry-After` value: delta-seconds (`120`) or an HTTP-date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`, and the obsolete RFC 850 and asctime forms), relative to
/// the wall time `now`.
///
/// Surrounding spaces and tabs are allowed. Returns `None` for anything else: a sign (so no
/// negative delay), a fraction, trailing text, a list, a value above [`MAX_RETRY_AFTER`], or
/// bytes that are not ASCII. A date in the past asks for no wait: `Some(Duration::ZERO)`.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tower_firebreak::http::parse_retry_after;
///
/// let now = SystemTime::now();
/// assert_eq!(parse_retry_after(b"120", now), Some(Duration::from_secs(120)));
/// assert_eq!(parse_retry_after(b"-1", now), None);
/// assert_eq!(parse_retry_after(b"1.5", now), None);
/// assert_eq!(parse_retry_after(b"99999999999", now), None, "over a day");
/// assert_eq!(parse_retry_after(b"Thu, 01 Jan 1970 00:00:00 GMT", now), Some(Duration::ZERO));
/// ```
pub fn parse_retry_after(value: &[u8], now: SystemTime) -> Option<Duration> {
    parse_with(value, || now)
}

fn parse_with(value: &[u8], now: impl FnOnce() -> SystemTime) -> Option<Duration> {
    let value = value.trim_ascii();
    if value.is_empty() {
        return None;
    }
    if value.iter().all(u8::is_ascii_digit) {
        return delta_seconds(value);
    }
    // An HTTP-date is ASCII; anything else is not one, and `str` needs valid UTF-8 anyway.
    let text = std::str::from_utf8(value).ok()?;
    let at = httpdate::parse_http_date(text).ok()?;
    // A date in the past asks for no wait.
    let wait = at.duration_since(now()).unwrap_or_default();
    (wait <= MAX_RETRY_AFTER).then_some(wait)
}

/// `value` is one or more ASCII digits.
fn delta_seconds(value: &[u8]) -> Option<Duration> {
    let digits = match value.iter().position(|&b| b != b'0') {
        Some(first) => &value[first..],
        None => return Some(Duration::ZERO),
    };
    if digits.len() > MAX_DIGITS {
        return None;
    }
    let seconds = digits
        .iter()
        .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
    let wait = Duration::from_secs(seconds);
    (wait <= MAX_RETRY_AFTER).then_some(wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn delta_seconds_forms() {
        let now = at(1_000_000);
        let cases: &[(&[u8], Option<u64>)] = &[
            (b"0", Some(0)),
            (b"000", Some(0)),
            (b"007", Some(7)),
            (b" 30\t", Some(30)),
            (b"86400", Some(86_400)),
            (b"86401", None),
            (b"000000000000000000000000005", Some(5)),
            (b"18446744073709551616", None), // u64::MAX + 1
            (b"", None),
            (b"  ", None),
            (b"+5", None),
            (b"-5", None),
            (b"5s", None),
            (b"5 5", None),
            (b"5, 6", None),
            (b"0x10", None),
            (b"\xff", None),
        ];
        for (value, expected) in cases {
            assert_eq!(
                parse_retry_after(value, now),
                expected.map(Duration::from_secs),
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
    }

    #[test]
    fn dates_in_each_form_are_relative_to_now() {
        // 1994-11-06 08:49:37 GMT
        let date = 784_111_777;
        let now = at(date - 90);
        for form in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(
                parse_retry_after(form.as_bytes(), now),
                Some(Duration::from_secs(90)),
                "{form}"
            );
        }
        assert_eq!(
            parse_retry_after(b"Sun, 06 Nov 1994 08:49:37 GMT", at(date + 1)),
            Some(Duration::ZERO),
            "a past date asks for no wait"
        );
        assert_eq!(
            parse_retry_after(b"Sun, 06 Nov 1994 08:49:37 GMT", at(date - 86_401)),
            None,
            "more than a day ahead"
        );
        assert_eq!(parse_retry_after(b"Sun, 06 Nov 1994", now), None);
    }

    #[test]
    fn a_delta_never_reads_the_wall_clock() {
        let headers = {
            let mut headers = HeaderMap::new();
            headers.insert(RETRY_AFTER, http::HeaderValue::from_static("3"));
            headers
        };
        let wait = retry_after_with(&headers, || unreachable!("no date, no clock"));
        assert_eq!(wait, Some(Duration::from_secs(3)));
    }
}
