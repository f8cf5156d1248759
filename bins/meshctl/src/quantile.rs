//! Quantiles from a histogram's buckets, computed as Prometheus's `histogram_quantile` does
//! for classic histograms: find the bucket that holds the rank and interpolate linearly
//! inside it.

/// The `q` quantile of a histogram given as cumulative buckets `(upper bound, count)`, in any
/// order. Counts may be rates or deltas.
///
/// As in Prometheus: NaN without a `+Inf` bucket, with fewer than two buckets or with no
/// observations; `-Inf` for `q < 0` and `+Inf` for `q > 1`; the lowest bucket starts at 0
/// (unless its bound is negative or zero, which is then the answer); a rank in the `+Inf`
/// bucket answers the highest finite bound. Buckets with the same bound are added up, and
/// counts that go down (say, from buckets read at slightly different moments) are raised to
/// the largest count below them.
pub(crate) fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    let mut sorted: Vec<(f64, f64)> = buckets
        .iter()
        .copied()
        .filter(|(bound, _)| !bound.is_nan())
        .collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut coalesced: Vec<(f64, f64)> = Vec::with_capacity(sorted.len());
    for (bound, count) in sorted {
        match coalesced.last_mut() {
            Some(last) if last.0 == bound => last.1 += count,
            _ => coalesced.push((bound, count)),
        }
    }
    let mut max = f64::NEG_INFINITY;
    for bucket in &mut coalesced {
        max = max.max(bucket.1);
        bucket.1 = max;
    }
    let buckets = coalesced;
    match buckets.last() {
        Some(&(bound, _)) if bound == f64::INFINITY => {}
        _ => return f64::NAN,
    }
    if buckets.len() < 2 {
        return f64::NAN;
    }
    let observations = buckets[buckets.len() - 1].1;
    if observations == 0.0 || observations.is_nan() {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let finite = &buckets[..buckets.len() - 1];
    let b = finite.partition_point(|&(_, count)| count < rank);
    if b == finite.len() {
        return finite[finite.len() - 1].0;
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return buckets[0].0;
    }
    let (end, mut count) = buckets[b];
    let mut start = 0.0;
    if b > 0 {
        start = buckets[b - 1].0;
        count -= buckets[b - 1].1;
        rank -= buckets[b - 1].1;
    }
    start + (end - start) * (rank / count)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INF: f64 = f64::INFINITY;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn interpolates_inside_the_bucket() {
        // 10 observations up to 0.1, 10 more up to 0.2, none above.
        let b = [(0.1, 10.0), (0.2, 20.0), (INF, 20.0)];
        assert!(close(histogram_quantile(0.5, &b), 0.1));
        assert!(close(histogram_quantile(0.25, &b), 0.05));
        assert!(close(histogram_quantile(0.75, &b), 0.15));
        assert!(close(histogram_quantile(0.95, &b), 0.19));
        assert!(close(histogram_quantile(1.0, &b), 0.2));
        assert!(close(histogram_quantile(0.0, &b), 0.0));
    }

    #[test]
    fn matches_prometheus_on_a_latency_histogram() {
        // 100 observations in the 1 ms bucket, 80 in (1, 2] ms, 20 in (2, 5] ms.
        let b = [
            (0.001, 100.0),
            (0.002, 180.0),
            (0.005, 200.0),
            (0.01, 200.0),
            (INF, 200.0),
        ];
        // rank 100: end of the first bucket.
        assert!(close(histogram_quantile(0.5, &b), 0.001));
        // rank 190: half way through (2, 5] ms.
        assert!(close(histogram_quantile(0.95, &b), 0.0035));
        // rank 198: 18/20 of the way through (2, 5] ms.
        assert!(close(histogram_quantile(0.99, &b), 0.0047));
    }

    #[test]
    fn rank_in_the_inf_bucket_answers_the_highest_finite_bound() {
        let b = [(0.1, 1.0), (0.5, 2.0), (INF, 10.0)];
        assert_eq!(histogram_quantile(0.9, &b), 0.5);
    }

    #[test]
    fn order_duplicates_and_non_monotonic_counts() {
        let b = [(INF, 20.0), (0.2, 20.0), (0.1, 4.0), (0.1, 6.0)];
        assert!(close(histogram_quantile(0.75, &b), 0.15));
        // 0.2 reads lower than 0.1 (a scrape race): treated as 10, so rank 15 is half way
        // through (0.2, 0.3].
        let b = [(0.1, 10.0), (0.2, 9.0), (0.3, 20.0), (INF, 20.0)];
        assert!(close(histogram_quantile(0.75, &b), 0.25));
    }

    #[test]
    fn degenerate_inputs() {
        assert!(histogram_quantile(0.5, &[]).is_nan());
        assert!(histogram_quantile(0.5, &[(INF, 5.0)]).is_nan());
        assert!(histogram_quantile(0.5, &[(0.1, 5.0), (0.2, 5.0)]).is_nan());
        assert!(histogram_quantile(0.5, &[(0.1, 0.0), (INF, 0.0)]).is_nan());
        assert!(histogram_quantile(f64::NAN, &[(0.1, 1.0), (INF, 1.0)]).is_nan());
        assert_eq!(
            histogram_quantile(-0.1, &[(0.1, 1.0), (INF, 1.0)]),
            f64::NEG_INFINITY
        );
        assert_eq!(histogram_quantile(1.1, &[(0.1, 1.0), (INF, 1.0)]), INF);
        // A first bucket with a negative bound is its own answer.
        assert_eq!(histogram_quantile(0.5, &[(-1.0, 5.0), (INF, 5.0)]), -1.0);
    }
}
