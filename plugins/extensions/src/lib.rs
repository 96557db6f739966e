//! Extensions: the phones and users of the numbering plan. One record holds what Asterisk spreads
//! over a PJSIP endpoint, its AOR and auth sections, a voicemail box and the call-handling options
//! FreePBX keeps per user.
//!
//! Key: the extension number, 2 to 8 digits, e.g. `1001`. A number leads to one place only: it
//! must not also be a conference room, an IVR menu or a queue (checked through the host lookup,
//! so enforced where one node takes the writes).
//! Merge: per field, last writer wins.

use serde::{Deserialize, Serialize};
use serde_json::json;
use tandem_sdk::record::{RecordPlugin, RecordSchema};
use tandem_sdk::{Example, Host, Info, Violation, check};

/// The other places a dialled number can lead to (component, key prefix, what it is): a number
/// leads to one place only.
const NUMBERING_PLAN: &[(&str, &str, &str)] = &[
    ("conference-settings", "", "a conference room"),
    ("ivr-settings", "", "an IVR menu"),
    ("contact-center-settings", "queue:", "a queue"),
];

const CODECS: &[&str] = &["ulaw", "alaw", "g722", "g729", "gsm", "opus", "ilbc", "speex"];

/// When calls of the extension are recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recording {
    Never,
    OnDemand,
    Always,
}

/// The extension's voicemail box (Asterisk `voicemail.conf` mailbox).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Voicemail {
    /// Digits the owner enters to reach the box.
    pub pin: String,
    /// Where new messages are announced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default = "yes")]
    pub attach_audio: bool,
    /// Delete a message once it is e-mailed (needs `email` and `attach_audio`).
    #[serde(default)]
    pub delete_after_email: bool,
    #[serde(default = "default_max_messages")]
    pub max_messages: u32,
    #[serde(default = "default_max_message_s")]
    pub max_message_s: u32,
}

/// Call forwarding targets: extension numbers or external numbers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub always: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_answer: Option<String>,
}

/// An extension.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extension {
    /// Display name, also the internal caller ID name.
    pub name: String,
    /// SIP digest password of the phone. The PBX needs it in clear to check a registration.
    pub secret: String,
    /// Phones that may register to the extension at once.
    #[serde(default = "default_max_contacts")]
    pub max_contacts: u32,
    /// Caller ID number presented on external calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_id: Option<String>,
    /// Caller ID number presented on emergency calls (the location's callback number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emergency_caller_id: Option<String>,
    /// Seconds to ring before a call goes to voicemail or the no-answer forward.
    #[serde(default = "default_ring_timeout")]
    pub ring_timeout_s: u32,
    #[serde(default = "yes")]
    pub call_waiting: bool,
    #[serde(default)]
    pub do_not_disturb: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<Forward>,
    #[serde(default = "default_recording")]
    pub recording: Recording,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voicemail: Option<Voicemail>,
    /// Pickup groups (0 to 63): a member can answer a ringing phone of its groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pickup_groups: Vec<u32>,
    #[serde(default = "default_codecs")]
    pub codecs: Vec<String>,
    /// Prompts language, e.g. `en`, `de`, `pt_BR`.
    #[serde(default = "default_language")]
    pub language: String,
}

fn yes() -> bool {
    true
}
fn default_max_messages() -> u32 {
    100
}
fn default_max_message_s() -> u32 {
    300
}
fn default_max_contacts() -> u32 {
    1
}
fn default_ring_timeout() -> u32 {
    20
}
fn default_recording() -> Recording {
    Recording::OnDemand
}
fn default_codecs() -> Vec<String> {
    vec!["ulaw".to_owned(), "alaw".to_owned(), "g722".to_owned()]
}
fn default_language() -> String {
    "en".to_owned()
}

impl Extension {
    fn check_forward(&self, v: &mut Vec<Violation>) {
        let Some(forward) = &self.forward else { return };
        for (field, target) in [("always", &forward.always), ("busy", &forward.busy), ("no_answer", &forward.no_answer)] {
            if let Some(target) = target
                && !check::phone_number(target)
                && !check::digits(target, 2..=8)
            {
                v.push(Violation::new(&format!("forward/{field}"), "format", format!("{target:?} is not an extension or phone number")));
            }
        }
    }

    fn check_voicemail(&self, number: &str, v: &mut Vec<Violation>) {
        let Some(vm) = &self.voicemail else { return };
        if !check::digits(&vm.pin, 4..=10) {
            v.push(Violation::new("voicemail/pin", "format", "a voicemail PIN is 4 to 10 digits"));
        } else if vm.pin == number {
            v.push(Violation::new("voicemail/pin", "weak", "the voicemail PIN must not be the extension number"));
        }
        if let Some(email) = &vm.email
            && !check::email(email)
        {
            v.push(Violation::new("voicemail/email", "format", format!("{email:?} is not an e-mail address")));
        }
        if vm.delete_after_email && (vm.email.is_none() || !vm.attach_audio) {
            v.push(Violation::new(
                "voicemail/delete_after_email",
                "required",
                "messages can only be deleted once e-mailed with the audio attached",
            ));
        }
        v.extend(check::range("voicemail/max_messages", vm.max_messages, 1..=9999));
        v.extend(check::range("voicemail/max_message_s", vm.max_message_s, 10..=3600));
    }
}

impl RecordSchema for Extension {
    fn info() -> Info {
        Info {
            component: "extensions".to_owned(),
            plugin_version: env!("CARGO_PKG_VERSION").to_owned(),
            schema_version: 1,
            description: "Extensions: SIP phones with their voicemail and call handling".to_owned(),
            shape: String::new(),
            examples: vec![
                Example::new(
                    "1001",
                    json!({
                        "name": "Alice Martin", "secret": "Hq8#vT2m!rKp", "caller_id": "+442071234501",
                        "voicemail": {"pin": "4826", "email": "alice.martin@acme.example"},
                        "pickup_groups": [1]
                    }),
                ),
                Example::new(
                    "1002",
                    json!({
                        "name": "Bob Okafor", "secret": "Zx4$wq9LmN2e", "max_contacts": 3, "ring_timeout_s": 30,
                        "forward": {"no_answer": "+447700900123"}, "recording": "always", "language": "en_GB",
                        "voicemail": {"pin": "90317", "email": "bob@acme.example", "delete_after_email": true, "max_messages": 50}
                    }),
                ),
                Example::new(
                    "2000",
                    json!({
                        "name": "Reception", "secret": "r3c3pt!on-Desk", "emergency_caller_id": "+442071234500",
                        "call_waiting": false, "pickup_groups": [1, 2], "codecs": ["alaw"]
                    }),
                ),
                Example::new(
                    "3105",
                    json!({"name": "Lab phone", "secret": "L4b-ph0ne-7731", "do_not_disturb": true, "recording": "never"}),
                ),
            ],
            retention: None,
        }
    }

    fn validate(&self, key: &str, host: &dyn Host) -> Vec<Violation> {
        let mut v = Vec::new();
        if !check::digits(key, 2..=8) {
            v.push(Violation::new("", "key", "an extension number is 2 to 8 digits"));
        }
        v.extend(check::not_taken(host, key, NUMBERING_PLAN));
        if self.name.trim().is_empty() {
            v.push(Violation::new("name", "required", "an extension needs a name"));
        }
        if self.secret.len() < 8 {
            v.push(Violation::new("secret", "weak", "a SIP secret is at least 8 characters"));
        } else if self.secret.contains(key) {
            v.push(Violation::new("secret", "weak", "the SIP secret must not contain the extension number"));
        }
        v.extend(check::range("max_contacts", self.max_contacts, 1..=10));
        for (field, cid) in [("caller_id", &self.caller_id), ("emergency_caller_id", &self.emergency_caller_id)] {
            if let Some(cid) = cid
                && !check::phone_number(cid)
            {
                v.push(Violation::new(field, "format", format!("{cid:?} is not a phone number (+ and 3 to 15 digits)")));
            }
        }
        v.extend(check::range("ring_timeout_s", self.ring_timeout_s, 5..=300));
        self.check_forward(&mut v);
        self.check_voicemail(key, &mut v);
        for (i, group) in self.pickup_groups.iter().enumerate() {
            v.extend(check::range(&format!("pickup_groups/{i}"), *group, 0..=63));
        }
        if self.codecs.is_empty() {
            v.push(Violation::new("codecs", "required", "at least one codec"));
        }
        for (i, c) in self.codecs.iter().enumerate() {
            if !CODECS.contains(&c.as_str()) {
                v.push(Violation::new(&format!("codecs/{i}"), "format", format!("unknown codec {c:?}")));
            }
        }
        if !check::language(&self.language) {
            v.push(Violation::new("language", "format", format!("{:?} is not a language like en or pt_BR", self.language)));
        }
        v
    }
}

/// The plugin.
pub type ExtensionsPlugin = RecordPlugin<Extension>;
tandem_sdk::export_plugin!(ExtensionsPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_sdk::Plugin;
    use tandem_sdk::testing::{MapHost, NoHost, codes, merge, put, read, stamp, write_violations};

    fn violations(key: &str, doc: serde_json::Value) -> Vec<(String, String)> {
        codes(&write_violations::<ExtensionsPlugin>(key, doc, &NoHost))
    }

    fn has(found: &[(String, String)], field: &str, code: &str) -> bool {
        found.iter().any(|(f, c)| f == field && c == code)
    }

    fn phone(extra: serde_json::Value) -> serde_json::Value {
        let mut doc = json!({"name": "Test", "secret": "c0rrect-h0rse"});
        if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
            doc.extend(extra.clone());
        }
        doc
    }

    #[test]
    fn examples_are_valid() {
        let info = ExtensionsPlugin::describe();
        assert_eq!(info.component, "extensions");
        for ex in info.examples {
            let doc = serde_json::from_str(&ex.input).expect("example is JSON");
            assert_eq!(violations(&ex.key, doc), vec![], "example {}", ex.key);
        }
    }

    #[test]
    fn number_is_numeric() {
        assert!(has(&violations("10a1", phone(json!({}))), "", "key"));
        assert!(has(&violations("1", phone(json!({}))), "", "key"));
        assert!(has(&violations("123456789", phone(json!({}))), "", "key"));
    }

    #[test]
    fn number_is_unique_across_the_numbering_plan() {
        let doc = phone(json!({}));
        for (component, key) in [("conference-settings", "8001"), ("ivr-settings", "8001"), ("contact-center-settings", "queue:8001")] {
            let host = MapHost::default().with(component, key, json!({"name": "taken"}));
            let found = codes(&write_violations::<ExtensionsPlugin>("8001", doc.clone(), &host));
            assert!(has(&found, "", "unique"), "{component}");
        }
        // A queue's agents live under agent:..., which is not a number of the plan.
        let host = MapHost::default().with("contact-center-settings", "agent:8001", json!({"name": "Agent"}));
        assert_eq!(write_violations::<ExtensionsPlugin>("8001", doc, &host), vec![]);
    }

    #[test]
    fn refuses_operator_mistakes() {
        assert!(has(&violations("1001", phone(json!({"name": " "}))), "/name", "required"));
        assert!(has(&violations("1001", phone(json!({"secret": ""}))), "/secret", "weak"));
        assert!(has(&violations("1001", phone(json!({"secret": "pw1001pw1001"}))), "/secret", "weak"));
        assert!(has(&violations("1001", phone(json!({"max_contacts": 0}))), "/max_contacts", "range"));
        assert!(has(&violations("1001", phone(json!({"caller_id": "07700 900123"}))), "/caller_id", "format"));
        assert!(has(&violations("1001", phone(json!({"emergency_caller_id": "n/a"}))), "/emergency_caller_id", "format"));
        assert!(has(&violations("1001", phone(json!({"ring_timeout_s": 600}))), "/ring_timeout_s", "range"));
        assert!(has(&violations("1001", phone(json!({"forward": {"busy": "voicemail"}}))), "/forward/busy", "format"));
        assert!(has(&violations("1001", phone(json!({"pickup_groups": [64]}))), "/pickup_groups/0", "range"));
        assert!(has(&violations("1001", phone(json!({"codecs": ["h264"]}))), "/codecs/0", "format"));
        assert!(has(&violations("1001", phone(json!({"codecs": []}))), "/codecs", "required"));
        assert!(has(&violations("1001", phone(json!({"language": "english"}))), "/language", "format"));
        assert!(has(&violations("1001", phone(json!({"recording": "sometimes"}))), "", "malformed"));
        assert!(has(&violations("1001", json!({"name": "No secret"})), "", "malformed"));
    }

    #[test]
    fn refuses_voicemail_mistakes() {
        let vm = |v: serde_json::Value| violations("1001", phone(json!({ "voicemail": v })));
        assert!(has(&vm(json!({"pin": "12"})), "/voicemail/pin", "format"));
        assert!(has(&vm(json!({"pin": "12ab"})), "/voicemail/pin", "format"));
        assert!(has(&vm(json!({"pin": "1001"})), "/voicemail/pin", "weak"));
        assert!(has(&vm(json!({"pin": "4826", "email": "alice"})), "/voicemail/email", "format"));
        assert!(has(&vm(json!({"pin": "4826", "delete_after_email": true})), "/voicemail/delete_after_email", "required"));
        assert!(has(&vm(json!({"pin": "4826", "max_messages": 0})), "/voicemail/max_messages", "range"));
        assert!(has(&vm(json!({"pin": "4826", "max_message_s": 5})), "/voicemail/max_message_s", "range"));
    }

    #[test]
    fn concurrent_edits_merge_per_field_the_same_in_both_orders() {
        let base = put::<ExtensionsPlugin>("1001", phone(json!({"ring_timeout_s": 20})), None, &stamp(1, "a"));
        // Node a renames the extension; node b, concurrently, raises the ring timeout and turns on DND.
        let a = put::<ExtensionsPlugin>("1001", phone(json!({"name": "Alice", "ring_timeout_s": 20})), Some(&base), &stamp(3, "a"));
        let b = put::<ExtensionsPlugin>("1001", phone(json!({"ring_timeout_s": 45, "do_not_disturb": true})), Some(&base), &stamp(2, "b"));
        let ab = merge::<ExtensionsPlugin>("1001", &a, &b);
        assert_eq!(ab, merge::<ExtensionsPlugin>("1001", &b, &a));
        let doc = read::<ExtensionsPlugin>("1001", &ab).expect("live");
        assert_eq!((&doc["name"], &doc["ring_timeout_s"], &doc["do_not_disturb"]), (&json!("Alice"), &json!(45), &json!(true)));
    }
}
