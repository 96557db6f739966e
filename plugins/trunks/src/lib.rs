//! SIP trunks: how the PBX reaches carriers and other PBXs.
//!
//! Key: the trunk's name (`[a-z0-9_-]{1,64}`), e.g. `carrier-main`.
//! Merge: per field, last writer wins.

use serde::{Deserialize, Serialize};
use serde_json::json;
use tandem_sdk::record::{RecordPlugin, RecordSchema};
use tandem_sdk::{Example, Host, Info, Violation};

/// Transport of the SIP signalling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

/// Outbound registration of the trunk with the carrier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub server_uri: String,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<Registration>,
    #[serde(default = "default_codecs")]
    pub codecs: Vec<String>,
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
fn default_codecs() -> Vec<String> {
    vec!["ulaw".to_owned(), "alaw".to_owned()]
}
fn default_channels() -> u32 {
    30
}
fn default_enabled() -> bool {
    true
}

const CODECS: &[&str] = &["ulaw", "alaw", "g722", "g729", "gsm", "opus", "ilbc", "speex"];

fn valid_host(host: &str) -> bool {
    if host.is_empty() || host.len() > 253 {
        return false;
    }
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    })
}

fn valid_sip_uri(uri: &str) -> bool {
    let rest = uri.strip_prefix("sip:").or_else(|| uri.strip_prefix("sips:"));
    match rest {
        Some(rest) => {
            let host_part = rest.rsplit('@').next().unwrap_or("");
            let host = host_part.split(':').next().unwrap_or("");
            valid_host(host)
        }
        None => false,
    }
}

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
                    json!({"host": "sip.carrier.example", "port": 5060, "transport": "udp", "username": "acme", "registration": {"server_uri": "sip:sip.carrier.example", "client_uri": "sip:acme@sip.carrier.example"}, "codecs": ["alaw", "g722"], "max_channels": 60}),
                ),
                Example::new(
                    "carrier-backup",
                    json!({"host": "203.0.113.10", "port": 5061, "transport": "tls", "codecs": ["ulaw"], "max_channels": 30, "enabled": false}),
                ),
                Example::new("branch-office", json!({"host": "pbx.branch.example", "transport": "tcp"})),
            ],
            retention: None,
        }
    }

    fn validate(&self, key: &str, _host: &dyn Host) -> Vec<Violation> {
        let mut v = Vec::new();
        if key.is_empty() || key.len() > 64 || !key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_') {
            v.push(Violation::new("", "key", "a trunk name is 1 to 64 of a-z, 0-9, - and _"));
        }
        if !valid_host(&self.host) {
            v.push(Violation::new("host", "format", format!("{:?} is not a host name or IP address", self.host)));
        }
        if self.port == 0 || self.port > 65535 {
            v.push(Violation::new("port", "range", "port must be 1 to 65535"));
        }
        if let Some(reg) = &self.registration {
            if !valid_sip_uri(&reg.server_uri) {
                v.push(Violation::new("registration/server_uri", "format", "a registration needs a sip: or sips: server URI"));
            }
            if !valid_sip_uri(&reg.client_uri) {
                v.push(Violation::new("registration/client_uri", "format", "a registration needs a sip: or sips: client URI"));
            }
            if !(60..=86400).contains(&reg.expiry_s) {
                v.push(Violation::new("registration/expiry_s", "range", "expiry must be 60 to 86400 seconds"));
            }
        }
        if self.codecs.is_empty() {
            v.push(Violation::new("codecs", "required", "at least one codec"));
        }
        for (i, c) in self.codecs.iter().enumerate() {
            if !CODECS.contains(&c.as_str()) {
                v.push(Violation::new(&format!("codecs/{i}"), "format", format!("unknown codec {c:?}")));
            }
        }
        if self.max_channels == 0 || self.max_channels > 10_000 {
            v.push(Violation::new("max_channels", "range", "max_channels must be 1 to 10000"));
        }
        v
    }
}

/// The plugin.
pub type TrunksPlugin = RecordPlugin<Trunk>;
tandem_sdk::export_plugin!(TrunksPlugin);
