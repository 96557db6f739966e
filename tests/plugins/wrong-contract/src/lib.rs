//! Exports `tandem:plugin/component@9.0.0`: the engine must refuse it at load, naming both versions.

wit_bindgen::generate!({ world: "plugin", path: "wit" });

use exports::tandem::plugin::component::Guest;
use tandem::plugin::types::{Info, Op, Stamp, Stored, Violation, WriteError};

struct Future;

impl Guest for Future {
    fn describe() -> Info {
        Info {
            component: "future".to_owned(),
            plugin_version: "1.0.0".to_owned(),
            schema_version: 1,
            description: String::new(),
            shape: "custom".to_owned(),
            examples: Vec::new(),
            retention: None,
        }
    }
    fn serialize(_key: String, _op: Op, _prior: Option<Vec<u8>>, _stamp: Stamp) -> Result<Stored, WriteError> {
        Err(WriteError::Malformed("unsupported".to_owned()))
    }
    fn deserialize(_key: String, _data: Vec<u8>) -> Result<Option<String>, String> {
        Err("unsupported".to_owned())
    }
    fn merge(_key: String, _a: Vec<u8>, _b: Vec<u8>) -> Result<Stored, String> {
        Err("unsupported".to_owned())
    }
    fn validate(_key: String, _data: Vec<u8>) -> Result<(), Vec<Violation>> {
        Ok(())
    }
}

export!(Future);
