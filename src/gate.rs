//! The promotion gate's verdict: a pure function from a route's window counts and the
//! thresholds to "passing" or a reason a person can act on. No IO, no clock: the admin API,
//! the CLI and the TUI all call the same function, and it is unit-tested against known values.
//!
//! The statistic is the one-sided Wilson score upper bound of the mismatch rate. Candidate
//! errors count as mismatches: a route whose candidate times out is not a route that matches.

use serde::{Deserialize, Serialize};

/// What the verdict needs to know about the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub min_samples: u64,
    pub max_mismatch_rate: f64,
    pub confidence: f64,
}

/// Counts over the gate window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// Completed comparisons (matches + mismatches + candidate errors).
    pub samples: u64,
    /// Mismatches plus candidate errors.
    pub failures: u64,
    /// Of the failures, candidate errors (connect, timeout, reset): told apart in the reason.
    #[serde(default)]
    pub errors: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub passing: bool,
    pub reason: String,
    /// Observed failure rate (0 with no samples).
    pub rate: f64,
    /// One-sided Wilson upper bound (1 with no samples).
    pub upper_bound: f64,
    /// Clean samples still needed before the gate could open (0 when passing).
    pub more_clean_samples: u64,
}

/// Φ⁻¹(p), the standard normal quantile (Acklam's rational approximation, |error| < 1.2e-9).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e+01,
        2.209460984245205e+02,
        -2.759285104469687e+02,
        1.38357751867269e+02,
        -3.066479806614716e+01,
        2.506628277459239e+00,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e+01,
        1.615858368580409e+02,
        -1.556989798598866e+02,
        6.680131188771972e+01,
        -1.328068155288572e+01,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-03,
        -3.223964580411365e-01,
        -2.400758277161838e+00,
        -2.549732539343734e+00,
        4.374664141464968e+00,
        2.938163982698783e+00,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-03,
        3.224671290700398e-01,
        2.445134137142996e+00,
        3.754408661907416e+00,
    ];
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    let low = 0.02425;
    if p < low {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - low {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -(((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    }
}

/// The Wilson score interval's (centre, half-width, denominator) for `failures / n`.
fn wilson_terms(failures: u64, n: u64, confidence: f64) -> (f64, f64, f64) {
    let z = normal_quantile(confidence);
    let n = n as f64;
    let p = (failures as f64 / n).min(1.0);
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let spread = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    (centre, spread, 1.0 + z2 / n)
}

/// One-sided Wilson score upper bound of a proportion `failures / n` at `confidence`.
pub fn wilson_upper(failures: u64, n: u64, confidence: f64) -> f64 {
    if n == 0 {
        return 1.0;
    }
    let (centre, spread, denom) = wilson_terms(failures, n, confidence);
    ((centre + spread) / denom).min(1.0)
}

/// One-sided Wilson score lower bound: the rate is above this at `confidence` (0 with no data).
pub fn wilson_lower(failures: u64, n: u64, confidence: f64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let (centre, spread, denom) = wilson_terms(failures, n, confidence);
    ((centre - spread) / denom).max(0.0)
}

/// Whether a promoted route should go back to shadow: confident (at `confidence`) that its
/// failure rate is above `rate`. Pure; the caller counts since the promotion.
pub fn should_roll_back(failures: u64, n: u64, rate: f64, confidence: f64, min_n: u64) -> bool {
    n >= min_n && wilson_lower(failures, n, confidence) > rate
}

/// The smallest number of further clean samples after which the gate would pass with the
/// failures seen so far (saturating at `u64::MAX / 2` when a run of clean samples cannot do it).
fn clean_samples_needed(e: Evidence, t: &Thresholds) -> u64 {
    let passes = |extra: u64| {
        let n = e.samples.saturating_add(extra);
        n >= t.min_samples && wilson_upper(e.failures, n, t.confidence) <= t.max_mismatch_rate
    };
    if passes(0) {
        return 0;
    }
    let mut hi: u64 = 1;
    while !passes(hi) {
        if hi >= u64::MAX / 4 {
            return u64::MAX / 2;
        }
        hi *= 2;
    }
    let mut lo = hi / 2; // does not pass (or is 0, which does not pass)
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if passes(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// Seconds until a closed gate would open at `clean_per_sec` clean samples a second: None when
/// unknown (no recent clean samples) or when no number of clean samples can open it.
pub fn eta_secs(v: &Verdict, clean_per_sec: Option<f64>) -> Option<u64> {
    if v.passing {
        return Some(0);
    }
    if v.more_clean_samples >= u64::MAX / 4 {
        return None;
    }
    let rate = clean_per_sec.filter(|r| *r > 0.0 && r.is_finite())?;
    Some((v.more_clean_samples as f64 / rate).ceil() as u64)
}

/// Observed failure rate (0 with no samples).
fn failure_rate(e: Evidence) -> f64 {
    if e.samples == 0 {
        0.0
    } else {
        e.failures as f64 / e.samples as f64
    }
}

/// The verdict for one route.
pub fn verdict(e: Evidence, t: &Thresholds) -> Verdict {
    let rate = failure_rate(e);
    let upper = wilson_upper(e.failures, e.samples, t.confidence);
    let more = if t.max_mismatch_rate <= 0.0 && e.failures == 0 {
        // A zero threshold can never be met by a bound; say so rather than count forever.
        u64::MAX / 2
    } else {
        clean_samples_needed(e, t)
    };
    let pct = |x: f64| format!("{:.2}%", x * 100.0);
    let more_text = if more >= u64::MAX / 4 {
        "no number of clean samples can open it".to_string()
    } else {
        format!("{more} more clean samples would open it")
    };
    let (passing, reason) = if e.samples < t.min_samples {
        (
            false,
            format!(
                "{} of {} samples needed; {}",
                e.samples, t.min_samples, more_text
            ),
        )
    } else if upper > t.max_mismatch_rate {
        (
            false,
            format!(
                "upper bound {} > {} ({} mismatches, {} candidate errors in {} samples); {}",
                pct(upper),
                pct(t.max_mismatch_rate),
                e.failures.saturating_sub(e.errors),
                e.errors,
                e.samples,
                more_text
            ),
        )
    } else {
        (true, "passing".to_string())
    };
    Verdict {
        passing,
        reason,
        rate,
        upper_bound: upper,
        more_clean_samples: if passing { 0 } else { more },
    }
}

/// The verdict on a replayed recording. The recorded exchanges are the whole population, not
/// a sample of live traffic, so no confidence bound is put on them: a route passes when it has
/// `min_samples` comparisons and its observed failure rate is at most `max_mismatch_rate`.
pub fn replay_verdict(e: Evidence, t: &Thresholds) -> Verdict {
    let rate = failure_rate(e);
    let pct = |x: f64| format!("{:.2}%", x * 100.0);
    let (passing, reason) = if e.samples < t.min_samples {
        (
            false,
            format!("{} of {} comparisons needed", e.samples, t.min_samples),
        )
    } else if e.samples == 0 || rate > t.max_mismatch_rate {
        (
            false,
            format!(
                "{} > {} ({} mismatches, {} candidate errors in {} comparisons)",
                pct(rate),
                pct(t.max_mismatch_rate),
                e.failures.saturating_sub(e.errors),
                e.errors,
                e.samples
            ),
        )
    } else {
        (true, "passing".to_string())
    };
    Verdict {
        passing,
        reason,
        rate,
        upper_bound: rate,
        more_clean_samples: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: Thresholds = Thresholds {
        min_samples: 1000,
        max_mismatch_rate: 0.001,
        confidence: 0.95,
    };

    #[test]
    fn quantiles_match_tables() {
        assert!((normal_quantile(0.95) - 1.6448536).abs() < 1e-6);
        assert!((normal_quantile(0.99) - 2.3263479).abs() < 1e-6);
        assert!((normal_quantile(0.5)).abs() < 1e-9);
        assert!((normal_quantile(0.01) + 2.3263479).abs() < 1e-6);
    }

    #[test]
    fn wilson_matches_known_values() {
        // Zero failures: z²/(n+z²).
        let z2 = 1.6448536f64 * 1.6448536;
        assert!((wilson_upper(0, 1000, 0.95) - z2 / (1000.0 + z2)).abs() < 1e-9);
        // 10 of 100 at 95% one-sided (= the 90% two-sided Wilson interval): 0.1604.
        assert!((wilson_upper(10, 100, 0.95) - 0.16036).abs() < 1e-4);
        // 1 of 10: 0.3477.
        assert!((wilson_upper(1, 10, 0.95) - 0.34772).abs() < 1e-4);
        // The bound is the root of the score test: (p - u)² = z² u (1 - u) / n.
        for (k, n) in [(0u64, 50u64), (3, 40), (17, 1000), (999, 1000)] {
            let u = wilson_upper(k, n, 0.95);
            let p = k as f64 / n as f64;
            let z = normal_quantile(0.95);
            let lhs = (p - u) * (p - u);
            let rhs = z * z * u * (1.0 - u) / n as f64;
            assert!((lhs - rhs).abs() < 1e-12, "{k}/{n}: {lhs} vs {rhs}");
            assert!(u >= p);
        }
        assert_eq!(wilson_upper(0, 0, 0.95), 1.0);
    }

    #[test]
    fn rollback_needs_confidence() {
        assert!(!should_roll_back(1, 5, 0.01, 0.95, 10), "too few");
        assert!(should_roll_back(10, 10, 0.01, 0.95, 10));
        // 1 failure in 1000 is 0.1%: not confidently above 1%.
        assert!(!should_roll_back(1, 1000, 0.01, 0.95, 10));
        assert!(should_roll_back(30, 1000, 0.01, 0.95, 10));
        assert!(wilson_lower(5, 100, 0.95) < 0.05 && wilson_lower(5, 100, 0.95) > 0.0);
    }

    #[test]
    fn zero_failures_need_about_2700_samples_at_defaults() {
        let v = verdict(
            Evidence {
                samples: 0,
                failures: 0,
                errors: 0,
            },
            &DEFAULTS,
        );
        assert!(!v.passing);
        assert!(
            (2700..=2710).contains(&v.more_clean_samples),
            "{}",
            v.more_clean_samples
        );
        assert!(
            v.reason.contains("0 of 1000 samples needed"),
            "{}",
            v.reason
        );
        assert!(v
            .reason
            .contains(&format!("{} more clean samples", v.more_clean_samples)));
    }

    #[test]
    fn min_samples_edge() {
        let t = Thresholds {
            min_samples: 1000,
            max_mismatch_rate: 0.01,
            confidence: 0.95,
        };
        // With 0 failures the bound at 999 is 0.27% < 1%: only the count keeps the gate shut.
        let under = verdict(
            Evidence {
                samples: 999,
                failures: 0,
                errors: 0,
            },
            &t,
        );
        assert!(!under.passing);
        assert_eq!(under.more_clean_samples, 1);
        assert!(
            under.reason.starts_with("999 of 1000 samples needed"),
            "{}",
            under.reason
        );
        let at = verdict(
            Evidence {
                samples: 1000,
                failures: 0,
                errors: 0,
            },
            &t,
        );
        assert!(at.passing, "{}", at.reason);
        assert_eq!(at.reason, "passing");
    }

    #[test]
    fn bound_edge() {
        let t = Thresholds {
            min_samples: 10,
            max_mismatch_rate: 0.001,
            confidence: 0.95,
        };
        let n_needed = clean_samples_needed(
            Evidence {
                samples: 0,
                failures: 0,
                errors: 0,
            },
            &t,
        );
        let just_under = verdict(
            Evidence {
                samples: n_needed - 1,
                failures: 0,
                errors: 0,
            },
            &t,
        );
        assert!(!just_under.passing);
        assert!(just_under.upper_bound > 0.001);
        assert!(
            just_under.reason.starts_with("upper bound 0.10% > 0.10%"),
            "{}",
            just_under.reason
        );
        let just_over = verdict(
            Evidence {
                samples: n_needed,
                failures: 0,
                errors: 0,
            },
            &t,
        );
        assert!(just_over.passing);
        assert!(just_over.upper_bound <= 0.001);
    }

    #[test]
    fn failures_raise_the_bound() {
        let v = verdict(
            Evidence {
                samples: 5000,
                failures: 20,
                errors: 0,
            },
            &DEFAULTS,
        );
        assert!(!v.passing);
        assert!(
            v.reason.contains("upper bound 0.58% > 0.10%"),
            "{}",
            v.reason
        );
        assert!(v.more_clean_samples > 20_000);
    }

    #[test]
    fn a_replay_is_judged_on_its_own_counts() {
        let t = Thresholds {
            min_samples: 100,
            ..DEFAULTS
        };
        let v = |samples, failures| {
            replay_verdict(
                Evidence {
                    samples,
                    failures,
                    errors: 0,
                },
                &t,
            )
        };
        assert!(v(100, 0).passing);
        assert!(!v(100, 1).passing, "1% is over 0.1%");
        assert!(!v(99, 0).passing);
        assert!(v(99, 0).reason.contains("99 of 100"));
        assert!(replay_verdict(
            Evidence::default(),
            &Thresholds {
                min_samples: 0,
                ..DEFAULTS
            }
        )
        .reason
        .contains("0 mismatches"));
        assert!(
            replay_verdict(
                Evidence {
                    samples: 2000,
                    failures: 2,
                    errors: 0
                },
                &t
            )
            .passing
        );
    }
}
