//! Security reports: what happened at the doors of the system. SIP and manager-interface
//! authentication as Asterisk's security events report it (failed ACL, unknown account, bad
//! password, successful authentication), and the administration audit trail (logins, changes to
//! settings, refused actions).
//!
//! Key: a ULID made by the application from the event's time (26 characters of Crockford base32).
//! Append-only: a report is written once and never changes; a different report under the same key
//! is a conflict for an operator, never an overwrite.
//! Retention: one year, and at most ten million reports.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tandem_sdk::append::{AppendPlugin, ReportSchema};
use tandem_sdk::{Example, Host, Info, Retention, Violation, check};

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A request from an address that an access list refuses.
    FailedAcl,
    /// Authentication as an account that does not exist.
    InvalidAccount,
    /// A digest challenge answered wrongly.
    ChallengeFailed,
    InvalidPassword,
    SuccessfulAuth,
    /// An account locked after repeated failures.
    Lockout,
    Login,
    LoginFailed,
    Logout,
    /// An administrator changed a record.
    ConfigChange,
    /// An administrator tried something their role does not allow.
    PermissionDenied,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Notice,
    Warning,
    Critical,
}

/// Where the attempt came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    Sip,
    Iax2,
    /// The Asterisk manager interface.
    Ami,
    Ari,
    /// The administration web interface.
    Web,
    /// The Tandem HTTP API.
    Api,
}

/// One security event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityEvent {
    /// When it happened, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The node that saw it.
    pub node: String,
    pub event: Event,
    pub severity: Severity,
    pub service: Service,
    /// The account or user name presented, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    pub remote_address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// For a configuration change or a refused action: the component and key concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl ReportSchema for SecurityEvent {
    fn info() -> Info {
        Info {
            component: "security-reports".to_owned(),
            plugin_version: env!("CARGO_PKG_VERSION").to_owned(),
            schema_version: 1,
            description: "Security events: authentication and the administration audit trail".to_owned(),
            shape: String::new(),
            examples: vec![
                Example::new(
                    "01JDQ3V6M8X2K4T9R7P5N3B1C0",
                    json!({"time_ms": 1764057600123u64, "node": "pbx-a", "event": "invalid_password", "severity": "warning", "service": "sip", "account": "1001", "remote_address": "198.51.100.23", "remote_port": 5062, "session_id": "4f1c9e2a@198.51.100.23"}),
                ),
                Example::new(
                    "01JDQ3VA2C4E6G8J0K2M4P6R8T",
                    json!({"time_ms": 1764057604000u64, "node": "pbx-a", "event": "failed_acl", "severity": "notice", "service": "sip", "remote_address": "203.0.113.77", "detail": "acl office-and-vpn"}),
                ),
                Example::new(
                    "01JDQ3W1Q3S5V7X9Z1B3D5F7H9",
                    json!({"time_ms": 1764057650000u64, "node": "pbx-b", "event": "config_change", "severity": "info", "service": "web", "account": "alice", "remote_address": "10.20.4.17", "target": "trunks/carrier-main", "detail": "max_channels 30 -> 60"}),
                ),
                Example::new(
                    "01JDQ3W8B0D2F4H6K8M0P2R4T6",
                    json!({"time_ms": 1764057690000u64, "node": "pbx-b", "event": "lockout", "severity": "critical", "service": "ami", "account": "crm-connector", "remote_address": "2001:db8:4::25", "detail": "10 failures in 60 s"}),
                ),
            ],
            retention: Some(Retention { max_age_ms: Some(365 * DAY_MS), max_count: Some(10_000_000) }),
        }
    }

    fn validate(&self, key: &str, _host: &dyn Host) -> Vec<Violation> {
        let mut v = Vec::new();
        if !check::ulid(key) {
            v.push(Violation::new("", "key", "a security report's key is a ULID (26 characters of Crockford base32)"));
        }
        if self.time_ms == 0 {
            v.push(Violation::new("time_ms", "required", "when the event happened"));
        }
        if !check::name(&self.node) {
            v.push(Violation::new("node", "format", format!("{:?} is not a node name", self.node)));
        }
        if self.remote_address.parse::<IpAddr>().is_err() {
            v.push(Violation::new("remote_address", "format", format!("{:?} is not an IP address", self.remote_address)));
        }
        if self.remote_port == Some(0) {
            v.push(Violation::new("remote_port", "range", "a port is 1 to 65535"));
        }
        if let Some(account) = &self.account
            && (account.is_empty() || account.len() > 128 || account.chars().any(char::is_control))
        {
            v.push(Violation::new("account", "format", "an account is 1 to 128 printable characters"));
        }
        let needs_account = !matches!(self.event, Event::FailedAcl | Event::InvalidAccount | Event::LoginFailed);
        if needs_account && self.account.is_none() {
            v.push(Violation::new("account", "required", "this event concerns an account: say which"));
        }
        let admin_event =
            matches!(self.event, Event::Login | Event::LoginFailed | Event::Logout | Event::ConfigChange | Event::PermissionDenied);
        if admin_event && !matches!(self.service, Service::Web | Service::Api | Service::Ami | Service::Ari) {
            v.push(Violation::new("service", "format", "administration events come from web, api, ami or ari"));
        }
        let needs_target = matches!(self.event, Event::ConfigChange | Event::PermissionDenied);
        match &self.target {
            None if needs_target => v.push(Violation::new("target", "required", "say which component/key was concerned")),
            Some(target) if !target.split_once('/').is_some_and(|(component, key)| check::name(component) && !key.is_empty()) => {
                v.push(Violation::new("target", "format", "a target is <component>/<key>"));
            }
            _ => {}
        }
        if let Some(detail) = &self.detail
            && detail.chars().count() > 1000
        {
            v.push(Violation::new("detail", "format", "details are up to 1000 characters"));
        }
        v
    }
}

/// The plugin.
pub type SecurityReportsPlugin = AppendPlugin<SecurityEvent>;
tandem_sdk::export_plugin!(SecurityReportsPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_sdk::testing::{NoHost, codes, merge, put, put_err, read, stamp, write_violations};
    use tandem_sdk::{Op, Plugin, WriteError};

    const KEY: &str = "01JDQ3V6M8X2K4T9R7P5N3B1C0";

    fn violations(key: &str, doc: serde_json::Value) -> Vec<(String, String)> {
        codes(&write_violations::<SecurityReportsPlugin>(key, doc, &NoHost))
    }

    fn has(found: &[(String, String)], field: &str, code: &str) -> bool {
        found.iter().any(|(f, c)| f == field && c == code)
    }

    fn event(extra: serde_json::Value) -> serde_json::Value {
        let mut doc = json!({"time_ms": 1764057600123u64, "node": "pbx-a", "event": "invalid_password", "severity": "warning", "service": "sip", "account": "1001", "remote_address": "198.51.100.23"});
        if let (Some(doc), Some(extra)) = (doc.as_object_mut(), extra.as_object()) {
            doc.extend(extra.clone());
        }
        doc
    }

    #[test]
    fn examples_are_valid_and_retention_is_set() {
        let info = SecurityReportsPlugin::describe();
        assert_eq!((info.component.as_str(), info.shape.as_str()), ("security-reports", "append-only"));
        assert_eq!(info.retention, Some(Retention { max_age_ms: Some(365 * DAY_MS), max_count: Some(10_000_000) }));
        for ex in info.examples {
            let doc = serde_json::from_str(&ex.input).expect("example is JSON");
            assert_eq!(violations(&ex.key, doc), vec![], "example {}", ex.key);
        }
    }

    #[test]
    fn refuses_operator_mistakes() {
        assert!(has(&violations("2025-11-25-0001", event(json!({}))), "", "key"));
        assert!(has(&violations(KEY, event(json!({"time_ms": 0}))), "/time_ms", "required"));
        assert!(has(&violations(KEY, event(json!({"node": "PBX A"}))), "/node", "format"));
        assert!(has(&violations(KEY, event(json!({"remote_address": "198.51.100.23:5062"}))), "/remote_address", "format"));
        assert!(has(&violations(KEY, event(json!({"remote_port": 0}))), "/remote_port", "range"));
        assert!(has(&violations(KEY, event(json!({"account": ""}))), "/account", "format"));
        let mut anonymous = event(json!({}));
        anonymous.as_object_mut().map(|d| d.remove("account"));
        assert!(has(&violations(KEY, anonymous), "/account", "required"));
        assert!(has(&violations(KEY, event(json!({"event": "login", "service": "sip"}))), "/service", "format"));
        assert!(has(&violations(KEY, event(json!({"event": "config_change", "service": "web"}))), "/target", "required"));
        assert!(has(&violations(KEY, event(json!({"event": "config_change", "service": "web", "target": "trunks"}))), "/target", "format"));
        assert!(has(&violations(KEY, event(json!({"detail": "x".repeat(1001)}))), "/detail", "format"));
        assert!(has(&violations(KEY, event(json!({"event": "hacked"}))), "", "malformed"));
    }

    #[test]
    fn a_report_is_written_once() {
        let first = put::<SecurityReportsPlugin>(KEY, event(json!({})), None, &stamp(1, "a"));
        // A retry of the same report changes nothing.
        assert_eq!(put::<SecurityReportsPlugin>(KEY, event(json!({})), Some(&first), &stamp(2, "a")), first);
        match put_err::<SecurityReportsPlugin>(KEY, event(json!({"severity": "info"})), Some(&first), &stamp(3, "a")) {
            WriteError::Invalid(v) => assert!(has(&codes(&v), "", "immutable")),
            other => panic!("{other:?}"),
        }
        assert!(
            SecurityReportsPlugin::serialize(KEY, Op::Delete, Some(&first.data), &stamp(4, "a")).is_err(),
            "reports leave by retention only"
        );
    }

    #[test]
    fn two_nodes_writing_different_reports_under_one_key_is_a_conflict() {
        let a = put::<SecurityReportsPlugin>(KEY, event(json!({})), None, &stamp(1, "a"));
        let b = put::<SecurityReportsPlugin>(KEY, event(json!({"node": "pbx-b"})), None, &stamp(1, "b"));
        let ab = merge::<SecurityReportsPlugin>(KEY, &a, &b);
        assert_eq!(ab, merge::<SecurityReportsPlugin>(KEY, &b, &a));
        let found = SecurityReportsPlugin::validate(KEY, &ab.data, &NoHost).expect_err("a conflict");
        assert!(has(&codes(&found), "", "conflict"));
        assert_eq!(read::<SecurityReportsPlugin>(KEY, &ab).expect("live")["_conflicts"].as_array().map(Vec::len), Some(2));
        // The same report from both nodes is no conflict.
        let same = put::<SecurityReportsPlugin>(KEY, event(json!({})), None, &stamp(1, "b"));
        assert_eq!(SecurityReportsPlugin::validate(KEY, &merge::<SecurityReportsPlugin>(KEY, &a, &same).data, &NoHost), Ok(()));
    }
}
