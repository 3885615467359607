//! What the benches share: one whole call, and the two-thread harness.

use std::hint::black_box;
use std::pin::pin;
use std::sync::Barrier;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use criterion::BenchmarkGroup;
use criterion::measurement::WallTime;
use tower::Service;

/// One whole call: `poll_ready` (tower's contract; some layers decide there), then `call`,
/// then polls with a no-op waker until the response is ready.
#[inline(always)]
pub fn one_call<S>(svc: &mut S, request: u64) -> Result<u64, S::Error>
where
    S: Service<u64, Response = u64>,
{
    let mut cx = Context::from_waker(Waker::noop());
    let ready = loop {
        if let Poll::Ready(ready) = svc.poll_ready(&mut cx) {
            break ready;
        }
    };
    ready?;
    let mut response = pin!(svc.call(black_box(request)));
    loop {
        if let Poll::Ready(result) = response.as_mut().poll(&mut cx) {
            return result;
        }
    }
}

/// `threads` OS threads, each with its own clone of `svc`, share the iterations, calling
/// with `request` (which must succeed: checked once per clone before timing). Each thread
/// enters `runtime` and starts at a barrier; the time is from the first thread's start to
/// the last thread's end, so thread start-up is not measured.
pub fn contended<S>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    svc: &S,
    request: u64,
    threads: usize,
    runtime: &tokio::runtime::Handle,
) where
    S: Service<u64, Response = u64> + Clone + Send,
{
    let mut clones: Vec<S> = (0..threads).map(|_| svc.clone()).collect();
    for clone in &mut clones {
        assert!(one_call(clone, request).is_ok(), "{name}");
    }
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let threads = threads as u64;
            let start_together = Barrier::new(clones.len());
            let spans: Vec<(Instant, Instant)> = std::thread::scope(|scope| {
                let workers: Vec<_> = (0_u64..)
                    .zip(clones.iter_mut())
                    .map(|(index, svc)| {
                        let calls = iters / threads + u64::from(index < iters % threads);
                        let start_together = &start_together;
                        scope.spawn(move || {
                            let _runtime = runtime.enter();
                            start_together.wait();
                            let start = Instant::now();
                            for _ in 0..calls {
                                let _ = black_box(one_call(svc, request));
                            }
                            (start, Instant::now())
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|worker| worker.join().expect("a bench thread panicked"))
                    .collect()
            });
            let first_start = spans.iter().map(|span| span.0).min().expect("a thread");
            let last_end = spans.iter().map(|span| span.1).max().expect("a thread");
            last_end - first_start
        })
    });
}
