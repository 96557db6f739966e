//! Outbound contact-center settings: dialer campaigns. A campaign calls a list of contacts (CRM
//! contacts with a tag) in one of four modes: preview (the agent sees the contact, then dials),
//! progressive (one call per free agent), predictive (more calls than agents, paced to keep the
//! abandon rate under a limit) or broadcast (a recorded message, no agent).
//!
//! Key: the campaign's name (`[a-z0-9_-]{1,64}`), e.g. `winback-2026-q1`.
//! Merge: per field, last writer wins (the status too: a paused campaign may be resumed).
//! References: the queue whose agents take the answered calls (contact-center-settings) must
//! exist. Checked through the host lookup, so enforced where one node takes the writes.

use serde::{Deserialize, Serialize};
use serde_json::json;
use tandem_sdk::record::{RecordPlugin, RecordSchema};
use tandem_sdk::{Example, Host, Info, Violation, check};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Preview,
    Progressive,
    Predictive,
    Broadcast,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being set up: may be incomplete, never dials.
    Draft,
    Active,
    Paused,
    Finished,
}

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

/// When contacts may be called, in the PBX's time zone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallingHours {
    pub days: Vec<Day>,
    /// `"HH:MM"`.
    pub start: String,
    pub end: String,
}

fn default_hours() -> CallingHours {
    let weekdays = vec![Day::Mon, Day::Tue, Day::Wed, Day::Thu, Day::Fri];
    CallingHours { days: weekdays, start: "09:00".to_owned(), end: "20:00".to_owned() }
}

/// A dialer campaign.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Campaign {
    pub name: String,
    pub mode: Mode,
    #[serde(default = "default_status")]
    pub status: Status,
    /// The queue (its number) whose agents take the calls. Required to leave draft, except for
    /// broadcasts, where it is optional ("press 1 to speak to someone").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// The recording a broadcast plays, e.g. `custom/appointment-reminder`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Contacts of the CRM with this tag are called.
    pub crm_tag: String,
    /// The number presented to contacts; regulators require one that can be called back.
    pub caller_id: String,
    #[serde(default = "default_hours")]
    pub calling_hours: CallingHours,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Seconds before an unanswered contact is tried again.
    #[serde(default = "default_retry_after")]
    pub retry_after_s: u32,
    /// Seconds a call rings before it counts as unanswered.
    #[serde(default = "default_ring_timeout")]
    pub ring_timeout_s: u32,
    /// Predictive pacing: lines dialled per available agent.
    #[serde(default = "default_pacing")]
    pub pacing_ratio: f64,
    /// Predictive limit: answered calls dropped for want of an agent, as a percentage.
    #[serde(default = "default_abandon")]
    pub max_abandon_percent: f64,
    /// Hang up on answering machines (or, for broadcasts, leave the message after the beep).
    #[serde(default)]
    pub answering_machine_detection: bool,
}

fn default_status() -> Status {
    Status::Draft
}
fn default_max_attempts() -> u32 {
    3
}
fn default_retry_after() -> u32 {
    3600
}
fn default_ring_timeout() -> u32 {
    25
}
fn default_pacing() -> f64 {
    1.0
}
fn default_abandon() -> f64 {
    3.0
}

/// Minutes since midnight of `"HH:MM"`.
fn minutes(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// A recording name as Asterisk looks it up under its sounds directory.
fn valid_sound(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.split('/').all(|part| !part.is_empty() && part != ".." && check::name(part))
}

impl RecordSchema for Campaign {
    fn info() -> Info {
        Info {
            component: "outbound-contact-center-settings".to_owned(),
            plugin_version: env!("CARGO_PKG_VERSION").to_owned(),
            schema_version: 1,
            description: "Outbound dialer campaigns".to_owned(),
            shape: String::new(),
            examples: vec![
                Example::new(
                    "dental-reminders",
                    json!({
                        "name": "Appointment reminders", "mode": "broadcast", "status": "active",
                        "message": "custom/appointment-reminder", "crm_tag": "appointment-tomorrow", "caller_id": "+442071234560",
                        "calling_hours": {"days": ["mon", "tue", "wed", "thu", "fri", "sat"], "start": "10:00", "end": "19:00"},
                        "max_attempts": 2, "answering_machine_detection": true
                    }),
                ),
                Example::new(
                    "overdue-invoices",
                    json!({
                        "name": "Overdue invoice notice", "mode": "broadcast", "status": "paused", "message": "custom/invoice-overdue",
                        "crm_tag": "invoice-overdue", "caller_id": "+442071234561", "retry_after_s": 7200
                    }),
                ),
                Example::new(
                    "winback-2026-q1",
                    json!({
                        "name": "Win-back Q1", "mode": "predictive", "crm_tag": "churned-2025", "caller_id": "+442071234562",
                        "pacing_ratio": 1.8, "max_abandon_percent": 3.0, "ring_timeout_s": 20
                    }),
                ),
            ],
            retention: None,
        }
    }

    fn validate(&self, key: &str, host: &dyn Host) -> Vec<Violation> {
        let mut v = Vec::new();
        if !check::name(key) {
            v.push(Violation::new("", "key", "a campaign name is 1 to 64 of a-z, 0-9, - and _"));
        }
        if self.name.trim().is_empty() {
            v.push(Violation::new("name", "required", "a campaign needs a name"));
        }
        match &self.queue {
            Some(queue) => v.extend(check::exists(host, "queue", "contact-center-settings", &format!("queue:{queue}"), "queue")),
            None if self.mode != Mode::Broadcast && self.status != Status::Draft => {
                v.push(Violation::new("queue", "required", "agents take the calls of this mode: name their queue before leaving draft"));
            }
            None => {}
        }
        match (&self.message, self.mode) {
            (Some(sound), _) if !valid_sound(sound) => {
                v.push(Violation::new("message", "format", format!("{sound:?} is not a recording name like custom/reminder")));
            }
            (None, Mode::Broadcast) => v.push(Violation::new("message", "required", "a broadcast plays a recorded message")),
            _ => {}
        }
        if !check::name(&self.crm_tag) {
            v.push(Violation::new("crm_tag", "format", "a CRM tag is 1 to 64 of a-z, 0-9, - and _"));
        }
        if !check::phone_number(&self.caller_id) {
            v.push(Violation::new("caller_id", "format", format!("{:?} is not a phone number (+ and 3 to 15 digits)", self.caller_id)));
        }
        let hours = &self.calling_hours;
        if hours.days.is_empty() {
            v.push(Violation::new("calling_hours/days", "required", "calls need at least one day"));
        }
        match (minutes(&hours.start), minutes(&hours.end)) {
            (Some(start), Some(end)) if start < end => {}
            (Some(_), Some(_)) => v.push(Violation::new("calling_hours", "range", "calling hours must start before they end")),
            (None, _) => v.push(Violation::new("calling_hours/start", "format", "a time is HH:MM")),
            (_, None) => v.push(Violation::new("calling_hours/end", "format", "a time is HH:MM")),
        }
        v.extend(check::range("max_attempts", self.max_attempts, 1..=10));
        v.extend(check::range("retry_after_s", self.retry_after_s, 300..=604_800));
        v.extend(check::range("ring_timeout_s", self.ring_timeout_s, 15..=60));
        v.extend(check::range("pacing_ratio", self.pacing_ratio, 1.0..=5.0));
        v.extend(check::range("max_abandon_percent", self.max_abandon_percent, 0.0..=5.0));
        if self.mode != Mode::Predictive && self.pacing_ratio != 1.0 {
            v.push(Violation::new("pacing_ratio", "mode", "only predictive campaigns dial more lines than agents"));
        }
        v
    }
}

/// The plugin.
pub type CampaignsPlugin = RecordPlugin<Campaign>;
tandem_sdk::export_plugin!(CampaignsPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_sdk::Plugin;
    use tandem_sdk::testing::{MapHost, NoHost, codes, merge, put, read, stamp, write_violations};

    fn violations(key: &str, doc: serde_json::Value) -> Vec<(String, String)> {
        codes(&write_violations::<CampaignsPlugin>(key, doc, &NoHost))
    }

    fn has(found: &[(String, String)], field: &str, code: &str) -> bool {
        found.iter().any(|(f, c)| f == field && c == code)
    }

    fn campaign(extra: serde_json::Value) -> serde_json::Value {
        let mut doc = json!({"name": "Renewals", "mode": "progressive", "crm_tag": "renewal-due", "caller_id": "+442071234562"});
        if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
            doc.extend(extra.clone());
        }
        doc
    }

    #[test]
    fn examples_are_valid() {
        let info = CampaignsPlugin::describe();
        assert_eq!(info.component, "outbound-contact-center-settings");
        for ex in info.examples {
            let doc = serde_json::from_str(&ex.input).expect("example is JSON");
            assert_eq!(violations(&ex.key, doc), vec![], "example {}", ex.key);
        }
    }

    #[test]
    fn agent_campaigns_need_an_existing_queue_to_leave_draft() {
        assert_eq!(violations("renewals", campaign(json!({}))), vec![]);
        assert!(has(&violations("renewals", campaign(json!({"status": "active"}))), "/queue", "required"));
        let with_queue = campaign(json!({"status": "active", "queue": "6000"}));
        assert!(has(&violations("renewals", with_queue.clone()), "/queue", "reference"));
        let host = MapHost::default().with("contact-center-settings", "queue:6000", json!({"kind": "queue", "name": "Sales"}));
        assert_eq!(write_violations::<CampaignsPlugin>("renewals", with_queue, &host), vec![]);
    }

    #[test]
    fn refuses_operator_mistakes() {
        assert!(has(&violations("Renewals 2026", campaign(json!({}))), "", "key"));
        assert!(has(&violations("r", campaign(json!({"name": ""}))), "/name", "required"));
        assert!(has(&violations("r", campaign(json!({"mode": "broadcast"}))), "/message", "required"));
        assert!(has(&violations("r", campaign(json!({"message": "Reminder.wav"}))), "/message", "format"));
        assert!(has(&violations("r", campaign(json!({"crm_tag": "Renewal Due"}))), "/crm_tag", "format"));
        assert!(has(&violations("r", campaign(json!({"caller_id": "withheld"}))), "/caller_id", "format"));
        let hours = |h: serde_json::Value| violations("r", campaign(json!({ "calling_hours": h })));
        assert!(has(&hours(json!({"days": [], "start": "09:00", "end": "17:00"})), "/calling_hours/days", "required"));
        assert!(has(&hours(json!({"days": ["mon"], "start": "9", "end": "17:00"})), "/calling_hours/start", "format"));
        assert!(has(&hours(json!({"days": ["mon"], "start": "09:00", "end": "25:00"})), "/calling_hours/end", "format"));
        assert!(has(&hours(json!({"days": ["mon"], "start": "21:00", "end": "09:00"})), "/calling_hours", "range"));
        for (field, value) in
            [("max_attempts", json!(0)), ("retry_after_s", json!(60)), ("ring_timeout_s", json!(8)), ("max_abandon_percent", json!(12.5))]
        {
            assert!(has(&violations("r", campaign(json!({ field: value }))), &format!("/{field}"), "range"), "{field}");
        }
        assert!(has(&violations("r", campaign(json!({"mode": "predictive", "pacing_ratio": 9.0}))), "/pacing_ratio", "range"));
        assert!(has(&violations("r", campaign(json!({"pacing_ratio": 2.0}))), "/pacing_ratio", "mode"));
        assert!(has(&violations("r", campaign(json!({"mode": "robocall"}))), "", "malformed"));
    }

    #[test]
    fn concurrent_edits_merge_per_field_the_same_in_both_orders() {
        let host = MapHost::default().with("contact-center-settings", "queue:6000", json!({"kind": "queue"}));
        let base = put::<CampaignsPlugin>("r", campaign(json!({"status": "active", "queue": "6000"})), None, &stamp(1, "a"));
        // An operator pauses the campaign on one node while another raises the attempts.
        let a = put::<CampaignsPlugin>("r", campaign(json!({"status": "paused", "queue": "6000"})), Some(&base), &stamp(2, "a"));
        let b = put::<CampaignsPlugin>(
            "r",
            campaign(json!({"status": "active", "queue": "6000", "max_attempts": 5})),
            Some(&base),
            &stamp(3, "b"),
        );
        let ab = merge::<CampaignsPlugin>("r", &a, &b);
        assert_eq!(ab, merge::<CampaignsPlugin>("r", &b, &a));
        let doc = read::<CampaignsPlugin>("r", &ab).expect("live");
        assert_eq!((&doc["status"], &doc["max_attempts"]), (&json!("paused"), &json!(5)));
        assert_eq!(CampaignsPlugin::validate("r", &ab.data, &host), Ok(()));
    }
}
