//! Contact-center reports: queue and agent events, as Asterisk's `queue_log` records them
//! (ENTERQUEUE, CONNECT, COMPLETEAGENT, COMPLETECALLER, ABANDON, EXITWITHTIMEOUT, RINGNOANSWER,
//! AGENTLOGIN, PAUSE, ...). Service levels, abandon rates and agent occupancy are computed from them.
//!
//! Key: `<node>:<call id>:<sequence>`, e.g. `pbx-a:1764057600.1234:2`: the node, the call's
//! unique id (for agent events, the agent's session id) and the event's sequence number within it.
//! Append-only: an event is written once and never changes; a different event under the same key
//! is a conflict for an operator, never an overwrite.
//! Retention: thirteen months (a year-on-year comparison), at most fifty million events.

use serde::{Deserialize, Serialize};
use serde_json::json;
use tandem_sdk::append::{AppendPlugin, ReportSchema};
use tandem_sdk::{Example, Host, Info, Retention, Violation, check};

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A caller joined the queue.
    EnterQueue,
    /// An agent answered the caller.
    Connect,
    /// The agent hung up.
    CompleteAgent,
    /// The caller hung up after talking.
    CompleteCaller,
    /// The caller hung up while waiting.
    Abandon,
    /// The caller waited the queue's maximum and went to its failover.
    ExitTimeout,
    /// An agent's phone rang and was not answered.
    RingNoAnswer,
    AgentLogin,
    AgentLogout,
    Pause,
    Unpause,
}

/// One queue or agent event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueEvent {
    pub node: String,
    /// The call's Asterisk unique id, or the agent's session id for agent events.
    pub call_id: String,
    pub sequence: u64,
    pub time_ms: u64,
    pub event: Event,
    /// The queue number; none for agent events that concern no queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// The agent id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The caller's number, on enter_queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_id: Option<String>,
    /// Seconds the caller had waited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_s: Option<u32>,
    /// Seconds the caller and the agent talked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub talk_s: Option<u32>,
    /// Seconds an agent's phone rang.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_s: Option<u32>,
    /// The caller's position when joining or leaving the queue (1 is next).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u32>,
    /// Why an agent paused (`lunch`, `training`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The outbound campaign a call belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
}

impl QueueEvent {
    /// Which of the optional fields an event must carry.
    fn required(&self) -> &'static [&'static str] {
        match self.event {
            Event::EnterQueue => &["queue", "position"],
            Event::Connect => &["queue", "agent", "wait_s"],
            Event::CompleteAgent | Event::CompleteCaller => &["queue", "agent", "wait_s", "talk_s"],
            Event::Abandon => &["queue", "wait_s", "position"],
            Event::ExitTimeout => &["queue", "wait_s"],
            Event::RingNoAnswer => &["queue", "agent", "ring_s"],
            Event::AgentLogin | Event::AgentLogout | Event::Unpause => &["agent"],
            Event::Pause => &["agent", "reason"],
        }
    }

    fn carries(&self, field: &str) -> bool {
        match field {
            "queue" => self.queue.is_some(),
            "agent" => self.agent.is_some(),
            "wait_s" => self.wait_s.is_some(),
            "talk_s" => self.talk_s.is_some(),
            "ring_s" => self.ring_s.is_some(),
            "position" => self.position.is_some(),
            "reason" => self.reason.is_some(),
            _ => true,
        }
    }
}

impl ReportSchema for QueueEvent {
    fn info() -> Info {
        Info {
            component: "contact-center-reports".to_owned(),
            plugin_version: env!("CARGO_PKG_VERSION").to_owned(),
            schema_version: 1,
            description: "Queue and agent events (queue_log)".to_owned(),
            shape: String::new(),
            examples: vec![
                Example::new(
                    "pbx-a:1764057600.1234:1",
                    json!({"node": "pbx-a", "call_id": "1764057600.1234", "sequence": 1, "time_ms": 1764057601000u64, "event": "enter_queue", "queue": "6000", "caller_id": "+447700900123", "position": 3}),
                ),
                Example::new(
                    "pbx-a:1764057600.1234:2",
                    json!({"node": "pbx-a", "call_id": "1764057600.1234", "sequence": 2, "time_ms": 1764057642000u64, "event": "connect", "queue": "6000", "agent": "4001", "wait_s": 41}),
                ),
                Example::new(
                    "pbx-a:1764057600.1234:3",
                    json!({"node": "pbx-a", "call_id": "1764057600.1234", "sequence": 3, "time_ms": 1764057930000u64, "event": "complete_caller", "queue": "6000", "agent": "4001", "wait_s": 41, "talk_s": 288}),
                ),
                Example::new(
                    "pbx-b:1764058000.77:2",
                    json!({"node": "pbx-b", "call_id": "1764058000.77", "sequence": 2, "time_ms": 1764058095000u64, "event": "abandon", "queue": "6001", "wait_s": 95, "position": 2}),
                ),
                Example::new(
                    "pbx-b:agent-4002-01JDQ4A0:5",
                    json!({"node": "pbx-b", "call_id": "agent-4002-01JDQ4A0", "sequence": 5, "time_ms": 1764061200000u64, "event": "pause", "agent": "4002", "reason": "lunch"}),
                ),
            ],
            retention: Some(Retention { max_age_ms: Some(396 * DAY_MS), max_count: Some(50_000_000) }),
        }
    }

    fn validate(&self, key: &str, _host: &dyn Host) -> Vec<Violation> {
        let mut v = Vec::new();
        let expected = format!("{}:{}:{}", self.node, self.call_id, self.sequence);
        if key != expected {
            v.push(Violation::new("", "key", format!("an event's key is <node>:<call id>:<sequence>, here {expected}")));
        }
        if !check::name(&self.node) {
            v.push(Violation::new("node", "format", format!("{:?} is not a node name", self.node)));
        }
        let id_ok = (1..=64).contains(&self.call_id.len()) && self.call_id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !id_ok {
            v.push(Violation::new("call_id", "format", "a call id is 1 to 64 of A-Z, a-z, 0-9, ., _ and -"));
        }
        if self.time_ms == 0 {
            v.push(Violation::new("time_ms", "required", "when the event happened"));
        }
        for field in self.required() {
            if !self.carries(field) {
                v.push(Violation::new(field, "required", format!("a {:?} event carries {field}", self.event)));
            }
        }
        if let Some(queue) = &self.queue
            && !check::digits(queue, 2..=8)
        {
            v.push(Violation::new("queue", "format", "a queue number is 2 to 8 digits"));
        }
        if let Some(agent) = &self.agent
            && !check::digits(agent, 2..=8)
        {
            v.push(Violation::new("agent", "format", "an agent id is 2 to 8 digits"));
        }
        if let Some(cid) = &self.caller_id
            && !(check::phone_number(cid) || cid == "anonymous")
        {
            v.push(Violation::new("caller_id", "format", format!("{cid:?} is not a phone number or anonymous")));
        }
        for (field, value) in [("wait_s", self.wait_s), ("talk_s", self.talk_s), ("ring_s", self.ring_s)] {
            v.extend(value.and_then(|s| check::range(field, s, 0..=86_400)));
        }
        v.extend(self.position.and_then(|p| check::range("position", p, 1..=10_000)));
        if let Some(reason) = &self.reason
            && !check::name(reason)
        {
            v.push(Violation::new("reason", "format", "a pause reason is 1 to 64 of a-z, 0-9, - and _"));
        }
        if let Some(campaign) = &self.campaign
            && !check::name(campaign)
        {
            v.push(Violation::new("campaign", "format", "a campaign name is 1 to 64 of a-z, 0-9, - and _"));
        }
        v
    }
}

/// The plugin.
pub type ContactCenterReportsPlugin = AppendPlugin<QueueEvent>;
tandem_sdk::export_plugin!(ContactCenterReportsPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_sdk::testing::{NoHost, codes, merge, put, put_err, stamp, write_violations};
    use tandem_sdk::{Plugin, WriteError};

    const KEY: &str = "pbx-a:1764057600.1234:2";

    fn violations(key: &str, doc: serde_json::Value) -> Vec<(String, String)> {
        codes(&write_violations::<ContactCenterReportsPlugin>(key, doc, &NoHost))
    }

    fn has(found: &[(String, String)], field: &str, code: &str) -> bool {
        found.iter().any(|(f, c)| f == field && c == code)
    }

    fn connect(extra: serde_json::Value) -> serde_json::Value {
        let mut doc = json!({"node": "pbx-a", "call_id": "1764057600.1234", "sequence": 2, "time_ms": 1764057642000u64, "event": "connect", "queue": "6000", "agent": "4001", "wait_s": 41});
        if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
            doc.extend(extra.clone());
        }
        doc
    }

    #[test]
    fn examples_are_valid_and_retention_is_set() {
        let info = ContactCenterReportsPlugin::describe();
        assert_eq!((info.component.as_str(), info.shape.as_str()), ("contact-center-reports", "append-only"));
        assert_eq!(info.retention, Some(Retention { max_age_ms: Some(396 * DAY_MS), max_count: Some(50_000_000) }));
        for ex in info.examples {
            let doc = serde_json::from_str(&ex.input).expect("example is JSON");
            assert_eq!(violations(&ex.key, doc), vec![], "example {}", ex.key);
        }
    }

    #[test]
    fn each_event_carries_its_figures() {
        let without = |field: &str, event: &str| {
            let mut doc = connect(json!({"event": event, "talk_s": 10, "ring_s": 15, "position": 1, "reason": "lunch"}));
            doc.as_object_mut().map(|d| d.remove(field));
            violations(KEY, doc)
        };
        assert!(has(&without("agent", "connect"), "/agent", "required"));
        assert!(has(&without("wait_s", "connect"), "/wait_s", "required"));
        assert!(has(&without("talk_s", "complete_agent"), "/talk_s", "required"));
        assert!(has(&without("position", "abandon"), "/position", "required"));
        assert!(has(&without("ring_s", "ring_no_answer"), "/ring_s", "required"));
        assert!(has(&without("queue", "enter_queue"), "/queue", "required"));
        assert!(has(&without("reason", "pause"), "/reason", "required"));
    }

    #[test]
    fn refuses_operator_mistakes() {
        assert!(has(&violations("pbx-a:1764057600.1234:3", connect(json!({}))), "", "key"));
        assert!(has(&violations("PBX:1764057600.1234:2", connect(json!({"node": "PBX"}))), "/node", "format"));
        assert!(has(&violations("pbx-a:call 1:2", connect(json!({"call_id": "call 1"}))), "/call_id", "format"));
        assert!(has(&violations(KEY, connect(json!({"time_ms": 0}))), "/time_ms", "required"));
        assert!(has(&violations(KEY, connect(json!({"queue": "sales"}))), "/queue", "format"));
        assert!(has(&violations(KEY, connect(json!({"agent": "priya"}))), "/agent", "format"));
        assert!(has(&violations(KEY, connect(json!({"caller_id": "unknown"}))), "/caller_id", "format"));
        assert!(has(&violations(KEY, connect(json!({"wait_s": 100_000}))), "/wait_s", "range"));
        assert!(has(&violations(KEY, connect(json!({"position": 0}))), "/position", "range"));
        assert!(has(&violations(KEY, connect(json!({"reason": "Lunch break"}))), "/reason", "format"));
        assert!(has(&violations(KEY, connect(json!({"campaign": "Win back"}))), "/campaign", "format"));
        assert!(has(&violations(KEY, connect(json!({"event": "CONNECT"}))), "", "malformed"));
    }

    #[test]
    fn an_event_is_written_once_and_a_clash_is_a_conflict() {
        let first = put::<ContactCenterReportsPlugin>(KEY, connect(json!({})), None, &stamp(1, "pbx-a"));
        let retry = put::<ContactCenterReportsPlugin>(KEY, connect(json!({})), Some(&first), &stamp(2, "pbx-a"));
        assert_eq!(retry, first);
        assert!(matches!(
            put_err::<ContactCenterReportsPlugin>(KEY, connect(json!({"wait_s": 42})), Some(&first), &stamp(3, "pbx-a")),
            WriteError::Invalid(_)
        ));
        let other = put::<ContactCenterReportsPlugin>(KEY, connect(json!({"wait_s": 42})), None, &stamp(1, "pbx-b"));
        let merged = merge::<ContactCenterReportsPlugin>(KEY, &first, &other);
        assert_eq!(merged, merge::<ContactCenterReportsPlugin>(KEY, &other, &first));
        assert!(has(&codes(&ContactCenterReportsPlugin::validate(KEY, &merged.data, &NoHost).expect_err("conflict")), "", "conflict"));
    }
}
