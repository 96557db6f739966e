//! SIP trunks: how the PBX reaches carriers and other PBXs (a PJSIP endpoint, its AOR, its
//! outbound registration and its authentication, in one record).
//!
//! Key: the trunk's name (`[a-z0-9_-]{1,64}`), e.g. `carrier-main`. Dial-out routes name trunks
//! by this key.
//! Merge: per field, last writer wins.

use serde::{Deserialize, Serialize};
use serde_json::json;
use tandem_sdk::record::{RecordPlugin, RecordSchema};
use tandem_sdk::{Example, Host, Info, Violation, check};

/// Transport of the SIP signalling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

/// How DTMF digits travel (PJSIP `dtmf_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DtmfMode {
    Rfc4733,
    Inband,
    Info,
    Auto,
}

/// Outbound registration of the trunk with the carrier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// The registrar, e.g. `sip:sip.carrier.example`.
    #[serde(default)]
    pub server_uri: String,
    /// The address of record registered, e.g. `sip:acme@sip.carrier.example`.
    #[serde(default)]
    pub client_uri: String,
    #[serde(default = "default_expiry")]
    pub expiry_s: u32,
}

fn default_expiry() -> u32 {
    3600
}

/// A SIP trunk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trunk {
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u32,
    #[serde(default = "default_transport")]
    pub transport: Transport,
    /// Authentication user name towards the carrier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Authentication secret. The PBX needs it in clear to answer digest challenges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<Registration>,
    /// Send requests through this proxy instead of straight to `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_proxy: Option<String>,
    /// Dialplan context that calls arriving on the trunk enter.
    #[serde(default = "default_context")]
    pub context: String,
    /// Caller ID presented on calls out of this trunk, overriding the extension's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_id: Option<String>,
    #[serde(default = "default_codecs")]
    pub codecs: Vec<String>,
    #[serde(default = "default_dtmf")]
    pub dtmf_mode: DtmfMode,
    /// Seconds between OPTIONS pings that check the far end is up; 0 turns them off.
    #[serde(default = "default_qualify")]
    pub qualify_frequency_s: u32,
    #[serde(default = "default_channels")]
    pub max_channels: u32,
    #[serde(default = "default_enabled")]
    pub enabled: bool,
}

fn default_port() -> u32 {
    5060
}
fn default_transport() -> Transport {
    Transport::Udp
}
fn default_context() -> String {
    "from-trunk".to_owned()
}
fn default_codecs() -> Vec<String> {
    vec!["ulaw".to_owned(), "alaw".to_owned()]
}
fn default_dtmf() -> DtmfMode {
    DtmfMode::Rfc4733
}
fn default_qualify() -> u32 {
    60
}
fn default_channels() -> u32 {
    30
}
fn default_enabled() -> bool {
    true
}

const CODECS: &[&str] = &["ulaw", "alaw", "g722", "g729", "gsm", "opus", "ilbc", "speex"];

impl RecordSchema for Trunk {
    fn info() -> Info {
        Info {
            component: "trunks".to_owned(),
            plugin_version: env!("CARGO_PKG_VERSION").to_owned(),
            schema_version: 1,
            description: "SIP trunks to carriers and peer PBXs".to_owned(),
            shape: String::new(),
            examples: vec![
                Example::new(
                    "carrier-main",
                    json!({
                        "host": "sip.carrier.example", "port": 5060, "transport": "udp",
                        "username": "acme", "secret": "x7Gq2vR9tLm4",
                        "registration": {"server_uri": "sip:sip.carrier.example", "client_uri": "sip:acme@sip.carrier.example"},
                        "caller_id": "+442071234500", "codecs": ["alaw", "g722"], "max_channels": 60
                    }),
                ),
                Example::new(
                    "carrier-backup",
                    json!({"host": "203.0.113.10", "port": 5061, "transport": "tls", "codecs": ["ulaw"], "max_channels": 30, "enabled": false}),
                ),
                Example::new(
                    "branch-office",
                    json!({"host": "pbx.branch.example", "transport": "tcp", "context": "from-branch", "dtmf_mode": "auto", "qualify_frequency_s": 30}),
                ),
                Example::new(
                    "sbc-emergency",
                    json!({"host": "10.20.0.5", "outbound_proxy": "sip:sbc.acme.example:5060", "codecs": ["alaw"], "max_channels": 4}),
                ),
            ],
            retention: None,
        }
    }

    fn validate(&self, key: &str, _host: &dyn Host) -> Vec<Violation> {
        let mut v = Vec::new();
        if !check::name(key) {
            v.push(Violation::new("", "key", "a trunk name is 1 to 64 of a-z, 0-9, - and _"));
        }
        if !check::host(&self.host) {
            v.push(Violation::new("host", "format", format!("{:?} is not a host name or IP address", self.host)));
        }
        v.extend(check::range("port", self.port, 1..=65535));
        if self.secret.as_deref() == Some("") {
            v.push(Violation::new("secret", "required", "a secret cannot be empty; leave it out for a trunk without authentication"));
        }
        if let Some(reg) = &self.registration {
            for (field, uri) in [("registration/server_uri", &reg.server_uri), ("registration/client_uri", &reg.client_uri)] {
                if uri.is_empty() {
                    v.push(Violation::new(field, "required", "a registration needs both a server and a client URI"));
                } else if !check::sip_uri(uri) {
                    v.push(Violation::new(field, "format", format!("{uri:?} is not a sip: or sips: URI")));
                }
            }
            v.extend(check::range("registration/expiry_s", reg.expiry_s, 60..=86400));
            if self.username.is_none() || self.secret.is_none() {
                v.push(Violation::new("registration", "required", "a registration authenticates: set username and secret"));
            }
        }
        if let Some(proxy) = &self.outbound_proxy
            && !check::sip_uri(proxy)
        {
            v.push(Violation::new("outbound_proxy", "format", format!("{proxy:?} is not a sip: or sips: URI")));
        }
        if !check::name(&self.context) {
            v.push(Violation::new("context", "format", "a dialplan context is 1 to 64 of a-z, 0-9, - and _"));
        }
        if let Some(cid) = &self.caller_id
            && !check::phone_number(cid)
        {
            v.push(Violation::new("caller_id", "format", format!("{cid:?} is not a phone number (+ and 3 to 15 digits)")));
        }
        if self.codecs.is_empty() {
            v.push(Violation::new("codecs", "required", "at least one codec"));
        }
        for (i, c) in self.codecs.iter().enumerate() {
            if !CODECS.contains(&c.as_str()) {
                v.push(Violation::new(&format!("codecs/{i}"), "format", format!("unknown codec {c:?}")));
            }
        }
        v.extend(check::range("qualify_frequency_s", self.qualify_frequency_s, 0..=3600));
        v.extend(check::range("max_channels", self.max_channels, 1..=10_000));
        v
    }
}

/// The plugin.
pub type TrunksPlugin = RecordPlugin<Trunk>;
tandem_sdk::export_plugin!(TrunksPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_sdk::Plugin;
    use tandem_sdk::testing::{NoHost, codes, merge, put, read, stamp, write_violations};

    fn violations(key: &str, doc: serde_json::Value) -> Vec<(String, String)> {
        codes(&write_violations::<TrunksPlugin>(key, doc, &NoHost))
    }

    fn has(found: &[(String, String)], field: &str, code: &str) -> bool {
        found.iter().any(|(f, c)| f == field && c == code)
    }

    #[test]
    fn examples_are_valid() {
        let info = TrunksPlugin::describe();
        assert_eq!(info.component, "trunks");
        assert!(info.examples.len() >= 3);
        for ex in info.examples {
            let doc = serde_json::from_str(&ex.input).expect("example is JSON");
            assert_eq!(violations(&ex.key, doc), vec![], "example {}", ex.key);
        }
    }

    #[test]
    fn defaults_are_filled_in() {
        let s = put::<TrunksPlugin>("peer", json!({"host": "pbx.peer.example"}), None, &stamp(1, "a"));
        let doc = read::<TrunksPlugin>("peer", &s).expect("live");
        assert_eq!(doc["port"], 5060);
        assert_eq!(doc["transport"], "udp");
        assert_eq!(doc["context"], "from-trunk");
        assert_eq!(doc["codecs"], json!(["ulaw", "alaw"]));
    }

    #[test]
    fn refuses_operator_mistakes() {
        assert!(has(&violations("Carrier Main", json!({"host": "sip.carrier.example"})), "", "key"));
        assert!(has(&violations("c", json!({"host": "sip carrier"})), "/host", "format"));
        assert!(has(&violations("c", json!({"host": "sip.carrier.example", "port": 70000})), "/port", "range"));
        assert!(has(&violations("c", json!({"host": "sip.carrier.example", "port": 0})), "/port", "range"));
        assert!(has(&violations("c", json!({"host": "h.example", "secret": ""})), "/secret", "required"));
        let no_client =
            json!({"host": "h.example", "username": "u", "secret": "s3cret-s3cret", "registration": {"server_uri": "sip:h.example"}});
        assert!(has(&violations("c", no_client), "/registration/client_uri", "required"));
        let bad_uri = json!({"host": "h.example", "username": "u", "secret": "s3cret-s3cret", "registration": {"server_uri": "h.example", "client_uri": "sip:u@h.example"}});
        assert!(has(&violations("c", bad_uri), "/registration/server_uri", "format"));
        let no_auth =
            json!({"host": "h.example", "registration": {"server_uri": "sip:h.example", "client_uri": "sip:u@h.example", "expiry_s": 10}});
        let found = violations("c", no_auth);
        assert!(has(&found, "/registration", "required"));
        assert!(has(&found, "/registration/expiry_s", "range"));
        assert!(has(&violations("c", json!({"host": "h.example", "outbound_proxy": "sbc.example"})), "/outbound_proxy", "format"));
        assert!(has(&violations("c", json!({"host": "h.example", "context": "From Trunk"})), "/context", "format"));
        assert!(has(&violations("c", json!({"host": "h.example", "caller_id": "020 7123"})), "/caller_id", "format"));
        assert!(has(&violations("c", json!({"host": "h.example", "codecs": []})), "/codecs", "required"));
        assert!(has(&violations("c", json!({"host": "h.example", "codecs": ["mp3"]})), "/codecs/0", "format"));
        assert!(has(&violations("c", json!({"host": "h.example", "qualify_frequency_s": 7200})), "/qualify_frequency_s", "range"));
        assert!(has(&violations("c", json!({"host": "h.example", "max_channels": 0})), "/max_channels", "range"));
        assert!(has(&violations("c", json!({"host": "h.example", "transport": "sctp"})), "", "malformed"));
        assert!(has(&violations("c", json!({"host": "h.example", "colour": "red"})), "", "malformed"));
    }

    #[test]
    fn concurrent_edits_of_different_fields_both_survive() {
        let base = put::<TrunksPlugin>("c", json!({"host": "h.example", "max_channels": 30}), None, &stamp(1, "a"));
        let a = put::<TrunksPlugin>("c", json!({"host": "h.example", "max_channels": 60}), Some(&base), &stamp(2, "a"));
        let b = put::<TrunksPlugin>("c", json!({"host": "h2.example", "max_channels": 30}), Some(&base), &stamp(2, "b"));
        let ab = merge::<TrunksPlugin>("c", &a, &b);
        assert_eq!(ab, merge::<TrunksPlugin>("c", &b, &a));
        let doc = read::<TrunksPlugin>("c", &ab).expect("live");
        assert_eq!((doc["host"].clone(), doc["max_channels"].clone()), (json!("h2.example"), json!(60)));
    }

    #[test]
    fn concurrent_edits_of_one_field_go_to_the_later_stamp() {
        let base = put::<TrunksPlugin>("c", json!({"host": "h.example"}), None, &stamp(1, "a"));
        let a = put::<TrunksPlugin>("c", json!({"host": "a.example"}), Some(&base), &stamp(5, "a"));
        let b = put::<TrunksPlugin>("c", json!({"host": "b.example"}), Some(&base), &stamp(4, "b"));
        let ab = merge::<TrunksPlugin>("c", &a, &b);
        assert_eq!(ab, merge::<TrunksPlugin>("c", &b, &a));
        assert_eq!(read::<TrunksPlugin>("c", &ab).expect("live")["host"], "a.example");
    }
}
