//! Dial-out routes: which numbers users may dial to the outside and which trunks carry them, in
//! order (FreePBX outbound routes: dial patterns, prepend/prefix digits, trunk sequence).
//!
//! Key: the route's name (`[a-z0-9_-]{1,64}`), e.g. `uk-national`. Routes are tried by ascending
//! `priority`, then by name.
//! Merge: per field, last writer wins; the pattern list and the trunk sequence are each one value
//! (their order matters).
//! Trunks are named, not looked up: a route can be set up before its trunks, and at dial time a
//! trunk that is missing is skipped like a busy one. The time group is looked up (pbx-settings).

use serde::{Deserialize, Serialize};
use serde_json::json;
use tandem_sdk::record::{RecordPlugin, RecordSchema};
use tandem_sdk::{Example, Host, Info, Violation, check};

/// One dial pattern of a route. The user dials `prefix` followed by a number matching
/// `pattern`; the trunk is sent `prepend` followed by that number.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialPattern {
    /// Digits the user dials first and that are removed (`9` for an outside line).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// An Asterisk number or pattern: `_0[1-9]XXXXXXXXX`, `_00.`, `999`.
    pub pattern: String,
    /// Digits added in front of the number before it goes to the trunk (`+44`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prepend: String,
    /// Only callers whose number matches this pattern use this line (`_10XX`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_id: Option<String>,
}

/// A dial-out route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(default)]
    pub description: String,
    /// Lower first.
    #[serde(default = "default_priority")]
    pub priority: u32,
    pub patterns: Vec<DialPattern>,
    /// Trunk names (keys of the trunks component), tried in this order.
    pub trunks: Vec<String>,
    /// Caller ID presented on these calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_id: Option<String>,
    /// Present `caller_id` even to extensions that set their own.
    #[serde(default)]
    pub override_extension_caller_id: bool,
    /// Digits the caller must enter before the call is placed (toll restriction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
    /// Emergency route: calls present the extension's emergency caller ID and skip the PIN.
    #[serde(default)]
    pub emergency: bool,
    /// Only in use during this time group of pbx-settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_group: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn default_priority() -> u32 {
    100
}
fn yes() -> bool {
    true
}

/// Digits and the keypad's `*`, `#`, and `+`.
fn dialable(s: &str) -> bool {
    s.chars().all(|c| c.is_ascii_digit() || "*#+".contains(c))
}

impl DialPattern {
    fn validate(&self, field: &str, v: &mut Vec<Violation>) {
        if !dialable(&self.prefix) || self.prefix.len() > 8 {
            v.push(Violation::new(&format!("{field}/prefix"), "format", "a prefix is up to 8 of 0-9, *, # and +"));
        }
        if let Err(e) = check::dial_pattern(&self.pattern) {
            v.push(Violation::new(&format!("{field}/pattern"), "format", e));
        }
        if !dialable(&self.prepend) || self.prepend.len() > 16 {
            v.push(Violation::new(&format!("{field}/prepend"), "format", "prepended digits are up to 16 of 0-9, *, # and +"));
        }
        if let Some(cid) = &self.caller_id
            && let Err(e) = check::dial_pattern(cid)
        {
            v.push(Violation::new(&format!("{field}/caller_id"), "format", e));
        }
    }
}

impl RecordSchema for Route {
    fn info() -> Info {
        Info {
            component: "dialout-settings".to_owned(),
            plugin_version: env!("CARGO_PKG_VERSION").to_owned(),
            schema_version: 1,
            description: "Dial-out routes: dial patterns and trunk sequences".to_owned(),
            shape: String::new(),
            examples: vec![
                Example::new(
                    "emergency",
                    json!({"description": "Emergency services", "priority": 1, "emergency": true,
                           "patterns": [{"pattern": "999"}, {"pattern": "112"}, {"prefix": "9", "pattern": "999"}],
                           "trunks": ["carrier-main", "sbc-emergency"]}),
                ),
                Example::new(
                    "uk-national",
                    json!({"description": "UK landlines and mobiles", "priority": 10,
                           "patterns": [{"prefix": "9", "pattern": "_0[1-9]XXXXXXXXX"}, {"pattern": "_0[1-9]XXXXXXXXX", "caller_id": "_10XX"}],
                           "trunks": ["carrier-main", "carrier-backup"], "caller_id": "+442071234500"}),
                ),
                Example::new(
                    "international",
                    json!({"description": "International, PIN protected", "priority": 20,
                           "patterns": [{"prefix": "9", "pattern": "_00."}], "trunks": ["carrier-main"], "pin": "7391"}),
                ),
                Example::new(
                    "us-long-distance",
                    json!({"priority": 30, "patterns": [{"pattern": "_1NXXNXXXXXX", "prepend": "+"}, {"pattern": "_NXXNXXXXXX", "prepend": "+1"}],
                           "trunks": ["us-carrier"], "caller_id": "+12025550143", "override_extension_caller_id": true, "enabled": false}),
                ),
            ],
            retention: None,
        }
    }

    fn validate(&self, key: &str, host: &dyn Host) -> Vec<Violation> {
        let mut v = Vec::new();
        if !check::name(key) {
            v.push(Violation::new("", "key", "a route name is 1 to 64 of a-z, 0-9, - and _"));
        }
        v.extend(check::range("priority", self.priority, 1..=999));
        if self.patterns.is_empty() {
            v.push(Violation::new("patterns", "required", "a route needs at least one dial pattern"));
        }
        for (i, pattern) in self.patterns.iter().enumerate() {
            let field = format!("patterns/{i}");
            pattern.validate(&field, &mut v);
            if self.patterns[..i].contains(pattern) {
                v.push(Violation::new(&field, "unique", "the same dial pattern is listed twice"));
            }
        }
        if self.trunks.is_empty() {
            v.push(Violation::new("trunks", "required", "a route needs at least one trunk"));
        }
        v.extend(check::range("trunks", self.trunks.len(), 0..=10));
        for (i, trunk) in self.trunks.iter().enumerate() {
            let field = format!("trunks/{i}");
            if !check::name(trunk) {
                v.push(Violation::new(&field, "format", format!("{trunk:?} is not a trunk name")));
            } else if self.trunks[..i].contains(trunk) {
                v.push(Violation::new(&field, "unique", format!("trunk {trunk} is listed twice")));
            }
        }
        if let Some(cid) = &self.caller_id
            && !check::phone_number(cid)
        {
            v.push(Violation::new("caller_id", "format", format!("{cid:?} is not a phone number (+ and 3 to 15 digits)")));
        }
        if self.override_extension_caller_id && self.caller_id.is_none() {
            v.push(Violation::new("caller_id", "required", "override_extension_caller_id needs a caller_id to present"));
        }
        if let Some(pin) = &self.pin {
            if !check::digits(pin, 4..=10) {
                v.push(Violation::new("pin", "format", "a route PIN is 4 to 10 digits"));
            }
            if self.emergency {
                v.push(Violation::new("pin", "emergency", "an emergency route must never ask for a PIN"));
            }
        }
        if let Some(group) = &self.time_group {
            v.extend(check::exists(host, "time_group", "pbx-settings", &format!("time-group:{group}"), "time group"));
        }
        v
    }
}

/// The plugin.
pub type DialoutPlugin = RecordPlugin<Route>;
tandem_sdk::export_plugin!(DialoutPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_sdk::Plugin;
    use tandem_sdk::testing::{MapHost, NoHost, codes, merge, put, read, stamp, write_violations};

    fn violations(key: &str, doc: serde_json::Value) -> Vec<(String, String)> {
        codes(&write_violations::<DialoutPlugin>(key, doc, &NoHost))
    }

    fn has(found: &[(String, String)], field: &str, code: &str) -> bool {
        found.iter().any(|(f, c)| f == field && c == code)
    }

    fn route(extra: serde_json::Value) -> serde_json::Value {
        let mut doc = json!({"patterns": [{"pattern": "_0[1-9]XXXXXXXXX"}], "trunks": ["carrier-main"]});
        if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
            doc.extend(extra.clone());
        }
        doc
    }

    #[test]
    fn examples_are_valid() {
        let info = DialoutPlugin::describe();
        assert_eq!(info.component, "dialout-settings");
        for ex in info.examples {
            let doc = serde_json::from_str(&ex.input).expect("example is JSON");
            assert_eq!(violations(&ex.key, doc), vec![], "example {}", ex.key);
        }
    }

    #[test]
    fn patterns_must_parse() {
        let bad = |p: serde_json::Value| violations("r", route(json!({ "patterns": [p] })));
        assert!(has(&bad(json!({"pattern": "_0[9-1]XXX"})), "/patterns/0/pattern", "format"));
        assert!(has(&bad(json!({"pattern": "_00.X"})), "/patterns/0/pattern", "format"));
        assert!(has(&bad(json!({"pattern": "0NXX"})), "/patterns/0/pattern", "format"));
        assert!(has(&bad(json!({"pattern": "_X[12"})), "/patterns/0/pattern", "format"));
        assert!(has(&bad(json!({"pattern": "_0X", "prefix": "nine"})), "/patterns/0/prefix", "format"));
        assert!(has(&bad(json!({"pattern": "_0X", "prepend": "00 44"})), "/patterns/0/prepend", "format"));
        assert!(has(&bad(json!({"pattern": "_0X", "caller_id": "_1O0X"})), "/patterns/0/caller_id", "format"));
        assert!(has(&violations("r", route(json!({"patterns": []}))), "/patterns", "required"));
        let twice = route(json!({"patterns": [{"pattern": "999"}, {"pattern": "999"}]}));
        assert!(has(&violations("r", twice), "/patterns/1", "unique"));
    }

    #[test]
    fn refuses_operator_mistakes() {
        assert!(has(&violations("UK National", route(json!({}))), "", "key"));
        assert!(has(&violations("r", route(json!({"priority": 0}))), "/priority", "range"));
        assert!(has(&violations("r", route(json!({"trunks": []}))), "/trunks", "required"));
        assert!(has(&violations("r", route(json!({"trunks": ["Carrier Main"]}))), "/trunks/0", "format"));
        assert!(has(&violations("r", route(json!({"trunks": ["a", "b", "a"]}))), "/trunks/2", "unique"));
        let eleven: Vec<String> = (0..11).map(|i| format!("t{i}")).collect();
        assert!(has(&violations("r", route(json!({ "trunks": eleven }))), "/trunks", "range"));
        assert!(has(&violations("r", route(json!({"caller_id": "main line"}))), "/caller_id", "format"));
        assert!(has(&violations("r", route(json!({"override_extension_caller_id": true}))), "/caller_id", "required"));
        assert!(has(&violations("r", route(json!({"pin": "12"}))), "/pin", "format"));
        assert!(has(&violations("r", route(json!({"pin": "1234", "emergency": true}))), "/pin", "emergency"));
        assert!(has(&violations("r", json!({"patterns": [{"pattern": "999"}]})), "", "malformed"));
    }

    #[test]
    fn time_group_must_exist() {
        let doc = route(json!({"time_group": "office-hours"}));
        assert!(has(&violations("r", doc.clone()), "/time_group", "reference"));
        let host = MapHost::default().with("pbx-settings", "time-group:office-hours", json!({"kind": "time_group"}));
        assert_eq!(write_violations::<DialoutPlugin>("r", doc, &host), vec![]);
    }

    #[test]
    fn concurrent_edits_merge_per_field_the_same_in_both_orders() {
        let base = put::<DialoutPlugin>("r", route(json!({})), None, &stamp(1, "a"));
        // a reorders the trunks, b adds a pattern: both survive, each list as one value.
        let a = put::<DialoutPlugin>("r", route(json!({"trunks": ["carrier-backup", "carrier-main"]})), Some(&base), &stamp(2, "a"));
        let patterns = json!([{"pattern": "_0[1-9]XXXXXXXXX"}, {"prefix": "9", "pattern": "_0[1-9]XXXXXXXXX"}]);
        let b = put::<DialoutPlugin>("r", route(json!({ "patterns": patterns })), Some(&base), &stamp(3, "b"));
        let ab = merge::<DialoutPlugin>("r", &a, &b);
        assert_eq!(ab, merge::<DialoutPlugin>("r", &b, &a));
        let doc = read::<DialoutPlugin>("r", &ab).expect("live");
        assert_eq!((&doc["trunks"], &doc["patterns"]), (&json!(["carrier-backup", "carrier-main"]), &patterns));
    }
}
