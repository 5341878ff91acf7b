//! Repeated runs and what the table reports of them: medians, percentiles, and each round's
//! ratio to row 1.

use std::future::Future;

use crate::BenchResult;

pub(crate) async fn repeat<T, F, Fut>(runs: usize, mut run: F) -> BenchResult<Vec<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = BenchResult<T>>,
{
    let mut results = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        results.push(run().await?);
    }
    Ok(results)
}

/// The median over rounds of `ratio` between a round's run of one row (row 1, mostly) and its
/// run of another; `None` when either did not run.
pub(crate) fn per_round<A, B>(
    one: &[A],
    other: &[B],
    ratio: impl Fn(&A, &B) -> f64,
) -> Option<f64> {
    (!one.is_empty() && !other.is_empty())
        .then(|| median(one.iter().zip(other).map(|(a, b)| ratio(a, b))))
}

pub(crate) fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The `ps` percentiles of `values` (sorted in place).
pub(crate) fn percentiles<const N: usize>(
    values: &mut [f64],
    ps: [f64; N],
) -> BenchResult<[f64; N]> {
    if values.is_empty() {
        return Err(
            "no latencies were measured; raise --fan-in-ticks above --fan-in-warmup".into(),
        );
    }
    values.sort_by(f64::total_cmp);
    let last = values.len() - 1;
    Ok(ps.map(|p| values[(last as f64 * p).round() as usize]))
}
