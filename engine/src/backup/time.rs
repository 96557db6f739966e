//! UTC calendar arithmetic for file names, schedules and `--to TIME` (no time zone database:
//! Tandem's backup times are UTC).

/// Days since 1970-01-01 for a civil date (proleptic Gregorian).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day number.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub const DAY_MS: u64 = 86_400_000;

/// `2026-11-25T12:37:57.123Z`.
pub fn format_ms(ms: u64) -> String {
    let days = i64::try_from(ms / DAY_MS).unwrap_or(0);
    let (y, m, d) = civil_from_days(days);
    let rem = ms % DAY_MS;
    let (h, mi, s, milli) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

/// `20261125T123757123Z`: sortable, safe in file names.
pub fn compact_ms(ms: u64) -> String {
    format_ms(ms).replace(['-', ':', '.'], "")
}

/// Parses a point in time: RFC 3339 in UTC (`2026-11-25T12:37:57Z`, optional fraction, `Z` or
/// `+00:00`, also with a space for `T`), or `@MILLIS` since the Unix epoch.
pub fn parse_time(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let bad = || format!("{text:?} is not a time: use UTC RFC 3339 like 2026-11-25T12:37:57Z, or @MILLISECONDS since 1970");
    if let Some(ms) = t.strip_prefix('@') {
        return ms.parse::<u64>().map_err(|_| bad());
    }
    let t = t
        .strip_suffix('Z')
        .or_else(|| t.strip_suffix("+00:00"))
        .ok_or_else(|| format!("{text:?}: give the time in UTC with a trailing Z (e.g. 2026-11-25T12:37:57Z), or @MILLISECONDS"))?;
    let (date, clock) = t.split_once(['T', ' ']).ok_or_else(bad)?;
    let mut dp = date.split('-');
    let (y, m, d) = match (dp.next(), dp.next(), dp.next(), dp.next()) {
        (Some(y), Some(m), Some(d), None) => {
            (y.parse::<i64>().map_err(|_| bad())?, m.parse::<u32>().map_err(|_| bad())?, d.parse::<u32>().map_err(|_| bad())?)
        }
        _ => return Err(bad()),
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || y < 1970 {
        return Err(bad());
    }
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut cp = hms.split(':');
    let (h, mi, s) = match (cp.next(), cp.next(), cp.next(), cp.next()) {
        (Some(h), Some(mi), Some(s), None) => {
            (h.parse::<u64>().map_err(|_| bad())?, mi.parse::<u64>().map_err(|_| bad())?, s.parse::<u64>().map_err(|_| bad())?)
        }
        (Some(h), Some(mi), None, None) => (h.parse::<u64>().map_err(|_| bad())?, mi.parse::<u64>().map_err(|_| bad())?, 0),
        _ => return Err(bad()),
    };
    if h > 23 || mi > 59 || s > 60 {
        return Err(bad());
    }
    let milli = if frac.is_empty() {
        0
    } else {
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let mut f = frac.chars().take(3).collect::<String>();
        while f.len() < 3 {
            f.push('0');
        }
        f.parse::<u64>().map_err(|_| bad())?
    };
    let days = u64::try_from(days_from_civil(y, m, d)).map_err(|_| bad())?;
    Ok(days * DAY_MS + h * 3_600_000 + mi * 60_000 + s * 1000 + milli)
}

/// Wall-clock now, in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_parses() {
        for ms in [0u64, 1_764_074_277_123, 951_782_400_000, 4_102_444_799_999] {
            assert_eq!(parse_time(&format_ms(ms)), Ok(ms), "{}", format_ms(ms));
        }
        assert_eq!(format_ms(1_764_074_277_123), "2025-11-25T12:37:57.123Z");
        assert_eq!(parse_time("2025-11-25T12:37:57Z"), Ok(1_764_074_277_000));
        assert_eq!(parse_time("2025-11-25 12:37Z"), Ok(1_764_074_220_000));
        assert_eq!(parse_time("@42"), Ok(42));
        assert!(parse_time("2025-11-25T12:37:57").is_err());
        assert!(parse_time("2025-13-25T12:37:57Z").is_err());
        assert_eq!(compact_ms(1_764_074_277_123), "20251125T123757123Z");
    }
}
