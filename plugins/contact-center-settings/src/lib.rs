//! Contact-center settings: call queues (Asterisk `queues.conf`, FreePBX queues) and the agents
//! who answer them.
//!
//! Keys: `queue:<number>` for a queue (the number callers dial, 2 to 8 digits, part of the
//! numbering plan: not also an extension, conference room or IVR menu) and `agent:<id>` for an
//! agent (a login id of 2 to 8 digits). The document's `kind` says which, and must match.
//! Merge: per field, last writer wins; a queue's member list is one value.
//! References: members are agents that exist, an agent's phone is an extension that exists, a
//! queue's failover destination exists. Checked through the host lookup, so enforced where one
//! node takes the writes.

use serde::{Deserialize, Serialize};
use serde_json::json;
use tandem_sdk::record::{RecordPlugin, RecordSchema};
use tandem_sdk::{Example, Host, Info, Violation, check};

const COMPONENT: &str = "contact-center-settings";

/// The other places a dialled number can lead to (component, key prefix, what it is): a number
/// leads to one place only.
const NUMBERING_PLAN: &[(&str, &str, &str)] =
    &[("extensions", "", "an extension"), ("conference-settings", "", "a conference room"), ("ivr-settings", "", "an IVR menu")];

/// A record of this component.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Queue(Queue),
    Agent(Agent),
}

/// How a queue picks the agent for the next call (app_queue `strategy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    Ringall,
    Leastrecent,
    Fewestcalls,
    Random,
    Rrmemory,
    Linear,
    Wrandom,
}

/// A static member of a queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// The agent's id (the part after `agent:` in its key).
    pub agent: String,
    /// Agents with a lower penalty are offered calls first.
    #[serde(default)]
    pub penalty: u32,
}

/// Where a caller goes who waited too long.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Destination {
    Extension { number: String },
    Voicemail { number: String },
    Ivr { number: String },
    Queue { number: String },
    External { number: String },
    Hangup,
}

/// A call queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Queue {
    pub name: String,
    #[serde(default = "default_strategy")]
    pub strategy: Strategy,
    /// Seconds an agent's phone rings before the call is offered to another.
    #[serde(default = "default_agent_timeout")]
    pub agent_timeout_s: u32,
    /// Seconds before the same agents are tried again.
    #[serde(default = "default_retry")]
    pub retry_s: u32,
    /// Seconds an agent rests after a call.
    #[serde(default = "default_wrapup")]
    pub wrapup_s: u32,
    /// Seconds a caller waits before `failover`; 0 waits without limit.
    #[serde(default = "default_max_wait")]
    pub max_wait_s: u32,
    #[serde(default = "hang_up")]
    pub failover: Destination,
    /// Callers allowed to wait at once; 0 for no limit.
    #[serde(default)]
    pub max_callers: u32,
    /// Target answer time for the service-level figure.
    #[serde(default = "default_service_level")]
    pub service_level_s: u32,
    /// Seconds between "you are caller number N" announcements; 0 turns them off.
    #[serde(default)]
    pub announce_position_every_s: u32,
    #[serde(default = "default_music_class")]
    pub music_class: String,
    /// Callers may join when no agent is logged in.
    #[serde(default = "yes")]
    pub join_empty: bool,
    #[serde(default)]
    pub record_calls: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<Member>,
}

/// An agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    pub name: String,
    /// The agent's own phone; none for an agent who logs in from any phone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<String>,
    /// Digits the agent enters to log in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skills: Vec<String>,
    /// Overrides the queues' wrap-up time for this agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapup_s: Option<u32>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}
fn default_strategy() -> Strategy {
    Strategy::Rrmemory
}
fn default_agent_timeout() -> u32 {
    15
}
fn default_retry() -> u32 {
    5
}
fn default_wrapup() -> u32 {
    10
}
fn default_max_wait() -> u32 {
    300
}
fn hang_up() -> Destination {
    Destination::Hangup
}
fn default_service_level() -> u32 {
    20
}
fn default_music_class() -> String {
    "default".to_owned()
}

impl Destination {
    fn check(&self, field: &str, queue: &str, host: &dyn Host) -> Vec<Violation> {
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
            Destination::Queue { number } if number == queue => {
                v.push(Violation::new(field, "loop", "a queue cannot fail over to itself"));
            }
            Destination::Queue { number } => v.extend(check::exists(host, field, COMPONENT, &format!("queue:{number}"), "queue")),
            Destination::External { number } => {
                if !check::phone_number(number) {
                    v.push(Violation::new(field, "format", format!("{number:?} is not a phone number (+ and 3 to 15 digits)")));
                }
            }
            Destination::Hangup => {}
        }
        v
    }
}

impl Queue {
    fn validate(&self, number: &str, host: &dyn Host) -> Vec<Violation> {
        let mut v = Vec::new();
        if !check::digits(number, 2..=8) {
            v.push(Violation::new("", "key", "a queue number is 2 to 8 digits: queue:6000"));
        }
        v.extend(check::not_taken(host, number, NUMBERING_PLAN));
        if self.name.trim().is_empty() {
            v.push(Violation::new("name", "required", "a queue needs a name"));
        }
        v.extend(check::range("agent_timeout_s", self.agent_timeout_s, 5..=120));
        v.extend(check::range("retry_s", self.retry_s, 0..=60));
        v.extend(check::range("wrapup_s", self.wrapup_s, 0..=600));
        v.extend(check::range("max_wait_s", self.max_wait_s, 0..=7200));
        v.extend(check::range("max_callers", self.max_callers, 0..=1000));
        v.extend(check::range("service_level_s", self.service_level_s, 5..=600));
        if self.announce_position_every_s != 0 {
            v.extend(check::range("announce_position_every_s", self.announce_position_every_s, 15..=600));
        }
        if !check::name(&self.music_class) {
            v.push(Violation::new("music_class", "format", "a music-on-hold class is 1 to 64 of a-z, 0-9, - and _"));
        } else if self.music_class != "default" {
            v.extend(check::exists(host, "music_class", "pbx-settings", &format!("moh:{}", self.music_class), "music-on-hold class"));
        }
        v.extend(self.failover.check("failover", number, host));
        for (i, member) in self.members.iter().enumerate() {
            let field = format!("members/{i}");
            if self.members[..i].iter().any(|m| m.agent == member.agent) {
                v.push(Violation::new(&field, "unique", format!("agent {} is listed twice", member.agent)));
            }
            v.extend(check::exists(host, &format!("{field}/agent"), COMPONENT, &format!("agent:{}", member.agent), "agent"));
            v.extend(check::range(&format!("{field}/penalty"), member.penalty, 0..=100));
        }
        v
    }
}

impl Agent {
    fn validate(&self, id: &str, host: &dyn Host) -> Vec<Violation> {
        let mut v = Vec::new();
        if !check::digits(id, 2..=8) {
            v.push(Violation::new("", "key", "an agent id is 2 to 8 digits: agent:4001"));
        }
        if self.name.trim().is_empty() {
            v.push(Violation::new("name", "required", "an agent needs a name"));
        }
        if let Some(extension) = &self.extension {
            v.extend(check::exists(host, "extension", "extensions", extension, "extension"));
        }
        if let Some(pin) = &self.pin
            && !check::digits(pin, 4..=10)
        {
            v.push(Violation::new("pin", "format", "a login PIN is 4 to 10 digits"));
        }
        for (i, skill) in self.skills.iter().enumerate() {
            if !check::name(skill) {
                v.push(Violation::new(&format!("skills/{i}"), "format", format!("{skill:?} is not a skill name (a-z, 0-9, - and _)")));
            }
        }
        if let Some(wrapup) = self.wrapup_s {
            v.extend(check::range("wrapup_s", wrapup, 0..=600));
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
            description: "Call queues and agents".to_owned(),
            shape: String::new(),
            examples: vec![
                Example::new(
                    "queue:6000",
                    json!({
                        "kind": "queue", "name": "Sales", "strategy": "leastrecent", "agent_timeout_s": 20, "wrapup_s": 30,
                        "max_wait_s": 600, "failover": {"type": "external", "number": "+442071234599"}, "announce_position_every_s": 60
                    }),
                ),
                Example::new(
                    "queue:6001",
                    json!({"kind": "queue", "name": "Support", "strategy": "fewestcalls", "service_level_s": 30, "max_callers": 50, "record_calls": true}),
                ),
                Example::new("agent:4001", json!({"kind": "agent", "name": "Priya Shah", "pin": "50713", "skills": ["sales", "spanish"]})),
                Example::new(
                    "agent:4002",
                    json!({"kind": "agent", "name": "Tom Berg", "skills": ["support"], "wrapup_s": 60, "enabled": false}),
                ),
            ],
            retention: None,
        }
    }

    fn validate(&self, key: &str, host: &dyn Host) -> Vec<Violation> {
        match (self, key.split_once(':')) {
            (Record::Queue(queue), Some(("queue", number))) => queue.validate(number, host),
            (Record::Agent(agent), Some(("agent", id))) => agent.validate(id, host),
            _ => vec![Violation::new("kind", "key", "a queue's key is queue:<number>, an agent's agent:<id>")],
        }
    }
}

/// The plugin.
pub type ContactCenterPlugin = RecordPlugin<Record>;
tandem_sdk::export_plugin!(ContactCenterPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_sdk::Plugin;
    use tandem_sdk::testing::{MapHost, NoHost, codes, merge, put, read, stamp, write_violations};

    fn violations(key: &str, doc: serde_json::Value) -> Vec<(String, String)> {
        codes(&write_violations::<ContactCenterPlugin>(key, doc, &NoHost))
    }

    fn has(found: &[(String, String)], field: &str, code: &str) -> bool {
        found.iter().any(|(f, c)| f == field && c == code)
    }

    fn queue(extra: serde_json::Value) -> serde_json::Value {
        let mut doc = json!({"kind": "queue", "name": "Sales"});
        if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
            doc.extend(extra.clone());
        }
        doc
    }

    #[test]
    fn examples_are_valid() {
        let info = ContactCenterPlugin::describe();
        assert_eq!(info.component, "contact-center-settings");
        for ex in info.examples {
            let doc = serde_json::from_str(&ex.input).expect("example is JSON");
            assert_eq!(violations(&ex.key, doc), vec![], "example {}", ex.key);
        }
    }

    #[test]
    fn kind_matches_the_key() {
        assert!(has(&violations("agent:6000", queue(json!({}))), "/kind", "key"));
        assert!(has(&violations("6000", queue(json!({}))), "/kind", "key"));
        assert!(has(&violations("queue:sales", queue(json!({}))), "", "key"));
        assert!(has(&violations("agent:alice", json!({"kind": "agent", "name": "Alice"})), "", "key"));
        assert!(has(&violations("queue:6000", json!({"kind": "supervisor", "name": "X"})), "", "malformed"));
    }

    #[test]
    fn queue_number_is_unique_across_the_numbering_plan() {
        for (component, key) in [("extensions", "6000"), ("conference-settings", "6000"), ("ivr-settings", "6000")] {
            let host = MapHost::default().with(component, key, json!({"name": "taken"}));
            let found = codes(&write_violations::<ContactCenterPlugin>("queue:6000", queue(json!({})), &host));
            assert!(has(&found, "", "unique"), "{component}");
        }
    }

    #[test]
    fn references_must_exist() {
        let doc = queue(json!({
            "members": [{"agent": "4001"}, {"agent": "4002", "penalty": 1}],
            "failover": {"type": "voicemail", "number": "1001"}
        }));
        let found = violations("queue:6000", doc.clone());
        assert!(has(&found, "/members/0/agent", "reference") && has(&found, "/members/1/agent", "reference"));
        assert!(has(&found, "/failover", "reference"));
        let host = MapHost::default()
            .with(COMPONENT, "agent:4001", json!({"kind": "agent", "name": "Priya"}))
            .with(COMPONENT, "agent:4002", json!({"kind": "agent", "name": "Tom"}))
            .with("extensions", "1001", json!({"name": "Sales manager", "voicemail": {"pin": "1357"}}));
        assert_eq!(write_violations::<ContactCenterPlugin>("queue:6000", doc, &host), vec![]);

        let agent = json!({"kind": "agent", "name": "Priya", "extension": "1001"});
        assert!(has(&violations("agent:4001", agent.clone()), "/extension", "reference"));
        assert_eq!(write_violations::<ContactCenterPlugin>("agent:4001", agent, &host), vec![]);
    }

    #[test]
    fn refuses_queue_mistakes() {
        assert!(has(&violations("queue:6000", queue(json!({"name": " "}))), "/name", "required"));
        for (field, value) in [
            ("agent_timeout_s", 2),
            ("retry_s", 61),
            ("wrapup_s", 601),
            ("max_wait_s", 7201),
            ("max_callers", 1001),
            ("service_level_s", 1),
            ("announce_position_every_s", 5),
        ] {
            assert!(has(&violations("queue:6000", queue(json!({ field: value }))), &format!("/{field}"), "range"), "{field}");
        }
        assert!(has(&violations("queue:6000", queue(json!({"music_class": "jazz"}))), "/music_class", "reference"));
        assert!(has(&violations("queue:6000", queue(json!({"failover": {"type": "queue", "number": "6000"}}))), "/failover", "loop"));
        assert!(has(&violations("queue:6000", queue(json!({"failover": {"type": "external", "number": "x"}}))), "/failover", "format"));
        let twice = queue(json!({"members": [{"agent": "4001"}, {"agent": "4001", "penalty": 200}]}));
        let found = violations("queue:6000", twice);
        assert!(has(&found, "/members/1", "unique") && has(&found, "/members/1/penalty", "range"));
        assert!(has(&violations("queue:6000", queue(json!({"strategy": "roundrobin"}))), "", "malformed"));
        assert!(has(&violations("queue:6000", queue(json!({"colour": "red"}))), "", "malformed"));
    }

    #[test]
    fn refuses_agent_mistakes() {
        let agent = |extra: serde_json::Value| {
            let mut doc = json!({"kind": "agent", "name": "Priya"});
            if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
                doc.extend(extra.clone());
            }
            violations("agent:4001", doc)
        };
        assert!(has(&agent(json!({"name": ""})), "/name", "required"));
        assert!(has(&agent(json!({"pin": "12"})), "/pin", "format"));
        assert!(has(&agent(json!({"skills": ["Sales Team"]})), "/skills/0", "format"));
        assert!(has(&agent(json!({"wrapup_s": 1000})), "/wrapup_s", "range"));
    }

    #[test]
    fn concurrent_edits_merge_per_field_the_same_in_both_orders() {
        let base = put::<ContactCenterPlugin>("queue:6000", queue(json!({})), None, &stamp(1, "a"));
        let a = put::<ContactCenterPlugin>("queue:6000", queue(json!({"wrapup_s": 45})), Some(&base), &stamp(2, "a"));
        let b = put::<ContactCenterPlugin>("queue:6000", queue(json!({"strategy": "ringall"})), Some(&base), &stamp(2, "b"));
        let ab = merge::<ContactCenterPlugin>("queue:6000", &a, &b);
        assert_eq!(ab, merge::<ContactCenterPlugin>("queue:6000", &b, &a));
        let doc = read::<ContactCenterPlugin>("queue:6000", &ab).expect("live");
        assert_eq!((&doc["wrapup_s"], &doc["strategy"]), (&json!(45), &json!("ringall")));
    }
}
