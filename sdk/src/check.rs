//! Small validators that many component plugins share.
//!
//! The predicates (`host`, `sip_uri`, `phone_number`, ...) answer yes or no and leave the wording
//! of the violation to the plugin. [`cidr`] and [`dial_pattern`] explain what is wrong. [`range`]
//! and [`exists`] build the [`Violation`] themselves, so that a plugin can write
//! `violations.extend(check::range("timeout_s", self.timeout_s, 1..=300))`.

use std::fmt::Display;
use std::net::IpAddr;
use std::ops::RangeInclusive;

use crate::{Host, Violation};

/// A host name (RFC 1123 labels) or an IPv4/IPv6 address.
pub fn host(s: &str) -> bool {
    if s.is_empty() || s.len() > 253 {
        return false;
    }
    if s.parse::<IpAddr>().is_ok() {
        return true;
    }
    s.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    })
}

/// A `sip:` or `sips:` URI with a valid host, an optional user part and an optional port:
/// `sip:host`, `sip:user@host:5060`, `sips:[2001:db8::1]:5061`.
pub fn sip_uri(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("sip:").or_else(|| s.strip_prefix("sips:")) else { return false };
    // URI parameters (`;transport=tcp`) do not change the address.
    let rest = rest.split(';').next().unwrap_or_default();
    let host_port = match rest.rsplit_once('@') {
        Some((user, host_port)) if !user.is_empty() => host_port,
        Some(_) => return false,
        None => rest,
    };
    let (host_part, port) = if let Some(v6) = host_port.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else { return false };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        (None, after.strip_prefix(':'))
    } else {
        match host_port.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(host_port), None),
        }
    };
    host_part.is_none_or(host) && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
}

/// An IPv4 or IPv6 network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`). A bare address is a
/// single host. Host bits set below the prefix (`10.0.0.5/8`) are refused: they are almost always
/// a mistyped network.
pub fn cidr(s: &str) -> Result<(), String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| format!("{addr:?} is not an IP address"))?;
    let bits: u32 = if addr.is_ipv4() { 32 } else { 128 };
    let len: u32 = match len {
        None => bits,
        Some(l) => match l.parse::<u32>() {
            Ok(n) if n <= bits && !l.starts_with('+') => n,
            _ => return Err(format!("prefix length {l:?} must be 0 to {bits}")),
        },
    };
    let value: u128 = match addr {
        IpAddr::V4(a) => u32::from(a).into(),
        IpAddr::V6(a) => u128::from(a),
    };
    let host_bits = bits - len;
    let host_mask = if host_bits == 0 { 0 } else { u128::MAX >> (128 - host_bits) };
    if value & host_mask != 0 {
        return Err(format!("{s} has host bits set below the /{len} prefix"));
    }
    Ok(())
}

/// Only ASCII digits, with a length in `len`.
pub fn digits(s: &str, len: RangeInclusive<usize>) -> bool {
    len.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
}

/// A telephone number as a PBX dials it: an optional `+` and 3 to 15 digits (the E.164 maximum).
pub fn phone_number(s: &str) -> bool {
    digits(s.strip_prefix('+').unwrap_or(s), 3..=15)
}

/// An e-mail address: `local@domain` with a plausible local part and a host name with a dot.
pub fn email(s: &str) -> bool {
    let Some((local, domain)) = s.rsplit_once('@') else { return false };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && local.chars().all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c));
    local_ok && domain.contains('.') && domain.parse::<IpAddr>().is_err() && host(domain)
}

/// A name used as a key or reference: 1 to 64 of `a-z`, `0-9`, `-` and `_`, starting with a
/// letter or digit.
pub fn name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// A prompts language as Asterisk names its sound folders: `en`, `de`, `pt_BR`.
pub fn language(s: &str) -> bool {
    let (lang, country) = s.split_once('_').unwrap_or((s, ""));
    lang.len() == 2
        && lang.chars().all(|c| c.is_ascii_lowercase())
        && (country.is_empty() || (country.len() == 2 && country.chars().all(|c| c.is_ascii_uppercase())))
}

/// A ULID: 26 characters of Crockford base32 (upper case), the first not above `7`. Applications
/// make them from the time and randomness, so two nodes never pick the same one.
pub fn ulid(s: &str) -> bool {
    const ALPHABET: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    s.len() == 26 && s.chars().all(|c| ALPHABET.contains(c)) && s.as_bytes()[0] <= b'7'
}

/// An Asterisk extension or dial pattern. A literal is digits, `*`, `#` and `+`. A pattern starts
/// with `_` and may also use `X` (0-9), `Z` (1-9), `N` (2-9), classes like `[1-5]` or `[137]`,
/// and, last, `.` (one or more further characters) or `!` (zero or more). Dashes are ignored by
/// Asterisk and allowed for readability (`_NXX-XXXX`).
pub fn dial_pattern(s: &str) -> Result<(), String> {
    let Some(pattern) = s.strip_prefix('_') else {
        if s.is_empty() || !s.chars().all(|c| c.is_ascii_digit() || "*#+".contains(c)) {
            return Err(format!("{s:?} is not a number (digits, *, # and +); a pattern starts with _"));
        }
        return Ok(());
    };
    let mut chars = pattern.chars().peekable();
    let mut matches_something = false;
    while let Some(c) = chars.next() {
        match c {
            '0'..='9' | '*' | '#' | '+' | 'X' | 'Z' | 'N' | 'x' | 'z' | 'n' => matches_something = true,
            '-' => {}
            '.' | '!' => {
                if chars.peek().is_some() {
                    return Err(format!("{s:?}: {c} matches the rest of the number and must come last"));
                }
                matches_something = true;
            }
            '[' => {
                let mut class = String::new();
                loop {
                    match chars.next() {
                        Some(']') => break,
                        Some(x) => class.push(x),
                        None => return Err(format!("{s:?}: [ without a closing ]")),
                    }
                }
                character_class(&class).map_err(|e| format!("{s:?}: {e}"))?;
                matches_something = true;
            }
            other => return Err(format!("{s:?}: {other:?} is not allowed in a dial pattern")),
        }
    }
    if !matches_something {
        return Err(format!("{s:?}: the pattern matches nothing"));
    }
    Ok(())
}

/// The inside of a `[...]` class: digits, `*`, `#`, and ranges `a-b` with `a <= b`.
fn character_class(class: &str) -> Result<(), String> {
    let chars: Vec<char> = class.chars().collect();
    if chars.is_empty() {
        return Err("an empty [] class matches nothing".to_owned());
    }
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if !(c.is_ascii_digit() || c == '*' || c == '#') {
            return Err(format!("{c:?} is not allowed in a [] class"));
        }
        if chars.get(i + 1) == Some(&'-') {
            let Some(&end) = chars.get(i + 2) else { return Err(format!("range {c}- has no end")) };
            if !c.is_ascii_digit() || !end.is_ascii_digit() || end < c {
                return Err(format!("{c}-{end} is not a range of digits"));
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// A `range` violation of `field` unless `value` is in `range`.
pub fn range<T: PartialOrd + Display>(field: &str, value: T, range: RangeInclusive<T>) -> Option<Violation> {
    if range.contains(&value) {
        None
    } else {
        Some(Violation::new(field, "range", format!("{value} is out of range: must be {} to {}", range.start(), range.end())))
    }
}

/// A `reference` violation of `field` unless the record `key` of `component` exists. `what`
/// names the record for the message ("trunk", "queue").
///
/// Checked on the node that takes a write; in hot mode a referenced record deleted concurrently
/// on another node is only noticed when the merged version is validated.
pub fn exists(host: &dyn Host, field: &str, component: &str, key: &str, what: &str) -> Option<Violation> {
    if host.lookup(component, key).is_some() {
        None
    } else {
        Some(Violation::new(field, "reference", format!("no {what} {key:?} in {component}")))
    }
}

/// `unique` violations for each of `places` that already holds `key`. A place is
/// (component, key prefix, what it is for the message): a number of the numbering plan, say, must
/// not also be a key of the other components that take dialled numbers:
/// `check::not_taken(host, "1001", &[("conference-settings", "", "a conference room"),
/// ("contact-center-settings", "queue:", "a queue")])`.
///
/// Checked on the node that takes a write; in hot mode two nodes can each take one half of a
/// clash, which is only noticed when the merged versions are validated.
pub fn not_taken(host: &dyn Host, key: &str, places: &[(&str, &str, &str)]) -> Vec<Violation> {
    places
        .iter()
        .filter(|(component, prefix, _)| host.lookup(component, &format!("{prefix}{key}")).is_some())
        .map(|(_, _, what)| Violation::new("", "unique", format!("{key} is already {what}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{MapHost, NoHost};

    #[test]
    fn hosts() {
        for ok in ["pbx.example.com", "10.0.0.1", "2001:db8::1", "localhost", "a-b.c"] {
            assert!(host(ok), "{ok}");
        }
        for bad in ["", "-a.com", "a..com", "a_b.com", "pbx example", &"a".repeat(64)] {
            assert!(!host(bad), "{bad}");
        }
    }

    #[test]
    fn sip_uris() {
        for ok in ["sip:carrier.example", "sips:acme@carrier.example:5061", "sip:1001@10.0.0.5;transport=tcp", "sip:[2001:db8::1]:5060"] {
            assert!(sip_uri(ok), "{ok}");
        }
        for bad in ["", "carrier.example", "http://x", "sip:", "sip:@host", "sip:host:0", "sip:host:99999", "sip:[zz]"] {
            assert!(!sip_uri(bad), "{bad}");
        }
    }

    #[test]
    fn cidrs() {
        for ok in ["10.0.0.0/8", "192.168.1.10", "192.168.1.10/32", "0.0.0.0/0", "2001:db8::/32", "::1"] {
            assert!(cidr(ok).is_ok(), "{ok}");
        }
        for bad in ["10.0.0.0/33", "10.0.0.5/8", "10.0.0/8", "10.0.0.0/", "10.0.0.0/+8", "2001:db8::1/32", "host/8"] {
            assert!(cidr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn numbers_and_addresses() {
        assert!(digits("1001", 2..=8));
        assert!(!digits("10a1", 2..=8));
        assert!(!digits("1", 2..=8));
        assert!(phone_number("+442071234567"));
        assert!(phone_number("911"));
        assert!(!phone_number("+44 20 7123"));
        assert!(!phone_number("+1234567890123456"));
        assert!(email("ops@acme.example"));
        assert!(email("first.last+pbx@mail.acme.example"));
        for bad in ["", "ops", "@acme.example", "ops@acme", "ops@10.0.0.1", ".ops@acme.example", "o ps@acme.example"] {
            assert!(!email(bad), "{bad}");
        }
    }

    #[test]
    fn names_and_ids() {
        assert!(language("en") && language("pt_BR"));
        assert!(!language("english") && !language("EN") && !language("pt_br") && !language(""));
        assert!(name("carrier-main_2"));
        assert!(!name("Carrier"));
        assert!(!name("-x"));
        assert!(!name(""));
        assert!(ulid("01HV6Z4T9Q8K3M2N1P0R5S7W8X"));
        assert!(!ulid("01hv6z4t9q8k3m2n1p0r5s7w8x"));
        assert!(!ulid("81HV6Z4T9Q8K3M2N1P0R5S7W8X"));
        assert!(!ulid("01HV6Z4T9Q8K3M2N1P0R5S7W8"));
        assert!(!ulid("01HV6Z4T9Q8K3M2N1P0R5S7W8I"));
    }

    #[test]
    fn dial_patterns() {
        for ok in
            ["_NXXNXXXXXX", "_1NXXNXXXXXX", "_9.", "_00!", "_[1-5]XX", "_[137-9]X", "_NXX-XXXX", "911", "*97", "+442071234567", "_+44."]
        {
            assert!(dial_pattern(ok).is_ok(), "{ok}");
        }
        for bad in ["", "_", "NXXXXXX", "_9.X", "_[5-1]", "_[]", "_[1-", "_[a]", "_9?", "12a", "_--"] {
            assert!(dial_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ranges_and_references() {
        assert_eq!(range("timeout_s", 30, 1..=60), None);
        let v = range("timeout_s", 0, 1..=60).expect("out of range");
        assert_eq!((v.field.as_str(), v.code.as_str()), ("/timeout_s", "range"));
        assert!(exists(&NoHost, "trunk", "trunks", "carrier-main", "trunk").is_some());
        let host = MapHost::default().with("trunks", "carrier-main", serde_json::json!({}));
        assert!(exists(&host, "trunk", "trunks", "carrier-main", "trunk").is_none());
        let plan = [("trunks", "", "a trunk"), ("queues", "queue:", "a queue")];
        assert_eq!(not_taken(&host, "6000", &plan), vec![]);
        let host = host.with("queues", "queue:6000", serde_json::json!({}));
        let found = not_taken(&host, "6000", &plan);
        assert_eq!(found.iter().map(|v| (v.field.as_str(), v.code.as_str())).collect::<Vec<_>>(), [("", "unique")]);
        assert!(found[0].message.contains("a queue"));
    }
}
