//! The error model: kinds without string matching, downcasting, wrapped errors.

use std::error::Error;
use std::fmt;
use std::future::pending;
use std::time::Duration;

use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_firebreak::ServiceBuilderExt;
use tower_firebreak::error::{BoxError, ErrorKind};
use tower_firebreak::timeout::{DeadlineExceeded, Elapsed};

async fn timed_out() -> BoxError {
    ServiceBuilder::new()
        .timeout_attempt(Duration::from_millis(5))
        .unwrap()
        .service(service_fn(|()| pending::<Result<(), BoxError>>()))
        .oneshot(())
        .await
        .unwrap_err()
}

async fn deadline_exceeded() -> BoxError {
    ServiceBuilder::new()
        .deadline(Duration::from_millis(5))
        .unwrap()
        .service(service_fn(|()| pending::<Result<(), BoxError>>()))
        .oneshot(())
        .await
        .unwrap_err()
}

/// An application error that wraps whatever a lower layer returned, as users' code does.
#[derive(Debug)]
struct Wrapped(BoxError);
impl fmt::Display for Wrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "upstream call failed")
    }
}
impl Error for Wrapped {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.0)
    }
}

#[tokio::test(start_paused = true)]
async fn each_crate_error_has_its_own_kind_and_type() {
    let elapsed = timed_out().await;
    assert_eq!(ErrorKind::of(&*elapsed), ErrorKind::TimedOut);
    assert!(elapsed.is::<Elapsed>());
    assert_eq!(elapsed.to_string(), "request attempt timed out after 5ms");

    let exceeded = deadline_exceeded().await;
    assert_eq!(ErrorKind::of(&*exceeded), ErrorKind::DeadlineExceeded);
    assert!(exceeded.is::<DeadlineExceeded>());
    assert_eq!(exceeded.to_string(), "request deadline exceeded");
}

#[tokio::test(start_paused = true)]
async fn kinds_are_found_under_wrapping_errors() {
    let wrapped = Wrapped(timed_out().await);
    assert_eq!(ErrorKind::of(&wrapped), ErrorKind::TimedOut);
    let twice = Wrapped(Box::new(Wrapped(deadline_exceeded().await)));
    assert_eq!(ErrorKind::of(&twice), ErrorKind::DeadlineExceeded);
}

#[test]
fn errors_from_elsewhere_are_inner() {
    let io: BoxError = std::io::Error::other("refused").into();
    assert_eq!(ErrorKind::of(&*io), ErrorKind::Inner);
    assert_eq!(ErrorKind::of(&Wrapped(io)), ErrorKind::Inner);
    let text: BoxError = "a plain message".into();
    assert_eq!(ErrorKind::of(&*text), ErrorKind::Inner);
}

#[test]
fn a_very_long_source_chain_is_cut_off_not_followed_forever() {
    // 40 wrappers put the timeout beyond the 32 levels classification looks at.
    let mut err: BoxError = "bottom".into();
    for _ in 0..40 {
        err = Box::new(Wrapped(err));
    }
    assert_eq!(ErrorKind::of(&*err), ErrorKind::Inner);
}

#[tokio::test(start_paused = true)]
async fn circuit_open_has_its_kind_and_its_retry_after_hint_under_wrappers() {
    use tower::Layer;
    use tower_firebreak::circuit_breaker::{CircuitBreakerLayer, CircuitOpen};

    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration(Duration::from_secs(30))
        .jitter(0.0)
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|()| async {
        Err::<(), BoxError>("down".into())
    }));
    svc.clone().oneshot(()).await.unwrap_err();
    tokio::time::advance(Duration::from_secs(10)).await;

    let open = svc.oneshot(()).await.unwrap_err();
    assert!(open.is::<CircuitOpen>());
    assert_eq!(ErrorKind::of(&*open), ErrorKind::CircuitOpen);
    assert_eq!(
        ErrorKind::retry_after(&*open),
        Some(Duration::from_secs(20))
    );

    let wrapped = Wrapped(open);
    assert_eq!(ErrorKind::of(&wrapped), ErrorKind::CircuitOpen);
    assert_eq!(
        ErrorKind::retry_after(&wrapped),
        Some(Duration::from_secs(20))
    );

    // Errors that carry no hint have none.
    assert_eq!(ErrorKind::retry_after(&*timed_out().await), None);
}
