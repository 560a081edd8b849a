//! Small statistics shared by the reports (`flaky`, `history`, `bench`): nearest-rank quantiles
//! of measured values, and the Wilson interval of a pass rate.

/// `values` in ascending order.
pub fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// The `q` quantile (0–1) of `sorted` values, by nearest rank; `None` when there are none.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    sorted
        .get((last as f64 * q.clamp(0.0, 1.0)).round() as usize)
        .copied()
}

/// The median of `sorted` values (the upper one of an even count).
pub fn median(sorted: &[f64]) -> Option<f64> {
    quantile(sorted, 0.5)
}

/// The Wilson score interval for `passed` of `n` at 95 % confidence: unlike the normal
/// approximation it stays inside 0–1 and says something at 20 of 20.
pub fn wilson(passed: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = 1.96_f64;
    let n = n as f64;
    let p = passed as f64 / n;
    let centre = p + z * z / (2.0 * n);
    let margin = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    let denom = 1.0 + z * z / n;
    (
        ((centre - margin) / denom).max(0.0),
        ((centre + margin) / denom).min(1.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_published_values() {
        // 20 of 20: the interval's lower end is 83.9 % (Wilson 1927; any table of the score
        // interval), not the 100 % a plain ratio suggests.
        let (lo, hi) = wilson(20, 20);
        assert!((lo - 0.839).abs() < 0.001, "{lo}");
        assert!((hi - 1.0).abs() < 1e-9);
        let (lo, hi) = wilson(5, 10);
        assert!(
            (lo - 0.237).abs() < 0.001 && (hi - 0.763).abs() < 0.001,
            "{lo} {hi}"
        );
        assert_eq!(wilson(0, 0), (0.0, 1.0));
    }

    #[test]
    fn quantiles_are_by_nearest_rank() {
        let v = sorted(&[4.0, 1.0, 3.0, 2.0]);
        assert_eq!(v, vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(median(&v), Some(3.0));
        assert_eq!(quantile(&v, 0.0), Some(1.0));
        assert_eq!(quantile(&v, 0.95), Some(4.0));
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[]), None);
    }
}
