//! PMS settings: the PBX's link to a hotel's property management system (Oracle Opera over
//! FIAS, protel, HotSoft) and the map from guest rooms to extensions. Check-in, check-out, wake-up
//! calls, do-not-disturb and minibar postings travel over the link; the room map says which phone
//! is in which room and what it may dial.
//!
//! Keys: `interface:<name>` for a PMS link (names are `[a-z0-9_-]{1,64}`) and `room:<number>`
//! for a room (`[0-9A-Z]{1,8}`, e.g. `room:1204` or `room:12A`). The document's `kind` says which,
//! and must match.
//! Merge: per field, last writer wins.
//! References: a room's interface (this component) and extensions (extensions component) must
//! exist. Checked through the host lookup, so enforced where one node takes the writes.

use serde::{Deserialize, Serialize};
use serde_json::json;
use tandem_sdk::record::{RecordPlugin, RecordSchema};
use tandem_sdk::{Example, Host, Info, Violation, check};

const COMPONENT: &str = "pms-settings";

/// A record of this component.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Interface(Interface),
    Room(Room),
}

/// The PMS's wire protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Oracle Hospitality (Micros-Fidelio) FIAS.
    Fias,
    Protel,
    Hotsoft,
}

/// What a room's phone may dial.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DialRestriction {
    Unrestricted,
    National,
    InternalOnly,
    EmergencyOnly,
}

/// A link to a property management system.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    pub protocol: Protocol,
    pub host: String,
    pub port: u32,
    #[serde(default)]
    pub tls: bool,
    /// Seconds between link-alive messages; the link is reported down after three are missed.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_s: u32,
    /// Show the guest's name on the room phone at check-in.
    #[serde(default = "yes")]
    pub set_guest_name: bool,
    #[serde(default = "yes")]
    pub wake_up_calls: bool,
    /// Keep do-not-disturb the same in the PMS and on the phone.
    #[serde(default = "yes")]
    pub sync_do_not_disturb: bool,
    /// Post call charges to the guest's folio.
    #[serde(default)]
    pub post_call_charges: bool,
    /// Code staff dial from a room, followed by an item number, to post a minibar charge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minibar_code: Option<String>,
    /// What a room's phone may dial while the room is vacant.
    #[serde(default = "default_vacant")]
    pub vacant_restriction: DialRestriction,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn default_heartbeat() -> u32 {
    60
}
fn yes() -> bool {
    true
}
fn default_vacant() -> DialRestriction {
    DialRestriction::InternalOnly
}

/// A guest room.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Room {
    /// The PMS link that manages the room (the name after `interface:`).
    pub interface: String,
    /// The room's phones: the first rings for calls to the room; all follow check-in and check-out.
    pub extensions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub building: Option<String>,
    /// What the phones may dial while a guest is checked in.
    #[serde(default = "default_occupied")]
    pub occupied_restriction: DialRestriction,
}

fn default_occupied() -> DialRestriction {
    DialRestriction::Unrestricted
}

impl Interface {
    fn validate(&self) -> Vec<Violation> {
        let mut v = Vec::new();
        if !check::host(&self.host) {
            v.push(Violation::new("host", "format", format!("{:?} is not a host name or IP address", self.host)));
        }
        v.extend(check::range("port", self.port, 1..=65535));
        v.extend(check::range("heartbeat_s", self.heartbeat_s, 10..=600));
        if let Some(code) = &self.minibar_code
            && !code.strip_prefix(['*', '#']).is_some_and(|digits| check::digits(digits, 1..=5))
        {
            v.push(Violation::new("minibar_code", "format", "a minibar code is * or # and 1 to 5 digits, e.g. *55"));
        }
        if self.post_call_charges && self.protocol == Protocol::Hotsoft {
            v.push(Violation::new("post_call_charges", "unsupported", "HotSoft links do not take call-charge postings"));
        }
        v
    }
}

impl Room {
    fn validate(&self, host: &dyn Host) -> Vec<Violation> {
        let mut v = Vec::new();
        if check::name(&self.interface) {
            v.extend(check::exists(host, "interface", COMPONENT, &format!("interface:{}", self.interface), "PMS interface"));
        } else {
            v.push(Violation::new("interface", "format", format!("{:?} is not an interface name", self.interface)));
        }
        if self.extensions.is_empty() {
            v.push(Violation::new("extensions", "required", "a room needs at least one phone"));
        }
        for (i, extension) in self.extensions.iter().enumerate() {
            let field = format!("extensions/{i}");
            if self.extensions[..i].contains(extension) {
                v.push(Violation::new(&field, "unique", format!("extension {extension} is listed twice")));
            }
            v.extend(check::exists(host, &field, "extensions", extension, "extension"));
        }
        v.extend(self.floor.and_then(|floor| check::range("floor", floor, -5..=200)));
        if let Some(building) = &self.building
            && (building.trim().is_empty() || building.len() > 64)
        {
            v.push(Violation::new("building", "format", "a building name is 1 to 64 characters"));
        }
        v
    }
}

impl RecordSchema for Record {
    fn info() -> Info {
        Info {
            component: COMPONENT.to_owned(),
            plugin_version: env!("CARGO_PKG_VERSION").to_owned(),
            schema_version: 1,
            description: "Hotel PMS links and the room-to-extension map".to_owned(),
            shape: String::new(),
            examples: vec![
                Example::new(
                    "interface:opera",
                    json!({"kind": "interface", "protocol": "fias", "host": "10.30.0.15", "port": 5010, "post_call_charges": true, "minibar_code": "*55"}),
                ),
                Example::new(
                    "interface:protel-annex",
                    json!({"kind": "interface", "protocol": "protel", "host": "pms.annex.hotel.example", "port": 7010, "tls": true, "heartbeat_s": 30, "vacant_restriction": "emergency_only"}),
                ),
                Example::new(
                    "interface:hotsoft-legacy",
                    json!({"kind": "interface", "protocol": "hotsoft", "host": "192.168.50.4", "port": 9100, "set_guest_name": false, "wake_up_calls": false, "enabled": false}),
                ),
            ],
            retention: None,
        }
    }

    fn validate(&self, key: &str, host: &dyn Host) -> Vec<Violation> {
        match (self, key.split_once(':')) {
            (Record::Interface(interface), Some(("interface", name))) => {
                let key_violation =
                    (!check::name(name)).then(|| Violation::new("", "key", "an interface name is 1 to 64 of a-z, 0-9, - and _"));
                key_violation.into_iter().chain(interface.validate()).collect()
            }
            (Record::Room(room), Some(("room", number))) => {
                let number_ok = (1..=8).contains(&number.len()) && number.chars().all(|c| c.is_ascii_digit() || c.is_ascii_uppercase());
                let key_violation = (!number_ok).then(|| Violation::new("", "key", "a room number is 1 to 8 of 0-9 and A-Z"));
                key_violation.into_iter().chain(room.validate(host)).collect()
            }
            _ => vec![Violation::new("kind", "key", "an interface's key is interface:<name>, a room's room:<number>")],
        }
    }
}

/// The plugin.
pub type PmsPlugin = RecordPlugin<Record>;
tandem_sdk::export_plugin!(PmsPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_sdk::Plugin;
    use tandem_sdk::testing::{MapHost, NoHost, codes, merge, put, read, stamp, write_violations};

    fn violations(key: &str, doc: serde_json::Value) -> Vec<(String, String)> {
        codes(&write_violations::<PmsPlugin>(key, doc, &NoHost))
    }

    fn has(found: &[(String, String)], field: &str, code: &str) -> bool {
        found.iter().any(|(f, c)| f == field && c == code)
    }

    fn interface(extra: serde_json::Value) -> serde_json::Value {
        let mut doc = json!({"kind": "interface", "protocol": "fias", "host": "10.30.0.15", "port": 5010});
        if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
            doc.extend(extra.clone());
        }
        doc
    }

    fn hotel() -> MapHost {
        MapHost::default()
            .with(COMPONENT, "interface:opera", interface(json!({})))
            .with("extensions", "51204", json!({"name": "Room 1204"}))
            .with("extensions", "61204", json!({"name": "Room 1204 bathroom"}))
    }

    #[test]
    fn examples_are_valid() {
        let info = PmsPlugin::describe();
        assert_eq!(info.component, "pms-settings");
        for ex in info.examples {
            let doc = serde_json::from_str(&ex.input).expect("example is JSON");
            assert_eq!(violations(&ex.key, doc), vec![], "example {}", ex.key);
        }
    }

    #[test]
    fn kind_matches_the_key() {
        assert!(has(&violations("room:1204", interface(json!({}))), "/kind", "key"));
        assert!(has(&violations("interface:Opera", interface(json!({}))), "", "key"));
        let room = json!({"kind": "room", "interface": "opera", "extensions": ["51204"]});
        assert!(has(&codes(&write_violations::<PmsPlugin>("room:12-04", room, &hotel())), "", "key"));
    }

    #[test]
    fn rooms_reference_an_interface_and_extensions_that_exist() {
        let room = json!({"kind": "room", "interface": "opera", "extensions": ["51204", "61204"], "floor": 12, "occupied_restriction": "national"});
        let found = violations("room:1204", room.clone());
        assert!(
            has(&found, "/interface", "reference")
                && has(&found, "/extensions/0", "reference")
                && has(&found, "/extensions/1", "reference")
        );
        assert_eq!(write_violations::<PmsPlugin>("room:1204", room, &hotel()), vec![]);
    }

    #[test]
    fn refuses_operator_mistakes() {
        assert!(has(&violations("interface:opera", interface(json!({"host": "pms server"}))), "/host", "format"));
        assert!(has(&violations("interface:opera", interface(json!({"port": 0}))), "/port", "range"));
        assert!(has(&violations("interface:opera", interface(json!({"heartbeat_s": 5}))), "/heartbeat_s", "range"));
        assert!(has(&violations("interface:opera", interface(json!({"minibar_code": "55"}))), "/minibar_code", "format"));
        let hotsoft = interface(json!({"protocol": "hotsoft", "post_call_charges": true}));
        assert!(has(&violations("interface:opera", hotsoft), "/post_call_charges", "unsupported"));
        assert!(has(&violations("interface:opera", interface(json!({"protocol": "smtp"}))), "", "malformed"));

        let room = |extra: serde_json::Value| {
            let mut doc = json!({"kind": "room", "interface": "opera", "extensions": ["51204"]});
            if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
                doc.extend(extra.clone());
            }
            codes(&write_violations::<PmsPlugin>("room:1204", doc, &hotel()))
        };
        assert!(has(&room(json!({"extensions": []})), "/extensions", "required"));
        assert!(has(&room(json!({"extensions": ["51204", "51204"]})), "/extensions/1", "unique"));
        assert!(has(&room(json!({"interface": "Opera PMS"})), "/interface", "format"));
        assert!(has(&room(json!({"floor": 500})), "/floor", "range"));
        assert!(has(&room(json!({"building": " "})), "/building", "format"));
    }

    #[test]
    fn concurrent_edits_merge_per_field_the_same_in_both_orders() {
        let key = "interface:opera";
        let base = put::<PmsPlugin>(key, interface(json!({})), None, &stamp(1, "a"));
        let a = put::<PmsPlugin>(key, interface(json!({"heartbeat_s": 30})), Some(&base), &stamp(2, "a"));
        let b = put::<PmsPlugin>(key, interface(json!({"port": 5011})), Some(&base), &stamp(2, "b"));
        let ab = merge::<PmsPlugin>(key, &a, &b);
        assert_eq!(ab, merge::<PmsPlugin>(key, &b, &a));
        let doc = read::<PmsPlugin>(key, &ab).expect("live");
        assert_eq!((&doc["heartbeat_s"], &doc["port"]), (&json!(30), &json!(5011)));
    }
}
