//! [`IdempotentRequests`]: only requests that are safe to send twice are retried.

use std::fmt;
use std::sync::Arc;

use http::{HeaderName, Method, Request};

use crate::error::ConfigError;
use crate::retry::CloneRequest;

const CLONER: &str = "IdempotentRequests";

/// `Idempotency-Key`, the header with which a client marks a request (typically a `POST`)
/// that the server will not apply twice.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The methods HTTP defines, one bit each.
const STANDARD: [Method; 9] = [
    Method::OPTIONS,
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::HEAD,
    Method::TRACE,
    Method::CONNECT,
    Method::PATCH,
];

fn standard_bit(method: &Method) -> Option<u16> {
    STANDARD
        .iter()
        .position(|standard| standard == method)
        .map(|index| 1 << index)
}

/// The part of the settings that is not `Copy`, shared so that a clone per call (the retry
/// layer clones its cloner into each response future) is a reference count, not an
/// allocation.
#[derive(Debug)]
struct Rest {
    extension_methods: Vec<Method>,
    header: Option<HeaderName>,
}

/// Copies an `http::Request` for a retry only if sending it twice is safe; otherwise the
/// request is not retried.
///
/// By default, that is a request whose method is idempotent by definition (`GET`, `HEAD`,
/// `OPTIONS`, `TRACE`, `PUT`, `DELETE`), or any request carrying an
/// [`Idempotency-Key`](IDEMPOTENCY_KEY) header. A `POST` or `PATCH` without the key is sent
/// once: the first attempt may have been applied even if its response was lost.
///
/// The body must be `Clone` and is cloned whole: use a buffered body (`String`,
/// `http_body_util::Full<Bytes>`, whose clone is a reference count), not a stream.
///
/// ```
/// use http::Request;
/// use tower_firebreak::http::IdempotentRequests;
/// use tower_firebreak::retry::{CloneRequest, RetryLayer};
///
/// let cloner = IdempotentRequests::default();
/// let get = Request::get("/items/1").body(String::new()).unwrap();
/// let post = Request::post("/items").body("{}".to_string()).unwrap();
/// let keyed = Request::post("/items")
///     .header("idempotency-key", "8e03978e")
///     .body("{}".to_string())
///     .unwrap();
/// assert!(cloner.clone_request(&get).is_some());
/// assert!(cloner.clone_request(&post).is_none());
/// assert!(cloner.clone_request(&keyed).is_some());
///
/// let retry = RetryLayer::builder().clone_requests_with(cloner).build()?;
/// # let _ = retry;
/// # Ok::<(), tower_firebreak::error::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct IdempotentRequests {
    standard: u16,
    rest: Arc<Rest>,
}

impl Default for IdempotentRequests {
    fn default() -> Self {
        IdempotentRequests::builder()
            .build()
            .expect("the default settings are valid")
    }
}

impl fmt::Debug for IdempotentRequests {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let methods: Vec<&Method> = STANDARD
            .iter()
            .filter(|method| standard_bit(method).is_some_and(|bit| self.standard & bit != 0))
            .chain(&self.rest.extension_methods)
            .collect();
        f.debug_struct("IdempotentRequests")
            .field("methods", &methods)
            .field("header", &self.rest.header)
            .finish()
    }
}

impl IdempotentRequests {
    /// Starts from the defaults (see the [type docs](Self)).
    pub fn builder() -> IdempotentRequestsBuilder {
        IdempotentRequestsBuilder {
            methods: vec![
                Method::GET,
                Method::HEAD,
                Method::OPTIONS,
                Method::TRACE,
                Method::PUT,
                Method::DELETE,
            ],
            header: Some(IDEMPOTENCY_KEY),
        }
    }

    /// Whether `request` may be sent more than once.
    pub fn allows<B>(&self, request: &Request<B>) -> bool {
        let method = request.method();
        let by_method = match standard_bit(method) {
            Some(bit) => self.standard & bit != 0,
            None => self.rest.extension_methods.contains(method),
        };
        by_method
            || self
                .rest
                .header
                .as_ref()
                .is_some_and(|header| request.headers().contains_key(header))
    }
}

impl<B: Clone> CloneRequest<Request<B>> for IdempotentRequests {
    fn clone_request(&self, request: &Request<B>) -> Option<Request<B>> {
        self.allows(request).then(|| request.clone())
    }
}

/// Builder of [`IdempotentRequests`], from [`IdempotentRequests::builder`].
///
/// ```
/// use http::{HeaderName, Method};
/// use tower_firebreak::http::IdempotentRequests;
///
/// // An API whose reads are `GET` and `QUERY`, with its own idempotency header.
/// let cloner = IdempotentRequests::builder()
///     .methods([Method::GET, Method::from_bytes(b"QUERY").unwrap()])
///     .header(HeaderName::from_static("x-request-id"))
///     .build()?;
/// # let _ = cloner;
/// # Ok::<(), tower_firebreak::error::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct IdempotentRequestsBuilder {
    methods: Vec<Method>,
    header: Option<HeaderName>,
}

impl IdempotentRequestsBuilder {
    /// The methods that are always retried, replacing the default list.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// The header that makes any request retryable when present; default
    /// [`Idempotency-Key`](IDEMPOTENCY_KEY).
    pub fn header(mut self, header: HeaderName) -> Self {
        self.header = Some(header);
        self
    }

    /// No header makes a request retryable: only [`methods`](Self::methods) count.
    pub fn without_header(mut self) -> Self {
        self.header = None;
        self
    }

    /// Builds the cloner.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Missing`] when there are no methods and no header: such a cloner would
    /// never allow a retry. Use [`max_attempts(1)`](crate::retry::RetryLayerBuilder::max_attempts)
    /// to say that.
    pub fn build(self) -> Result<IdempotentRequests, ConfigError> {
        if self.methods.is_empty() && self.header.is_none() {
            return Err(ConfigError::Missing {
                layer: CLONER,
                setting: "methods",
            });
        }
        let mut standard = 0;
        let mut extension_methods = Vec::new();
        for method in self.methods {
            match standard_bit(&method) {
                Some(bit) => standard |= bit,
                None if !extension_methods.contains(&method) => extension_methods.push(method),
                None => {}
            }
        }
        Ok(IdempotentRequests {
            standard,
            rest: Arc::new(Rest {
                extension_methods,
                header: self.header,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, key: Option<&str>) -> Request<()> {
        let mut builder = Request::builder().method(method).uri("/");
        if let Some(key) = key {
            builder = builder.header(key, "k-1");
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn the_default_allows_idempotent_methods_and_keyed_requests() {
        let cloner = IdempotentRequests::default();
        for method in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert!(cloner.allows(&request(method, None)), "{method}");
        }
        for method in ["POST", "PATCH", "CONNECT", "QUERY"] {
            assert!(!cloner.allows(&request(method, None)), "{method}");
            assert!(
                cloner.allows(&request(method, Some("Idempotency-Key"))),
                "{method} with a key"
            );
        }
    }

    #[test]
    fn methods_and_header_are_configurable() {
        let cloner = IdempotentRequests::builder()
            .methods([Method::POST, Method::from_bytes(b"QUERY").unwrap()])
            .header(HeaderName::from_static("x-retry-safe"))
            .build()
            .unwrap();
        assert!(cloner.allows(&request("POST", None)));
        assert!(cloner.allows(&request("QUERY", None)));
        assert!(!cloner.allows(&request("GET", None)));
        assert!(!cloner.allows(&request("GET", Some("idempotency-key"))));
        assert!(cloner.allows(&request("GET", Some("x-retry-safe"))));
    }

    #[test]
    fn a_cloner_that_allows_nothing_is_a_config_error() {
        let err = IdempotentRequests::builder()
            .methods([])
            .without_header()
            .build()
            .unwrap_err();
        assert!(matches!(err, ConfigError::Missing { .. }), "{err}");
    }
}
