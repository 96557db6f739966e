//! Incoming routes: where a call from a trunk goes, chosen by the number dialled (DID) and the
//! caller's number (FreePBX inbound routes).
//!
//! Key: `<DID>:<caller ID>`, each a number, an Asterisk pattern (`_+4420712346XX`) or `any`,
//! e.g. `+442071234567:any` or `+442071234567:+447700900999`. The pair is the natural key, so it
//! is unique by construction, in hot mode too: two nodes that define the same route write the
//! same record, and their fields merge.
//! Merge: per field, last writer wins.
//! References: the destinations, the time group (pbx-settings) and the fax inbox (fax-settings)
//! must exist. Checked through the host lookup, so enforced where one node takes the writes.

use serde::{Deserialize, Serialize};
use serde_json::json;
use tandem_sdk::record::{RecordPlugin, RecordSchema};
use tandem_sdk::{Example, Host, Info, Violation, check};

/// Where the route sends a call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Destination {
    Extension {
        number: String,
    },
    Voicemail {
        number: String,
    },
    Ivr {
        number: String,
    },
    Queue {
        number: String,
    },
    Conference {
        number: String,
    },
    /// An outside number, dialled through the dial-out routes.
    External {
        number: String,
    },
    /// Play a recording, then hang up.
    Announcement {
        sound: String,
    },
    Hangup,
}

/// An incoming route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(default)]
    pub description: String,
    pub destination: Destination,
    /// Opening hours (a time group of pbx-settings); outside them calls go to `closed_destination`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_destination: Option<Destination>,
    /// Text put before the caller's name, so agents see which number was called ("Sales: ").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid_name_prefix: Option<String>,
    /// Callers who withhold their number must enter it before the call proceeds.
    #[serde(default)]
    pub privacy_manager: bool,
    /// Listen for fax tones and send faxes to `fax_inbox` (an inbox of fax-settings).
    #[serde(default)]
    pub fax_detect: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fax_inbox: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
}

/// A recording name as Asterisk looks it up under its sounds directory: `custom/closed`.
fn valid_sound(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.split('/').all(|part| !part.is_empty() && part != ".." && check::name(part))
}

impl Destination {
    fn check(&self, field: &str, host: &dyn Host) -> Vec<Violation> {
        let mut v = Vec::new();
        match self {
            Destination::Extension { number } => v.extend(check::exists(host, field, "extensions", number, "extension")),
            Destination::Voicemail { number } => match host.lookup("extensions", number) {
                None => v.push(Violation::new(field, "reference", format!("no extension {number:?} in extensions"))),
                Some(ext) if ext.get("voicemail").is_none() => {
                    v.push(Violation::new(field, "reference", format!("extension {number} has no voicemail box")));
                }
                Some(_) => {}
            },
            Destination::Ivr { number } => v.extend(check::exists(host, field, "ivr-settings", number, "IVR menu")),
            Destination::Queue { number } => {
                v.extend(check::exists(host, field, "contact-center-settings", &format!("queue:{number}"), "queue"));
            }
            Destination::Conference { number } => v.extend(check::exists(host, field, "conference-settings", number, "conference room")),
            Destination::External { number } => {
                if !check::phone_number(number) {
                    v.push(Violation::new(field, "format", format!("{number:?} is not a phone number (+ and 3 to 15 digits)")));
                }
            }
            Destination::Announcement { sound } => {
                if !valid_sound(sound) {
                    v.push(Violation::new(field, "format", format!("{sound:?} is not a recording name like custom/closed")));
                }
            }
            Destination::Hangup => {}
        }
        v
    }
}

/// Checks one half of the key: `any`, a number or a pattern.
fn check_match(what: &str, value: &str) -> Option<Violation> {
    if value == "any" {
        return None;
    }
    check::dial_pattern(value).err().map(|e| Violation::new("", "key", format!("the {what} must be a number, a pattern or any: {e}")))
}

impl RecordSchema for Route {
    fn info() -> Info {
        Info {
            component: "incoming-call-settings".to_owned(),
            plugin_version: env!("CARGO_PKG_VERSION").to_owned(),
            schema_version: 1,
            description: "Incoming routes: destination by DID and caller ID".to_owned(),
            shape: String::new(),
            examples: vec![
                Example::new(
                    "+442071234567:any",
                    json!({"description": "Main number, forwarded to the duty mobile", "destination": {"type": "external", "number": "+447700900456"}, "cid_name_prefix": "Main: "}),
                ),
                Example::new("+442071234567:+447700900999", json!({"description": "Nuisance caller", "destination": {"type": "hangup"}})),
                Example::new(
                    "_+4420712346XX:any",
                    json!({"description": "Numbers of the old office", "destination": {"type": "announcement", "sound": "custom/we-have-moved"}, "language": "en_GB"}),
                ),
                Example::new(
                    "any:any",
                    json!({"description": "Catch-all for unknown DIDs", "destination": {"type": "announcement", "sound": "custom/not-in-service"}, "privacy_manager": true}),
                ),
            ],
            retention: None,
        }
    }

    fn validate(&self, key: &str, host: &dyn Host) -> Vec<Violation> {
        let mut v = Vec::new();
        match key.split_once(':') {
            Some((did, cid)) => {
                v.extend(check_match("DID", did));
                v.extend(check_match("caller ID", cid));
            }
            None => v.push(Violation::new("", "key", "the key is <DID>:<caller ID>, e.g. +442071234567:any")),
        }
        v.extend(self.destination.check("destination", host));
        match (&self.time_group, &self.closed_destination) {
            (Some(group), Some(closed)) => {
                v.extend(check::exists(host, "time_group", "pbx-settings", &format!("time-group:{group}"), "time group"));
                v.extend(closed.check("closed_destination", host));
            }
            (Some(_), None) => {
                v.push(Violation::new("closed_destination", "required", "a route with a time group needs a closed destination"))
            }
            (None, Some(_)) => v.push(Violation::new("time_group", "required", "a closed destination needs a time group saying when")),
            (None, None) => {}
        }
        if let Some(prefix) = &self.cid_name_prefix
            && (prefix.chars().count() > 20 || prefix.chars().any(char::is_control))
        {
            v.push(Violation::new("cid_name_prefix", "format", "a caller-name prefix is up to 20 printable characters"));
        }
        match (&self.fax_inbox, self.fax_detect) {
            (Some(inbox), _) => v.extend(check::exists(host, "fax_inbox", "fax-settings", &format!("inbox:{inbox}"), "fax inbox")),
            (None, true) => v.push(Violation::new("fax_inbox", "required", "fax detection needs an inbox for the faxes")),
            (None, false) => {}
        }
        if let Some(language) = &self.language
            && !check::language(language)
        {
            v.push(Violation::new("language", "format", format!("{language:?} is not a language like en or pt_BR")));
        }
        v
    }
}

/// The plugin.
pub type IncomingPlugin = RecordPlugin<Route>;
tandem_sdk::export_plugin!(IncomingPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_sdk::Plugin;
    use tandem_sdk::testing::{MapHost, NoHost, codes, merge, put, read, stamp, write_violations};

    fn violations(key: &str, doc: serde_json::Value) -> Vec<(String, String)> {
        codes(&write_violations::<IncomingPlugin>(key, doc, &NoHost))
    }

    fn has(found: &[(String, String)], field: &str, code: &str) -> bool {
        found.iter().any(|(f, c)| f == field && c == code)
    }

    const KEY: &str = "+442071234567:any";

    fn route(extra: serde_json::Value) -> serde_json::Value {
        let mut doc = json!({"destination": {"type": "hangup"}});
        if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
            doc.extend(extra.clone());
        }
        doc
    }

    #[test]
    fn examples_are_valid() {
        let info = IncomingPlugin::describe();
        assert_eq!(info.component, "incoming-call-settings");
        for ex in info.examples {
            let doc = serde_json::from_str(&ex.input).expect("example is JSON");
            assert_eq!(violations(&ex.key, doc), vec![], "example {}", ex.key);
        }
    }

    #[test]
    fn key_is_did_and_caller_id() {
        assert!(has(&violations("+442071234567", route(json!({}))), "", "key"));
        assert!(has(&violations("main:any", route(json!({}))), "", "key"));
        assert!(has(&violations("+442071234567:anonymous", route(json!({}))), "", "key"));
        assert!(has(&violations("_44[9-0]X:any", route(json!({}))), "", "key"));
        assert_eq!(violations("_4420XXXXXXXX:_07.", route(json!({}))), vec![]);
    }

    #[test]
    fn references_must_exist() {
        let doc = route(json!({
            "destination": {"type": "queue", "number": "6000"},
            "time_group": "office-hours",
            "closed_destination": {"type": "voicemail", "number": "1001"},
            "fax_detect": true,
            "fax_inbox": "accounts"
        }));
        let found = violations(KEY, doc.clone());
        for field in ["/destination", "/time_group", "/closed_destination", "/fax_inbox"] {
            assert!(has(&found, field, "reference"), "{field}");
        }
        let host = MapHost::default()
            .with("contact-center-settings", "queue:6000", json!({"kind": "queue"}))
            .with("pbx-settings", "time-group:office-hours", json!({"kind": "time_group"}))
            .with("extensions", "1001", json!({"name": "Reception", "voicemail": {"pin": "2468"}}))
            .with("fax-settings", "inbox:accounts", json!({"kind": "inbox"}));
        assert_eq!(write_violations::<IncomingPlugin>(KEY, doc, &host), vec![]);
        for (destination, component, key) in [
            (json!({"type": "extension", "number": "1001"}), "extensions", "1001"),
            (json!({"type": "ivr", "number": "7000"}), "ivr-settings", "7000"),
            (json!({"type": "conference", "number": "8001"}), "conference-settings", "8001"),
        ] {
            let doc = route(json!({ "destination": destination }));
            assert!(has(&violations(KEY, doc.clone()), "/destination", "reference"), "{component}");
            let host = MapHost::default().with(component, key, json!({"name": "there"}));
            assert_eq!(write_violations::<IncomingPlugin>(KEY, doc, &host), vec![], "{component}");
        }
    }

    #[test]
    fn refuses_operator_mistakes() {
        assert!(has(&violations(KEY, route(json!({"time_group": "office-hours"}))), "/closed_destination", "required"));
        assert!(has(&violations(KEY, route(json!({"closed_destination": {"type": "hangup"}}))), "/time_group", "required"));
        assert!(has(&violations(KEY, route(json!({"fax_detect": true}))), "/fax_inbox", "required"));
        assert!(has(&violations(KEY, route(json!({"cid_name_prefix": "A very long prefix for names: "}))), "/cid_name_prefix", "format"));
        assert!(has(&violations(KEY, route(json!({"destination": {"type": "external", "number": "mobile"}}))), "/destination", "format"));
        assert!(has(
            &violations(KEY, route(json!({"destination": {"type": "announcement", "sound": "Closed!"}}))),
            "/destination",
            "format"
        ));
        assert!(has(&violations(KEY, route(json!({"language": "English"}))), "/language", "format"));
        assert!(has(&violations(KEY, json!({"description": "no destination"})), "", "malformed"));
    }

    #[test]
    fn the_same_route_written_on_two_nodes_merges_into_one() {
        // Both nodes create the route for the same DID and caller ID: one record, fields by stamp.
        let a = put::<IncomingPlugin>(KEY, route(json!({"description": "Main"})), None, &stamp(5, "a"));
        let b = put::<IncomingPlugin>(
            KEY,
            route(json!({"destination": {"type": "external", "number": "+447700900456"}})),
            None,
            &stamp(4, "b"),
        );
        let ab = merge::<IncomingPlugin>(KEY, &a, &b);
        assert_eq!(ab, merge::<IncomingPlugin>(KEY, &b, &a));
        let doc = read::<IncomingPlugin>(KEY, &ab).expect("live");
        // a wrote every field later, so a's whole document wins.
        assert_eq!(doc, json!({"description": "Main", "destination": {"type": "hangup"}, "fax_detect": false, "privacy_manager": false}));
    }

    #[test]
    fn concurrent_edits_merge_per_field_the_same_in_both_orders() {
        let base = put::<IncomingPlugin>(KEY, route(json!({})), None, &stamp(1, "a"));
        let a = put::<IncomingPlugin>(KEY, route(json!({"description": "Main number"})), Some(&base), &stamp(2, "a"));
        let b = put::<IncomingPlugin>(KEY, route(json!({"privacy_manager": true})), Some(&base), &stamp(3, "b"));
        let ab = merge::<IncomingPlugin>(KEY, &a, &b);
        assert_eq!(ab, merge::<IncomingPlugin>(KEY, &b, &a));
        let doc = read::<IncomingPlugin>(KEY, &ab).expect("live");
        assert_eq!((&doc["description"], &doc["privacy_manager"]), (&json!("Main number"), &json!(true)));
    }
}
