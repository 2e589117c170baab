//! Retry backoff for transient provider errors.

/// The first retry's delay before jitter.
pub const BACKOFF_BASE_MS: u64 = 500;

/// The largest delay before jitter.
pub const BACKOFF_CAP_MS: u64 = 8_000;

/// The most of a provider's `Retry-After` that is honoured.
pub const RETRY_AFTER_CAP_SECS: u64 = 60;

/// How long to wait before retry number `attempt` (0 for the first retry), in milliseconds.
///
/// Exponential: `500 ms × 2^attempt`, capped at 8 s, then jittered to
/// `delay × (0.5 + jitter / 2)` with `jitter` in `0..=1` from the caller's
/// randomness (clamped; NaN counts as 0). Never less than `retry_after_secs`
/// (itself capped at 60 s) when the provider sent one.
pub fn backoff_delay_ms(attempt: u32, retry_after_secs: Option<u64>, jitter: f64) -> u64 {
    let exponential = BACKOFF_BASE_MS
        .checked_shl(attempt)
        .filter(|d| *d >> attempt == BACKOFF_BASE_MS)
        .unwrap_or(BACKOFF_CAP_MS)
        .min(BACKOFF_CAP_MS);
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    // delay × (0.5 + jitter/2) in per-mille, integer arithmetic after one rounding.
    let per_mille = 500 + (jitter * 500.0).round() as u64;
    let jittered = exponential * per_mille / 1000;
    let floor = retry_after_secs.map_or(0, |s| s.min(RETRY_AFTER_CAP_SECS) * 1000);
    jittered.max(floor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_with_cap() {
        let full: Vec<u64> = (0..7).map(|a| backoff_delay_ms(a, None, 1.0)).collect();
        assert_eq!(full, [500, 1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(backoff_delay_ms(u32::MAX, None, 1.0), 8000);
        assert_eq!(backoff_delay_ms(64, None, 1.0), 8000);
    }

    #[test]
    fn jitter_scales_between_half_and_full() {
        assert_eq!(backoff_delay_ms(1, None, 0.0), 500);
        assert_eq!(backoff_delay_ms(1, None, 0.5), 750);
        assert_eq!(backoff_delay_ms(1, None, 1.0), 1000);
        assert_eq!(backoff_delay_ms(1, None, -3.0), 500);
        assert_eq!(backoff_delay_ms(1, None, 7.0), 1000);
        assert_eq!(backoff_delay_ms(1, None, f64::NAN), 500);
    }

    #[test]
    fn retry_after_is_a_floor_capped_at_a_minute() {
        assert_eq!(backoff_delay_ms(0, Some(5), 0.0), 5000);
        assert_eq!(backoff_delay_ms(4, Some(1), 1.0), 8000);
        assert_eq!(backoff_delay_ms(0, Some(3600), 0.0), 60_000);
        assert_eq!(backoff_delay_ms(0, Some(u64::MAX), 0.0), 60_000);
        assert_eq!(backoff_delay_ms(0, Some(0), 0.0), 250);
    }
}
