//! The request's deadline across a network hop, in gRPC's `grpc-timeout` header.
//!
//! The format is gRPC's: up to 8 digits and a unit, `H`ours, `M`inutes, `S`econds,
//! `m`illiseconds, `u` (microseconds) or `n`anoseconds, such as `250m` or `2S`. It is the time
//! left, not an instant, so the two hosts' clocks need not agree; the time on the wire is the
//! one thing the remote side cannot know, and is charged to it. gRPC servers such as tonic's
//! and grpc-go's read the same header, so a deadline set here reaches them too, and a deadline
//! a gRPC client sent is read here.

use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Request};
use tower::{Layer, Service};

use crate::clock;
use crate::error::{BoxError, ConfigError};
use crate::timeout::DeadlineFuture;
use crate::timeout::deadline;

const ACCEPT: &str = "AcceptDeadlineLayer";

/// `grpc-timeout`, the header both deadline layers use by default.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The largest value gRPC allows: 8 digits.
const MAX_VALUE: u64 = 99_999_999;

/// The units, finest first, with their length in nanoseconds.
const UNITS: [(u8, u64); 6] = [
    (b'n', 1),
    (b'u', 1_000),
    (b'm', 1_000_000),
    (b'S', 1_000_000_000),
    (b'M', 60 * 1_000_000_000),
    (b'H', 3_600 * 1_000_000_000),
];

/// Parses a `grpc-timeout` value, such as `250m`: 1 to 8 ASCII digits and one unit letter,
/// with nothing else but surrounding spaces or tabs. Anything else is `None`.
///
/// ```
/// use std::time::Duration;
/// use tower_firebreak::http::parse_grpc_timeout;
///
/// assert_eq!(parse_grpc_timeout(b"250m"), Some(Duration::from_millis(250)));
/// assert_eq!(parse_grpc_timeout(b"2H"), Some(Duration::from_secs(7200)));
/// assert_eq!(parse_grpc_timeout(b"123456789S"), None, "9 digits");
/// assert_eq!(parse_grpc_timeout(b"-1S"), None);
/// assert_eq!(parse_grpc_timeout(b"5"), None, "no unit");
/// ```
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let value = value.trim_ascii();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let count = digits
        .iter()
        .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
    let (_, nanos) = UNITS.iter().find(|(letter, _)| *letter == unit)?;
    // At most 99,999,999 hours: about 3.6e20 ns, more than a u64 holds, so multiply in u128.
    let total = u128::from(count) * u128::from(*nanos);
    let seconds = u64::try_from(total / 1_000_000_000).ok()?;
    let subsec = (total % 1_000_000_000) as u32; // below 1e9, so it fits
    Some(Duration::new(seconds, subsec))
}

/// Formats `timeout` as a `grpc-timeout` value, in the finest unit that holds it in 8 digits,
/// then the coarsest that says the same (`2S`, not `2000000u`). Precision lost to a coarser
/// unit is rounded down, so the remote side never thinks it has more time than it does.
/// Beyond 99,999,999 hours it says that much.
///
/// ```
/// use std::time::Duration;
/// use tower_firebreak::http::format_grpc_timeout;
///
/// assert_eq!(format_grpc_timeout(Duration::from_millis(250)), "250m");
/// assert_eq!(format_grpc_timeout(Duration::from_secs(2)), "2S");
/// assert_eq!(format_grpc_timeout(Duration::from_nanos(1_500_000_001)), "1500m");
/// assert_eq!(format_grpc_timeout(Duration::from_nanos(1_500_001_000)), "1500001u");
/// ```
pub fn format_grpc_timeout(timeout: Duration) -> HeaderValue {
    let mut buffer = [0u8; 9];
    let length = encode(timeout, &mut buffer);
    HeaderValue::from_bytes(&buffer[..length]).expect("digits and a letter are a valid value")
}

/// Writes `timeout` in `grpc-timeout` form into `buffer`; returns the length written.
fn encode(timeout: Duration, buffer: &mut [u8; 9]) -> usize {
    let nanos = timeout.as_nanos();
    let finest = UNITS
        .iter()
        .position(|(_, unit)| nanos / u128::from(*unit) <= u128::from(MAX_VALUE));
    let (mut index, mut count) = match finest {
        Some(index) => (index, (nanos / u128::from(UNITS[index].1)) as u64),
        None => (UNITS.len() - 1, MAX_VALUE),
    };
    while count != 0 && index + 1 < UNITS.len() {
        let ratio = UNITS[index + 1].1 / UNITS[index].1;
        if count % ratio != 0 {
            break;
        }
        count /= ratio;
        index += 1;
    }
    let mut digits = [0u8; 8];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (count % 10) as u8;
        count /= 10;
        if count == 0 {
            break;
        }
    }
    let length = digits.len() - start;
    buffer[..length].copy_from_slice(&digits[start..]);
    buffer[length] = UNITS[index].0;
    length + 1
}

/// The one value of `header` in `request`, parsed; `None` if absent, repeated or malformed.
fn inbound<B>(request: &Request<B>, header: &HeaderName) -> Option<Duration> {
    let mut values = request.headers().get_all(header).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    parse_grpc_timeout(value.as_bytes())
}

/// Client side: writes the time left before the request's
/// [`deadline`](crate::timeout::deadline) into each outgoing request, so the server can stop
/// working when the client has stopped waiting.
///
/// A request with no deadline in force is sent unchanged. A request that already carries a
/// valid header with less time keeps it. The layer adds no error and passes the inner
/// service's through; put it below this crate's [`Deadline`](crate::timeout::Deadline) or
/// [`Timeout`](crate::timeout::Timeout), which refuse a request whose deadline has passed (this
/// layer would send `0n`, and the server would refuse it).
///
/// It tells the time left before the request's deadline. A per-attempt
/// [`Timeout`](crate::timeout::Timeout) is not a deadline and is not included: the server may
/// work on after an attempt timed out, until the deadline.
///
/// Costs nothing without a deadline; with one, a clock read and the header's value (one small
/// allocation, more if the request had no header yet).
///
/// ```
/// use std::time::Duration;
/// use http::Request;
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
/// use tower_firebreak::ServiceBuilderExt;
/// use tower_firebreak::error::BoxError;
/// use tower_firebreak::http::PropagateDeadlineLayer;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), BoxError> {
/// let upstream = service_fn(|req: Request<()>| async move {
///     Ok::<_, BoxError>(req.headers()["grpc-timeout"].clone())
/// });
/// let client = ServiceBuilder::new()
///     .deadline(Duration::from_millis(1500))?
///     .layer(PropagateDeadlineLayer::new())
///     .service(upstream);
/// assert_eq!(client.oneshot(Request::new(())).await?, "1500m");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PropagateDeadlineLayer {
    header: HeaderName,
}

impl Default for PropagateDeadlineLayer {
    fn default() -> Self {
        PropagateDeadlineLayer::new()
    }
}

impl PropagateDeadlineLayer {
    /// Writes [`grpc-timeout`](GRPC_TIMEOUT).
    pub fn new() -> Self {
        PropagateDeadlineLayer {
            header: GRPC_TIMEOUT,
        }
    }

    /// Writes `header` instead, in the same format.
    pub fn header(mut self, header: HeaderName) -> Self {
        self.header = header;
        self
    }
}

impl<S> Layer<S> for PropagateDeadlineLayer {
    type Service = PropagateDeadline<S>;

    fn layer(&self, inner: S) -> PropagateDeadline<S> {
        PropagateDeadline {
            inner,
            header: self.header.clone(),
        }
    }
}

/// Writes the time left into each outgoing request. Made by [`PropagateDeadlineLayer`].
#[derive(Debug, Clone)]
pub struct PropagateDeadline<S> {
    inner: S,
    header: HeaderName,
}

impl<S> PropagateDeadline<S> {
    inner_service_accessors!();
}

impl<S, B> Service<Request<B>> for PropagateDeadline<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> S::Future {
        if let Some(left) = deadline::remaining() {
            let tighter_already = inbound(&request, &self.header).is_some_and(|set| set <= left);
            if !tighter_already {
                request
                    .headers_mut()
                    .insert(&self.header, format_grpc_timeout(left));
            }
        }
        self.inner.call(request)
    }
}

/// Server side: reads the client's time left from each incoming request, makes it the
/// request's [`deadline`](crate::timeout::deadline) for everything below (handlers, clients
/// with a [`PropagateDeadlineLayer`]), and enforces it.
///
/// - A request whose header says no time is left (`0n`, `0S`, ...) fails at once with
///   [`DeadlineExceeded`](crate::timeout::DeadlineExceeded), without calling the inner
///   service: the client has already given up.
/// - Otherwise the deadline is now plus the time left (or plus [`max`](AcceptDeadlineLayerBuilder::max),
///   if shorter), tightened by any deadline already in force; the inner service sees it through
///   [`deadline::remaining`], and the call fails with `DeadlineExceeded` when it passes.
/// - A request without the header, or with a malformed or repeated one, is served as if the
///   layer were not there.
///
/// Errors are [`BoxError`]; with axum, map them with [`error_response`](super::error_response)
/// in a `HandleErrorLayer` (`DeadlineExceeded` becomes 504).
///
/// A request with the header costs one clock read and allocates nothing; the deadline's timer
/// is armed only if the inner response is not ready on its first poll.
///
/// ```
/// use std::time::Duration;
/// use http::Request;
/// use tower::{Layer, ServiceExt, service_fn};
/// use tower_firebreak::error::{BoxError, ErrorKind};
/// use tower_firebreak::http::AcceptDeadlineLayer;
/// use tower_firebreak::timeout::deadline;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), BoxError> {
/// let handler = service_fn(|_: Request<()>| async { Ok::<_, BoxError>(deadline::remaining()) });
/// let server = AcceptDeadlineLayer::new().layer(handler);
///
/// let request = Request::get("/").header("grpc-timeout", "250m").body(())?;
/// assert_eq!(server.clone().oneshot(request).await?, Some(Duration::from_millis(250)));
///
/// let expired = Request::get("/").header("grpc-timeout", "0n").body(())?;
/// let err = server.oneshot(expired).await.unwrap_err();
/// assert_eq!(ErrorKind::of(&*err), ErrorKind::DeadlineExceeded);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct AcceptDeadlineLayer {
    header: HeaderName,
    max: Option<Duration>,
}

impl Default for AcceptDeadlineLayer {
    fn default() -> Self {
        AcceptDeadlineLayer::new()
    }
}

impl AcceptDeadlineLayer {
    /// Reads [`grpc-timeout`](GRPC_TIMEOUT), with no upper bound.
    pub fn new() -> Self {
        AcceptDeadlineLayer {
            header: GRPC_TIMEOUT,
            max: None,
        }
    }

    /// Starts from [`new`](Self::new), to change the header or bound the time a client may
    /// ask for.
    pub fn builder() -> AcceptDeadlineLayerBuilder {
        AcceptDeadlineLayerBuilder {
            layer: AcceptDeadlineLayer::new(),
        }
    }
}

/// Builder of [`AcceptDeadlineLayer`], from [`AcceptDeadlineLayer::builder`].
///
/// ```
/// use std::time::Duration;
/// use tower_firebreak::http::AcceptDeadlineLayer;
///
/// let layer = AcceptDeadlineLayer::builder()
///     .max(Duration::from_secs(10)) // a client asking for an hour gets 10 s
///     .build()?;
/// # let _ = layer;
/// # Ok::<(), tower_firebreak::error::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct AcceptDeadlineLayerBuilder {
    layer: AcceptDeadlineLayer,
}

impl AcceptDeadlineLayerBuilder {
    /// Reads `header` instead of `grpc-timeout`, in the same format.
    pub fn header(mut self, header: HeaderName) -> Self {
        self.layer.header = header;
        self
    }

    /// The most time a request is given, whatever its header asks; greater than zero. No
    /// bound by default.
    pub fn max(mut self, max: Duration) -> Self {
        self.layer.max = Some(max);
        self
    }

    /// Checks the settings and builds the layer.
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroDuration`] for a `max` of zero.
    pub fn build(self) -> Result<AcceptDeadlineLayer, ConfigError> {
        if self.layer.max == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroDuration {
                layer: ACCEPT,
                setting: "max",
            });
        }
        Ok(self.layer)
    }
}

impl<S> Layer<S> for AcceptDeadlineLayer {
    type Service = AcceptDeadline<S>;

    fn layer(&self, inner: S) -> AcceptDeadline<S> {
        AcceptDeadline {
            inner,
            header: self.header.clone(),
            max: self.max,
        }
    }
}

/// Reads the client's deadline from each incoming request and enforces it. Made by
/// [`AcceptDeadlineLayer`]. `poll_ready` is the inner service's.
#[derive(Clone)]
pub struct AcceptDeadline<S> {
    inner: S,
    header: HeaderName,
    max: Option<Duration>,
}

impl<S: fmt::Debug> fmt::Debug for AcceptDeadline<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcceptDeadline")
            .field("inner", &self.inner)
            .field("header", &self.header)
            .field("max", &self.max)
            .finish()
    }
}

impl<S> AcceptDeadline<S> {
    inner_service_accessors!();
}

impl<S, B> Service<Request<B>> for AcceptDeadline<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let Some(left) = inbound(&request, &self.header) else {
            return DeadlineFuture::unbounded(self.inner.call(request));
        };
        if left.is_zero() {
            return DeadlineFuture::expired();
        }
        let left = self.max.map_or(left, |max| left.min(max));
        let Some(at) = clock::now().checked_add(left) else {
            // Too far ahead to be an instant (centuries): no deadline to speak of.
            return DeadlineFuture::unbounded(self.inner.call(request));
        };
        let at = deadline::tightened(at);
        let inner = deadline::within(at, || self.inner.call(request));
        DeadlineFuture::bounded(inner, at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_parses() {
        let cases: &[(&[u8], Duration)] = &[
            (b"7n", Duration::from_nanos(7)),
            (b"7u", Duration::from_micros(7)),
            (b"7m", Duration::from_millis(7)),
            (b"7S", Duration::from_secs(7)),
            (b"7M", Duration::from_secs(7 * 60)),
            (b"7H", Duration::from_secs(7 * 3600)),
            (b"99999999H", Duration::from_secs(99_999_999 * 3600)),
            (b"00000000n", Duration::ZERO),
            (b" 1S ", Duration::from_secs(1)),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_grpc_timeout(value), Some(*expected));
        }
    }

    #[test]
    fn malformed_values_are_none() {
        for value in [
            &b""[..],
            b"S",
            b"1",
            b"1s",
            b"1h",
            b"1 S",
            b"+1S",
            b"-1S",
            b"1.5S",
            b"123456789n",
            b"1SS",
            b"\xff1S",
            b"1\xffS",
        ] {
            assert_eq!(
                parse_grpc_timeout(value),
                None,
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
    }

    #[test]
    fn formatting_picks_an_exact_unit_and_rounds_down_otherwise() {
        let cases = [
            (Duration::ZERO, "0n"),
            (Duration::from_nanos(99_999_999), "99999999n"),
            (Duration::from_nanos(100_000_001), "100m"),
            (Duration::from_nanos(100_001_001), "100001u"),
            (Duration::from_millis(100), "100m"),
            (Duration::from_secs(60), "1M"),
            (Duration::from_secs(90), "90S"),
            (Duration::from_secs(7200), "2H"),
            (Duration::from_secs(100_000_000), "1666666M"),
            (Duration::MAX, "99999999H"),
        ];
        for (timeout, expected) in cases {
            assert_eq!(format_grpc_timeout(timeout), expected, "{timeout:?}");
            let parsed = parse_grpc_timeout(expected.as_bytes()).unwrap();
            assert!(parsed <= timeout, "{timeout:?} never grows on the wire");
        }
    }
}
