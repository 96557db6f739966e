//! CRM reports: the interaction log. Every call, e-mail, message or meeting with a contact, with
//! its outcome, written when the interaction ends. Campaign results and agent activity reports are
//! computed from it.
//!
//! Key: a ULID made by the application from the interaction's time.
//! Append-only: an interaction is written once and never changes; a different one under the same
//! key is a conflict for an operator, never an overwrite.
//! Retention: three years.
//! References: the contact, account and call are named but not looked up. A report stays true
//! about the past when its contact is later deleted, and it must never turn into a conflict then.

use serde::{Deserialize, Serialize};
use serde_json::json;
use tandem_sdk::append::{AppendPlugin, ReportSchema};
use tandem_sdk::{Example, Host, Info, Retention, Violation, check};

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Call,
    Email,
    Sms,
    Chat,
    Meeting,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

/// How the interaction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Resolved,
    Escalated,
    CallbackRequested,
    Sale,
    NotInterested,
    /// Calls only: nobody answered.
    NoAnswer,
    /// Calls only: a message was left on an answering machine.
    Voicemail,
    WrongNumber,
    /// The contact asked never to be contacted by campaigns again.
    DoNotContact,
}

/// One interaction with a contact.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interaction {
    /// When it started, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub channel: Channel,
    pub direction: Direction,
    pub outcome: Outcome,
    /// The user who handled it.
    pub agent: String,
    /// The CRM contact's ULID, when the contact is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// For calls: the call detail record (`<node>:<unique id>:<sequence>` in pbx-reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

impl ReportSchema for Interaction {
    fn info() -> Info {
        Info {
            component: "crm-reports".to_owned(),
            plugin_version: env!("CARGO_PKG_VERSION").to_owned(),
            schema_version: 1,
            description: "CRM interaction log: calls, e-mails, messages and meetings with their outcome".to_owned(),
            shape: String::new(),
            examples: vec![
                Example::new(
                    "01JDQ5B2C3D4E5F6G7H8J9K0M1",
                    json!({
                        "time_ms": 1764057642000u64, "channel": "call", "direction": "inbound", "outcome": "callback_requested", "agent": "priya",
                        "contact": "01J8Z3P2A7XG5H9QK4W6N8R1TB", "account": "01J8Z3K4M5N6P7Q8R9S0T1V2W3", "call_ref": "pbx-a:1764057600.1234:7",
                        "duration_s": 288, "subject": "Seat expansion", "summary": "Wants a quote for 40 more seats by Thursday."
                    }),
                ),
                Example::new(
                    "01JDQ5C7N8P9Q0R1S2T3V4W5X6",
                    json!({"time_ms": 1764061200000u64, "channel": "call", "direction": "outbound", "outcome": "no_answer", "agent": "tom", "campaign": "winback-2026-q1", "duration_s": 25}),
                ),
                Example::new(
                    "01JDQ5D1Y2Z3A4B5C6D7E8F9G0",
                    json!({"time_ms": 1764064800000u64, "channel": "email", "direction": "outbound", "outcome": "resolved", "agent": "priya", "contact": "01J8Z3Q9C2VD4E6F8G0H1J3K5M", "subject": "Your invoice INV-2025-0117"}),
                ),
            ],
            retention: Some(Retention { max_age_ms: Some(3 * 365 * DAY_MS), max_count: None }),
        }
    }

    fn validate(&self, key: &str, _host: &dyn Host) -> Vec<Violation> {
        let mut v = Vec::new();
        if !check::ulid(key) {
            v.push(Violation::new("", "key", "an interaction's key is a ULID (26 characters of Crockford base32)"));
        }
        if self.time_ms == 0 {
            v.push(Violation::new("time_ms", "required", "when the interaction started"));
        }
        if !check::name(&self.agent) {
            v.push(Violation::new("agent", "format", format!("{:?} is not a user name", self.agent)));
        }
        for (field, id) in [("contact", &self.contact), ("account", &self.account)] {
            if let Some(id) = id
                && !check::ulid(id)
            {
                v.push(Violation::new(field, "format", format!("{id:?} is not a ULID")));
            }
        }
        let call_only = matches!(self.outcome, Outcome::NoAnswer | Outcome::Voicemail);
        if call_only && self.channel != Channel::Call {
            v.push(Violation::new("outcome", "format", "no_answer and voicemail are outcomes of calls"));
        }
        match &self.call_ref {
            Some(_) if self.channel != Channel::Call => v.push(Violation::new("call_ref", "format", "only calls have a call record")),
            Some(r) if r.split(':').count() != 3 || r.split(':').any(str::is_empty) => {
                v.push(Violation::new("call_ref", "format", "a call record's key is <node>:<unique id>:<sequence>"));
            }
            _ => {}
        }
        if let Some(campaign) = &self.campaign
            && !check::name(campaign)
        {
            v.push(Violation::new("campaign", "format", "a campaign name is 1 to 64 of a-z, 0-9, - and _"));
        }
        v.extend(self.duration_s.and_then(|d| check::range("duration_s", d, 0..=86_400)));
        for (field, text, max) in [("subject", &self.subject, 200), ("summary", &self.summary, 4000)] {
            if let Some(text) = text
                && (text.trim().is_empty() || text.chars().count() > max)
            {
                v.push(Violation::new(field, "format", format!("1 to {max} characters")));
            }
        }
        v
    }
}

/// The plugin.
pub type CrmReportsPlugin = AppendPlugin<Interaction>;
tandem_sdk::export_plugin!(CrmReportsPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_sdk::testing::{NoHost, codes, merge, put, put_err, stamp, write_violations};
    use tandem_sdk::{Plugin, WriteError};

    const KEY: &str = "01JDQ5B2C3D4E5F6G7H8J9K0M1";

    fn violations(key: &str, doc: serde_json::Value) -> Vec<(String, String)> {
        codes(&write_violations::<CrmReportsPlugin>(key, doc, &NoHost))
    }

    fn has(found: &[(String, String)], field: &str, code: &str) -> bool {
        found.iter().any(|(f, c)| f == field && c == code)
    }

    fn call(extra: serde_json::Value) -> serde_json::Value {
        let mut doc =
            json!({"time_ms": 1764057642000u64, "channel": "call", "direction": "inbound", "outcome": "resolved", "agent": "priya"});
        if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
            doc.extend(extra.clone());
        }
        doc
    }

    #[test]
    fn examples_are_valid_and_retention_is_set() {
        let info = CrmReportsPlugin::describe();
        assert_eq!((info.component.as_str(), info.shape.as_str()), ("crm-reports", "append-only"));
        assert_eq!(info.retention, Some(Retention { max_age_ms: Some(3 * 365 * DAY_MS), max_count: None }));
        for ex in info.examples {
            let doc = serde_json::from_str(&ex.input).expect("example is JSON");
            assert_eq!(violations(&ex.key, doc), vec![], "example {}", ex.key);
        }
    }

    #[test]
    fn references_are_named_not_looked_up() {
        // The contact need not exist (any more): the report is about the past.
        assert_eq!(violations(KEY, call(json!({"contact": "01J8Z3P2A7XG5H9QK4W6N8R1TB"}))), vec![]);
    }

    #[test]
    fn refuses_operator_mistakes() {
        assert!(has(&violations("42", call(json!({}))), "", "key"));
        assert!(has(&violations(KEY, call(json!({"time_ms": 0}))), "/time_ms", "required"));
        assert!(has(&violations(KEY, call(json!({"agent": "Priya Shah"}))), "/agent", "format"));
        assert!(has(&violations(KEY, call(json!({"contact": "maria"}))), "/contact", "format"));
        assert!(has(&violations(KEY, call(json!({"account": "northwind"}))), "/account", "format"));
        assert!(has(&violations(KEY, call(json!({"channel": "email", "outcome": "voicemail"}))), "/outcome", "format"));
        assert!(has(&violations(KEY, call(json!({"channel": "sms", "call_ref": "pbx-a:1.2:3"}))), "/call_ref", "format"));
        assert!(has(&violations(KEY, call(json!({"call_ref": "pbx-a:1764057600.1234"}))), "/call_ref", "format"));
        assert!(has(&violations(KEY, call(json!({"campaign": "Win back"}))), "/campaign", "format"));
        assert!(has(&violations(KEY, call(json!({"duration_s": 100_000}))), "/duration_s", "range"));
        assert!(has(&violations(KEY, call(json!({"subject": " "}))), "/subject", "format"));
        assert!(has(&violations(KEY, call(json!({"summary": "x".repeat(4001)}))), "/summary", "format"));
        assert!(has(&violations(KEY, call(json!({"channel": "fax"}))), "", "malformed"));
    }

    #[test]
    fn an_interaction_is_written_once_and_a_clash_is_a_conflict() {
        let first = put::<CrmReportsPlugin>(KEY, call(json!({})), None, &stamp(1, "a"));
        assert!(matches!(
            put_err::<CrmReportsPlugin>(KEY, call(json!({"outcome": "sale"})), Some(&first), &stamp(2, "a")),
            WriteError::Invalid(_)
        ));
        let other = put::<CrmReportsPlugin>(KEY, call(json!({"outcome": "sale"})), None, &stamp(1, "b"));
        let merged = merge::<CrmReportsPlugin>(KEY, &first, &other);
        assert_eq!(merged, merge::<CrmReportsPlugin>(KEY, &other, &first));
        assert!(has(&codes(&CrmReportsPlugin::validate(KEY, &merged.data, &NoHost).expect_err("conflict")), "", "conflict"));
    }
}
