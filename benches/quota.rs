//! What sharing quotas in Redis (`serve --quota-store`) costs a call, as a ratio to the local
//! in-memory counters measured in the same run (issue 16). A call here carries two quotas: a
//! global rate limit and a per-identity spend cap read from its arguments; caps are far away, so
//! every reservation succeeds and is committed.
//!
//! - `baseline/local`: `Quotas::reserve_local` + `commit` on local counters (no store: the
//!   memory half of what `serve` does; the disk half rides the decision record's transaction),
//!   what the handler called before reservations could go to Redis.
//! - `local/async`: the same through the async `Quotas::reserve` the handler calls now, polled
//!   once (it completes at once on local counters): what the async API costs the local path.
//! - `redis/sequential`: the same on the shared store, one call at a time: one script round trip
//!   over loopback (the commit sends nothing).
//! - `redis/64-in-flight`: 64 reservations at once on one multiplexed connection, per call (what
//!   a loaded replica pays on average).
//!
//! Needs Redis at 127.0.0.1:6379 (keys under a fresh prefix, expiring after a day); without it
//! only the baseline runs. `scripts/bench-report quota` prints the ratios.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use gatehouse::policy::{ArgPath, Increment, Quota, Scope};
use gatehouse::record::quota::shared::{Config, Shared};
use gatehouse::record::quota::{Quotas, Subject};
use gatehouse::units::{Rate, Window};
use serde_json::json;

const WHO: Subject<'static> = Subject { identity: "billing-bot", server: "payments" };

fn quotas() -> Vec<Arc<Quota>> {
    let rate = Quota::rate("rate".into(), "global rate limit".into(), Rate { count: u64::MAX / 2, window: Window::Minute }, Scope::Global);
    let spend = Quota {
        id: "spend".into(),
        name: "daily spend".into(),
        counter: "daily_spend".into(),
        window: Window::Day,
        increment: Increment::Arg(ArgPath::parse("amount").unwrap()),
        max: 1e15,
        inclusive: true,
        per: Scope::Identity,
        path: None,
        on_deny: None,
    };
    vec![Arc::new(rate), Arc::new(spend)]
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let qs = quotas();
    let args = json!({ "amount": 1250, "currency": "usd", "customer": "cus_001" });
    let now = gatehouse::units::unix_now();
    let mut g = c.benchmark_group("quota");

    let local = Quotas::load(None, now);
    g.bench_function("baseline/local", |b| b.iter(|| local.commit(local.reserve_local(black_box(&qs), &WHO, black_box(&args), now).unwrap())));
    g.bench_function("local/async", |b| {
        b.iter(|| {
            let reserved = local.reserve(black_box(&qs), &WHO, black_box(&args), now).now_or_never().expect("local counters never wait");
            local.commit(reserved.unwrap())
        })
    });

    let prefix = format!("bench-{}-{now}", std::process::id());
    let shared = rt.block_on(async {
        let s = Shared::connect(&Config { url: "redis://127.0.0.1:6379".into(), prefix }).await.ok()?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.available().then_some(Arc::new(Quotas::shared(s)))
    });
    let Some(shared) = shared else {
        println!("redis does not answer at 127.0.0.1:6379: only the baseline ran");
        return;
    };
    g.bench_function("redis/sequential", |b| {
        b.iter(|| rt.block_on(async { shared.commit(shared.reserve(black_box(&qs), &WHO, black_box(&args), now).await.unwrap()) }))
    });
    g.bench_function("redis/64-in-flight", |b| {
        b.iter_custom(|iters| {
            // `iters` calls, 64 at a time; the time per call is what criterion reports.
            rt.block_on(async {
                let started = Instant::now();
                let mut left = iters;
                while left > 0 {
                    let n = left.min(64);
                    left -= n;
                    let batch: Vec<_> = (0..n)
                        .map(|_| {
                            let (shared, qs, args) = (shared.clone(), qs.clone(), args.clone());
                            tokio::spawn(async move { shared.commit(shared.reserve(&qs, &WHO, &args, now).await.unwrap()) })
                        })
                        .collect();
                    for t in batch {
                        t.await.unwrap();
                    }
                }
                started.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
