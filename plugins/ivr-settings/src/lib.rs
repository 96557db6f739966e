//! IVR menus: a greeting, the digits a caller may press and where each one leads (FreePBX IVR
//! module; Asterisk `Background()` and `WaitExten()` in the dialplan).
//!
//! Key: the menu's number, 2 to 8 digits, e.g. `7000`. A number leads to one place only: it must
//! not also be an extension, a conference room or a queue.
//! Merge: per field, last writer wins; the options map is one value, so a menu never mixes the
//! options of two concurrent edits.
//! References: every destination must exist (an extension, a voicemail box, another menu, a queue,
//! a conference room). Checked through the host lookup, so enforced where one node takes the writes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tandem_sdk::record::{RecordPlugin, RecordSchema};
use tandem_sdk::{Example, Host, Info, Violation, check};

/// The other places a dialled number can lead to (component, key prefix, what it is): a number
/// leads to one place only.
const NUMBERING_PLAN: &[(&str, &str, &str)] = &[
    ("extensions", "", "an extension"),
    ("conference-settings", "", "a conference room"),
    ("contact-center-settings", "queue:", "a queue"),
];

/// Where a key press (or a timeout) sends the caller.
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
    /// Play this menu again.
    Repeat,
    Hangup,
}

/// An IVR menu.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Menu {
    pub name: String,
    /// Recording played on entry, e.g. `custom/main-menu` (no file extension).
    pub greeting: String,
    /// Seconds to wait for a key after the greeting.
    #[serde(default = "default_timeout")]
    pub timeout_s: u32,
    /// How often the menu repeats after a timeout or an invalid key before giving up.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Callers may dial an extension number instead of choosing an option.
    #[serde(default)]
    pub direct_dial: bool,
    /// Keys (`0`-`9`, `*`, `#`, up to 3 of them) and where they lead.
    pub options: BTreeMap<String, Destination>,
    /// Where callers go who press nothing, once the retries are used up.
    #[serde(default = "hang_up")]
    pub timeout_destination: Destination,
    /// Where callers go who press a key with no option, once the retries are used up.
    #[serde(default = "hang_up")]
    pub invalid_destination: Destination,
    #[serde(default = "default_language")]
    pub language: String,
}

fn default_timeout() -> u32 {
    10
}
fn default_retries() -> u32 {
    3
}
fn hang_up() -> Destination {
    Destination::Hangup
}
fn default_language() -> String {
    "en".to_owned()
}

/// A recording name as Asterisk looks it up under its sounds directory: `custom/main-menu`.
fn valid_sound(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.split('/').all(|part| !part.is_empty() && part != ".." && check::name(part))
}

impl Destination {
    /// Violations of the destination at `field` of the menu numbered `menu`.
    fn check(&self, field: &str, menu: &str, host: &dyn Host) -> Vec<Violation> {
        let number_format = |number: &str| {
            (!check::digits(number, 2..=8)).then(|| Violation::new(field, "format", format!("{number:?} is not a 2 to 8 digit number")))
        };
        let mut v = Vec::new();
        match self {
            Destination::Extension { number } => {
                v.extend(number_format(number));
                v.extend(check::exists(host, field, "extensions", number, "extension"));
            }
            Destination::Voicemail { number } => {
                v.extend(number_format(number));
                match host.lookup("extensions", number) {
                    None => v.push(Violation::new(field, "reference", format!("no extension {number:?} in extensions"))),
                    Some(ext) if ext.get("voicemail").is_none() => {
                        v.push(Violation::new(field, "reference", format!("extension {number} has no voicemail box")));
                    }
                    Some(_) => {}
                }
            }
            // A menu may lead back to itself, which the lookup cannot see before the first write.
            Destination::Ivr { number } if number == menu => {}
            Destination::Ivr { number } => {
                v.extend(number_format(number));
                v.extend(check::exists(host, field, "ivr-settings", number, "IVR menu"));
            }
            Destination::Queue { number } => {
                v.extend(number_format(number));
                v.extend(check::exists(host, field, "contact-center-settings", &format!("queue:{number}"), "queue"));
            }
            Destination::Conference { number } => {
                v.extend(number_format(number));
                v.extend(check::exists(host, field, "conference-settings", number, "conference room"));
            }
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
            Destination::Repeat | Destination::Hangup => {}
        }
        v
    }
}

impl RecordSchema for Menu {
    fn info() -> Info {
        Info {
            component: "ivr-settings".to_owned(),
            plugin_version: env!("CARGO_PKG_VERSION").to_owned(),
            schema_version: 1,
            description: "IVR menus: greeting, options and their destinations".to_owned(),
            shape: String::new(),
            examples: vec![
                Example::new(
                    "7000",
                    json!({
                        "name": "After hours", "greeting": "custom/after-hours",
                        "options": {
                            "1": {"type": "external", "number": "+447700900456"},
                            "2": {"type": "announcement", "sound": "custom/opening-hours"},
                            "9": {"type": "repeat"}
                        },
                        "timeout_destination": {"type": "announcement", "sound": "custom/goodbye"}
                    }),
                ),
                Example::new(
                    "7100",
                    json!({
                        "name": "Visitor information", "greeting": "custom/visitor-menu", "timeout_s": 5, "retries": 2,
                        "options": {
                            "1": {"type": "announcement", "sound": "custom/address"},
                            "2": {"type": "announcement", "sound": "custom/parking"},
                            "0": {"type": "external", "number": "+442071234500"},
                            "*": {"type": "repeat"}
                        },
                        "language": "en_GB"
                    }),
                ),
                Example::new(
                    "7200",
                    json!({
                        "name": "Service desk menu", "greeting": "custom/service-desk", "direct_dial": true,
                        "options": {"1": {"type": "external", "number": "+18005550199"}, "#": {"type": "hangup"}},
                        "invalid_destination": {"type": "repeat"}
                    }),
                ),
            ],
            retention: None,
        }
    }

    fn validate(&self, key: &str, host: &dyn Host) -> Vec<Violation> {
        let mut v = Vec::new();
        if !check::digits(key, 2..=8) {
            v.push(Violation::new("", "key", "an IVR menu number is 2 to 8 digits"));
        }
        v.extend(check::not_taken(host, key, NUMBERING_PLAN));
        if self.name.trim().is_empty() {
            v.push(Violation::new("name", "required", "a menu needs a name"));
        }
        if !valid_sound(&self.greeting) {
            v.push(Violation::new("greeting", "format", format!("{:?} is not a recording name like custom/main-menu", self.greeting)));
        }
        v.extend(check::range("timeout_s", self.timeout_s, 1..=60));
        v.extend(check::range("retries", self.retries, 0..=10));
        if self.options.is_empty() {
            v.push(Violation::new("options", "required", "a menu needs at least one option"));
        }
        for (digits, destination) in &self.options {
            let field = format!("options/{digits}");
            if digits.is_empty() || digits.len() > 3 || !digits.chars().all(|c| c.is_ascii_digit() || c == '*' || c == '#') {
                v.push(Violation::new(&field, "format", "an option is 1 to 3 of the keys 0-9, * and #"));
            }
            v.extend(destination.check(&field, key, host));
        }
        v.extend(self.timeout_destination.check("timeout_destination", key, host));
        v.extend(self.invalid_destination.check("invalid_destination", key, host));
        if !check::language(&self.language) {
            v.push(Violation::new("language", "format", format!("{:?} is not a language like en or pt_BR", self.language)));
        }
        v
    }
}

/// The plugin.
pub type IvrPlugin = RecordPlugin<Menu>;
tandem_sdk::export_plugin!(IvrPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_sdk::Plugin;
    use tandem_sdk::testing::{MapHost, NoHost, codes, merge, put, read, stamp, write_violations};

    fn violations(key: &str, doc: serde_json::Value) -> Vec<(String, String)> {
        codes(&write_violations::<IvrPlugin>(key, doc, &NoHost))
    }

    fn has(found: &[(String, String)], field: &str, code: &str) -> bool {
        found.iter().any(|(f, c)| f == field && c == code)
    }

    fn menu(options: serde_json::Value) -> serde_json::Value {
        json!({"name": "Main", "greeting": "custom/main", "options": options})
    }

    #[test]
    fn examples_are_valid() {
        let info = IvrPlugin::describe();
        assert_eq!(info.component, "ivr-settings");
        for ex in info.examples {
            let doc = serde_json::from_str(&ex.input).expect("example is JSON");
            assert_eq!(violations(&ex.key, doc), vec![], "example {}", ex.key);
        }
    }

    #[test]
    fn destinations_must_exist() {
        let doc = menu(json!({
            "1": {"type": "extension", "number": "1001"},
            "2": {"type": "voicemail", "number": "1001"},
            "3": {"type": "queue", "number": "6000"},
            "4": {"type": "conference", "number": "8001"},
            "5": {"type": "ivr", "number": "7100"},
            "6": {"type": "ivr", "number": "7000"}
        }));
        let found = violations("7000", doc.clone());
        for option in 1..=5 {
            assert!(has(&found, &format!("/options/{option}"), "reference"), "option {option}");
        }
        assert!(!has(&found, "/options/6", "reference"), "a menu may lead to itself");

        let host = MapHost::default()
            .with("extensions", "1001", json!({"name": "Alice", "voicemail": {"pin": "4826"}}))
            .with("contact-center-settings", "queue:6000", json!({"kind": "queue"}))
            .with("conference-settings", "8001", json!({"name": "All hands"}))
            .with("ivr-settings", "7100", json!({"name": "Visitors"}));
        assert_eq!(write_violations::<IvrPlugin>("7000", doc, &host), vec![]);
    }

    #[test]
    fn voicemail_destination_needs_a_box() {
        let host = MapHost::default().with("extensions", "1001", json!({"name": "Alice"}));
        let doc = menu(json!({"1": {"type": "voicemail", "number": "1001"}}));
        assert!(has(&codes(&write_violations::<IvrPlugin>("7000", doc, &host)), "/options/1", "reference"));
    }

    #[test]
    fn number_is_numeric_and_unique_across_the_numbering_plan() {
        let doc = menu(json!({"1": {"type": "hangup"}}));
        assert!(has(&violations("main", doc.clone()), "", "key"));
        for (component, key) in [("extensions", "7000"), ("conference-settings", "7000"), ("contact-center-settings", "queue:7000")] {
            let host = MapHost::default().with(component, key, json!({"name": "taken"}));
            assert!(has(&codes(&write_violations::<IvrPlugin>("7000", doc.clone(), &host)), "", "unique"), "{component}");
        }
    }

    #[test]
    fn refuses_operator_mistakes() {
        let hangup = json!({"1": {"type": "hangup"}});
        assert!(has(&violations("7000", menu(json!({}))), "/options", "required"));
        assert!(has(&violations("7000", menu(json!({"12345": {"type": "hangup"}}))), "/options/12345", "format"));
        assert!(has(&violations("7000", menu(json!({"a": {"type": "hangup"}}))), "/options/a", "format"));
        assert!(has(&violations("7000", menu(json!({"1": {"type": "external", "number": "call mum"}}))), "/options/1", "format"));
        assert!(has(&violations("7000", menu(json!({"1": {"type": "announcement", "sound": "../etc/passwd"}}))), "/options/1", "format"));
        assert!(has(&violations("7000", menu(json!({"1": {"type": "extension", "number": "x"}}))), "/options/1", "format"));
        assert!(has(&violations("7000", menu(json!({"1": {"type": "teleport"}}))), "", "malformed"));
        let mut doc = menu(hangup.clone());
        doc["greeting"] = json!("Main Menu.wav");
        assert!(has(&violations("7000", doc), "/greeting", "format"));
        let mut doc = menu(hangup.clone());
        doc["timeout_s"] = json!(0);
        doc["retries"] = json!(11);
        let found = violations("7000", doc);
        assert!(has(&found, "/timeout_s", "range") && has(&found, "/retries", "range"));
        let mut doc = menu(hangup.clone());
        doc["timeout_destination"] = json!({"type": "queue", "number": "6000"});
        assert!(has(&violations("7000", doc), "/timeout_destination", "reference"));
        let mut doc = menu(hangup);
        doc["name"] = json!("");
        doc["language"] = json!("klingon");
        let found = violations("7000", doc);
        assert!(has(&found, "/name", "required") && has(&found, "/language", "format"));
    }

    #[test]
    fn concurrent_option_edits_resolve_as_one_value() {
        let base = put::<IvrPlugin>("7000", menu(json!({"1": {"type": "hangup"}})), None, &stamp(1, "a"));
        let mut a_doc = menu(json!({"1": {"type": "repeat"}}));
        a_doc["timeout_s"] = json!(15);
        let a = put::<IvrPlugin>("7000", a_doc, Some(&base), &stamp(3, "a"));
        let b = put::<IvrPlugin>("7000", menu(json!({"2": {"type": "hangup"}})), Some(&base), &stamp(2, "b"));
        let ab = merge::<IvrPlugin>("7000", &a, &b);
        assert_eq!(ab, merge::<IvrPlugin>("7000", &b, &a));
        let doc = read::<IvrPlugin>("7000", &ab).expect("live");
        assert_eq!(doc["options"], json!({"1": {"type": "repeat"}}));
        assert_eq!(doc["timeout_s"], 15);
    }
}
