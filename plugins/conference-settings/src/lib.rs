//! Conference rooms: Asterisk ConfBridge bridges with their PINs and the behaviour FreePBX lets
//! an operator choose per room.
//!
//! Key: the room number, 2 to 8 digits, e.g. `8001`. A number leads to one place only: it must
//! not also be an extension, an IVR menu or a queue (checked through the host lookup, so enforced
//! where one node takes the writes).
//! Merge: per field, last writer wins.

use serde::{Deserialize, Serialize};
use serde_json::json;
use tandem_sdk::record::{RecordPlugin, RecordSchema};
use tandem_sdk::{Example, Host, Info, Violation, check};

/// The other places a dialled number can lead to (component, key prefix, what it is): a number
/// leads to one place only.
const NUMBERING_PLAN: &[(&str, &str, &str)] =
    &[("extensions", "", "an extension"), ("ivr-settings", "", "an IVR menu"), ("contact-center-settings", "queue:", "a queue")];

/// Which video stream the members see (ConfBridge `video_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VideoMode {
    None,
    FollowTalker,
    LastMarked,
    FirstMarked,
}

/// A conference room.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Room {
    pub name: String,
    /// Digits a member enters to join; none for an open room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
    /// Digits that make a member the leader (ConfBridge "marked" admin user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_pin: Option<String>,
    #[serde(default = "default_max_members")]
    pub max_members: u32,
    /// Members hear music until a leader joins (needs `leader_pin`).
    #[serde(default)]
    pub wait_for_leader: bool,
    /// Members are disconnected when the last leader leaves (needs `leader_pin`).
    #[serde(default)]
    pub end_when_leader_leaves: bool,
    /// Music-on-hold class played to a lone member: `default` or a class of pbx-settings.
    #[serde(default = "default_music_class")]
    pub music_class: String,
    #[serde(default)]
    pub announce_join_leave: bool,
    #[serde(default)]
    pub announce_member_count: bool,
    #[serde(default)]
    pub record: bool,
    #[serde(default = "default_video_mode")]
    pub video_mode: VideoMode,
    #[serde(default = "default_language")]
    pub language: String,
}

fn default_max_members() -> u32 {
    50
}
fn default_music_class() -> String {
    "default".to_owned()
}
fn default_video_mode() -> VideoMode {
    VideoMode::None
}
fn default_language() -> String {
    "en".to_owned()
}

impl RecordSchema for Room {
    fn info() -> Info {
        Info {
            component: "conference-settings".to_owned(),
            plugin_version: env!("CARGO_PKG_VERSION").to_owned(),
            schema_version: 1,
            description: "Conference rooms (ConfBridge): PINs, size and behaviour".to_owned(),
            shape: String::new(),
            examples: vec![
                Example::new(
                    "8001",
                    json!({"name": "All hands", "pin": "2468", "leader_pin": "97531", "max_members": 200, "wait_for_leader": true, "announce_join_leave": true}),
                ),
                Example::new("8002", json!({"name": "Support bridge", "max_members": 10, "record": true, "announce_member_count": true})),
                Example::new(
                    "8100",
                    json!({"name": "Board room", "pin": "31415", "leader_pin": "27182", "end_when_leader_leaves": true, "video_mode": "follow_talker", "language": "de"}),
                ),
            ],
            retention: None,
        }
    }

    fn validate(&self, key: &str, host: &dyn Host) -> Vec<Violation> {
        let mut v = Vec::new();
        if !check::digits(key, 2..=8) {
            v.push(Violation::new("", "key", "a room number is 2 to 8 digits"));
        }
        v.extend(check::not_taken(host, key, NUMBERING_PLAN));
        if self.name.trim().is_empty() {
            v.push(Violation::new("name", "required", "a room needs a name"));
        }
        for (field, pin) in [("pin", &self.pin), ("leader_pin", &self.leader_pin)] {
            if let Some(pin) = pin
                && !check::digits(pin, 3..=10)
            {
                v.push(Violation::new(field, "format", "a PIN is 3 to 10 digits"));
            }
        }
        if self.pin.is_some() && self.pin == self.leader_pin {
            v.push(Violation::new("leader_pin", "unique", "the leader PIN must differ from the members' PIN"));
        }
        if self.leader_pin.is_none() {
            for (field, on) in [("wait_for_leader", self.wait_for_leader), ("end_when_leader_leaves", self.end_when_leader_leaves)] {
                if on {
                    v.push(Violation::new(field, "required", "needs a leader_pin, or no one can ever be the leader"));
                }
            }
        }
        v.extend(check::range("max_members", self.max_members, 2..=500));
        if !check::name(&self.music_class) {
            v.push(Violation::new("music_class", "format", "a music-on-hold class is 1 to 64 of a-z, 0-9, - and _"));
        } else if self.music_class != "default" {
            v.extend(check::exists(host, "music_class", "pbx-settings", &format!("moh:{}", self.music_class), "music-on-hold class"));
        }
        if !check::language(&self.language) {
            v.push(Violation::new("language", "format", format!("{:?} is not a language like en or pt_BR", self.language)));
        }
        v
    }
}

/// The plugin.
pub type ConferencePlugin = RecordPlugin<Room>;
tandem_sdk::export_plugin!(ConferencePlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_sdk::Plugin;
    use tandem_sdk::testing::{MapHost, NoHost, codes, merge, put, read, stamp, write_violations};

    fn violations(key: &str, doc: serde_json::Value) -> Vec<(String, String)> {
        codes(&write_violations::<ConferencePlugin>(key, doc, &NoHost))
    }

    fn has(found: &[(String, String)], field: &str, code: &str) -> bool {
        found.iter().any(|(f, c)| f == field && c == code)
    }

    #[test]
    fn examples_are_valid() {
        let info = ConferencePlugin::describe();
        assert_eq!(info.component, "conference-settings");
        for ex in info.examples {
            let doc = serde_json::from_str(&ex.input).expect("example is JSON");
            assert_eq!(violations(&ex.key, doc), vec![], "example {}", ex.key);
        }
    }

    #[test]
    fn number_is_numeric_and_unique_across_the_numbering_plan() {
        assert!(has(&violations("room1", json!({"name": "R"})), "", "key"));
        for (component, key) in [("extensions", "8001"), ("ivr-settings", "8001"), ("contact-center-settings", "queue:8001")] {
            let host = MapHost::default().with(component, key, json!({"name": "taken"}));
            let found = codes(&write_violations::<ConferencePlugin>("8001", json!({"name": "R"}), &host));
            assert!(has(&found, "", "unique"), "{component}");
        }
    }

    #[test]
    fn music_class_must_exist() {
        let doc = json!({"name": "R", "music_class": "jazz"});
        assert!(has(&violations("8001", doc.clone()), "/music_class", "reference"));
        let host = MapHost::default().with("pbx-settings", "moh:jazz", json!({"kind": "music_class"}));
        assert_eq!(write_violations::<ConferencePlugin>("8001", doc, &host), vec![]);
        assert!(has(&violations("8001", json!({"name": "R", "music_class": "Jazz Hits"})), "/music_class", "format"));
    }

    #[test]
    fn refuses_operator_mistakes() {
        assert!(has(&violations("8001", json!({"name": ""})), "/name", "required"));
        assert!(has(&violations("8001", json!({"name": "R", "pin": "12"})), "/pin", "format"));
        assert!(has(&violations("8001", json!({"name": "R", "leader_pin": "12a4"})), "/leader_pin", "format"));
        assert!(has(&violations("8001", json!({"name": "R", "pin": "1234", "leader_pin": "1234"})), "/leader_pin", "unique"));
        assert!(has(&violations("8001", json!({"name": "R", "wait_for_leader": true})), "/wait_for_leader", "required"));
        assert!(has(&violations("8001", json!({"name": "R", "end_when_leader_leaves": true})), "/end_when_leader_leaves", "required"));
        assert!(has(&violations("8001", json!({"name": "R", "max_members": 1})), "/max_members", "range"));
        assert!(has(&violations("8001", json!({"name": "R", "max_members": 5000})), "/max_members", "range"));
        assert!(has(&violations("8001", json!({"name": "R", "language": "German"})), "/language", "format"));
        assert!(has(&violations("8001", json!({"name": "R", "video_mode": "mosaic"})), "", "malformed"));
    }

    #[test]
    fn concurrent_edits_merge_per_field_the_same_in_both_orders() {
        let base = put::<ConferencePlugin>("8001", json!({"name": "R", "pin": "1111"}), None, &stamp(1, "a"));
        let a = put::<ConferencePlugin>("8001", json!({"name": "R", "pin": "2222"}), Some(&base), &stamp(2, "a"));
        let b = put::<ConferencePlugin>("8001", json!({"name": "R", "pin": "3333", "record": true}), Some(&base), &stamp(2, "b"));
        let ab = merge::<ConferencePlugin>("8001", &a, &b);
        assert_eq!(ab, merge::<ConferencePlugin>("8001", &b, &a));
        let doc = read::<ConferencePlugin>("8001", &ab).expect("live");
        // Same millisecond: the stamp order falls to the node name, so b's PIN wins everywhere.
        assert_eq!((&doc["pin"], &doc["record"]), (&json!("3333"), &json!(true)));
    }
}
