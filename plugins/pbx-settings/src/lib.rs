//! PBX settings: what the whole PBX shares. The system settings (Asterisk's `asterisk.conf`,
//! `rtp.conf`, `indications.conf`, the PJSIP transport's NAT options, `features.conf` codes), time
//! groups (opening hours that routes consult) and music-on-hold classes (`musiconhold.conf`).
//!
//! Keys: `system` for the one system record, `time-group:<name>` and `moh:<name>` (names are
//! `[a-z0-9_-]{1,64}`). The document's `kind` says which, and must match the key.
//! Merge: per field, last writer wins; a time group's rules are one value.

use serde::{Deserialize, Serialize};
use serde_json::json;
use tandem_sdk::record::{RecordPlugin, RecordSchema};
use tandem_sdk::{Example, Host, Info, Violation, check};

/// A record of this component.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    System(System),
    TimeGroup(TimeGroup),
    MusicClass(MusicClass),
}

/// Star codes users dial for features.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureCodes {
    #[serde(default = "blind_transfer")]
    pub blind_transfer: String,
    #[serde(default = "attended_transfer")]
    pub attended_transfer: String,
    #[serde(default = "call_pickup")]
    pub call_pickup: String,
    #[serde(default = "voicemail")]
    pub voicemail: String,
}

fn blind_transfer() -> String {
    "##".to_owned()
}
fn attended_transfer() -> String {
    "*2".to_owned()
}
fn call_pickup() -> String {
    "*8".to_owned()
}
fn voicemail() -> String {
    "*97".to_owned()
}

impl Default for FeatureCodes {
    fn default() -> Self {
        FeatureCodes {
            blind_transfer: blind_transfer(),
            attended_transfer: attended_transfer(),
            call_pickup: call_pickup(),
            voicemail: voicemail(),
        }
    }
}

/// The system-wide settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct System {
    /// Default prompts language.
    #[serde(default = "default_language")]
    pub language: String,
    /// Ring and busy tones of this country (Asterisk `indications.conf` zone: `us`, `uk`, `de`).
    #[serde(default = "default_tone_zone")]
    pub tone_zone: String,
    /// IANA time zone of the PBX, for time groups and reports: `Europe/London`.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// UDP ports for media.
    #[serde(default = "default_rtp_start")]
    pub rtp_port_start: u32,
    #[serde(default = "default_rtp_end")]
    pub rtp_port_end: u32,
    /// Public address announced behind NAT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_address: Option<String>,
    /// Networks reached without NAT.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local_networks: Vec<String>,
    #[serde(default)]
    pub feature_codes: FeatureCodes,
    /// Calls are cut after this many seconds; 0 for no limit.
    #[serde(default)]
    pub max_call_duration_s: u32,
}

fn default_language() -> String {
    "en".to_owned()
}
fn default_tone_zone() -> String {
    "us".to_owned()
}
fn default_timezone() -> String {
    "UTC".to_owned()
}
fn default_rtp_start() -> u32 {
    10000
}
fn default_rtp_end() -> u32 {
    20000
}

/// A weekday.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Day {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

/// Open on these days between these times (`"09:00"` to `"17:30"`; an end of `"24:00"` is
/// midnight).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeRule {
    pub days: Vec<Day>,
    pub start: String,
    pub end: String,
}

/// Opening hours.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeGroup {
    #[serde(default)]
    pub description: String,
    pub rules: Vec<TimeRule>,
    /// Dates (`YYYY-MM-DD`) closed all day, whatever the rules say.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub closed_dates: Vec<String>,
}

/// A music-on-hold class: music from files in a directory, or from a stream (one of the two).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MusicClass {
    #[serde(default)]
    pub description: String,
    /// Sound files in this directory, relative to the PBX's music directory: `moh/jazz`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
    /// Play the files in random order.
    #[serde(default)]
    pub random: bool,
    /// An HTTP(S) stream instead of files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_url: Option<String>,
}

/// Minutes since midnight of `"HH:MM"`; `"24:00"` is allowed as an end.
fn minutes(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 || h == 24 && m == 0).then_some(h * 60 + m)
}

/// Whether `s` is a real calendar date `YYYY-MM-DD`.
fn valid_date(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let [y, m, d] = parts.as_slice() else { return false };
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return false;
    }
    let (Ok(y), Ok(m), Ok(d)) = (y.parse::<u32>(), m.parse::<u32>(), d.parse::<u32>()) else { return false };
    let leap = y.is_multiple_of(4) && (!y.is_multiple_of(100) || y.is_multiple_of(400));
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&d)
}

/// An IANA zone name: `UTC`, `Europe/London`, `America/Argentina/Buenos_Aires`.
fn valid_timezone(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.split('/').all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || "_-+".contains(c)))
        && s.starts_with(|c: char| c.is_ascii_uppercase())
}

impl System {
    fn validate(&self) -> Vec<Violation> {
        let mut v = Vec::new();
        if !check::language(&self.language) {
            v.push(Violation::new("language", "format", format!("{:?} is not a language like en or pt_BR", self.language)));
        }
        if self.tone_zone.len() != 2 || !self.tone_zone.chars().all(|c| c.is_ascii_lowercase()) {
            v.push(Violation::new("tone_zone", "format", "a tone zone is a two-letter country code such as us, uk, de"));
        }
        if !valid_timezone(&self.timezone) {
            v.push(Violation::new("timezone", "format", format!("{:?} is not a time zone like Europe/London", self.timezone)));
        }
        v.extend(check::range("rtp_port_start", self.rtp_port_start, 1024..=65534));
        v.extend(check::range("rtp_port_end", self.rtp_port_end, 1025..=65535));
        if !self.rtp_port_start.is_multiple_of(2) {
            v.push(Violation::new("rtp_port_start", "format", "RTP uses even ports: the range must start on one"));
        }
        if self.rtp_port_end < self.rtp_port_start.saturating_add(100) {
            v.push(Violation::new("rtp_port_end", "range", "the RTP range needs at least 100 ports (two per call)"));
        }
        if let Some(address) = &self.external_address
            && !check::host(address)
        {
            v.push(Violation::new("external_address", "format", format!("{address:?} is not a host name or IP address")));
        }
        for (i, net) in self.local_networks.iter().enumerate() {
            if let Err(e) = check::cidr(net) {
                v.push(Violation::new(&format!("local_networks/{i}"), "format", e));
            }
        }
        let codes = &self.feature_codes;
        let all = [
            ("blind_transfer", &codes.blind_transfer),
            ("attended_transfer", &codes.attended_transfer),
            ("call_pickup", &codes.call_pickup),
            ("voicemail", &codes.voicemail),
        ];
        for (i, (name, code)) in all.iter().enumerate() {
            let field = format!("feature_codes/{name}");
            let keys_ok = code.starts_with(['*', '#'])
                && (2..=6).contains(&code.len())
                && code.chars().all(|c| c.is_ascii_digit() || c == '*' || c == '#');
            if !keys_ok {
                v.push(Violation::new(&field, "format", "a feature code is 2 to 6 of 0-9, * and #, starting with * or #"));
            }
            if all[..i].iter().any(|(_, other)| other == code) {
                v.push(Violation::new(&field, "unique", format!("{code} is already another feature's code")));
            }
        }
        v.extend(check::range("max_call_duration_s", self.max_call_duration_s, 0..=86_400));
        v
    }
}

impl TimeGroup {
    fn validate(&self) -> Vec<Violation> {
        let mut v = Vec::new();
        if self.rules.is_empty() {
            v.push(Violation::new("rules", "required", "a time group needs at least one rule"));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let field = format!("rules/{i}");
            if rule.days.is_empty() {
                v.push(Violation::new(&format!("{field}/days"), "required", "a rule applies to at least one day"));
            }
            match (minutes(&rule.start), minutes(&rule.end)) {
                (Some(start), Some(end)) if start < end && start < 24 * 60 => {}
                (Some(_), Some(_)) => v.push(Violation::new(&field, "range", "a rule's start must come before its end")),
                (None, _) => v.push(Violation::new(&format!("{field}/start"), "format", "a time is HH:MM, 00:00 to 23:59")),
                (_, None) => v.push(Violation::new(&format!("{field}/end"), "format", "a time is HH:MM, 00:00 to 24:00")),
            }
        }
        for (i, date) in self.closed_dates.iter().enumerate() {
            if !valid_date(date) {
                v.push(Violation::new(&format!("closed_dates/{i}"), "format", format!("{date:?} is not a date YYYY-MM-DD")));
            }
        }
        v
    }
}

impl MusicClass {
    fn validate(&self) -> Vec<Violation> {
        let mut v = Vec::new();
        match (&self.directory, &self.stream_url) {
            (Some(directory), None) => {
                if !directory.split('/').all(|part| !part.is_empty() && part != ".." && check::name(part)) {
                    v.push(Violation::new("directory", "format", "a relative directory like moh/jazz (a-z, 0-9, - and _)"));
                }
            }
            (None, Some(url)) => {
                let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
                let host = rest.and_then(|r| r.split(['/', ':']).next()).unwrap_or_default();
                if !check::host(host) {
                    v.push(Violation::new("stream_url", "format", format!("{url:?} is not an http:// or https:// URL")));
                }
            }
            _ => v.push(Violation::new("directory", "required", "a class plays either a directory of files or a stream_url")),
        }
        v
    }
}

impl RecordSchema for Record {
    fn info() -> Info {
        Info {
            component: "pbx-settings".to_owned(),
            plugin_version: env!("CARGO_PKG_VERSION").to_owned(),
            schema_version: 1,
            description: "System-wide PBX settings, time groups and music-on-hold classes".to_owned(),
            shape: String::new(),
            examples: vec![
                Example::new(
                    "system",
                    json!({
                        "kind": "system", "language": "en_GB", "tone_zone": "uk", "timezone": "Europe/London",
                        "rtp_port_start": 10000, "rtp_port_end": 20000, "external_address": "pbx.acme.example",
                        "local_networks": ["10.0.0.0/8", "192.168.0.0/16"], "feature_codes": {"call_pickup": "**"},
                        "max_call_duration_s": 14400
                    }),
                ),
                Example::new(
                    "time-group:office-hours",
                    json!({
                        "kind": "time_group", "description": "Office hours",
                        "rules": [{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:30"}, {"days": ["sat"], "start": "10:00", "end": "14:00"}],
                        "closed_dates": ["2025-12-25", "2025-12-26", "2026-01-01"]
                    }),
                ),
                Example::new(
                    "time-group:support-24x7",
                    json!({"kind": "time_group", "rules": [{"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "00:00", "end": "24:00"}]}),
                ),
                Example::new(
                    "moh:jazz",
                    json!({"kind": "music_class", "description": "Licensed jazz", "directory": "moh/jazz", "random": true}),
                ),
                Example::new("moh:radio", json!({"kind": "music_class", "stream_url": "https://stream.radio.example/live"})),
            ],
            retention: None,
        }
    }

    fn validate(&self, key: &str, _host: &dyn Host) -> Vec<Violation> {
        let name_violation = |name: &str| (!check::name(name)).then(|| Violation::new("", "key", "a name is 1 to 64 of a-z, 0-9, - and _"));
        match (self, key.split_once(':')) {
            (Record::System(system), None) if key == "system" => system.validate(),
            (Record::TimeGroup(group), Some(("time-group", name))) => name_violation(name).into_iter().chain(group.validate()).collect(),
            (Record::MusicClass(class), Some(("moh", name))) => name_violation(name).into_iter().chain(class.validate()).collect(),
            _ => vec![Violation::new("kind", "key", "keys are system, time-group:<name> and moh:<name>, each with its kind")],
        }
    }
}

/// The plugin.
pub type PbxSettingsPlugin = RecordPlugin<Record>;
tandem_sdk::export_plugin!(PbxSettingsPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_sdk::Plugin;
    use tandem_sdk::testing::{NoHost, codes, merge, put, read, stamp, write_violations};

    fn violations(key: &str, doc: serde_json::Value) -> Vec<(String, String)> {
        codes(&write_violations::<PbxSettingsPlugin>(key, doc, &NoHost))
    }

    fn has(found: &[(String, String)], field: &str, code: &str) -> bool {
        found.iter().any(|(f, c)| f == field && c == code)
    }

    fn system(extra: serde_json::Value) -> Vec<(String, String)> {
        let mut doc = json!({"kind": "system"});
        if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
            doc.extend(extra.clone());
        }
        violations("system", doc)
    }

    fn rules(rules: serde_json::Value) -> Vec<(String, String)> {
        violations("time-group:office-hours", json!({"kind": "time_group", "rules": rules}))
    }

    #[test]
    fn examples_are_valid() {
        let info = PbxSettingsPlugin::describe();
        assert_eq!(info.component, "pbx-settings");
        for ex in info.examples {
            let doc = serde_json::from_str(&ex.input).expect("example is JSON");
            assert_eq!(violations(&ex.key, doc), vec![], "example {}", ex.key);
        }
    }

    #[test]
    fn kind_matches_the_key() {
        assert!(has(&violations("general", json!({"kind": "system"})), "/kind", "key"));
        assert!(has(&violations("moh:jazz", json!({"kind": "system"})), "/kind", "key"));
        assert!(has(&violations("moh:Jazz", json!({"kind": "music_class", "directory": "moh/jazz"})), "", "key"));
    }

    #[test]
    fn refuses_system_mistakes() {
        assert!(has(&system(json!({"language": "british"})), "/language", "format"));
        assert!(has(&system(json!({"tone_zone": "GBR"})), "/tone_zone", "format"));
        assert!(has(&system(json!({"timezone": "London time"})), "/timezone", "format"));
        assert!(has(&system(json!({"rtp_port_start": 80})), "/rtp_port_start", "range"));
        assert!(has(&system(json!({"rtp_port_start": 10001})), "/rtp_port_start", "format"));
        assert!(has(&system(json!({"rtp_port_start": 20000, "rtp_port_end": 10000})), "/rtp_port_end", "range"));
        assert!(has(&system(json!({"external_address": "pbx acme"})), "/external_address", "format"));
        assert!(has(&system(json!({"local_networks": ["10.0.0.1/8"]})), "/local_networks/0", "format"));
        assert!(has(&system(json!({"feature_codes": {"call_pickup": "8"}})), "/feature_codes/call_pickup", "format"));
        assert!(has(&system(json!({"feature_codes": {"voicemail": "*"}})), "/feature_codes/voicemail", "format"));
        assert!(has(&system(json!({"feature_codes": {"call_pickup": "*2"}})), "/feature_codes/call_pickup", "unique"));
        assert!(has(&system(json!({"max_call_duration_s": 100_000})), "/max_call_duration_s", "range"));
    }

    #[test]
    fn refuses_time_group_mistakes() {
        assert!(has(&rules(json!([])), "/rules", "required"));
        assert!(has(&rules(json!([{"days": [], "start": "09:00", "end": "17:00"}])), "/rules/0/days", "required"));
        assert!(has(&rules(json!([{"days": ["mon"], "start": "9am", "end": "17:00"}])), "/rules/0/start", "format"));
        assert!(has(&rules(json!([{"days": ["mon"], "start": "09:00", "end": "24:30"}])), "/rules/0/end", "format"));
        assert!(has(&rules(json!([{"days": ["mon"], "start": "17:00", "end": "09:00"}])), "/rules/0", "range"));
        assert!(has(&rules(json!([{"days": ["monday"], "start": "09:00", "end": "17:00"}])), "", "malformed"));
        let closed = json!({"kind": "time_group", "rules": [{"days": ["mon"], "start": "09:00", "end": "17:00"}], "closed_dates": ["2025-02-29", "2024-02-29"]});
        let found = violations("time-group:office-hours", closed);
        assert!(has(&found, "/closed_dates/0", "format") && !has(&found, "/closed_dates/1", "format"));
    }

    #[test]
    fn refuses_music_class_mistakes() {
        let files = json!({"kind": "music_class", "directory": "../../etc"});
        assert!(has(&violations("moh:jazz", files), "/directory", "format"));
        let stream = json!({"kind": "music_class", "stream_url": "ftp://radio.example"});
        assert!(has(&violations("moh:radio", stream), "/stream_url", "format"));
        assert!(has(&violations("moh:radio", json!({"kind": "music_class"})), "/directory", "required"));
        let both = json!({"kind": "music_class", "directory": "moh/jazz", "stream_url": "https://radio.example"});
        assert!(has(&violations("moh:radio", both), "/directory", "required"));
        assert!(has(&violations("moh:radio", json!({"kind": "music_class", "source": "cd"})), "", "malformed"));
    }

    #[test]
    fn concurrent_edits_merge_per_field_the_same_in_both_orders() {
        let base = put::<PbxSettingsPlugin>("system", json!({"kind": "system"}), None, &stamp(1, "a"));
        let a = put::<PbxSettingsPlugin>("system", json!({"kind": "system", "timezone": "Europe/Istanbul"}), Some(&base), &stamp(2, "a"));
        let b = put::<PbxSettingsPlugin>("system", json!({"kind": "system", "language": "tr"}), Some(&base), &stamp(2, "b"));
        let ab = merge::<PbxSettingsPlugin>("system", &a, &b);
        assert_eq!(ab, merge::<PbxSettingsPlugin>("system", &b, &a));
        let doc = read::<PbxSettingsPlugin>("system", &ab).expect("live");
        assert_eq!((&doc["timezone"], &doc["language"]), (&json!("Europe/Istanbul"), &json!("tr")));
    }
}
