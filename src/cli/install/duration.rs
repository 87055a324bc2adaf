//! Deadlines on the command line: `600`, `90s`, `10m`, `2h`, or combined, `1m30s`.

use std::time::Duration;

/// The longest deadline accepted: waiting longer than a day is waiting forever (#415).
const MAX: Duration = Duration::from_secs(24 * 3600);

/// Parses a deadline for clap. Zero is refused: every wait here has an end.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration: expected e.g. 600, 90s, 10m, 1h30m");
    let text = text.trim();
    if text.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut saw_unit = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(bad)?;
        digits.clear();
        saw_unit = true;
    }
    if !digits.is_empty() {
        // A bare number is seconds; after a unit it lacks its own (`1m30`).
        if saw_unit {
            return Err(bad());
        }
        total = digits.parse().map_err(|_| bad())?;
    }
    let d = Duration::from_secs(total);
    if d.is_zero() {
        return Err(format!("{text:?}: a deadline must be longer than zero"));
    }
    if d > MAX {
        return Err(format!("{text:?}: a deadline may be at most 24h"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let s = |t: &str| parse_duration(t).map(|d| d.as_secs());
        assert_eq!(s("600"), Ok(600));
        assert_eq!(s("90s"), Ok(90));
        assert_eq!(s("10m"), Ok(600));
        assert_eq!(s("1h30m"), Ok(5400));
        assert_eq!(s("1m30s"), Ok(90));
        for bad in [
            "",
            "0",
            "0s",
            "m",
            "1m30",
            "1d",
            "-5",
            "25h",
            "1.5m",
            "99999999999999999999",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
